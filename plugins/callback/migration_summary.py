# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: migration_summary
type: aggregate
short_description: Live progress and a closing summary for vmigrate.v2v tasks
description:
  - While a C(vmigrate.v2v) task runs, shows its copy progress (percent, bytes, rate)
    read from the progress file the modules append to.
  - At the end of the play, prints one line per migration step with bytes moved,
    time, rate and verification results.
  - "This callback follows the progress file of modules that run on the controller
    (C(connection: local)), passed to them through the environment. For a step delegated
    to a remote conversion host, M(vmigrate.v2v.step) with C(progress_file) shows the
    progress itself (the migrate role does that); a C(vmigrate.v2v.progress_info) poll
    loop (C(until)) gets its lines printed here on each retry."
  - The summary names each step by the module that ran it (C(kvm_export), C(convert), ...).
requirements:
  - enable in ansible.cfg C(callbacks_enabled = vmigrate.v2v.migration_summary)
options:
  interval:
    description: Seconds between progress lines.
    type: float
    default: 10
    ini:
      - section: callback_migration_summary
        key: interval
    env:
      - name: VMIGRATE_PROGRESS_INTERVAL
"""

import json
import os
import tempfile
import threading

from ansible.plugins.callback import CallbackBase

from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import progress_line

PREFIX = "vmigrate.v2v."
NOT_STEPS = ("vmigrate.v2v.progress_info",)  # reports about a step, not one


def _step_name(task, res):
    """The module that did the work: vmigrate.v2v.step says which (step_module)."""
    name = res.get("step_module") if isinstance(res.get("step_module"), str) else task.action
    return name[len(PREFIX) :] if name.startswith(PREFIX) else name


def _human(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return "%.1f %s" % (n, unit) if unit != "B" else "%d B" % n
        n /= 1024
    return "%d B" % n


def _row(host, step, res):
    """One summary line; every step's result ends with the same keys (engine/steps.finish_step)."""
    line = "%-28s %-22s changed=%-5s" % (host, step, res.get("changed"))
    if res.get("rate_bytes_per_second"):
        line += " %10s/s" % _human(res["rate_bytes_per_second"])
    if isinstance(res.get("summary"), str):
        line += "  " + res["summary"]
    return line


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "vmigrate.v2v.migration_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        fd, self._progress_path = tempfile.mkstemp(prefix="vmigrate-progress-", suffix=".jsonl")
        os.close(fd)
        # Forked workers inherit this, so local modules write their events here.
        os.environ.setdefault("VMIGRATE_PROGRESS_FILE", self._progress_path)
        self._progress_path = os.environ["VMIGRATE_PROGRESS_FILE"]
        self._rows = []
        self._stop = None
        self._thread = None

    def set_options(self, task_keys=None, var_options=None, direct=None):
        super().set_options(task_keys=task_keys, var_options=var_options, direct=direct)
        self._interval = float(self.get_option("interval"))

    def _follow(self, stop, offset):
        while not stop.wait(self._interval):
            try:
                with open(self._progress_path) as fh:
                    fh.seek(offset)
                    lines = fh.readlines()
                    offset = fh.tell()
            except OSError:
                continue
            if lines:
                try:
                    ev = json.loads(lines[-1])
                except ValueError:
                    continue
                self._display.display("  [progress] %s" % progress_line(ev))

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._stop_follow()
        if task.action.startswith(PREFIX):
            try:
                offset = os.path.getsize(self._progress_path)
            except OSError:
                offset = 0
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._follow, args=(self._stop, offset), daemon=True)
            self._thread.start()

    def _stop_follow(self):
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._stop = None

    def v2_runner_on_ok(self, result):
        task = result._task
        if not task.action.startswith(PREFIX) or task.action in NOT_STEPS:
            return
        self._rows.append(_row(result._host.get_name(), _step_name(task, result._result), result._result))

    def v2_runner_retry(self, result):
        # A progress_info poll loop: the last event, each time round.
        if result._task.action in NOT_STEPS and result._result.get("line"):
            self._display.display("  [progress] %s: %s" % (result._host.get_name(), result._result["line"]))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if result._task.action.startswith(PREFIX) and result._task.action not in NOT_STEPS:
            self._rows.append(
                "%-28s %-22s FAILED: %s"
                % (result._host.get_name(), _step_name(result._task, result._result), result._result.get("msg"))
            )

    def v2_playbook_on_stats(self, stats):
        self._stop_follow()
        if self._rows:
            self._display.banner("VMIGRATE SUMMARY")
            for row in self._rows:
                self._display.display(row)
        try:
            if os.path.getsize(self._progress_path) == 0 and "vmigrate-progress-" in self._progress_path:
                os.unlink(self._progress_path)
        except OSError:
            pass
