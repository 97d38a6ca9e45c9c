"""The step action's wait loop: one shell command per look at a background job on its host
(run here by /bin/sh, as a connection would), which waits there for the job to end."""

import json
import shlex
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail

from ansible_collections.vmigrate.v2v.plugins.action import step


def action():
    act = object.__new__(step.ActionModule)
    shell = SimpleNamespace(quote=shlex.quote, remove=lambda p: "rm -f %s" % shlex.quote(p))
    act._connection = SimpleNamespace(_shell=shell)

    def execute(cmd, sudoable=False):
        proc = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, text=True, check=False)
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    act._low_level_execute_command = execute
    return act


def test_poll_waits_on_the_host_and_returns_the_last_event(tmp_path):
    job, progress = tmp_path / "j1", tmp_path / "progress.jsonl"
    job.write_text(json.dumps({"started": True, "finished": False, "ansible_job_id": "j1"}))
    progress.write_text(json.dumps({"label": "copy", "percent": 10.0}) + "\n" + '{"label": "copy", "perc')
    begun = time.monotonic()
    finished, _text, event = action()._poll(str(job), str(progress), 0.5)
    assert (finished, event) == (False, {"label": "copy", "percent": 10.0})
    assert 0.4 < time.monotonic() - begun < 3  # it waited on the "host" for the interval

    def finish():
        time.sleep(0.3)
        job.write_text(json.dumps({"changed": True, "summary": "copied"}))

    threading.Thread(target=finish).start()
    begun = time.monotonic()
    finished, text, _event = action()._poll(str(job), str(tmp_path / "no-progress"), 10)
    assert finished and json.loads(text) == {"changed": True, "summary": "copied"}
    assert time.monotonic() - begun < 3  # seen when it ended, not after the interval


def test_poll_fails_when_the_job_is_gone(tmp_path):
    with pytest.raises(AnsibleActionFail, match="the results file .* is gone"):
        action()._poll(str(tmp_path / "gone"), str(tmp_path / "p"), 0.5)
