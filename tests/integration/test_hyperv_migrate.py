"""Hyper-V <-> KVM through the lab: a Hyper-V simulator of this test's own (free ports, state
and share under tmp, HTTPS verified with the lab CA) and the shared libvirt.

- Hyper-V -> KVM, cold: hyperv_export, convert, kvm_import; the KVM volume equals the source
  VHDX (qemu-img compare), the target boots the lab guest, re-runs change nothing, check mode
  makes nothing.
- KVM -> Hyper-V: kvm_export, convert, hyperv_import; the VHDX in the share equals the source
  disk, the VM in the simulator's state file has the spec's generation, CPUs, memory, drive and
  adapter, its Notes carry the provenance; hyperv_verify reads the VHDX back and boots it
  (heartbeat); re-runs change nothing.
- A Hyper-V target brought up to a later sync by a delta, rewritten by a new chain, replaced.
- Hyper-V -> vSphere -> Hyper-V through vcsim, bytes compared at each end.
- Hyper-V -> KVM warm: a full copy from a temporary checkpoint's parent while the VM runs,
  incrementals of only the ranges RCT reports (computed by the simulator from what really
  changed), the cutover, the target booting; RCT lost -> digests, said; a failed warm export
  leaves no checkpoint and no new reference point.
- Bad input, each a clear error that leaves nothing behind.
- playbooks/migrate.yml on a plan with a Hyper-V target; playbooks/kvm_to_hyperv.yml (the
  demo) on this module's simulator through a facts file of its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET

import pytest
from test_kvm_migrate import domain_type, make_source, undefine, volumes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv import simulator  # noqa: E402
from hyperv.host import HyperVHost  # noqa: E402

SWITCH = "lab-switch"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def hv(lab, tmp_path_factory):
    """This module's own simulator: {conn (module args), host, share, state}."""
    base = tmp_path_factory.mktemp("hyperv")
    state, share = str(base / "state"), str(base / "share")
    ca = lab["vcsim"]["ca_path"]
    facts = simulator.up(
        state, share, ca, os.path.join(os.path.dirname(ca), "ca.key"), simulator.free_port(), simulator.free_port()
    )
    host = HyperVHost(state)
    with host._locked():
        st = host.load()
        st["switches"] = [SWITCH]  # Connect-VMNetworkAdapter refuses any other switch
        host.save(st)
    conn = {
        "hostname": "127.0.0.1",
        "port": facts["https_port"],
        "scheme": "https",
        "ca_path": ca,
        "username": facts["username"],
        "password": facts["password"],
        "share": share,
        "share_windows": facts["share_windows"],
    }
    try:
        yield {"conn": conn, "host": host, "share": share, "state": state}
    finally:
        simulator.down(state)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vms(hv, name=None):
    return [vm for vm in hv["host"].load()["vms"] if name is None or vm["name"] == name]


def share_files(hv):
    return sorted(os.listdir(hv["share"]))


def notes_provenance(notes):
    line = [x for x in notes.splitlines() if x.startswith("vmigrate.v2v provenance: ")][-1]
    return json.loads(line.split(": ", 1)[1])


def make_hyperv_source(lab, hv, name, generation=1):
    """A Hyper-V VM whose one disk is the lab guest as a VHDX in the share."""
    fname = "%s-src.vhdx" % name
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "vhdx", lab["guest_image"], os.path.join(hv["share"], fname)],
        check=True,
    )
    controller = "IDE" if generation == 1 else "SCSI"
    hv["host"].new_vm(
        name, generation=generation, cpus=2, memory_mib=256, secure_boot=False,
        disks=[{"size": 32 * MIB, "controller": controller, "file": fname}],
        nics=[{"switch": SWITCH, "mac": "00155D00AB01"}],
    )  # fmt: skip
    return os.path.join(hv["share"], fname)


def remove_hyperv_vm(hv, name):
    with hv["host"]._locked():
        st = hv["host"].load()
        st["vms"] = [vm for vm in st["vms"] if vm["name"] != name]
        hv["host"].save(st)


def test_hyperv_to_kvm_cold(lab, hv, libvirt_conn, run_module, tmp_path):
    tag = uuid.uuid4().hex[:6]
    src, dst = "lab-hv2-src-" + tag, "lab-hv2-dst-" + tag
    vhdx = make_hyperv_source(lab, hv, src)
    before = sha256(vhdx)
    export = dict(hv["conn"], vm=src, bundle=str(tmp_path / "export"))
    convert = {"src": export["bundle"], "dest": str(tmp_path / "kvm"), "target_platform": "kvm"}
    convert["network_map"] = {SWITCH: lab["network"]}
    kvm = {"uri": lab["libvirt_uri"]}
    kvm_import = dict(kvm, bundle=convert["dest"], name=dst, pool=lab["pools"]["target"])
    kvm_import.update(domain_type=domain_type(lab), cpu_mode="default")
    try:
        # Check mode: no bundle.
        res = run_module("hyperv_export", export, check=True)
        assert res.get("changed") and not res.get("failed"), res
        assert not os.path.exists(export["bundle"])

        res = run_module("hyperv_export", export)
        assert res.get("changed") and res["mode"] == "cold" and res["kind"] == "full", res
        assert not run_module("convert", convert).get("failed")
        res = run_module("kvm_import", kvm_import)
        assert res.get("changed"), res

        dom = libvirt_conn.lookupByName(dst)
        vol = "%s-disk0.qcow2" % dst
        path = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(vol).path()
        cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vhdx", path, vhdx], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        assert dom.info()[3] == 2 and dom.info()[1] == 256 * 1024  # vCPUs, KiB

        # Re-runs change nothing; the source VHDX was only read.
        again = run_module("hyperv_export", export)
        assert again["changed"] is False and again["bytes_read"] == 0, again
        assert run_module("kvm_import", kvm_import)["changed"] is False
        assert sha256(vhdx) == before

        res = run_module(
            "kvm_verify",
            dict(kvm, bundle=convert["dest"], name=dst, boot_check=True, boot_marker="VMIGRATE-GUEST-READY",
                 boot_timeout=180),
        )  # fmt: skip
        assert not res.get("failed") and res["ok"], res
    finally:
        undefine(libvirt_conn, dst)
        for v in volumes(libvirt_conn, lab["pools"]["target"], dst):
            libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(v).delete(0)
        remove_hyperv_vm(hv, src)


@pytest.fixture
def kvm_source(lab, libvirt_conn):
    tag = uuid.uuid4().hex[:6]
    names = {
        "tag": tag,
        "src": "lab-hv2-k-%s" % tag,
        "src_disk": os.path.join(lab["pool_paths"][lab["pools"]["source"]], "lab-hv2-k-%s.qcow2" % tag),
    }
    dom = make_source(lab, libvirt_conn, names)
    yield dict(names, uuid=dom.UUIDString())
    undefine(libvirt_conn, names["src"])
    if os.path.exists(names["src_disk"]):
        os.unlink(names["src_disk"])


def test_kvm_to_hyperv(lab, hv, kvm_source, run_module, tmp_path):
    dst = "lab-hv2-to-" + kvm_source["tag"]
    export = {"uri": lab["libvirt_uri"], "vm": kvm_source["src"], "bundle": str(tmp_path / "export")}
    convert = {"src": export["bundle"], "dest": str(tmp_path / "hyperv"), "target_platform": "hyperv"}
    convert["network_map"] = {lab["network"]: SWITCH}
    imp = dict(hv["conn"], bundle=convert["dest"], name=dst)
    files_before = share_files(hv)
    try:
        assert run_module("kvm_export", export).get("changed")
        assert not run_module("convert", convert).get("failed")

        # Check mode: no VM, no file.
        res = run_module("hyperv_import", imp, check=True)
        assert res.get("changed") and res["action"] == "create" and not res.get("failed"), res
        assert vms(hv, dst) == [] and share_files(hv) == files_before

        res = run_module("hyperv_import", imp)
        assert res.get("changed") and res["action"] == "create", res
        vhdx = os.path.join(hv["share"], "%s-disk0.vhdx" % dst)
        assert share_files(hv) == sorted(files_before + [os.path.basename(vhdx)])
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", vhdx], capture_output=True).stdout)
        assert info["format"] == "vhdx"
        cmp = subprocess.run(
            ["qemu-img", "compare", "-f", "vhdx", "-F", "qcow2", vhdx, kvm_source["src_disk"]], capture_output=True
        )
        assert cmp.returncode == 0, cmp.stdout

        # The VM as the simulator holds it.
        (vm,) = vms(hv, dst)
        assert vm["generation"] == 1 and vm["cpus"] == 1 and vm["memory_startup"] == 256 * MIB
        assert not vm["dynamic_memory"] and vm["state"] == "Off"
        assert vm["drives"] == [
            {"controller_type": "IDE", "controller_number": 0, "controller_location": 0,
             "path": "C:\\VMs\\%s-disk0.vhdx" % dst}
        ]  # fmt: skip
        assert [(n["switch"], n["mac"]) for n in vm["nics"]] == [(SWITCH, "525400766D02")]
        prov = notes_provenance(vm["notes"])
        assert prov["source_id"] == kvm_source["uuid"] and prov["source_platform"] == "kvm"
        assert prov["state"] == "complete" and prov["sync_index"] == 1

        # A re-run changes nothing, in the share or the state.
        mtime = os.stat(vhdx).st_mtime_ns
        res = run_module("hyperv_import", imp)
        assert res["changed"] is False and res["action"] == "none", res
        assert os.stat(vhdx).st_mtime_ns == mtime and vms(hv, dst) == [vm]

        # Verify reads the VHDX back, then boots it: the heartbeat answers.
        res = run_module("hyperv_verify", dict(hv["conn"], bundle=convert["dest"], vm=dst, boot_check=True))
        assert not res.get("failed") and res["ok"] and res["digests"] == "compared", res
        assert res["boot"]["method"] == "heartbeat" and res["boot"]["heartbeat"] == "OK", res
        assert vms(hv, dst)[0]["state"] == "Running"
        assert notes_provenance(vms(hv, dst)[0]["notes"])["verified"] == prov["fingerprint"]

        res = run_module("hyperv_power", dict(hv["conn"], vm=dst, state="off"))
        assert res.get("changed") and res["state_after"] == "off", res
        assert vms(hv, dst)[0]["state"] == "Off"
    finally:
        remove_hyperv_vm(hv, dst)
        for f in set(share_files(hv)) - set(files_before):
            os.unlink(os.path.join(hv["share"], f))


def test_bad_input_is_clear_and_leaves_nothing(lab, hv, run_module, tmp_path, reliability):
    for fault, sees, left in (
        ("wrong Hyper-V password (export)", "'refused the credentials'", "fails (state not checked)"),
        (
            "export of a VM the host does not have",
            "\"VM 'lab-hv2-nope' not found\", listing the VMs that exist",
            "fails (state not checked)",
        ),
        ("export share not mounted", "the fix 'mount -t cifs ...'", "no bundle"),
        ("cold export of a running VM", "refused, naming the VM and that it must be shut down", "fails"),
        (
            "export of a VM with a checkpoint (differencing disk)",
            "refused: 'differencing disk' and the fix 'Remove-VMCheckpoint'",
            "no bundle; the disk not read",
        ),
        (
            "import onto a VM name taken by another VM",
            "refused: 'already exists' and the fix 'replace=true'",
            "host state and share files unchanged",
        ),
        (
            "network_map names a switch the host does not have (a cmdlet fails mid-import)",
            "import fails naming 'no-such-switch'",
            "no VM, no file left in the share",
        ),
        (
            "read-only share for the import",
            "refused: 'not writable' and the fix 'mount -t cifs ...'",
            "refused before anything is made: no VM, share unchanged",
        ),
    ):
        reliability("hyperv", fault, sees, left)
    tag = uuid.uuid4().hex[:6]
    src = "lab-hv2-bad-" + tag
    make_hyperv_source(lab, hv, src)
    export = dict(hv["conn"], vm=src, bundle=str(tmp_path / "export"))
    try:
        res = run_module("hyperv_export", dict(export, password="wrong"))
        assert res["failed"] and "refused the credentials" in res["msg"], res

        res = run_module("hyperv_export", dict(export, vm="lab-hv2-nope"))
        assert res["failed"] and "VM 'lab-hv2-nope' not found" in res["msg"] and src in res["msg"], res

        res = run_module("hyperv_export", dict(export, share=str(tmp_path / "not-mounted")))
        assert res["failed"] and "mount -t cifs" in res["msg"], res
        assert not os.path.exists(export["bundle"])

        # Running: a cold export is refused (a warm one is test_hyperv_to_kvm_warm's).
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nStart-VM -Name '%s'" % src)
        res = run_module("hyperv_export", dict(export, mode="cold"))
        assert res["failed"] and "shut" in res["msg"] and src in res["msg"], res
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nStop-VM -Name '%s' -TurnOff" % src)

        # A checkpoint makes the disk a differencing disk: refused, not half-read.
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nCheckpoint-VM -Name '%s' -SnapshotName 'c1'" % src)
        res = run_module("hyperv_export", export)
        assert res["failed"] and "differencing disk" in res["msg"] and "Remove-VMCheckpoint" in res["msg"], res
        assert not os.path.exists(export["bundle"])
        out = hv["host"].run_powershell(
            "$ErrorActionPreference = 'Stop'\nRemove-VMCheckpoint -VMName '%s' -Name 'c1'" % src
        )
        assert out[2] == 0, out

        # A bundle of this VM imported under the name of another VM: refused, nothing changed.
        assert run_module("hyperv_export", export).get("changed")
        convert = {"src": export["bundle"], "dest": str(tmp_path / "hv"), "target_platform": "hyperv"}
        assert not run_module("convert", convert).get("failed")
        other = "lab-hv2-other-" + tag
        hv["host"].new_vm(other, generation=1, disks=[{"size": 8 * MIB, "controller": "IDE"}])
        state_before, files_before = hv["host"].load(), share_files(hv)
        imp = dict(hv["conn"], bundle=convert["dest"], name=other)
        res = run_module("hyperv_import", imp)
        assert res["failed"] and "already exists" in res["msg"] and "replace=true" in res["msg"], res
        assert hv["host"].load() == state_before and share_files(hv) == files_before

        # A cmdlet failing mid-import (a switch the host does not have): no VM, no file left.
        res = run_module("hyperv_import", dict(imp, name="lab-hv2-mid-" + tag, network_map={SWITCH: "no-such-switch"}))
        assert res["failed"] and "no-such-switch" in res["msg"], res
        assert vms(hv, "lab-hv2-mid-" + tag) == [] and share_files(hv) == files_before

        # A read-only share (a read-only bind mount of it): refused before anything is made.
        ro = str(tmp_path / "ro-share")
        os.makedirs(ro)
        subprocess.run(["mount", "--bind", "-o", "ro", hv["share"], ro], check=True)
        try:
            res = run_module("hyperv_import", dict(imp, name="lab-hv2-ro-" + tag, share=ro))
            assert res["failed"] and "not writable" in res["msg"] and "mount -t cifs" in res["msg"], res
            assert vms(hv, "lab-hv2-ro-" + tag) == [] and share_files(hv) == files_before
        finally:
            subprocess.run(["umount", ro], check=True)
    finally:
        for name in (src, "lab-hv2-other-" + tag):
            remove_hyperv_vm(hv, name)


def test_hyperv_target_takes_deltas_rewrites_and_replace(lab, hv, run_module, tmp_path):
    """A later sync reaches an existing Hyper-V target as a delta written into its VHDX; a new
    chain with other content rewrites the disk; replace makes the VM again."""
    tag = uuid.uuid4().hex[:6]
    src, dst = "lab-hv2-d-" + tag, "lab-hv2-dt-" + tag
    vhdx = make_hyperv_source(lab, hv, src)
    export = dict(hv["conn"], vm=src, bundle=str(tmp_path / "export"))
    convert = {"src": export["bundle"], "dest": str(tmp_path / "hv"), "target_platform": "hyperv"}
    imp = dict(hv["conn"], bundle=convert["dest"], name=dst)
    target = os.path.join(hv["share"], "%s-disk0.vhdx" % dst)

    def guest_write(offset, byte):
        subprocess.run(
            ["qemu-io", "-f", "vhdx", "-c", "write -P %d %d 65536" % (byte, offset), vhdx],
            check=True,
            capture_output=True,
        )

    def same():
        return subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "vhdx", target, vhdx]).returncode == 0

    try:
        assert run_module("hyperv_export", export).get("changed")
        assert not run_module("convert", convert).get("failed")
        assert run_module("hyperv_import", imp)["action"] == "create"
        (vm,) = vms(hv, dst)

        # The source VM (off) was changed: an incremental, applied as a delta in place.
        guest_write(1 << 20, 0x33)
        res = run_module("hyperv_export", export)
        assert res["kind"] == "incremental" and res["disks"][0]["method"] == "delta", res
        assert not run_module("convert", convert).get("failed")
        res = run_module("hyperv_import", imp)
        assert res["action"] == "deltas" and res["deltas_applied"], res
        assert same()
        assert vms(hv, dst)[0]["id"] == vm["id"]  # the same VM, updated
        assert notes_provenance(vms(hv, dst)[0]["notes"])["sync_index"] == 2
        assert run_module("hyperv_import", imp)["changed"] is False

        # A new chain (full=true) with other content: the disk is rewritten whole.
        guest_write(2 << 20, 0x44)
        assert run_module("hyperv_export", dict(export, full=True))["kind"] == "full"
        assert not run_module("convert", convert).get("failed")
        res = run_module("hyperv_import", imp)
        assert res["action"] == "rewrite" and res["rewritten"] == ["disk0"], res
        assert same() and vms(hv, dst)[0]["id"] == vm["id"]
        assert notes_provenance(vms(hv, dst)[0]["notes"])["state"] == "complete"

        # replace: the VM is made again (a new Id), from the same bundle, its VHDX fixed this time.
        res = run_module("hyperv_import", dict(imp, replace=True, vhd_type="fixed"))
        assert res["action"] == "replace" and res["replaced"]["name"] == dst and res["vhd_type"] == "fixed", res
        (again,) = vms(hv, dst)
        assert again["id"] != vm["id"] and same()
        assert os.path.getsize(target) >= 32 * MIB  # every block allocated
        info = run_module("hyperv_vm_info", dict(hv["conn"], vms=[dst]))
        assert info["vms"][0]["disks"][0]["vhd_type"] == "Fixed", info
    finally:
        for name in (src, dst):
            remove_hyperv_vm(hv, name)
        for path in (target, vhdx):
            if os.path.exists(path):
                os.unlink(path)


def test_hyperv_to_vsphere_and_back(lab, hv, vsphere_si, run_module, tmp_path):
    """Hyper-V -> vSphere (vcsim's flat extent equals the source VHDX), then that vSphere VM
    -> Hyper-V (the new VHDX equals the flat extent)."""
    from test_vsphere_import import backing_flat_path, conn_vars, destroy, find_vm

    tag = uuid.uuid4().hex[:6]
    src, mid, dst = "lab-hv2-vs-" + tag, "v2v-hv2-vs-" + tag, "lab-hv2-back-" + tag
    vhdx = make_hyperv_source(lab, hv, src)
    vc = conn_vars(lab)
    try:
        export = dict(hv["conn"], vm=src, bundle=str(tmp_path / "export"))
        assert run_module("hyperv_export", export).get("changed")
        convert = {"src": export["bundle"], "dest": str(tmp_path / "vs"), "target_platform": "vsphere"}
        convert["network_map"] = {SWITCH: "VM Network"}
        assert not run_module("convert", convert).get("failed")
        vs_import = dict(vc, bundle=convert["dest"], name=mid, datastore=lab["vcsim"]["datastore"])
        res = run_module("vsphere_import", vs_import)
        assert res.get("changed"), res
        vm = find_vm(vsphere_si, mid)
        flat = backing_flat_path(lab, vm)
        cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vhdx", flat, vhdx], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        assert vm.config.hardware.numCPU == 2 and vm.config.hardware.memoryMB == 256
        assert run_module("vsphere_import", vs_import)["changed"] is False

        # Back: the vSphere VM (off) to Hyper-V.
        back = dict(vc, vm=mid, bundle=str(tmp_path / "export2"))
        assert run_module("vsphere_export", back).get("changed")
        convert2 = {"src": back["bundle"], "dest": str(tmp_path / "hv"), "target_platform": "hyperv"}
        convert2["network_map"] = {"VM Network": SWITCH}
        assert not run_module("convert", convert2).get("failed")
        res = run_module("hyperv_import", dict(hv["conn"], bundle=convert2["dest"], name=dst))
        assert res.get("changed") and res["action"] == "create", res
        target = os.path.join(hv["share"], "%s-disk0.vhdx" % dst)
        cmp = subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "raw", target, flat], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        (made,) = vms(hv, dst)
        assert made["cpus"] == 2 and made["memory_startup"] == 256 * MIB and made["generation"] == 1
        assert notes_provenance(made["notes"])["source_platform"] == "vsphere"
        res = run_module("hyperv_verify", dict(hv["conn"], bundle=convert2["dest"], vm=dst))
        assert not res.get("failed") and res["ok"], res
    finally:
        destroy(vsphere_si, mid)
        for name in (src, dst):
            remove_hyperv_vm(hv, name)
        target = os.path.join(hv["share"], "%s-disk0.vhdx" % dst)
        for path in (target, vhdx):
            if os.path.exists(path):
                os.unlink(path)


def reference_points(hv, vm_name):
    st = hv["host"].load()
    ids = {vm["id"] for vm in st["vms"] if vm["name"] == vm_name}
    return [rp["id"] for rp in st.get("reference_points", []) if rp["vm_id"] in ids]


def avhdx_files(hv):
    return [f for f in share_files(hv) if f.endswith(".avhdx")]


def test_hyperv_to_kvm_warm(lab, hv, libvirt_conn, run_module, tmp_path):
    tag = uuid.uuid4().hex[:6]
    src, dst = "lab-hv2-w-" + tag, "lab-hv2-wd-" + tag
    vhdx = make_hyperv_source(lab, hv, src)
    export = dict(hv["conn"], vm=src, bundle=str(tmp_path / "export"))
    convert = {"src": export["bundle"], "dest": str(tmp_path / "kvm"), "target_platform": "kvm"}
    convert["network_map"] = {SWITCH: lab["network"]}
    kvm = {"uri": lab["libvirt_uri"]}
    kvm_import = dict(kvm, bundle=convert["dest"], name=dst, pool=lab["pools"]["target"])
    kvm_import.update(domain_type=domain_type(lab), cpu_mode="default")

    def guest_write(offset, data):
        # The running guest writes its disk (no checkpoint is held between syncs).
        subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P %d %d %d" % (data, offset, 10000), vhdx],
                       check=True, capture_output=True)  # fmt: skip

    try:
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nStart-VM -Name '%s'" % src)

        # A failed warm export (the bundle's copy cannot be put in place) leaves nothing on the source.
        os.makedirs(os.path.join(export["bundle"], "disks", "disk0.raw"))
        res = run_module("hyperv_export", export)
        assert res["failed"] and "disk0.raw" in res["msg"], res
        assert vms(hv, src)[0]["checkpoints"] == [] and avhdx_files(hv) == [] and reference_points(hv, src) == []
        shutil.rmtree(export["bundle"], ignore_errors=True)

        res = run_module("hyperv_export", export)
        assert res["mode"] == "warm" and res["kind"] == "full", res
        assert res["checkpoint_removed"].startswith("vmigrate-sync-") and res["reference_point"], res
        assert vms(hv, src)[0]["checkpoints"] == [] and avhdx_files(hv) == []
        assert reference_points(hv, src) == [res["reference_point"]]
        assert not run_module("convert", convert).get("failed")
        assert run_module("kvm_import", kvm_import).get("changed")

        # The guest writes; the incremental reads only the 64 KiB block RCT reports.
        guest_write(128 * 1024, 0x61)
        res = run_module("hyperv_export", export)
        assert res["mode"] == "warm" and res["kind"] == "incremental" and res["fallback_reason"] is None, res
        assert 10000 <= res["bytes_read"] <= 64 * 1024 and res["disks"][0]["method"] == "delta", res
        assert reference_points(hv, src) == [res["reference_point"]]  # the older one is removed

        # Nothing changed: nothing recorded, and the reference point made for it is removed.
        again = run_module("hyperv_export", export)
        assert again["changed"] is False and again["bytes_read"] == 0, again
        assert reference_points(hv, src) == [res["reference_point"]]

        # Cutover: the VM is turned off, a last write, the final sync (cold, still by RCT).
        assert run_module("hyperv_power", dict(hv["conn"], vm=src, state="off")).get("changed")
        guest_write(512 * 1024 + 3, 0x62)
        res = run_module("hyperv_export", export)
        assert res["mode"] == "cold" and res["kind"] == "incremental" and res["bytes_read"] <= 2 * 64 * 1024, res
        assert res["fallback_reason"] is None, res

        # RCT lost (the disk changed outside Hyper-V): the digests say what changed, and the result says so.
        hv["host"].lose_rct(src)
        guest_write(640 * 1024, 0x63)
        res = run_module("hyperv_export", export)
        assert res["kind"] == "incremental" and "no longer known to Hyper-V" in res["fallback_reason"], res
        assert res["disks"][0]["method"] == "delta", res

        assert not run_module("convert", convert).get("failed")
        res = run_module("kvm_import", kvm_import)
        assert res["action"] == "deltas" and res["deltas_applied"], res
        vol = "%s-disk0.qcow2" % dst
        path = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(vol).path()
        cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "vhdx", path, vhdx], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        res = run_module(
            "kvm_verify",
            dict(kvm, bundle=convert["dest"], name=dst, boot_check=True, boot_marker="VMIGRATE-GUEST-READY",
                 boot_timeout=180),
        )  # fmt: skip
        assert not res.get("failed") and res["ok"], res
    finally:
        undefine(libvirt_conn, dst)
        for v in volumes(libvirt_conn, lab["pools"]["target"], dst):
            libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(v).delete(0)
        hv["host"].lose_rct(src)
        remove_hyperv_vm(hv, src)


def test_plan_migrates_kvm_vms_into_hyperv(lab, hv, libvirt_conn, run_playbook, tmp_path):
    """playbooks/migrate.yml on a plan whose target endpoint is Hyper-V (the roles call the
    hyperv_* modules through the step action); a re-run changes nothing."""
    from plan_lab import SourceDomains, play, target_of

    sources = SourceDomains(lab, libvirt_conn, "lab-planhv")
    try:
        name, disk = sources.make("one", mib=4)
        c = hv["conn"]
        plan = tmp_path / "hv.v2v.yml"
        plan.write_text(
            "plugin: vmigrate.v2v.plan\nversion: 1\n"
            "defaults: {work_dir: '%s'}\n"
            % (tmp_path / "work")
            + "endpoints:\n  lab-kvm: {platform: kvm, uri: '%s'}\n" % lab["libvirt_uri"]
            + "  lab-hv:\n    platform: hyperv\n"
            + "".join("    %s: %s\n" % (k, json.dumps(c[k])) for k in sorted(c))
            # Hyper-V writes every disk into the share; the plan still maps each source storage.
            + "storage_map: {'%s': share}\n" % lab["pool_paths"][lab["pools"]["source"]]
            + "waves:\n  - name: w0\n    source: lab-kvm\n    target: lab-hv\n    vms:\n"
            + "      - {name: %s, target_name: %s}\n" % (name, target_of(name))
        )
        first = play(run_playbook, str(plan), "migrate.yml")
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
        target = os.path.join(hv["share"], "%s-disk0.vhdx" % target_of(name))
        cmp = subprocess.run(["qemu-img", "compare", "-f", "vhdx", "-F", "qcow2", target, disk], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        (vm,) = vms(hv, target_of(name))
        assert notes_provenance(vm["notes"])["source_name"] == name and vm["memory_startup"] == 64 * MIB
        again = play(run_playbook, str(plan), "migrate.yml")
        assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]
    finally:
        sources.cleanup()
        for vm in vms(hv):
            if vm["name"].startswith("lab-planhv-t-" + sources.tag):
                remove_hyperv_vm(hv, vm["name"])
        for f in share_files(hv):
            if f.startswith("lab-planhv-t-" + sources.tag):
                os.unlink(os.path.join(hv["share"], f))


def test_demo_playbook_kvm_to_hyperv_and_back(lab, hv, libvirt_conn, run_playbook, tmp_path):
    """playbooks/kvm_to_hyperv.yml (part of make demo) on this module's simulator: a facts
    file like the lab's whose hyperv part is ours."""
    tag = uuid.uuid4().hex[:6]
    facts = dict(lab)
    c = hv["conn"]
    facts["hyperv"] = {
        "hostname": c["hostname"], "https_port": c["port"], "username": c["username"], "password": c["password"],
        "ca_path": c["ca_path"], "share_dir": c["share"], "share_windows": c["share_windows"],
    }  # fmt: skip
    facts_file = tmp_path / "lab.json"
    facts_file.write_text(json.dumps(facts))
    names = {
        "lab_facts_file": str(facts_file),
        "demo_src": "lab-hv2-demo-" + tag,
        "demo_src_uuid": str(uuid.uuid4()),
        "demo_hv": "lab-hv2-demohv-" + tag,
        "demo_back": "lab-hv2-demoback-" + tag,
        "demo_switch": SWITCH,
        "demo_work": str(tmp_path / "work"),
    }
    src_disk = os.path.join(lab["pool_paths"][lab["pools"]["source"]], names["demo_src"] + ".qcow2")
    playbook = os.path.join(ROOT, "playbooks", "kvm_to_hyperv.yml")
    try:
        first = run_playbook(playbook, names)
        assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
        back = libvirt_conn.lookupByName(names["demo_back"])
        path = ET.fromstring(back.XMLDesc(0)).find("./devices/disk/source").get("file")
        cmp = subprocess.run(["qemu-img", "compare", "-F", "qcow2", path, src_disk], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        assert vms(hv, names["demo_hv"])[0]["generation"] == 1
        again = run_playbook(playbook, names)
        assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]
    finally:
        for name in (names["demo_src"], names["demo_back"]):
            undefine(libvirt_conn, name)
        for v in volumes(libvirt_conn, lab["pools"]["target"], names["demo_back"]):
            libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(v).delete(0)
        if os.path.exists(src_disk):
            os.unlink(src_disk)
        remove_hyperv_vm(hv, names["demo_hv"])
        target = os.path.join(hv["share"], "%s-disk0.vhdx" % names["demo_hv"])
        if os.path.exists(target):
            os.unlink(target)
