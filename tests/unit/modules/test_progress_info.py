"""vmigrate.v2v.progress_info: the last event of a progress file, and waiting on the host for
an async job's results file (the functions, and the module run by `ansible`)."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.vmigrate.v2v.plugins.modules import progress_info

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_read_tail_keeps_only_the_end(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [json.dumps({"label": "copy", "bytes": i, "pad": "x" * 100}) for i in range(500)]
    path.write_text("\n".join(lines) + "\n")
    text = progress_info.read_tail(str(path))
    assert len(text) <= progress_info.TAIL
    assert progress_info.last_event(text)["bytes"] == 499
    assert progress_info.read_tail(str(tmp_path / "none")) is None


def test_wait_for_returns_when_the_job_ends_or_the_wait_is_over(tmp_path):
    job = tmp_path / "j1"
    job.write_text(json.dumps({"started": True, "finished": False}))
    begun = time.monotonic()
    assert progress_info.wait_for(str(job), 0.3) == (False, None)
    assert 0.25 < time.monotonic() - begun < 2

    def finish():
        time.sleep(0.2)
        job.write_text(json.dumps({"changed": True, "summary": "done"}))

    threading.Thread(target=finish).start()
    begun = time.monotonic()
    assert progress_info.wait_for(str(job), 10) == (True, {"changed": True, "summary": "done"})
    assert time.monotonic() - begun < 2  # seen as it ended, not after the wait
    with pytest.raises(FileNotFoundError):
        progress_info.wait_for(str(tmp_path / "gone"), 1)


def run(args, tmp_path):
    out = tmp_path / "r.json"
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - vmigrate.v2v.progress_info: %s\n      register: r\n      ignore_errors: true\n"
        "    - ansible.builtin.copy: {content: '{{ r | to_json }}', dest: '%s'}\n" % (json.dumps(args), out)
    )
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    cmd = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), "-e", "ansible_python_interpreter=" + sys.executable]
    proc = subprocess.run(cmd + [str(play)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_the_module_reports_the_last_event_and_the_finished_job(tmp_path):
    progress = tmp_path / "progress.jsonl"
    event = {"label": "copy web01 disk0", "bytes": 1048576, "total_bytes": 4194304, "percent": 25.0}
    event.update(rate_bytes_per_second=524288, eta_seconds=6, event="progress")
    progress.write_text(json.dumps(event) + "\n")
    job = tmp_path / "j2"
    job.write_text(json.dumps({"changed": True, "summary": "export done"}))
    res = run({"path": str(progress), "job": str(job), "wait": 5}, tmp_path)
    assert res["changed"] is False and res["finished"] is True
    assert res["job_result"] == {"changed": True, "summary": "export done"}
    assert res["progress"]["percent"] == 25.0
    assert res["line"] == "copy web01 disk0: 25.0% 1.0 MiB of 4.0 MiB at 512.0 KiB/s, ETA 6 s"
    assert progress.exists() and job.exists()  # an _info module changes nothing
    missing = run({"path": str(tmp_path / "none"), "job": str(tmp_path / "gone")}, tmp_path)
    assert missing["failed"] and "does not exist" in missing["msg"]
