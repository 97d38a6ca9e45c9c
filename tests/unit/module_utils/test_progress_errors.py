import json

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils import _errors, _progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_events_and_summary(tmp_path):
    sink = tmp_path / "progress.jsonl"
    clock = FakeClock()
    p = _progress.Progress("export disk0", 4 * 1024 * 1024, sink=str(sink), interval=1.0, clock=clock)
    clock.now += 2
    p.advance(1024 * 1024)
    clock.now += 0.5
    p.advance(1024 * 1024)  # within the interval: no event
    clock.now += 1.5
    p.advance(2 * 1024 * 1024)
    summary = p.finish()
    events = [json.loads(line) for line in sink.read_text().splitlines()]
    assert [e["event"] for e in events] == ["progress", "progress", "done"]
    assert events[0]["bytes"] == 1024 * 1024 and events[0]["percent"] == 25.0
    assert summary["bytes"] == 4 * 1024 * 1024 and summary["percent"] == 100.0
    assert summary["seconds"] == 4.0 and summary["rate_bytes_per_second"] == 1024 * 1024
    assert summary["summary"] == "export disk0: 4.0 MiB of 4.0 MiB in 4.0 s (1.0 MiB/s)"


def test_human_bytes():
    assert _progress.human_bytes(512) == "512 B"
    assert _progress.human_bytes(1536) == "1.5 KiB"
    assert _progress.human_bytes(3 * 1024**3) == "3.0 GiB"


def test_error_message_names_problem_and_fix():
    err = _errors.InputError("disk file /x.vmdk is missing.", "copy the disk next to the VMX", path="/x.vmdk")
    assert str(err) == "disk file /x.vmdk is missing. Fix: copy the disk next to the VMX"
    assert err.kind == "input" and err.details == {"path": "/x.vmdk"}


def test_fail_from_exception_shape():
    class Module:
        def fail_json(self, **kw):
            raise SystemExit(kw)

    with pytest.raises(SystemExit) as stop:
        _errors.fail_from_exception(Module(), _errors.DiskError("bad image a.qcow2", "re-export it"), changed=False)
    result = stop.value.args[0]
    assert result["msg"] == "bad image a.qcow2. Fix: re-export it"
    assert result["error_kind"] == "disk" and result["changed"] is False


def test_events_carry_an_eta_and_read_as_one_line(tmp_path):
    sink = tmp_path / "progress.jsonl"
    clock = iter([0.0, 2.0, 2.0, 2.0]).__next__
    p = _progress.Progress("copy web01 disk0", 4 * 1024 * 1024, sink=str(sink), interval=1.0, clock=clock)
    p.advance(1024 * 1024)  # 1 MiB in 2 s: 3 MiB left at 512 KiB/s
    event = json.loads(sink.read_text().splitlines()[-1])
    assert event["eta_seconds"] == 6 and event["percent"] == 25.0
    assert _progress.progress_line(event) == "copy web01 disk0: 25.0% 1.0 MiB of 4.0 MiB at 512.0 KiB/s, ETA 6 s"
    assert _progress.eta_seconds({"total_bytes": 10, "bytes": 0, "rate_bytes_per_second": 0}) is None
    assert _progress.eta_seconds({"total_bytes": 10, "bytes": 10, "rate_bytes_per_second": 0}) == 0
    assert _progress.progress_line({"label": "x", "percent": 0, "total_bytes": 5}).endswith("ETA ?")


def test_last_event_and_job_state_read_what_a_host_holds():
    good = json.dumps({"label": "a", "percent": 10.0})
    assert _progress.last_event(good + "\n" + '{"label": "b", "perc') == {"label": "a", "percent": 10.0}
    assert _progress.last_event("") is None and _progress.last_event(None) is None
    # The async wrapper's results file: while it runs, then the module's result.
    assert _progress.job_state('{"started": true, "finished": false, "ansible_job_id": "j1"}') == (False, None)
    assert _progress.job_state('{"started": 1, "finished": 0}') == (False, None)
    assert _progress.job_state('{"changed": true, "rc"') == (False, None)  # being written
    assert _progress.job_state('{"changed": true, "summary": "s"}') == (True, {"changed": True, "summary": "s"})
    assert _progress.job_state('{"started": 1, "finished": 1, "failed": true}')[0] is True
