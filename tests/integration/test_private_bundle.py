"""A real KVM export and converts write bundles nobody but their owner and group can
read: the lab's shut-off guest is exported (cold) from libvirt, converted for KVM
(qcow2) and for vSphere (a monolithicFlat vmdk: descriptor and extent), with a progress
file in the work directory, all under a loose umask (0002) that would otherwise make
everything world-readable; then every directory and file under the work directory
(bundles, disks, digests, descriptors, manifests, the progress file, the lock files) is
checked for bits for others. A cold export references the source disk in place, so a
second test exports the running guest (warm: a full copy into the bundle, then an
incremental with its delta file) and checks that bundle the same way."""

from __future__ import annotations

import os
import stat
import time
import uuid

import pytest
from test_kvm_migrate import MIB, guest_writes, make_source, undefine


@pytest.fixture
def names(lab, libvirt_conn, tmp_path):
    tag = uuid.uuid4().hex[:6]
    n = {
        "src": "lab-sec-%s" % tag,
        "src_disk": os.path.join(lab["pool_paths"][lab["pools"]["source"]], "lab-sec-%s.qcow2" % tag),
    }
    yield n
    undefine(libvirt_conn, n["src"])
    if os.path.exists(n["src_disk"]):
        os.unlink(n["src_disk"])


@pytest.fixture
def loose_umask():
    old = os.umask(0o002)  # inherited by ansible-playbook and the modules it runs
    yield
    os.umask(old)


def not_private(top):
    """(path, mode) of everything under ``top`` with a bit for others (or a file that is
    group-writable or executable), and how many entries were looked at."""
    bad, seen = [], 0
    for root, dirs, files in os.walk(top):
        for name in [""] + dirs + files:
            path = os.path.join(root, name) if name else root
            if name in dirs:
                continue  # walked as a root of its own
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            seen += 1
            limit = 0o750 if os.path.isdir(path) else 0o640
            if mode & ~limit:
                bad.append((path, oct(mode)))
    return bad, seen


def test_export_and_convert_write_private_bundles(
    lab, libvirt_conn, names, run_module, tmp_path, loose_umask, reliability
):
    reliability(
        "security",
        "file permissions: export and converts (KVM raw, vSphere vmdk) under a loose umask 0002",
        "nothing (the modes are the tool's own)",
        "every dir, disk, digest, descriptor, manifest, progress and lock file under the work dir: no bits for "
        "others, files not group-writable (dirs <= 0750, files <= 0640)",
    )
    make_source(lab, libvirt_conn, names)
    work = str(tmp_path / "work")  # made by the modules, not by the test
    export = os.path.join(work, "export")
    progress = os.path.join(work, "export", "..", "progress.jsonl")
    r = run_module("kvm_export", {"name": names["src"], "bundle": export}, env={"VMIGRATE_PROGRESS_FILE": progress})
    assert not r.get("failed"), r
    assert r["kind"] == "full" and r["mode"] == "cold"
    # A cold export references the shut-off domain's qcow2 in place, and a qcow2 convert would
    # too: raw for KVM makes the convert write the disk data into its bundle.
    for target, fmt in (("kvm", "raw"), ("vsphere", "vmdk")):
        args = {"src": export, "dest": os.path.join(work, target), "target_platform": target, "disk_format": fmt}
        r = run_module("convert", args)
        assert not r.get("failed"), r

    # What the steps wrote is there (so the walk below looks at real files) ...
    disks = {t: sorted(os.listdir(os.path.join(work, t, "disks"))) for t in ("export", "kvm", "vsphere")}
    assert disks["kvm"] == ["disk0.raw"] and len(disks["vsphere"]) == 2, disks
    assert os.path.isfile(os.path.join(work, "export", "digests", "disk0.blocks"))
    assert os.path.isfile(os.path.join(work, "progress.jsonl"))
    assert any(n.endswith(".lock") for n in os.listdir(work))
    # ... and none of it, nor any directory, is for others (or group-writable).
    bad, seen = not_private(work)
    assert seen >= 20, seen
    assert bad == [], bad


def test_warm_export_copy_and_delta_are_private(
    lab, libvirt_conn, names, run_module, tmp_path, loose_umask, reliability
):
    reliability(
        "security",
        "file permissions: a warm export's full copy and delta under a loose umask 0002",
        "nothing (the modes are the tool's own)",
        "the copy, the delta and every other file: dirs <= 0750, files <= 0640",
    )
    dom = make_source(lab, libvirt_conn, names)
    dom.create()
    time.sleep(30)  # boot (TCG takes ~20 s)
    work = str(tmp_path / "work")
    args = {"name": names["src"], "bundle": os.path.join(work, "export")}
    full = run_module("kvm_export", args)
    assert not full.get("failed"), full
    assert full["kind"] == "full" and full["mode"] == "warm", full
    guest_writes(dom, [12 * MIB + k * 256 * 1024 for k in range(4)], 0x5A)
    inc = run_module("kvm_export", args)
    assert not inc.get("failed"), inc
    assert inc["kind"] == "incremental" and inc["changed"], inc
    files = sorted(os.listdir(os.path.join(work, "export", "disks")))
    assert len(files) == 2 and any(".delta-" in f for f in files), files  # the copy and the delta
    bad, seen = not_private(work)
    assert seen >= 8, seen
    assert bad == [], bad
