# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one migration step on the platform a VM's endpoint names (see modules/step.py).

Roles call every platform the same way: this picks ``vmigrate.v2v.<platform>_<step>``
(``convert`` is platform-neutral), gives it the endpoint's connection options plus the
step's own, and runs it where the task runs (``delegate_to`` the conversion host).

With ``progress_file`` the module runs in the background on that host (Ansible's async
wrapper) and this action waits for it there, showing every ``progress_interval`` seconds
the last event the module wrote into the file (percent, bytes, rate, ETA): that is how a
copy on a remote conversion host shows progress, where the controller cannot read the
file. The wait stays inside the task, so ``throttle`` (a wave's concurrency) still
bounds how many copies run at once, which a ``poll: 0`` task followed by a separate
poll loop would not.
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.vars.clean import remove_internal_keys

from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import job_state, last_event, progress_line

PLATFORMS = ("kvm", "vsphere", "hyperv")
# Lines that split the output of the wait loop's shell command (see _poll).
JOB_MARK = "==vmigrate-job=="
MISSING_MARK = "==vmigrate-no-job=="
PROGRESS_MARK = "==vmigrate-progress=="
STEPS = ("vm_info", "export", "convert", "import", "verify", "guest_convert", "power", "cleanup")

ARGUMENT_SPEC = {
    "step": {"type": "str", "required": True, "choices": list(STEPS)},
    "platform": {"type": "str", "choices": list(PLATFORMS)},
    "connection": {"type": "dict", "default": {}, "no_log": True},
    "args": {"type": "dict", "default": {}},
    "progress_file": {"type": "path"},
    "progress_interval": {"type": "float", "default": 5.0},
    "timeout": {"type": "int", "default": 86400},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_async = True
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        step, platform = args["step"], args["platform"]
        if step == "convert":
            module, module_args = "vmigrate.v2v.convert", dict(args["args"])
        else:
            if not platform:
                raise AnsibleActionFail("step %s needs platform (one of %s)" % (step, ", ".join(PLATFORMS)))
            module = "vmigrate.v2v.%s_%s" % (platform, step)
            # Options left out (None) fall back to the module's defaults and environment.
            module_args = {k: v for k, v in (args["connection"] or {}).items() if v is not None}
            module_args.update(args["args"])
        if not self._shared_loader_obj.module_loader.find_plugin(module):
            raise AnsibleActionFail(
                "this collection has no module %s: platform %s cannot do step %s yet" % (module, platform, step)
            )
        if args["progress_file"] and not self._task.check_mode and not self._task.async_val:
            # Check mode copies nothing: it runs in the foreground, without the wait.
            result.update(self._watched(module, module_args, task_vars, args))
        else:
            wrap_async = bool(self._task.async_val) and not self._connection.has_native_async
            result.update(
                self._execute_module(
                    module_name=module, module_args=module_args, task_vars=task_vars, wrap_async=wrap_async
                )
            )
        result["step_module"] = module
        return result

    def _watched(self, module, module_args, task_vars, args):
        """Run ``module`` in the background where the task runs and wait for its result,
        showing the progress it writes into ``progress_file`` there."""
        path, interval = args["progress_file"], max(float(args["progress_interval"]), 0.5)
        # Events of an earlier run (one killed mid-copy) are not this run's progress. The
        # files here are the module's (the become user's when the task uses become), so
        # these commands run as it too (sudoable).
        self._low_level_execute_command(self._connection._shell.remove(path), sudoable=True)
        environment = list(self._task.environment or [])
        try:
            # The async wrapper reads the limit and the environment from the task; this
            # worker's copy of it is put back as it was once the job is started.
            self._task.async_val = args["timeout"]
            self._task.environment = environment + [{"VMIGRATE_PROGRESS_FILE": path}]
            started = self._execute_module(
                module_name=module, module_args=module_args, task_vars=task_vars, wrap_async=True
            )
        finally:
            self._task.async_val = 0
            self._task.environment = environment
        if started.get("failed") or not started.get("results_file"):
            return started  # the job did not start: its error is the result
        job = started["results_file"]
        host = task_vars.get("inventory_hostname", "")
        shown, deadline = None, time.monotonic() + args["timeout"] + 60
        while True:
            begun = time.monotonic()
            finished, job_text, event = self._poll(job, path, interval)
            if finished:
                break
            if event and event != shown:
                self._display.display("  [progress] %s: %s" % (host, progress_line(event)))
                shown = event
            if time.monotonic() > deadline:
                raise AnsibleActionFail("step %s did not finish within timeout %d s" % (module, args["timeout"]))
            # The host waits for the job itself; this only matters when it could not.
            time.sleep(max(interval - (time.monotonic() - begun), 0))
        rm = self._connection._shell.remove
        self._low_level_execute_command("%s; %s" % (rm(job), rm(path)), sudoable=True)
        # Read as ansible.builtin.async_status's result would be (our modules answer in
        # the legacy serialization profile): the same result as a step in the foreground.
        data = self._parse_returned_data({"stdout": job_text, "stderr": "", "rc": 0}, "legacy")
        remove_internal_keys(data)
        return data

    def _poll(self, job, path, interval):
        """One look at the job on its host: (finished, its results file's text, the last
        progress event).

        A shell command rather than a module (vmigrate.v2v.progress_info does the same):
        it waits up to ``interval`` seconds on the host for the job's results file to stop
        saying it runs, so a short step is seen as soon as it ends, and it costs no
        Python start-up, which is most of a module's time. The controller parses the
        file as ansible.builtin.async_status would (_progress.job_state).
        """
        q = self._connection._shell.quote
        cmd = (
            "i=0; while [ $i -lt %d ] && grep -qE '\"finished\": (0|false)' %s 2>/dev/null; "
            "do sleep 0.1; i=$((i+1)); done; "
            "echo %s; cat %s 2>/dev/null || echo %s; echo; echo %s; tail -n 2 %s 2>/dev/null; true"
        ) % (int(interval * 10), q(job), JOB_MARK, q(job), MISSING_MARK, PROGRESS_MARK, q(path))
        res = self._low_level_execute_command(cmd, sudoable=True)
        out = res.get("stdout", "")
        if JOB_MARK not in out or PROGRESS_MARK not in out:
            raise AnsibleActionFail("could not read the progress of job %s: %s" % (job, res.get("stderr", "")))
        job_text, progress_text = out.split(JOB_MARK, 1)[1].split(PROGRESS_MARK, 1)
        if job_text.strip() == MISSING_MARK:
            raise AnsibleActionFail(
                "the results file %s of the step's job is gone: the job was cleaned up, or its async "
                "directory is another one. Fix: run the step again" % job
            )
        finished, _data = job_state(job_text)
        return finished, job_text.strip(), last_event(progress_text)
