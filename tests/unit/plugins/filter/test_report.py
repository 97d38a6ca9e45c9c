"""The report filters (module_utils/report.py through plugins/filter/report.py), and
playbooks/report.yml on an offline plan with status files made here."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess

import pytest

from ansible_collections.vmigrate.v2v.plugins.filter import report as flt
from ansible_collections.vmigrate.v2v.plugins.module_utils import report as rep

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PLAYBOOK_BIN = os.path.join(ROOT, ".venv", "bin", "ansible-playbook")


def step(seconds, read=0, written=0, **extra):
    return dict(changed=True, seconds=seconds, bytes_read=read, bytes_written=written, summary="did it", **extra)


def migrate_record(status="migrated", error=None, finished="2025-01-01T10:00:00+00:00", ok=True):
    return {
        "vm": "src",
        "status": status,
        "error": error,
        "finished": finished,
        "mode": "full",
        "steps": {
            "export": step(2.0, read=4 << 20, written=3 << 20),
            "convert": step(1.0, read=3 << 20, written=3 << 20),
            "import": step(1.5, read=3 << 20, written=4 << 20),
            "verify": step(0.5, read=4 << 20, ok=ok),
        },
    }


def slurped(phase, record=None, text=None, msg=None):
    """What ansible.builtin.slurp registers in the role's loop."""
    res = {"item": {"key": phase, "value": rep.PHASE_FILES[phase]}, "changed": False}
    if record is not None or text is not None:
        raw = text if text is not None else json.dumps(record)
        res.update(content=base64.b64encode(raw.encode()).decode(), encoding="base64")
    else:
        res.update(failed=True, msg=msg or "file not found: /w/%s" % rep.PHASE_FILES[phase])
    return res


def vm(name, wave="w0", index=0, migrate=None, sync=None, cutover=None, **files):
    return {
        "name": name,
        "vm": name,
        "wave": wave,
        "wave_index": index,
        "mode": "full",
        "source": {"endpoint": "lab-kvm", "platform": "kvm"},
        "target": {"endpoint": "prod-vc", "platform": "vsphere"},
        "conversion_host": "localhost",
        "work_dir": "/w/%s" % name,
        "files": [
            files.get("migrate_file") or slurped("migrate", migrate),
            files.get("sync_file") or slurped("sync", sync),
            files.get("cutover_file") or slurped("cutover", cutover),
        ],
    }


WAVES = [
    {"name": "w0", "index": 0, "concurrency": 2, "max_failed": 0, "hosts": []},
    {"name": "w1", "index": 1, "concurrency": 1, "max_failed": 1, "hosts": []},
]


def test_totals_per_vm_and_per_wave():
    cut = migrate_record(status="cut-over", finished="2025-01-01T11:00:00+00:00")
    cut.update(downtime_seconds="12.5", source_shutdown="acpi", target_started=True)
    sync = migrate_record(status="synced", finished="2025-01-01T10:30:00+00:00")
    sync["steps"]["export"] = step(1.0, read=1 << 20, written=8192)
    sync["steps"]["verify"] = {"skipped": True}
    sync.update(sync_index="2", bytes_moved="8192", behind_seconds="3.0")
    data = flt.report_data(
        [vm("a", migrate=migrate_record()), vm("b", migrate=migrate_record(), sync=sync, cutover=cut)],
        WAVES,
        "/p/plan.v2v.yml",
    )
    a, b = data["vms"]
    assert a["status"] == "migrated" and a["phases"]["sync"]["status"] == rep.NOT_STARTED
    assert a["bytes_read"] == 4 << 20 and a["bytes_written"] == 4 << 20 and a["bytes_moved"] == 4 << 20
    assert a["seconds"] == 5.0 and a["throughput_bytes_per_second"] == (4 << 20) // 5
    assert a["verification"]["result"] == "ok" and a["verification"]["phase"] == "migrate"
    assert a["downtime_seconds"] is None and a["errors"] == []
    assert b["status"] == "cut-over" and b["downtime_seconds"] == 12.5
    assert b["phases"]["sync"]["sync_index"] == 2 and "verify" not in b["phases"]["sync"]["steps"]
    assert b["bytes_read"] == (4 << 20) * 2 + (1 << 20)
    assert b["bytes_moved"] == (4 << 20) * 2 + 8192  # the sync recorded its own
    assert b["verification"]["phase"] == "cutover"
    (w0,) = data["waves"]  # w1 has no VMs here
    assert w0["counts"] == {"cut-over": 1, "migrated": 1} and w0["failed"] == 0
    assert w0["bytes_read"] == a["bytes_read"] + b["bytes_read"]
    assert w0["vm_seconds"] == a["seconds"] + b["seconds"]
    assert w0["max_downtime_seconds"] == 12.5
    # From b's migrate start (10:00 less its 5 s of steps) to its cutover's end (11:00).
    assert w0["duration_seconds"] == 3605.0
    assert data["as_of"] == "2025-01-01T11:00:00+00:00" and data["totals"]["vms"] == 2
    assert json.loads(json.dumps(data)) == data  # what report.json holds


def test_missing_and_broken_status_files():
    data = rep.build_report(
        [
            vm("none", wave="w1", index=1),
            vm("bad", migrate=migrate_record(status="failed", error="disk0 of bad: qcow2 header cut short", ok=False)),
            vm("junk", migrate_file=slurped("migrate", text="{not json")),
            vm("denied", migrate_file=slurped("migrate", msg="Permission denied: /w/denied/status.json")),
        ],
        WAVES,
    )
    by = {r["name"]: r for r in data["vms"]}
    assert by["none"]["status"] == rep.NOT_STARTED
    assert all(p["status"] == rep.NOT_STARTED for p in by["none"]["phases"].values())
    assert by["none"]["seconds"] == 0 and by["none"]["verification"]["result"] == "not run"
    assert by["bad"]["status"] == "failed" and by["bad"]["verification"]["result"] == "failed"
    assert by["bad"]["errors"] == [{"phase": "migrate", "error": "disk0 of bad: qcow2 header cut short"}]
    assert by["junk"]["status"] == "unreadable"
    assert "/w/junk/status.json is not valid JSON" in by["junk"]["errors"][0]["error"]
    assert "Permission denied" in by["denied"]["errors"][0]["error"]
    waves = {w["name"]: w for w in data["waves"]}
    assert waves["w0"]["failed"] == 1 and waves["w1"]["counts"] == {rep.NOT_STARTED: 1}
    assert [w["name"] for w in data["waves"]] == ["w0", "w1"]
    assert data["as_of"] == "2025-01-01T10:00:00+00:00"
    assert "<td>" in rep.render_html(data)  # renders with nothing to show for some


def test_empty_plan():
    data = flt.report_data([], [])
    assert data["vms"] == [] and data["as_of"] is None
    assert "No VMs" in flt.report_html(data)


NASTY = "web<01>&\"x'"
NASTY_ERR = "<script>alert('x')</script> & \"quoted\" </td>"


def test_everything_is_escaped():
    html = flt.report_html(
        flt.report_data([vm(NASTY, wave="w<0>", migrate=migrate_record(status="failed", error=NASTY_ERR))], [])
    )
    assert NASTY not in html and NASTY_ERR not in html and "w<0>" not in html
    assert "web&lt;01&gt;&amp;&quot;x&#x27;" in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot; &lt;/td&gt;" in html
    # The only script element is the page's own.
    assert len(re.findall(r"<script\b", html)) == 1
    # Attribute values stay inside their quotes.
    for attr in re.findall(r'\sdata-vm="([^"]*)"', html):
        assert "<" not in attr and '"' not in attr


def test_html_is_self_contained_with_a_chart():
    html = flt.report_html(
        flt.report_data([vm("a", migrate=migrate_record()), vm("b", wave="w1", index=1)], WAVES, "/p/x.v2v.yml")
    )
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "http://" not in html and "https://" not in html and not re.search(r"\b[a-z][a-z0-9+.-]*://", html)
    assert not re.search(r"\b(src|href|action)\s*=", html, re.I)
    assert not re.search(r"url\(|@import", html, re.I)
    chart = re.search(r'<svg class="chart".*?</svg>', html, re.S).group(0)
    assert chart.count('class="sec"') == 3 and chart.count('class="byt"') == 3  # legend + a, b
    assert "5.0 s" in chart and "4.0 MiB" in chart
    assert '<span class="st ok">migrated</span>' in html
    assert '<span class="st none">not started</span>' in html
    assert "4.0 MiB" in html and "/p/x.v2v.yml" in html


def test_filters_refuse_wrong_input():
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="expected a list"):
        flt.report_data({"a": 1})
    with pytest.raises(AnsibleFilterError, match="report_data"):
        flt.report_html([])


def test_human_units():
    assert rep.human_bytes(0) == "0 B" and rep.human_bytes(1536) == "1.5 KiB" and rep.human_bytes(5 << 30) == "5.0 GiB"
    assert rep.human_seconds(None) == "-" and rep.human_seconds(3.25) == "3.2 s"
    assert rep.human_seconds(125) == "2m 05s" and rep.human_seconds(7260) == "2h 01m"


PLAN = """\
plugin: vmigrate.v2v.plan
validate_sources: false
version: 1
defaults: {{work_dir: '{work}'}}
endpoints:
  lab-kvm: {{platform: kvm, uri: 'qemu:///system'}}
  prod-vc: {{platform: vsphere, hostname: vc.example.com}}
waves:
  - {{name: w0, source: lab-kvm, target: prod-vc, vms: [one, "two"]}}
  - {{name: w1, source: lab-kvm, target: prod-vc, vms: [three]}}
"""


def run_report(plan, check=False):
    cmd = [PLAYBOOK_BIN, "-i", plan, os.path.join(ROOT, "playbooks", "report.yml")] + (["--check"] if check else [])
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    changed = sum(int(n) for n in re.findall(r"\bchanged=(\d+)", proc.stdout.split("PLAY RECAP")[-1]))
    return proc, changed


def test_report_playbook_offline(tmp_path):
    work = tmp_path / "work"
    plan = tmp_path / "plan.v2v.yml"
    plan.write_text(PLAN.format(work=work))
    (work / "w0" / "one").mkdir(parents=True)
    (work / "w0" / "one" / "status.json").write_text(json.dumps(migrate_record()))
    (work / "w0" / "two").mkdir(parents=True)
    (work / "w0" / "two" / "status.json").write_text(json.dumps(migrate_record(status="failed", error="a <bad> disk")))

    checked, _changed = run_report(str(plan), check=True)
    assert not (tmp_path / "report").exists(), checked.stdout[-3000:]

    first, changed = run_report(str(plan))
    assert changed > 0
    assert "%s/report.html" % (tmp_path / "report") in first.stdout
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    by = {r["name"]: r for r in data["vms"]}
    assert by["one"]["status"] == "migrated" and by["two"]["status"] == "failed"
    assert by["three"]["status"] == rep.NOT_STARTED and by["three"]["wave"] == "w1"
    assert by["one"]["source"] == {"endpoint": "lab-kvm", "platform": "kvm"}
    assert by["one"]["target"] == {"endpoint": "prod-vc", "platform": "vsphere"}
    assert by["one"]["work_dir"] == str(work / "w0" / "one")
    html = (tmp_path / "report" / "report.html").read_text()
    assert "a &lt;bad&gt; disk" in html and 'data-vm="three"' in html

    _again, changed = run_report(str(plan))
    assert changed == 0

    (work / "w1" / "three").mkdir(parents=True)
    (work / "w1" / "three" / "status.json").write_text(json.dumps(migrate_record(finished="2025-01-02T00:00:00")))
    _new, changed = run_report(str(plan))
    assert changed == 2  # both files, nothing else
    counts = json.loads((tmp_path / "report" / "report.json").read_text())["totals"]["counts"]
    assert counts == {"failed": 1, "migrated": 2}


def test_the_guest_conversion_is_in_the_report():
    record = migrate_record()
    record["steps"]["guest_convert"] = dict(
        step(90.0, read=8 << 20, action="convert"), summary="virt-v2v-in-place 2.2.0"
    )
    record["guest"] = {
        "action": "convert",
        "reason": "from vsphere: virtio drivers, initramfs, tools removed",
        "os": "12.15",
        "hardware": [],
        "warnings": ["could not determine a way to update the configuration of Grub2"],
        "deferred": False,
    }
    report = flt.report_data([vm("web", migrate=record)], WAVES)
    (row,) = report["vms"]
    assert row["guest"]["action"] == "convert" and row["phases"]["migrate"]["steps"]["guest_convert"]["seconds"] == 90.0
    html = flt.report_html(report)
    assert "convert 12.15" in html and "Grub2" in html
    # A VM without a guest record (an older status file) shows a dash.
    plain = flt.report_data([vm("db", migrate=migrate_record())], WAVES)
    assert plain["vms"][0]["guest"] is None
