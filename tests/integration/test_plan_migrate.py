"""playbooks/migrate.yml on a plan (the plan inventory, the migrate role, waves), KVM -> KVM.

Three shut-off source domains with random data: `ok1` in wave one, `ok2` in wave two.
The playbook moves both; the targets' disks equal the sources' (`qemu-img compare`),
their status.json says migrated, and a second run changes nothing. Then a plan whose
wave one also holds a VM with a damaged disk (max_failed 0): its sibling is migrated,
the broken VM fails with the disk named, and wave two's VM fails "not started".
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import libvirt
import pytest

MIB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(ROOT, "playbooks", "migrate.yml")


@pytest.fixture
def sources(lab, libvirt_conn):
    """make(name, mib) defines a shut-off domain with a qcow2 disk of random data; the
    domains, their disks and every target named lab-planmig-* are removed afterwards."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    tag = uuid.uuid4().hex[:6]
    src_dir = lab["pool_paths"][lab["pools"]["source"]]
    made = []

    def make(name, mib=8):
        name = "lab-planmig-%s-%s" % (name, tag)
        path = os.path.join(src_dir, name + ".qcow2")
        raw = path + ".raw"
        with open(raw, "wb") as fh:
            fh.truncate(4 * mib * MIB)
            for i in range(4):  # data in pieces, holes between them
                fh.seek(i * mib * MIB)
                fh.write(os.urandom(mib * MIB // 4))
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path], check=True)
        os.unlink(raw)
        spec = _spec.new_spec(
            name=name,
            memory_mib=64,
            disks=[_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=4 * mib * MIB)],
            nics=[],
        )
        xml = _libvirt_xml.libvirt_xml_from_spec(
            spec, {"disk0": {"path": path, "format": "qcow2"}}, domain_type=lab["domain_type"]
        )
        libvirt_conn.defineXML(xml.replace(' mode="host-passthrough"', ""))
        made.append(name)
        return name, path

    make.tag = tag
    yield make
    for dom in libvirt_conn.listAllDomains(0):
        if (
            dom.name().startswith("lab-planmig-")
            and dom.name().endswith(tag)
            or dom.name().startswith("lab-planmig-t-%s" % tag)
        ):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    for pool_name in (lab["pools"]["source"], lab["pools"]["target"]):
        pool = libvirt_conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if tag in vol.name():
                vol.delete(0)


def plan(lab, tmp_path, waves, max_failed=0, mode="full", options=None):
    """A plan file: KVM -> KVM, waves = [[source name, ...], ...]; targets lab-planmig-t-<tag>-<n>."""
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', mode: %s, options: %s}" % (tmp_path / "work", mode, json.dumps(options or {})),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], lab["pools"]["target"]),
        "storage_map: {'%s': %s}" % (lab["pool_paths"][lab["pools"]["source"]], lab["pools"]["target"]),
        "waves:",
    ]
    for i, names in enumerate(waves):
        lines += ["  - name: w%d" % i, "    source: lab-kvm", "    target: lab-kvm", "    concurrency: 2"]
        lines += ["    max_failed: %d" % max_failed, "    vms:"]
        for name in names:
            lines.append("      - {name: %s, target_name: %s}" % (name, target_of(name)))
    path = tmp_path / ("plan-%s.v2v.yml" % uuid.uuid4().hex[:4])
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def target_of(name):
    # lab-planmig-<what>-<tag> -> lab-planmig-t-<tag>-<what>
    _lab, _planmig, what, tag = name.split("-", 3)
    return "lab-planmig-t-%s-%s" % (tag, what)


def migrate(run_playbook, plan_path, check=False, playbook=PLAYBOOK):
    env = {"ANSIBLE_INVENTORY": plan_path}
    return run_playbook(playbook, check=check, env=env, timeout=1200)


def target_disk(libvirt_conn, name):
    dom = libvirt_conn.lookupByName(name)
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import domain_disks

    (disk,) = domain_disks(dom.XMLDesc(0))
    return disk["path"], disk["format"]


def same_disk(src, dst, dst_fmt):
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", dst_fmt, src, dst]).returncode == 0


def test_plan_migrates_wave_by_wave_and_a_rerun_changes_nothing(lab, libvirt_conn, sources, run_playbook, tmp_path):
    ok1, ok1_disk = sources("ok1")
    ok2, ok2_disk = sources("ok2")
    path = plan(lab, tmp_path, [[ok1], [ok2]])

    checked = migrate(run_playbook, path, check=True)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert not any(d.name().startswith("lab-planmig-t-" + sources.tag) for d in libvirt_conn.listAllDomains(0))

    first = migrate(run_playbook, path)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    # Wave order: every task of wave w0 ran before any of wave w1.
    out = first.stdout
    assert out.index("[%s" % target_of(ok1)) < out.index("[%s" % target_of(ok2))
    for src, disk in ((ok1, ok1_disk), (ok2, ok2_disk)):
        dst, fmt = target_disk(libvirt_conn, target_of(src))
        assert same_disk(disk, dst, fmt), (disk, dst)
        assert libvirt_conn.lookupByName(target_of(src)).isActive() == 0  # left off
        status = json.loads((tmp_path / "work" / ("w%d" % (src == ok2)) / target_of(src) / "status.json").read_text())
        assert status["status"] == "migrated" and status["steps"]["verify"]["ok"], status

    again = migrate(run_playbook, path)
    assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]


def test_a_wave_over_its_tolerance_stops_later_waves(lab, libvirt_conn, sources, run_playbook, tmp_path):
    ok1, ok1_disk = sources("good")
    bad, bad_disk = sources("bad")
    later, _later_disk = sources("later")
    os.truncate(bad_disk, 256 * 1024)  # the qcow2 cut short: its tables point past the end
    path = plan(lab, tmp_path, [[ok1, bad], [later]], max_failed=0)

    run = migrate(run_playbook, path)
    assert run.returncode != 0, run.stdout[-6000:]
    assert run.recap[target_of(bad)]["failed"] == 1, run.recap
    assert run.recap[target_of(ok1)]["failed"] == 0, run.recap
    assert run.recap[target_of(later)]["failed"] == 1, run.recap  # wave w1 never started
    dst, fmt = target_disk(libvirt_conn, target_of(ok1))
    assert same_disk(ok1_disk, dst, fmt)
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(target_of(later))
    assert "not started: wave w0 failed 1 VMs, more than its max_failed 0" in run.stdout, run.stdout[-3000:]
    status = json.loads((tmp_path / "work" / "w0" / target_of(bad) / "status.json").read_text())
    assert status["status"] == "failed" and bad_disk in status["error"], status


def guest_write(dom, offset, length, pattern):
    """A write through the running guest's own block backend, so its dirty bitmap sees it."""
    import xml.etree.ElementTree as ET

    import libvirt_qemu

    alias = ET.fromstring(dom.XMLDesc(0)).find("devices/disk/alias").get("name")
    reply = libvirt_qemu.qemuMonitorCommand(
        dom,
        'qemu-io -d /machine/peripheral/%s/virtio-backend "write -P 0x%x %d %d"' % (alias, pattern, offset, length),
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
    )
    assert not reply.strip() or "wrote %d/%d bytes" % (length, length) in reply, reply


def same_running_disk(src, dst, dst_fmt):
    # -U: the source's image is open in its running QEMU
    cmd = ["qemu-img", "compare", "-q", "-U", "-f", "qcow2", "-F", dst_fmt, src, dst]
    return subprocess.run(cmd).returncode == 0


def test_warm_vm_migrate_sync_cutover(lab, libvirt_conn, sources, run_playbook, tmp_path):
    """A running source (no OS: it ignores ACPI, so the shutdown times out into a power-off)."""
    name, disk = sources("warm", mib=4)
    src = libvirt_conn.lookupByName(name)
    src.create()
    options = {"shutdown_timeout": 2, "on_shutdown_timeout": "poweroff"}
    path = plan(lab, tmp_path, [[name]], mode="warm", options=options)
    work = tmp_path / "work" / "w0" / target_of(name)
    first = migrate(run_playbook, path)
    assert first.returncode == 0, first.stdout[-5000:]
    dst, fmt = target_disk(libvirt_conn, target_of(name))
    assert same_running_disk(disk, dst, fmt)

    guest_write(src, 5 * MIB + 4096, 8192, 0x5A)
    synced = migrate(run_playbook, path, playbook=os.path.join(ROOT, "playbooks", "sync.yml"))
    assert synced.returncode == 0, synced.stdout[-5000:]
    sync = json.loads((work / "sync.json").read_text())
    assert sync["status"] == "synced" and sync["sync_index"] == 2, sync
    assert 8192 <= int(sync["bytes_moved"]) <= 256 * 1024, sync  # the dirty extent, not the disk
    assert same_running_disk(disk, dst, fmt)

    guest_write(src, 9 * MIB, 4096, 0x33)
    cut = migrate(run_playbook, path, playbook=os.path.join(ROOT, "playbooks", "cutover.yml"))
    assert cut.returncode == 0, cut.stdout[-5000:]
    assert not src.isActive()  # the source is left off
    assert libvirt_conn.lookupByName(target_of(name)).isActive()  # the target runs
    cutover = json.loads((work / "cutover.json").read_text())
    assert cutover["status"] == "cut-over" and float(cutover["downtime_seconds"]) > 0, cutover
    assert cutover["source_shutdown"] in ("acpi", "forced"), cutover
    assert same_running_disk(disk, dst, fmt)

    again = migrate(run_playbook, path, playbook=os.path.join(ROOT, "playbooks", "cutover.yml"))
    assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]
