"""vsphere_export against vcsim: cold, warm with CBT (QueryChangedDiskAreas), hash-diff without CBT.

The source VM is made by vsphere_import from the lab guest image, so its flat extent in
vcsim's datastore directory holds real bytes. "Guest writes" are writes into that file;
the bytes read per sync come from the module and are checked against what was written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl
from test_vsphere_import import conn_vars, destroy, find_vm, flat_path, make_bundle

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle

MIB = 1024 * 1024


@pytest.fixture
def source_vm(lab, vsphere_si, run_module, tmp_path):
    """A powered-off vcsim VM whose disk is the lab guest image."""
    name = "v2v-src-%s" % uuid.uuid4().hex[:8]
    image = str(tmp_path / "guest.raw")
    shutil.copyfile(lab["guest_image"], image)
    bundle = make_bundle(str(tmp_path / "seed"), image, name)
    res = run_module(
        "vsphere_import",
        conn_vars(lab, bundle=bundle.dir, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"}),
    )
    assert res.get("changed"), res
    # vsphere_import turns changed block tracking on; these tests start from a VM
    # without it, and turn it on (or not) themselves.
    vm = find_vm(vsphere_si, name)
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    yield name
    destroy(vsphere_si, name)


def same_bytes(a, b):
    proc = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b], capture_output=True, text=True)
    return proc.returncode == 0


def guest_write(path, offset, data):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _has_snapshot(vm):
    """Whether vcsim reports any snapshot (read through the PropertyCollector)."""
    pc = vim.PropertyCollector("propertyCollector", vm._stub)
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot"])],
    )
    return any(item.propSet for item in pc.RetrieveContents([spec]) or [])


def test_cold_export(lab, vsphere_si, run_module, tmp_path, source_vm):
    flat = flat_path(lab, source_vm)
    bdir = str(tmp_path / "bundle")
    args = conn_vars(lab, vm=source_vm, bundle=bdir)
    res = run_module("vsphere_export", args, check=True)
    assert res["changed"] and not os.path.exists(bdir), res
    # What it would write, for a checked convert: each disk copied into raw, its capacity.
    (planned,) = res["planned"]["disks"]
    assert planned["method"] == "copy" and planned["format"] == "raw" and planned["capacity"] > 0, planned
    assert res["planned"]["source"]["platform"] == "vsphere" and res["planned"]["sync"][-1]["chain"] is None

    res = run_module("vsphere_export", args)
    assert not res.get("failed"), res
    assert res["mode"] == "cold" and res["kind"] == "full" and res["cbt"] is False
    assert res["bytes_read"] == os.path.getsize(flat)
    bundle = Bundle.load(bdir)
    assert bundle.complete and bundle.manifest["source"]["platform"] == "vsphere"
    assert same_bytes(flat, bundle.disk_path("disk0"))
    spec = bundle.manifest["spec"]
    assert spec["cpu"]["cores"] == 2 and spec["memory_mib"] == 256
    assert spec["nics"][0]["mac"] == "52:54:00:aa:bb:01" and spec["nics"][0]["network"] == "VM Network"
    # Zero blocks are not written: the bundle's raw file is sparse.
    st = os.stat(bundle.disk_path("disk0"))
    assert st.st_blocks * 512 <= os.path.getsize(flat)

    # Nothing changed: a re-run reads, compares digests and writes nothing.
    res = run_module("vsphere_export", args)
    assert res["changed"] is False and res["bytes_written"] == 0, res


def test_warm_with_cbt_reads_only_changes(lab, vsphere_si, run_module, tmp_path, source_vm):
    flat = flat_path(lab, source_vm)
    vm = find_vm(vsphere_si, source_vm)
    WaitForTask(vm.PowerOnVM_Task())
    bdir = str(tmp_path / "bundle")
    args = conn_vars(lab, vm=source_vm, bundle=bdir)

    res = run_module("vsphere_export", dict(args, enable_cbt=True))
    assert not res.get("failed"), res
    assert res["mode"] == "warm" and res["cbt"] and res["kind"] == "full"
    assert "stun_cycle" in res and vm.config.changeTrackingEnabled
    # The first sync reads the allocated areas ("*"), not the whole disk.
    assert res["bytes_read"] <= os.path.getsize(flat)
    bundle = Bundle.load(bdir)
    change1 = bundle.disk("disk0")["checkpoint"]["change_id"]
    assert change1 and same_bytes(flat, bundle.disk_path("disk0"))
    assert not _has_snapshot(vm)  # the snapshot was removed

    # The guest writes 3 small pieces; the incremental reads about that much.
    pieces = [(3 * MIB + 100, os.urandom(5000)), (17 * MIB, os.urandom(70000)), (30 * MIB + 7, b"v2v")]
    for off, data in pieces:
        guest_write(flat, off, data)
    res = run_module("vsphere_export", args)
    assert res["kind"] == "incremental" and res["cbt"], res
    written = sum(len(d) for _o, d in pieces)
    # CBT granularity is 64 KiB in the lab model: 1 + 2 + 1 blocks.
    assert written <= res["bytes_read"] <= 4 * 64 * 1024, res
    bundle = Bundle.load(bdir)
    assert bundle.disk("disk0")["checkpoint"]["change_id"] != change1
    assert same_bytes(flat, bundle.disk_path("disk0"))
    assert bundle.manifest["sync"][-1]["method"] == "cbt"

    # Nothing new: nothing read, nothing changed.
    res = run_module("vsphere_export", args)
    assert res["changed"] is False and res["bytes_read"] == 0, res

    # Cutover: power off, final sync.
    WaitForTask(vm.PowerOffVM_Task())
    guest_write(flat, 9 * MIB, b"last write before shutdown")
    res = run_module("vsphere_export", args)
    assert res["mode"] == "cold" and res["cbt"] and 0 < res["bytes_read"] <= 64 * 1024, res
    assert same_bytes(flat, Bundle.load(bdir).disk_path("disk0"))
    assert not _has_snapshot(vm)


def test_without_cbt_hash_diff(lab, vsphere_si, run_module, tmp_path, source_vm):
    flat = flat_path(lab, source_vm)
    vm = find_vm(vsphere_si, source_vm)
    WaitForTask(vm.PowerOnVM_Task())
    args = conn_vars(lab, vm=source_vm, bundle=str(tmp_path / "bundle"), use_cbt=False)
    res = run_module("vsphere_export", args)
    assert res["mode"] == "warm" and res["cbt"] is False, res
    guest_write(flat, 12 * MIB + 5, b"changed")
    res = run_module("vsphere_export", args)
    assert res["kind"] == "incremental" and res["changed"], res
    assert res["bytes_written"] == 64 * 1024  # one 64 KiB digest block changed (blocks.auto_block_size)
    assert res["bytes_read"] >= os.path.getsize(flat)  # hash-diff reads everything
    assert same_bytes(flat, Bundle.load(str(tmp_path / "bundle")).disk_path("disk0"))
    assert not _has_snapshot(vm)


def test_failed_export_removes_its_snapshot(lab, vsphere_si, run_module, tmp_path, source_vm, reliability):
    reliability(
        "vsphere",
        "the source VM's flat disk file gone (the read fails mid-export)",
        "export fails: 'has no flat extent'",
        "the export's snapshot removed; no bundle left",
    )
    vm = find_vm(vsphere_si, source_vm)
    WaitForTask(vm.PowerOnVM_Task())
    os.unlink(flat_path(lab, source_vm))  # the disk's data is gone: the read fails
    res = run_module("vsphere_export", conn_vars(lab, vm=source_vm, bundle=str(tmp_path / "bundle")))
    assert res.get("failed") and "has no flat extent" in res["msg"], res
    assert not _has_snapshot(vm)
    # A first export that failed, with its snapshot removed, leaves no bundle behind.
    assert not os.path.exists(str(tmp_path / "bundle"))


def test_bad_input(lab, run_module, tmp_path, source_vm, reliability):
    reliability(
        "vsphere", "export of a VM vCenter does not have", "\"VM 'no-such-vm' not found\"", "fails (state not checked)"
    )
    reliability(
        "vsphere",
        "wrong vSphere password (export)",
        "'vSphere login failed for user ...'",
        "fails (state not checked)",
    )
    res = run_module("vsphere_export", conn_vars(lab, vm="no-such-vm", bundle=str(tmp_path / "b")))
    assert res.get("failed") and "VM 'no-such-vm' not found" in res["msg"], res
    res = run_module("vsphere_export", conn_vars(lab, vm=source_vm, bundle=str(tmp_path / "b"), password="nope"))
    assert res.get("failed") and "vSphere login failed for user" in res["msg"], res
