"""Corrupt input (issue 14) on vSphere and Hyper-V: bundle disks (vmdk, vhdx) with a data
bit flipped or cut short, and damaged source disks (a Hyper-V VHDX, a vSphere flat
extent). Each is refused naming the file, before the target gets a VM or keeps a file;
the source is left as it was; with the file restored a plain re-run finishes the job.
(qcow2 and KVM: test_kvm_faults.py and tests/integration/test_kvm_bad_input.py.)

vmdk and vhdx data carry no checksums: a flipped bit reads without complaint, so the
imports check what they read against the bundle's block digests before making the VM.
"""

from __future__ import annotations

import os
import shutil
import uuid

from pyVim.task import WaitForTask
from test_hyperv_faults import checkpoints, manifest, no_traceback, same
from test_hyperv_migrate import SWITCH, make_hyperv_source, notes_provenance, remove_hyperv_vm, sha256, share_files, vms
from test_vsphere_export import _has_snapshot, same_bytes
from test_vsphere_import import backing_flat_path, conn_vars, destroy, find_vm, flat_path, make_bundle
from test_vsphere_recovery import random_disk

MIB = 1024 * 1024
BAT_GUID = uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08").bytes_le


def convert(run_module, src, dest, target, network):
    args = {"src": src, "dest": dest, "target_platform": target, "guest_conversion": "skip"}
    res = run_module("convert", dict(args, network_map={"lab-net": network}))
    assert not res.get("failed"), res
    return dest


def refused(res, kind="disk"):
    assert res.get("failed") and res["error_kind"] == kind and no_traceback(res), res
    return res["msg"]


def flip_bit(path, offset):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x10]))


def flip_data_bit_at(path, image, guest_offset):
    """One bit of the guest data at ``guest_offset`` in ``path``, found by its bytes (random,
    read from the source ``image``): qemu-img map gives no file offsets for a VHDX."""
    with open(image, "rb") as fh:
        fh.seek(guest_offset)
        needle = fh.read(64)
    with open(path, "rb") as fh:
        data = fh.read()
    assert data.count(needle) == 1
    flip_bit(path, data.index(needle))


def vhdx_bat(path):
    """The file offset of a VHDX's block allocation table (its region table, at 192 KiB)."""
    with open(path, "rb") as fh:
        fh.seek(192 * 1024)
        table = fh.read(64 * 1024)
    assert table[:4] == b"regi"
    count = int.from_bytes(table[8:12], "little")
    for i in range(count):
        entry = table[16 + 32 * i : 48 + 32 * i]
        if entry[:16] == BAT_GUID:
            return int.from_bytes(entry[16:24], "little")
    raise AssertionError("no BAT region in %s" % path)


def flip_bat_bit(path):
    """One bit of the first BAT entry's file offset (bits 20-63, in MiB): the block it
    points at moves past the file's end."""
    at = vhdx_bat(path)
    with open(path, "r+b") as fh:
        fh.seek(at)
        entry = int.from_bytes(fh.read(8), "little")
        assert entry & 7 == 6, entry  # PAYLOAD_BLOCK_FULLY_PRESENT
        fh.seek(at)
        fh.write((entry ^ (1 << 40)).to_bytes(8, "little"))


def cut(path, size):
    with open(path, "r+b") as fh:
        fh.truncate(size)


# --- vSphere import: a bundle's vmdk with one data bit flipped -------------------------------


def test_bit_flipped_vsphere_bundle_vmdk(lab, vsphere_si, run_module, tmp_path, reliability):
    reliability(
        "vsphere",
        "bundle converted for vSphere (monolithicFlat vmdk) with one data bit flipped in its flat file",
        "import fails: 'bundle B, disk disk0: the data in <file> does not match the bundle's block digests "
        "(1 of 8 blocks differ, first at byte X): the file is damaged' and the fix",
        "no VM, nothing uploaded, no file left in the datastore; with the file restored the re-run imports, "
        "the flat file equals the source (qemu-img compare)",
    )
    name = "lab-corrupt-vs-%s" % uuid.uuid4().hex[:6]
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    bundle = convert(run_module, make_bundle(str(tmp_path / "b"), image, name).dir, str(tmp_path / "vs"),
                     "vsphere", "VM Network")  # fmt: skip
    (rec,) = manifest(bundle)["disks"]
    assert rec["format"] == "vmdk", rec
    flat = os.path.join(bundle, rec["path"][: -len(".vmdk")] + "-flat.vmdk")
    shutil.copyfile(flat, flat + ".good")
    flip_bit(flat, 5 * MIB + 777)  # monolithicFlat: guest offset == file offset
    args = conn_vars(lab, bundle=bundle, name=name, datastore=lab["vcsim"]["datastore"])
    vm_dir = os.path.dirname(flat_path(lab, name))
    try:
        msg = refused(run_module("vsphere_import", args))
        descriptor = os.path.join(bundle, rec["path"])
        assert "bundle %s, disk disk0: the data in %s (with %s) " % (bundle, descriptor, flat) in msg, msg
        assert "does not match the bundle's block digests (1 of 8 blocks differ, first at byte %d)" % (5 * MIB) in msg
        assert "Fix: copy the bundle again, or re-run the export (and convert)" in msg, msg
        assert find_vm(vsphere_si, name) is None and not os.path.exists(vm_dir)
        assert not [f for f in os.listdir(bundle) if f.startswith(".vmigrate-upload-")]

        os.replace(flat + ".good", flat)
        res = run_module("vsphere_import", args)
        assert res.get("changed") and not res.get("failed"), res
        assert same_bytes(backing_flat_path(lab, find_vm(vsphere_si, name)), image)
    finally:
        destroy(vsphere_si, name)


# --- Hyper-V import: a bundle's vhdx with a data bit flipped, or cut short ------------------


def test_damaged_hyperv_bundle_vhdx(lab, hv, run_module, tmp_path, reliability):
    reliability(
        "hyperv",
        "bundle converted for Hyper-V (vhdx) with one data bit flipped",
        "import fails: 'bundle B, disk disk0: the data in <file> does not match the bundle's block digests "
        "(1 of 8 blocks differ, first at byte X): the file is damaged' and the fix",
        "no VM, no VHDX left in the share; with the file restored the re-run imports, VHDX equal to the source",
    )
    reliability(
        "hyperv",
        "bundle converted for Hyper-V (vhdx) cut short (truncated)",
        "import fails: 'bundle B, disk disk0 (fields disks[0].path, disks[0].format): cannot read disk image "
        "<file> as vhdx: ... Image has probably been truncated' and the fix (copy the bundle again)",
        "no VM, no VHDX left in the share; with the file restored the re-run imports, VHDX equal to the source",
    )
    reliability(
        "hyperv",
        "bundle converted for Hyper-V with its digest file edited (one bit)",
        "import fails: 'bundle B, disk disk0: field disks[0].digests_sha256 is X, but the digest file <file> "
        "hashes to Y' and the fix",
        "no VM, no VHDX written to the share; with the file restored the re-run imports",
    )
    name = "lab-corrupt-hv-%s" % uuid.uuid4().hex[:6]
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    bundle = convert(run_module, make_bundle(str(tmp_path / "b"), image, name).dir, str(tmp_path / "hv"),
                     "hyperv", SWITCH)  # fmt: skip
    (rec,) = manifest(bundle)["disks"]
    vhdx = os.path.join(bundle, rec["path"])
    assert rec["format"] == "vhdx", rec
    shutil.copyfile(vhdx, vhdx + ".good")
    imp = dict(hv["conn"], bundle=bundle, name=name)
    target = os.path.join(hv["share"], "%s-disk0.vhdx" % name)
    files_before, others = share_files(hv), [vm["name"] for vm in vms(hv)]
    try:
        flip_data_bit_at(vhdx, image, 5 * MIB + 777)
        msg = refused(run_module("hyperv_import", imp))
        assert "bundle %s, disk disk0: the data in %s does not match the bundle's block digests" % (bundle, vhdx) in msg
        assert "(1 of 8 blocks differ, first at byte %d): the file is damaged" % (5 * MIB) in msg, msg
        assert "Fix: copy the bundle again, or re-run the export (and convert)" in msg, msg
        assert [vm["name"] for vm in vms(hv)] == others and share_files(hv) == files_before

        shutil.copyfile(vhdx + ".good", vhdx)
        cut(vhdx, os.path.getsize(vhdx) // 2)
        msg = refused(run_module("hyperv_import", imp))
        assert "bundle %s, disk disk0 (fields disks[0].path, disks[0].format): cannot read disk image %s as vhdx" % (
            bundle, vhdx) in msg, msg  # fmt: skip
        assert "Image has probably been truncated" in msg, msg
        assert "Fix: the file is damaged or not in that format: copy the bundle again" in msg, msg
        assert [vm["name"] for vm in vms(hv)] == others and share_files(hv) == files_before

        # The data intact, its digest file edited: refused before any file is written.
        os.replace(vhdx + ".good", vhdx)
        digests = os.path.join(bundle, rec["digests"])
        shutil.copyfile(digests, digests + ".good")
        flip_bit(digests, 40)
        msg = refused(run_module("hyperv_import", imp), "input")
        assert "bundle %s, disk disk0: field disks[0].digests_sha256 is %s, but the digest file %s hashes to " % (
            bundle, rec["digests_sha256"], digests) in msg, msg  # fmt: skip
        assert [vm["name"] for vm in vms(hv)] == others and share_files(hv) == files_before

        os.replace(digests + ".good", digests)
        res = run_module("hyperv_import", imp)
        assert not res.get("failed") and res["action"] == "create", res
        assert same(target, "vhdx", image, "raw")
        assert notes_provenance(vms(hv, name)[0]["notes"])["state"] == "complete"
    finally:
        remove_hyperv_vm(hv, name)
        if os.path.exists(target):
            os.unlink(target)


# --- Hyper-V export: a source VHDX cut short, or with a bit flipped in its BAT ---------------


def test_damaged_hyperv_source_vhdx(lab, hv, run_module, tmp_path, reliability):
    reliability(
        "hyperv",
        "source VHDX cut short (truncated)",
        "export fails: 'disk disk0 of VM V (IDE 0:0, <Windows path>) cannot be read: cannot read disk image "
        "<file> as vhdx: ... Image has probably been truncated' and the Test-VHD fix",
        "source file untouched by the tool (sha256), no checkpoint; bundle marked incomplete; with the file "
        "restored the re-run exports, disks equal (qemu-img compare)",
    )
    reliability(
        "hyperv",
        "source VHDX with one bit flipped in its block allocation table",
        "export fails: 'disk disk0 of VM V (IDE 0:0, <Windows path>) cannot be read: cannot read disk image "
        "<file> as vhdx: VHDX BAT entry 0 ... points after end of file' and the Test-VHD fix",
        "source file untouched by the tool (sha256), no checkpoint; bundle marked incomplete; with the file "
        "restored the re-run exports, disks equal (qemu-img compare)",
    )
    src = "lab-corrupt-hs-%s" % uuid.uuid4().hex[:6]
    vhdx = make_hyperv_source(lab, hv, src)
    good = str(tmp_path / "good.vhdx")
    shutil.copyfile(vhdx, good)
    bundle = str(tmp_path / "export")
    export = dict(hv["conn"], vm=src, bundle=bundle)
    try:
        res = run_module("hyperv_export", export)
        assert res.get("changed") and manifest(bundle)["state"] == "complete", res
        cut_short = lambda p: cut(p, os.path.getsize(p) // 2)  # noqa: E731
        says = "disk disk0 of VM %s (IDE 0:0, C:\\VMs\\%s) cannot be read: cannot read disk image %s as vhdx: " % (
            src, os.path.basename(vhdx), vhdx)  # fmt: skip
        for damage, why in ((cut_short, "Image has probably been truncated"), (flip_bat_bit, "points after end")):
            shutil.copyfile(good, vhdx)
            damage(vhdx)
            damaged = sha256(vhdx)
            msg = refused(run_module("hyperv_export", export))
            assert says in msg and why in msg, msg
            assert "Fix: the file is damaged: check it on the Hyper-V host (Test-VHD -Path" in msg, msg
            assert sha256(vhdx) == damaged and checkpoints(hv, src) == []
            assert manifest(bundle)["state"] == "incomplete"

        shutil.copyfile(good, vhdx)
        res = run_module("hyperv_export", export)
        assert not res.get("failed") and manifest(bundle)["state"] == "complete", res
        (rec,) = manifest(bundle)["disks"]
        assert same(os.path.join(bundle, rec["path"]), rec["format"], good, "vhdx")
        assert checkpoints(hv, src) == []
    finally:
        remove_hyperv_vm(hv, src)
        os.unlink(vhdx)


# --- vSphere export: a source disk's flat extent cut short -----------------------------------


def test_truncated_vsphere_source_flat_vmdk(lab, vsphere_si, run_module, tmp_path, reliability):
    reliability(
        "vsphere",
        "source disk's flat extent (datastore file) cut short (truncated), warm export",
        "export fails: 'disk [ds] x.vmdk: its flat extent [ds] x-flat.vmdk holds N bytes, its descriptor says M: "
        "the file is truncated (damaged)' and the fix",
        "no snapshot left; the file untouched by the tool (sha256); bundle marked incomplete; with the file "
        "restored the re-run exports, disk equal to the flat file (qemu-img compare)",
    )
    name = "lab-corrupt-vx-%s" % uuid.uuid4().hex[:6]
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    seed = make_bundle(str(tmp_path / "seed"), image, name)
    vc = conn_vars(lab)
    try:
        res = run_module("vsphere_import", dict(vc, bundle=seed.dir, datastore=lab["vcsim"]["datastore"],
                                                network_map={"lab-net": "VM Network"}))  # fmt: skip
        assert res.get("changed"), res
        vm = find_vm(vsphere_si, name)
        WaitForTask(vm.PowerOnVM_Task())  # warm: the export takes (and must remove) a snapshot
        flat = backing_flat_path(lab, vm)
        good = str(tmp_path / "good-flat.vmdk")
        shutil.copyfile(flat, good)
        bundle = str(tmp_path / "export")
        export = dict(vc, vm=name, bundle=bundle)
        res = run_module("vsphere_export", export)
        assert res.get("changed") and manifest(bundle)["state"] == "complete", res

        cut(flat, 4 * MIB)
        damaged = sha256(flat)
        msg = refused(run_module("vsphere_export", export))
        assert (
            "its flat extent [%s] %s holds %d bytes, its descriptor says %d: the file is truncated"
            % (lab["vcsim"]["datastore"], os.path.relpath(flat, lab["vcsim"]["datastore_dir"]), 4 * MIB, 8 * MIB)
            in msg
        )
        assert "Fix: restore the disk's files" in msg, msg
        assert not _has_snapshot(vm) and sha256(flat) == damaged
        assert manifest(bundle)["state"] == "incomplete"

        shutil.copyfile(good, flat)
        res = run_module("vsphere_export", export)
        assert not res.get("failed") and manifest(bundle)["state"] == "complete", res
        (rec,) = manifest(bundle)["disks"]
        assert same(os.path.join(bundle, rec["path"]), rec["format"], flat, "raw")
        assert not _has_snapshot(vm)
    finally:
        destroy(vsphere_si, name)
