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

import libvirt
import pytest
from plan_lab import (  # tests/integration/plan_lab.py
    MIB,
    PLAYBOOKS,
    SourceDomains,
    play,
    target_of,
    write_plan,
    write_vsphere_plan,
)


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-planmig")
    yield domains
    domains.cleanup()


def target_disk(libvirt_conn, name):
    dom = libvirt_conn.lookupByName(name)
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import domain_disks

    (disk,) = domain_disks(dom.XMLDesc(0))
    return disk["path"], disk["format"]


def same_disk(src, dst, dst_fmt):
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", dst_fmt, src, dst]).returncode == 0


def test_plan_migrates_wave_by_wave_and_a_rerun_changes_nothing(lab, libvirt_conn, sources, run_playbook, tmp_path):
    ok1, ok1_disk = sources.make("ok1", mib=8)
    ok2, ok2_disk = sources.make("ok2", mib=8)
    path = write_plan(lab, tmp_path, [[ok1], [ok2]])

    checked = play(run_playbook, path, "migrate.yml", check=True)
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert not any(d.name().startswith("lab-planmig-t-" + sources.tag) for d in libvirt_conn.listAllDomains(0))

    first = play(run_playbook, path, "migrate.yml")
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

    again = play(run_playbook, path, "migrate.yml")
    assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]


def test_a_wave_over_its_tolerance_stops_later_waves(lab, libvirt_conn, sources, run_playbook, tmp_path, reliability):
    reliability(
        "plan",
        "one VM of a wave with a truncated source qcow2 (wave max_failed 0)",
        "that VM fails, its sibling migrates; later waves: 'not started: wave w0 failed 1 VMs, more than its "
        "max_failed 0'",
        "sibling's target equal to its source; no target for the later wave; the failed VM's status.json "
        "'failed' naming its disk",
    )
    ok1, ok1_disk = sources.make("good", mib=8)
    bad, bad_disk = sources.make("bad", mib=8)
    later, _later_disk = sources.make("later", mib=8)
    os.truncate(bad_disk, 256 * 1024)  # the qcow2 cut short: its tables point past the end
    path = write_plan(lab, tmp_path, [[ok1, bad], [later]], max_failed=0)

    run = play(run_playbook, path, "migrate.yml")
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
    name, disk = sources.make("warm")
    src = libvirt_conn.lookupByName(name)
    src.create()
    options = {"shutdown_timeout": 2, "on_shutdown_timeout": "poweroff"}
    path = write_plan(lab, tmp_path, [[name]], mode="warm", options=options)
    work = tmp_path / "work" / "w0" / target_of(name)
    first = play(run_playbook, path, "migrate.yml")
    assert first.returncode == 0, first.stdout[-5000:]
    dst, fmt = target_disk(libvirt_conn, target_of(name))
    assert same_running_disk(disk, dst, fmt)

    guest_write(src, 5 * MIB + 4096, 8192, 0x5A)
    synced = play(run_playbook, path, "sync.yml")
    assert synced.returncode == 0, synced.stdout[-5000:]
    sync = json.loads((work / "sync.json").read_text())
    assert sync["status"] == "synced" and sync["sync_index"] == 2, sync
    assert 8192 <= int(sync["bytes_moved"]) <= 256 * 1024, sync  # the dirty extent, not the disk
    assert same_running_disk(disk, dst, fmt)

    guest_write(src, 9 * MIB, 4096, 0x33)
    cut = play(run_playbook, path, "cutover.yml")
    assert cut.returncode == 0, cut.stdout[-5000:]
    assert not src.isActive()  # the source is left off
    assert libvirt_conn.lookupByName(target_of(name)).isActive()  # the target runs
    cutover = json.loads((work / "cutover.json").read_text())
    assert cutover["status"] == "cut-over" and float(cutover["downtime_seconds"]) > 0, cutover
    assert cutover["source_shutdown"] in ("acpi", "forced"), cutover
    assert same_running_disk(disk, dst, fmt)

    again = play(run_playbook, path, "cutover.yml")
    assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]


def test_warm_vm_into_vsphere_syncs_changed_data(lab, libvirt_conn, vsphere_si, sources, run_playbook, tmp_path):
    """Warm KVM -> vSphere: migrate (first copy), a guest write, sync, cutover. The sync's
    convert writes the delta into the converted disk and the import rewrites the vSphere
    disk from it: vcsim's flat extent equals the source after each round."""
    from test_vsphere_import import backing_flat_path, destroy, find_vm

    name, disk = sources.make("vswarm")
    src = libvirt_conn.lookupByName(name)
    src.create()
    vc, target = lab["vcsim"], target_of(name)
    defaults = "mode: warm, options: {shutdown_timeout: 2, on_shutdown_timeout: poweroff}"
    path = write_vsphere_plan(lab, tmp_path, name, target, defaults)
    env = {"ANSIBLE_INVENTORY": str(path), "LAB_VC_PASSWORD": vc["password"]}
    work = tmp_path / "work" / "w0" / target

    def run(playbook):
        proc = run_playbook(os.path.join(PLAYBOOKS, playbook), env=env, timeout=1200)
        assert proc.returncode == 0, proc.stdout[-5000:]
        return proc

    def same_as_source():
        flat = backing_flat_path(lab, find_vm(vsphere_si, target))
        cmd = ["qemu-img", "compare", "-q", "-U", "-f", "qcow2", "-F", "raw", disk, flat]
        return subprocess.run(cmd).returncode == 0

    try:
        run("migrate.yml")
        assert same_as_source()
        guest_write(src, 5 * MIB + 4096, 8192, 0x5A)
        run("sync.yml")
        sync = json.loads((work / "sync.json").read_text())
        assert sync["status"] == "synced" and sync["sync_index"] == 2, sync
        assert same_as_source()
        guest_write(src, 9 * MIB, 4096, 0x33)
        run("cutover.yml")
        assert not src.isActive()
        assert find_vm(vsphere_si, target).runtime.powerState == "poweredOn"
        assert json.loads((work / "cutover.json").read_text())["status"] == "cut-over"
        assert same_as_source()
        assert run("cutover.yml").changed == 0
    finally:
        destroy(vsphere_si, target)


def test_a_run_is_refused_while_another_writes_the_same_vm(
    lab, libvirt_conn, sources, run_playbook, tmp_path, reliability
):
    """Another run of the same plan holds the VM's export bundle (its export is running):
    this run's export stops with a message naming it, nothing is made; once the other
    run is gone, a re-run migrates the VM."""
    import sys

    reliability(
        "engine",
        "two runs of the same plan at once (another run holds the VM's export bundle lock)",
        "migrate.yml fails: 'is being written by another run (export of <vm> pid N ...'",
        "nothing written under the other run: no bundle, no target; once it is gone a re-run migrates, disks equal",
    )
    name, disk = sources.make("locked")
    path = write_plan(lab, tmp_path, [[name]])
    bundle = tmp_path / "work" / "w0" / target_of(name) / "export"
    hold = (
        "import sys, time\n"
        "from ansible_collections.vmigrate.v2v.plugins.module_utils._lock import bundle_lock\n"
        "with bundle_lock(sys.argv[1], 'export of %s'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(600)\n" % name
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    other = subprocess.Popen([sys.executable, "-c", hold, str(bundle)], stdout=subprocess.PIPE, env=env)
    try:
        assert other.stdout.readline().strip() == b"held"
        refused = play(run_playbook, path, "migrate.yml")
        assert refused.returncode != 0
        assert "is being written by another run (export of %s pid %d" % (name, other.pid) in refused.stdout, (
            refused.stdout[-4000:]
        )
        assert not bundle.exists()  # nothing written under the other run
        with pytest.raises(libvirt.libvirtError):
            libvirt_conn.lookupByName(target_of(name))
    finally:
        other.kill()
        other.wait()
    done = play(run_playbook, path, "migrate.yml")
    assert done.returncode == 0, done.stdout[-4000:]
    dst, fmt = target_disk(libvirt_conn, target_of(name))
    assert same_disk(disk, dst, fmt)
