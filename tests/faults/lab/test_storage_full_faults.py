"""Target storage full (issue 14) on vSphere and Hyper-V: the target's storage is a small
tmpfs (KVM's pools: test_kvm_faults.py::test_pool_fills_up_mid_copy, and
tests/integration/test_kvm_bad_input.py::test_pool_full).

- vSphere: a private vcsim (test_vsphere_faults.PrivateVcsim: the lab's binary on a free
  port) gets a datastore on a 16 MiB tmpfs (HostDatastoreSystem.CreateLocalDatastore;
  vcsim reports its capacity and free space from statfs).
- Hyper-V: the share of this module's own simulator (`hv`) is covered by a 16 MiB tmpfs;
  the conversion host sees the host's volume through that mount, so statvfs there is the
  free space the host reports.

In both, a bundle whose data needs more than the free space is refused up front with
nothing made; a bundle whose disk is stored compressed (small on disk, so the check passes,
32 MiB once written) fills the storage mid-copy: the import fails naming the full storage
and the fix, and leaves no VM and no file. A re-run onto storage with room completes, the
target disk equal to the source by qemu-img compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid

from pyVim.connect import Disconnect
from pyVmomi import vim
from test_hyperv_migrate import SWITCH, notes_provenance, remove_hyperv_vm, vms
from test_vsphere_faults import PrivateVcsim
from test_vsphere_import import backing_flat_path, conn_vars, destroy, find_vm, make_bundle

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle

MIB = 1024 * 1024
SMALL_MIB = 16


@contextlib.contextmanager
def tmpfs(path, size_mib):
    """A tmpfs of ``size_mib`` MiB mounted on ``path`` (made if missing); unmounted after."""
    made = not os.path.exists(path)
    if made:
        os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % size_mib, "tmpfs", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False)
        if made:
            os.rmdir(path)


def random_raw(path, mib):
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(MIB))
    return str(path)


def compressed_qcow2(path, mib):
    """``mib`` MiB of one non-zero byte, stored compressed: tiny on disk, all data once written."""
    raw = str(path) + ".raw"
    with open(raw, "wb") as fh:
        fh.write(b"\xa7" * (mib * MIB))
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw, str(path)], check=True)
    os.unlink(raw)
    return str(path)


def bundle_of(directory, image, name, fmt, network="lab-net"):
    """A complete bundle of ``image``; its record says how much the file holds (allocated),
    as an export writes it."""
    bundle = make_bundle(directory, image, name, fmt=fmt, network=network)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", fmt, image],
                                     check=True, capture_output=True, text=True).stdout)  # fmt: skip
    record = bundle.disk("disk0")
    record["allocated"] = info["actual-size"]
    bundle.set_disk(record)
    bundle.save()
    return Bundle.load(bundle.dir)


def same(a, fa, b, fb):
    return subprocess.run(["qemu-img", "compare", "-U", "-f", fa, "-F", fb, a, b], capture_output=True).returncode == 0


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


# --- vSphere: a datastore on a small tmpfs ------------------------------------------------


def test_vsphere_datastore_full(lab, run_module, tmp_path, reliability):
    reliability(
        "vsphere",
        "datastore smaller than the bundle's disk data (16 MiB tmpfs, 32 MiB disk)",
        "'datastore D has N bytes free, the disks need M' and the fix (option datastore, or storage_map)",
        "refused before anything is made: no VM, no file in the datastore",
    )
    reliability(
        "vsphere",
        "datastore fills up mid-upload (compressed bundle disk passes the free-space check)",
        "'upload of disk ... answered HTTP 415 ...: datastore D is full (N free, M still to write)' and the fix",
        "no VM, the datastore empty again; a re-run onto a datastore with room completes, flat file equals "
        "the source by qemu-img compare",
    )
    tag = uuid.uuid4().hex[:6]
    name = "lab-full-%s" % tag
    ds_name = "lab-full-ds-%s" % tag
    root = tmp_path / "vcsim"
    root.mkdir()
    vc = PrivateVcsim(lab, root)
    si = None
    try:
        with tmpfs("/var/lib/vmigrate-lab/lab-full-ds-%s" % tag, SMALL_MIB) as ds_dir:
            si = vc.si()
            host = si.content.viewManager.CreateContainerView(si.content.rootFolder, [vim.HostSystem], True).view[0]
            host.configManager.datastoreSystem.CreateLocalDatastore(name=ds_name, path=ds_dir)
            free = free_bytes(ds_dir)

            def import_onto(bundle, datastore):
                args = conn_vars(vc.facts, bundle=bundle.dir, datastore=datastore)
                return run_module("vsphere_import", dict(args, network_map={"lab-net": "VM Network"}))

            # 1. Refused up front: 32 MiB of data for a 16 MiB datastore.
            big = bundle_of(str(tmp_path / "big"), random_raw(tmp_path / "big.raw", 32), name, "raw")
            res = import_onto(big, ds_name)
            assert res.get("failed") and res.get("datastore") == ds_name, res
            msg = res["msg"]
            assert "datastore %s has %d bytes free, the disks need %d" % (ds_name, free, 32 * MIB) in msg, msg
            assert (
                "Fix: free space on %s, or import onto another datastore (option datastore, or storage_map)" % (ds_name)
                in msg
            ), msg
            assert find_vm(si, name) is None and os.listdir(ds_dir) == [] and free_bytes(ds_dir) == free

            # 2. Full mid-upload: the compressed disk passes the check, then writes 32 MiB.
            source = compressed_qcow2(tmp_path / "packed.qcow2", 32)
            packed = bundle_of(str(tmp_path / "packed"), source, name, "qcow2")
            assert packed.disk("disk0")["allocated"] < free
            res = import_onto(packed, ds_name)
            assert res.get("failed") and res.get("error_kind") == "platform", res
            msg = res["msg"]
            assert "upload of disk [%s] %s/%s.vmdk" % (ds_name, name, name) in msg, msg
            assert "datastore %s is full (" % ds_name in msg and "32.0 MiB to write" in msg, msg
            assert "Fix: free space on %s, or import onto another datastore" % ds_name in msg, msg
            assert "Traceback" not in json.dumps(res)
            assert find_vm(si, name) is None
            assert os.listdir(ds_dir) == [] and free_bytes(ds_dir) == free

        # 3. The same import onto a datastore with room completes.
        res = import_onto(packed, lab["vcsim"]["datastore"])
        assert res.get("changed") and not res.get("failed"), res
        vm = find_vm(si, name)
        assert same(backing_flat_path(vc.facts, vm), "raw", source, "qcow2")
        values = {o.key: o.value for o in vm.config.extraConfig}
        assert json.loads(values["vmigrate.provenance"])["state"] == "complete"
    finally:
        if si is not None:
            destroy(si, name)
            Disconnect(si)
        vc.stop()


# --- Hyper-V: the share on a small tmpfs ----------------------------------------------------


def test_hyperv_share_full(lab, hv, run_module, tmp_path, reliability):
    reliability(
        "hyperv",
        "share volume smaller than the bundle's disk data (16 MiB tmpfs, 32 MiB disk)",
        "'the share S (Hyper-V's C:\\VMs) has N free, the disks need up to M' and the fix",
        "refused before anything is written: no VM, no file in the share",
    )
    reliability(
        "hyperv",
        "share volume fills up mid-copy (compressed bundle disk passes the free-space check)",
        "'cannot convert ... No space left on device: the share S (Hyper-V's C:\\VMs) is full' and the fix",
        "no VM, no partial VHDX, the space given back; a re-run with room completes, VHDX equals the source "
        "by qemu-img compare",
    )
    name = "lab-full-%s" % uuid.uuid4().hex[:6]
    share = hv["share"]
    windows = hv["conn"]["share_windows"]
    args = dict(hv["conn"], name=name)
    others = [vm["name"] for vm in vms(hv)]
    try:
        with tmpfs(share, SMALL_MIB):
            free = free_bytes(share)
            # 1. Refused up front.
            big = bundle_of(str(tmp_path / "big"), random_raw(tmp_path / "big.raw", 32), name, "raw", SWITCH)
            res = run_module("hyperv_import", dict(args, bundle=big.dir))
            assert res.get("failed") and res.get("error_kind") == "input", res
            msg = res["msg"]
            assert (
                "the share %s (Hyper-V's %s) has 16.0 MiB free, the disks need up to 32.0 MiB"
                % (
                    share,
                    windows,
                )
                in msg
            ), msg
            assert "Fix: free space on the volume that holds %s, or give share and share_windows" % windows in msg
            assert [vm["name"] for vm in vms(hv)] == others and os.listdir(share) == []

            # 2. Full mid-copy.
            source = compressed_qcow2(tmp_path / "packed.qcow2", 32)
            packed = bundle_of(str(tmp_path / "packed"), source, name, "qcow2", SWITCH)
            res = run_module("hyperv_import", dict(args, bundle=packed.dir))
            assert res.get("failed") and res.get("error_kind") == "disk", res
            msg = res["msg"]
            assert "No space left on device: the share %s (Hyper-V's %s) is full" % (share, windows) in msg, msg
            assert "the files this import wrote were removed and no VM was made" in msg, msg
            assert "Traceback" not in json.dumps(res)
            assert [vm["name"] for vm in vms(hv)] == others
            assert os.listdir(share) == [] and free_bytes(share) == free

        # 3. With room (the tmpfs gone, the share is the roomy directory again).
        res = run_module("hyperv_import", dict(args, bundle=packed.dir))
        assert not res.get("failed") and res["action"] == "create", res
        target = os.path.join(share, "%s-disk0.vhdx" % name)
        assert same(target, "vhdx", source, "qcow2")
        (vm,) = vms(hv, name)
        assert notes_provenance(vm["notes"])["state"] == "complete", vm["notes"]
    finally:
        remove_hyperv_vm(hv, name)
        for f in os.listdir(share):
            if f.startswith(name):
                os.unlink(os.path.join(share, f))
