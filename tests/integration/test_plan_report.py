"""playbooks/report.yml after playbooks/migrate.yml on a plan (KVM -> KVM, two small
shut-off domains lab-report-*): report.json says what the lab says (both migrated,
bytes moved, verify ok), the HTML names both VMs and renders in a real headless browser
(Debian's chromium, installed by the lab's deps) with no script error; a second report
run changes nothing."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from plan_lab import MIB, SourceDomains, play, target_of, write_plan  # tests/integration/plan_lab.py


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-report")
    yield domains
    domains.cleanup()


def chromium():
    path = shutil.which("chromium")
    if not path:
        pytest.fail("chromium is not installed: run tests/lab/lab deps (Debian package chromium)", pytrace=False)
    return path


def open_in_browser(html_path):
    """The DOM after the page's scripts ran, and the console messages chromium logged."""
    proc = subprocess.run(
        [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0"]
        + ["--dump-dom", "file://" + html_path],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def test_report_after_a_plan_migration(lab, libvirt_conn, sources, run_playbook, tmp_path):
    (one, _), (two, _) = sources.make("one", mib=2), sources.make("two", mib=2)
    plan = write_plan(lab, tmp_path, [[one, two]])

    migrated = play(run_playbook, plan, "migrate.yml")
    assert migrated.returncode == 0, migrated.stdout[-5000:] + migrated.stderr[-2000:]

    first = play(run_playbook, plan, "report.yml")
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    report_dir = tmp_path / "report"
    assert "%s/report.html" % report_dir in first.stdout

    data = json.loads((report_dir / "report.json").read_text())
    by = {vm["name"]: vm for vm in data["vms"]}
    assert sorted(by) == sorted([target_of(one), target_of(two)])
    for src in (one, two):
        vm = by[target_of(src)]
        # The lab agrees: the target domain exists and is off; its disk holds the data.
        dom = libvirt_conn.lookupByName(target_of(src))
        assert dom.isActive() == 0
        status = json.loads((tmp_path / "work" / "w0" / target_of(src) / "status.json").read_text())
        assert vm["vm"] == src and vm["wave"] == "w0" and vm["mode"] == "full"
        assert vm["source"] == vm["target"] == {"endpoint": "lab-kvm", "platform": "kvm"}
        assert vm["status"] == "migrated" == status["status"]
        assert vm["phases"]["sync"]["status"] == vm["phases"]["cutover"]["status"] == "not started"
        assert vm["bytes_read"] >= 2 * MIB and vm["bytes_written"] >= 2 * MIB and vm["bytes_moved"] >= 2 * MIB
        assert vm["bytes_read"] == status["steps"]["export"]["bytes_read"]
        assert vm["seconds"] > 0 and vm["throughput_bytes_per_second"] > 0
        assert vm["verification"]["result"] == "ok" and status["steps"]["verify"]["ok"] is True
        assert vm["errors"] == []
    (wave,) = data["waves"]
    assert wave["counts"] == {"migrated": 2} and wave["failed"] == 0 and wave["duration_seconds"] > 0

    html_path = str(report_dir / "report.html")
    html = (report_dir / "report.html").read_text()
    assert target_of(one) in html and target_of(two) in html
    assert not re.search(r"https?://|\bsrc\s*=|\bhref\s*=", html)

    dom_text, console = open_in_browser(html_path)
    assert console == [], console
    assert 'data-ready="1"' in dom_text  # the page's script ran to its end
    assert dom_text.count('data-vm="lab-report-t-') == 2 and "<svg" in dom_text

    again = play(run_playbook, plan, "report.yml")
    assert again.returncode == 0 and again.changed == 0, again.stdout[-4000:]


def test_browser_renders_hostile_names_without_script_errors(tmp_path, reliability):
    reliability(
        "security",
        "VM names, wave names and errors full of HTML/script markup in the report",
        "the browser shows them as text ('&lt;img src=x'); none of their script runs, no console error",
        "report.html holds only its own script",
    )
    """Names and errors full of markup stay text in a real browser: no script of theirs runs."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils import report as rep

    evil = "<img src=x onerror=\"document.title='pwned'\">&'"
    record = {"status": "failed", "error": "</td><script>document.title='pwned'</script>", "steps": {}}
    slurped = {"content": json.dumps(record), "encoding": "utf-8"}
    vms = [
        {"name": evil, "wave": "w<0>", "wave_index": 0, "files": {"migrate": slurped}},
        {"name": "plain", "wave": "w<0>", "wave_index": 0, "files": {}},
    ]
    path = tmp_path / "report.html"
    path.write_text(rep.render_html(rep.build_report(vms)))
    dom_text, console = open_in_browser(str(path))
    assert console == [], console
    assert 'data-ready="1"' in dom_text and "pwned" not in dom_text.split("</title>")[0]
    assert "&lt;img src=x" in dom_text  # shown as text
    assert dom_text.count("<script") == 1
