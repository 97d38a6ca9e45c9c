# Copyright: contributors to vmigrate.v2v
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the report role: report_data (the status files of a plan's VMs -> the
report) and report_html (the report -> one self-contained HTML page). The work is in
module_utils/report.py, which the unit tests call directly."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.vmigrate.v2v.plugins.module_utils import report as _report


def report_data(vms, waves=None, plan_file=None):
    if not isinstance(vms, (list, tuple)):
        raise AnsibleFilterError(
            "report_data: expected a list of VMs, got %s. Fix: pass the gathered report_vm facts" % type(vms).__name__
        )
    return _report.build_report(list(vms), list(waves or []), plan_file)


def report_html(report):
    if not isinstance(report, dict) or "vms" not in report:
        raise AnsibleFilterError(
            "report_html: expected what report_data returns. Fix: pipe report_data's result into it"
        )
    return _report.render_html(report)


class FilterModule:
    def filters(self):
        return {"report_data": report_data, "report_html": report_html}
