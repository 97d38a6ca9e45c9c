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
