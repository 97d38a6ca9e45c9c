"""playbooks/report.yml after playbooks/migrate.yml on a plan (KVM -> KVM, two small
shut-off domains lab-report-*): report.json says what the lab says (both migrated,
bytes moved, verify ok), the HTML names both VMs and renders in a real headless browser
(Debian's chromium, installed by the lab's deps) with no script error; a second report
run changes nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid

import libvirt
import pytest

MIB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(ROOT, "playbooks")


@pytest.fixture
def sources(lab, libvirt_conn):
    """make(name) defines a shut-off domain lab-report-<name>-<tag> with an 8 MiB qcow2
    disk holding 2 MiB of random data; domains and volumes with the tag go afterwards."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    tag = uuid.uuid4().hex[:6]
    src_dir = lab["pool_paths"][lab["pools"]["source"]]

    def make(name):
        name = "lab-report-%s-%s" % (name, tag)
        path = os.path.join(src_dir, name + ".qcow2")
        raw = path + ".raw"
        with open(raw, "wb") as fh:
            fh.truncate(8 * MIB)
            for i in range(4):  # data in pieces, holes between them
                fh.seek(i * 2 * MIB)
                fh.write(os.urandom(MIB // 2))
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path], check=True)
        os.unlink(raw)
        spec = _spec.new_spec(
            name=name,
            memory_mib=64,
            disks=[_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=8 * MIB)],
            nics=[],
        )
        xml = _libvirt_xml.libvirt_xml_from_spec(
            spec, {"disk0": {"path": path, "format": "qcow2"}}, domain_type=lab["domain_type"]
        )
        libvirt_conn.defineXML(xml.replace(' mode="host-passthrough"', ""))
        return name

    make.tag = tag
    yield make
    for dom in libvirt_conn.listAllDomains(0):
        if dom.name().startswith("lab-report-") and tag in dom.name():
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    for pool_name in (lab["pools"]["source"], lab["pools"]["target"]):
        pool = libvirt_conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if tag in vol.name():
                vol.delete(0)


def target_of(name):
    # lab-report-<what>-<tag> -> lab-report-t-<tag>-<what>
    _lab, _report, what, tag = name.split("-", 3)
    return "lab-report-t-%s-%s" % (tag, what)


def write_plan(lab, tmp_path, names):
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s'}" % (tmp_path / "work"),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], lab["pools"]["target"]),
        "storage_map: {'%s': %s}" % (lab["pool_paths"][lab["pools"]["source"]], lab["pools"]["target"]),
        "waves:",
        "  - name: w0",
        "    source: lab-kvm",
        "    target: lab-kvm",
        "    concurrency: 2",
        "    vms:",
    ] + ["      - {name: %s, target_name: %s}" % (n, target_of(n)) for n in names]
    path = tmp_path / "plan.v2v.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


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
    one, two = sources("one"), sources("two")
    plan = write_plan(lab, tmp_path, [one, two])
    env = {"ANSIBLE_INVENTORY": plan}

    migrated = run_playbook(os.path.join(PLAYBOOKS, "migrate.yml"), env=env, timeout=1200)
    assert migrated.returncode == 0, migrated.stdout[-5000:] + migrated.stderr[-2000:]

    first = run_playbook(os.path.join(PLAYBOOKS, "report.yml"), env=env, timeout=600)
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

    again = run_playbook(os.path.join(PLAYBOOKS, "report.yml"), env=env, timeout=600)
    assert again.returncode == 0 and again.changed == 0, again.stdout[-4000:]


def test_browser_renders_hostile_names_without_script_errors(tmp_path):
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
