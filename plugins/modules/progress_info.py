#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: progress_info
short_description: The last progress event of a step running on this host
version_added: 0.3.0
description:
  - Reads the last event of a progress file (JSON lines the modules of this collection
    append while they copy, read or convert disks; see C(VMIGRATE_PROGRESS_FILE)) on the
    host where it runs, so a controller can show the progress of a step that runs on a
    remote conversion host.
  - With O(job), also tells whether that background job (a module started with Ansible's
    async wrapper) finished, waiting up to O(wait) seconds for it on the host; a finished
    job's result is returned as it is in RV(job_result).
  - M(vmigrate.v2v.step) with C(progress_file) does the same read in its wait loop (as a
    shell command, to spare a Python start-up per look); this module is for a poll loop of
    your own (C(until)), whose line the C(vmigrate.v2v.migration_summary) callback prints
    on each retry.
  - Changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  path:
    description: The progress file. A missing or empty file gives no event.
    type: path
    required: true
  job:
    description: The results file of an async job (C(results_file) of its start), to tell whether it finished.
    type: path
  wait:
    description: Seconds to wait on the host for O(job) to finish before answering (0 answers at once).
    type: float
    default: 0
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Start the export in the background on the conversion host
  vmigrate.v2v.kvm_export:
    vm: web01
    bundle: /var/lib/vmigrate/web01/export
  environment:
    VMIGRATE_PROGRESS_FILE: /var/lib/vmigrate/web01/progress.jsonl
  async: 86400
  poll: 0
  register: job
  delegate_to: conv1

- name: Show its progress until it is done
  vmigrate.v2v.progress_info:
    path: /var/lib/vmigrate/web01/progress.jsonl
    job: "{{ job.results_file }}"
    wait: 5
  register: p
  until: p.finished
  retries: 10000
  delay: 0
  delegate_to: conv1
"""

RETURN = r"""
progress:
  description:
    - The last event - label, bytes, total_bytes, percent, seconds, rate_bytes_per_second, eta_seconds and
      event (V(progress) or V(done)); null when the file holds none.
  returned: always
  type: dict
line:
  description: The event as one readable line (label, percent, bytes, rate, ETA), or null.
  returned: always
  type: str
  sample: "copy web01 disk0: 42.0% 10.0 MiB of 24.0 MiB at 5.0 MiB/s, ETA 3 s"
finished:
  description: Whether O(job) finished (true without O(job)).
  returned: always
  type: bool
job_result:
  description: The finished job's result, as the module returned it.
  returned: when O(job) finished
  type: dict
"""

import os  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import (  # noqa: E402
    job_state,
    last_event,
    progress_line,
)

TAIL = 8192  # bytes read from the end: an event is a few hundred


def read_tail(path):
    """The last TAIL bytes of ``path`` as text, or None."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - TAIL, 0))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return None


def job_file_state(path):
    """(finished, result) of the job whose results file is ``path``; FileNotFoundError
    when there is none."""
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        raise
    except OSError:
        return False, None
    return job_state(text)


def wait_for(job, wait, clock=time.monotonic, sleep=time.sleep):
    """Poll ``job`` on this host (cheap: a file read) until it finished or ``wait`` passed."""
    deadline = clock() + max(wait, 0)
    pause = 0.05
    while True:
        finished, data = job_file_state(job)
        if finished or clock() >= deadline:
            return finished, data
        sleep(min(pause, max(deadline - clock(), 0)))
        pause = min(pause * 2, 0.5)  # a short job is seen at once, a long one costs little


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            job=dict(type="path"),
            wait=dict(type="float", default=0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    result = {"changed": False, "finished": True}
    if p["job"]:
        try:
            finished, data = wait_for(p["job"], p["wait"])
        except FileNotFoundError:
            module.fail_json(
                msg="the job's results file %s does not exist. Fix: start the job again (it was cleaned up, "
                "or its async directory is another one)" % p["job"],
                finished=True,
            )
        result["finished"] = finished
        if finished:
            result["job_result"] = data
    event = last_event(read_tail(p["path"]))
    result["progress"] = event
    result["line"] = progress_line(event) if event else None
    module.exit_json(**result)


if __name__ == "__main__":
    main()
