"""vsphere_import / vsphere_verify / vsphere_vm_info against the lab's vcsim over verified TLS.

The bundle is built here from the lab guest image with the engine (Bundle, digest_disk);
the KVM -> vSphere path through kvm_export lives in test_vsphere_kvm.py.
Independent readers: the flat file in vcsim's datastore directory (qemu-img compare),
and pyvmomi for the VM's configuration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.parse
import uuid

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle

MAC = "52:54:00:aa:bb:01"


def make_bundle(directory, image, name, source_id=None, network="lab-net", firmware="bios", fmt="raw"):
    """A complete bundle whose disk is ``image`` referenced in place, digests computed here."""
    size = _disk.info(image, fmt)["virtual-size"]
    spec = _spec.new_spec(
        name=name,
        uuid=source_id or str(uuid.uuid4()),
        firmware={"type": firmware, "secure_boot": False},
        cpu={"sockets": 1, "cores": 2, "threads": 1},
        memory_mib=256,
        disks=[{"id": "disk0", "bus": "virtio", "capacity": size, "format": fmt, "source": {"path": image}}],
        nics=[{"mac": MAC, "network": network, "model": "virtio"}],
        guest_os={"family": "linux", "osinfo": "http://debian.org/debian/12"},
    )
    bundle = Bundle.create(directory, {"platform": "kvm", "id": spec["uuid"], "name": name}, spec)
    record = {"id": "disk0", "path": image, "format": fmt, "capacity": size}
    with _disk.open_guest(image, fmt) as reader:
        bundle.save_digests(record, _blocks.digest_disk(reader))
    bundle.set_disk(record)
    bundle.add_sync("full", checkpoint=None)
    bundle.mark_complete()
    return bundle


def conn_vars(lab, **extra):
    vc = lab["vcsim"]
    out = {
        "hostname": vc["hostname"],
        "port": vc["port"],
        "username": vc["username"],
        "password": vc["password"],
        "ca_path": vc["ca_path"],
        "datacenter": vc["datacenter"],
    }
    out.update(extra)
    return out


def find_vm(si, name):
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return next((vm for vm in view.view if vm.name == name), None)
    finally:
        view.Destroy()


def destroy(si, name):
    vm = find_vm(si, name)
    if vm is not None:
        if vm.runtime.powerState == "poweredOn":
            WaitForTask(vm.PowerOffVM_Task())
        WaitForTask(vm.Destroy_Task())


@pytest.fixture
def guest_copy(lab, tmp_path):
    path = tmp_path / "guest.raw"
    shutil.copyfile(lab["guest_image"], path)
    return str(path)


@pytest.fixture
def vm_name(vsphere_si):
    name = "v2v-imp-%s" % uuid.uuid4().hex[:8]
    yield name
    destroy(vsphere_si, name)


def flat_path(lab, name):
    return os.path.join(lab["vcsim"]["datastore_dir"], name, name + "-flat.vmdk")


def backing_flat_path(lab, vm):
    """The extent of the VM's first disk as vcsim reports its backing (an update swaps
    in new files), in the lab datastore's directory."""
    disk = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    path = disk.backing.fileName.split("] ", 1)[1]
    return os.path.join(lab["vcsim"]["datastore_dir"], re.sub(r"\.vmdk$", "-flat.vmdk", path))


def test_import_verify_and_rerun(lab, vsphere_si, run_module, tmp_path, guest_copy, vm_name, reliability):
    reliability(
        "vsphere",
        "one byte of the imported disk changed on the datastore, then verify",
        "verify fails: 'differs from the bundle in 1 of N ...', 'first at byte B'",
        "reported, nothing changed by verify",
    )
    bundle = make_bundle(str(tmp_path / "b"), guest_copy, vm_name, firmware="uefi")
    args = conn_vars(lab, bundle=bundle.dir, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"})

    res = run_module("vsphere_import", args, check=True)
    assert res["changed"] and res["action"] == "create", res
    assert find_vm(vsphere_si, vm_name) is None  # check mode made nothing

    res = run_module("vsphere_import", args)
    assert not res.get("failed"), res
    assert res["changed"] and res["action"] == "create"

    # Bytes: the flat extent vcsim stored equals the source image.
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", flat_path(lab, vm_name), guest_copy],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    # The descriptor (written by qemu-img) names that extent and opens as a vmdk.
    descriptor = os.path.join(lab["vcsim"]["datastore_dir"], vm_name, vm_name + ".vmdk")
    assert _disk.info(descriptor, "vmdk")["virtual-size"] == os.path.getsize(guest_copy)
    assert not os.path.exists(os.path.join(lab["vcsim"]["datastore_dir"], vm_name, "vmigrate.partial"))

    # Spec fields, read by pyvmomi.
    vm = find_vm(vsphere_si, vm_name)
    assert vm.config.hardware.numCPU == 2 and vm.config.hardware.numCoresPerSocket == 2
    assert vm.config.hardware.memoryMB == 256
    assert vm.config.firmware == "efi"
    nics = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert [n.macAddress for n in nics] == [MAC]
    assert isinstance(nics[0], vim.vm.device.VirtualVmxnet3)
    assert nics[0].backing.deviceName == "VM Network"
    disks = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    assert len(disks) == 1 and disks[0].capacityInBytes == os.path.getsize(guest_copy)
    controllers = {d.key: d for d in vm.config.hardware.device}
    assert isinstance(controllers[disks[0].controllerKey], vim.vm.device.ParaVirtualSCSIController)
    values = {o.key: o.value for o in vm.config.extraConfig}  # vcsim appends on reconfigure: the last wins
    prov = json.loads(values["vmigrate.provenance"])
    assert prov["source_id"] == bundle.manifest["source"]["id"]
    assert prov["fingerprint"] == steps.content_fingerprint(bundle.manifest)
    assert prov["chain"] == steps.chain_id(bundle.manifest) and prov["state"] == "complete"

    # A re-run with the same bundle changes nothing.
    res = run_module("vsphere_import", args)
    assert res["changed"] is False and res["action"] == "none", res

    # vm_info describes it (and changes nothing).
    res = run_module("vsphere_vm_info", conn_vars(lab, vms=[vm_name]))
    info = res["vms"][0]
    assert res["changed"] is False
    assert info["firmware"] == "efi" and info["provenance"]["source_id"] == prov["source_id"]
    assert info["nics"][0]["mac"] == MAC and info["nics"][0]["network"] == "VM Network"
    assert info["disks"][0]["file"] == "[%s] %s/%s.vmdk" % (lab["vcsim"]["datastore"], vm_name, vm_name)
    assert info["spec"]["cpu"] == {"sockets": 1, "cores": 2, "threads": 1}

    # verify reads the disk back and agrees, and powers the VM on.
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir, power_on=True))
    assert not res.get("failed"), res
    assert res["disks"][0]["mismatched"] == 0, res
    # Only the areas changed block tracking reports allocated are read (the guest image
    # is mostly zeros), in whole digest blocks.
    assert res["disks"][0]["allocation"].startswith("changed block tracking"), res
    assert 0 < res["bytes_read"] < os.path.getsize(guest_copy) / 2, res
    assert res["boot"]["power_state"] == "poweredOn"
    WaitForTask(vm.PowerOffVM_Task())

    # A changed byte on the datastore is found.
    with open(flat_path(lab, vm_name), "r+b") as fh:
        fh.seek(5 * 1024 * 1024 + 3)
        old = fh.read(1)
        fh.seek(5 * 1024 * 1024 + 3)
        fh.write(bytes([old[0] ^ 0xFF]))
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir))
    assert res.get("failed") and "differs from the bundle in 1 of" in res["msg"], res
    assert "first at byte %d" % (5 * 1024 * 1024) in res["msg"]


def test_same_name_other_origin_is_refused_unless_replace(
    lab, vsphere_si, run_module, tmp_path, guest_copy, vm_name, reliability
):
    reliability(
        "vsphere",
        "import onto a VM name taken by a VM from another source",
        "refused: 'already exists' and the fix 'replace=true'",
        "the existing VM kept (same moid); replace=true replaces it, provenance of the new source",
    )
    first = make_bundle(str(tmp_path / "a"), guest_copy, vm_name)
    other = make_bundle(str(tmp_path / "b"), guest_copy, vm_name)  # another source id
    base = conn_vars(lab, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"})
    res = run_module("vsphere_import", dict(base, bundle=first.dir))
    assert res["changed"], res
    moid = res["moid"]

    res = run_module("vsphere_import", dict(base, bundle=other.dir))
    assert res.get("failed") and "already exists" in res["msg"] and "replace=true" in res["msg"], res
    assert find_vm(vsphere_si, vm_name)._moId == moid

    res = run_module("vsphere_import", dict(base, bundle=other.dir, replace=True))
    assert res["changed"] and res["replaced"] == moid, res
    vm = find_vm(vsphere_si, vm_name)
    values = {o.key: o.value for o in vm.config.extraConfig}  # vcsim appends on reconfigure: the last wins
    prov = json.loads(values["vmigrate.provenance"])
    assert prov["source_id"] == other.manifest["source"]["id"]


def test_incremental_update_uploads_changed_disk(lab, vsphere_si, run_module, tmp_path, guest_copy, vm_name):
    src_id = str(uuid.uuid4())
    bundle = make_bundle(str(tmp_path / "a"), guest_copy, vm_name, source_id=src_id)
    args = conn_vars(lab, bundle=bundle.dir, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"})
    assert run_module("vsphere_import", args)["changed"]
    # The source changes; a newer bundle of the same source arrives.
    with open(guest_copy, "r+b") as fh:
        fh.seek(7 * 1024 * 1024)
        fh.write(os.urandom(4096))
    newer = make_bundle(str(tmp_path / "b"), guest_copy, vm_name, source_id=src_id)
    res = run_module("vsphere_import", dict(args, bundle=newer.dir))
    assert res["changed"] and res["action"] == "rewrite" and res["updated_disks"] == ["disk0"], res
    # Sent as a streamOptimized upload (data, not capacity) into a new file swapped in;
    # the old files and the helper VM are gone.
    assert res["transfer"][0]["format"] == "streamOptimized", res
    assert res["bytes_sent"] < os.path.getsize(guest_copy), res
    vm = find_vm(vsphere_si, vm_name)
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", backing_flat_path(lab, vm), guest_copy])
    assert cmp.returncode == 0
    assert not os.path.exists(flat_path(lab, vm_name))
    folder = os.path.dirname(flat_path(lab, vm_name))
    extents = [f for f in os.listdir(folder) if f.endswith("-flat.vmdk")]
    assert extents == [os.path.basename(backing_flat_path(lab, vm))], extents
    view = vsphere_si.content.viewManager.CreateContainerView(vsphere_si.content.rootFolder, [vim.VirtualMachine], True)
    assert not [v.name for v in view.view if ".vmigrate-sync-" in v.name]
    view.Destroy()
    values = {o.key: o.value for o in vm.config.extraConfig}  # the last entry of a key wins
    assert not values.get("vmigrate.incomplete")
    assert json.loads(values["vmigrate.provenance"])["fingerprint"] == steps.content_fingerprint(newer.manifest)
    assert run_module("vsphere_import", dict(args, bundle=newer.dir))["changed"] is False


def test_bad_input_is_reported_and_leaves_nothing(
    lab, vsphere_si, run_module, tmp_path, guest_copy, vm_name, reliability
):
    left = "no VM, no datastore folder content"
    reliability(
        "vsphere",
        "a source network missing from network_map",
        "\"network 'lab-net' ... not in network_map\"",
        left,
    )
    reliability(
        "vsphere",
        "network_map names a port group vCenter does not have",
        "\"network 'no-such-portgroup' not found\", listing the networks that exist",
        left,
    )
    reliability(
        "vsphere",
        "a datastore vCenter does not have",
        "\"datastore 'NoSuchDS' not found\", listing the datastores that exist",
        left,
    )
    reliability(
        "vsphere",
        "wrong vSphere password (import)",
        "'vSphere login failed for user <user>'; the password not in the task's invocation (no_log)",
        left,
    )
    bundle = make_bundle(str(tmp_path / "b"), guest_copy, vm_name)
    base = conn_vars(lab, bundle=bundle.dir, datastore=lab["vcsim"]["datastore"])
    vm_dir = os.path.join(lab["vcsim"]["datastore_dir"], vm_name)

    res = run_module("vsphere_import", dict(base, network_map={"other-net": "VM Network"}))
    assert res.get("failed") and "network 'lab-net'" in res["msg"] and "not in network_map" in res["msg"], res

    res = run_module("vsphere_import", dict(base, network_map={"lab-net": "no-such-portgroup"}))
    assert res.get("failed") and "network 'no-such-portgroup' not found" in res["msg"], res
    assert "VM Network" in res["msg"]  # lists what exists

    res = run_module("vsphere_import", dict(base, datastore="NoSuchDS", network_map={"lab-net": "VM Network"}))
    assert res.get("failed") and "datastore 'NoSuchDS' not found" in res["msg"] and "LocalDS_0" in res["msg"], res

    res = run_module("vsphere_import", dict(base, password="wrong", network_map={"lab-net": "VM Network"}))
    assert res.get("failed") and "vSphere login failed for user %s" % lab["vcsim"]["username"] in res["msg"], res
    assert "wrong" not in json.dumps(res.get("invocation", {}))  # no_log

    assert find_vm(vsphere_si, vm_name) is None
    assert not os.path.exists(vm_dir) or not os.listdir(vm_dir)


def test_tls_needs_the_lab_ca(lab, run_module, reliability):
    reliability(
        "vsphere",
        "untrusted certificate (the lab CA not given, not in the system trust store)",
        "'TLS verification of <host> ...', naming ca_path and validate_certs",
        "refused (vm_info: nothing to change)",
    )
    reliability(
        "vsphere",
        "certificate not the pinned thumbprint (validate_certs=false)",
        "'not the pinned thumbprint'",
        "refused (vm_info: nothing to change)",
    )
    args = conn_vars(lab, vms=["DC0_H0_VM0"])
    res = run_module("vsphere_vm_info", args)
    assert not res.get("failed") and res["vms"][0]["name"] == "DC0_H0_VM0", res

    del args["ca_path"]  # the system trust store does not hold the lab CA
    res = run_module("vsphere_vm_info", args)
    assert res.get("failed"), res
    assert "TLS verification of %s" % lab["vcsim"]["hostname"] in res["msg"]
    assert "ca_path" in res["msg"] and "validate_certs" in res["msg"]

    # A pinned certificate: without CA verification, only the exact certificate is accepted.
    pem = ssl.get_server_certificate((lab["vcsim"]["hostname"], lab["vcsim"]["port"]))
    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    res = run_module("vsphere_vm_info", dict(args, validate_certs=False, thumbprint=pin))
    assert not res.get("failed") and res["vms"][0]["name"] == "DC0_H0_VM0", res
    res = run_module("vsphere_vm_info", dict(args, validate_certs=False, thumbprint="ab" * 32))
    assert res.get("failed") and "not the pinned thumbprint" in res["msg"], res

    res = run_module("vsphere_vm_info", conn_vars(lab, vms=["no-such-vm"]))
    assert res.get("failed") and "VM 'no-such-vm' not found" in res["msg"], res


# --- VM names vSphere escapes or refuses -----------------------------------------------------


def small_image(tmp_path):
    """A 4 MiB raw disk with 1 MiB of data: names are the subject here, not bytes."""
    path = str(tmp_path / "small.raw")
    with open(path, "wb") as fh:
        fh.write(os.urandom(1024 * 1024))
        fh.truncate(4 * 1024 * 1024)
    return path


def subdirs(top):
    return [os.path.join(d, n) for d, dirs, _files in os.walk(top) for n in dirs]


def entries_with(ds_dir, tag):
    """What the datastore directory holds for this test (others may use vcsim meanwhile)."""
    return {n for n in os.listdir(ds_dir) if tag in n}


@pytest.fixture
def made_vms(vsphere_si):
    """Names (as vSphere stores them) of the VMs a test made; destroyed afterwards."""
    names = []
    yield names
    for name in names:
        destroy(vsphere_si, name)


@pytest.mark.parametrize(
    "name, stored",
    [("lab-b/slash-%s", "lab-b%%2fslash-%s"), ("lab-b-50%%-%s", "lab-b-50%%25-%s")],
    ids=["slash", "percent"],
)
def test_names_are_escaped_like_vcenter(lab, vsphere_si, run_module, tmp_path, made_vms, name, stored):
    tag = uuid.uuid4().hex[:6]
    name, stored = name % tag, stored % tag
    made_vms.append(stored)
    ds_dir = lab["vcsim"]["datastore_dir"]
    image = small_image(tmp_path)
    bundle = make_bundle(str(tmp_path / "b"), image, "source-vm")
    args = conn_vars(
        lab, bundle=bundle.dir, name=name, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"}
    )
    assert entries_with(ds_dir, tag) == set()
    res = run_module("vsphere_import", args)
    assert not res.get("failed") and res["changed"] and res["action"] == "create", res
    assert res["name"] == name and res["vsphere_name"] == stored, res

    # vCenter keeps the name escaped in its inventory (its client shows it unescaped).
    vm = find_vm(vsphere_si, stored)
    assert vm is not None and vm.name == stored and urllib.parse.unquote(vm.name) == name
    assert vm.config.files.vmPathName == "[%s] %s/%s.vmx" % (lab["vcsim"]["datastore"], stored, stored)
    # One new datastore folder, named like the VM, with no folders inside.
    assert entries_with(ds_dir, tag) == {stored}
    assert not os.path.exists(os.path.join(ds_dir, name))  # not a/b as nested folders
    folder = os.path.join(ds_dir, stored)
    assert subdirs(folder) == [], subdirs(folder)
    files = set(os.listdir(folder))
    assert {stored + ".vmx", stored + ".vmdk", stored + "-flat.vmdk"} <= files, files
    assert "vmigrate.partial" not in files
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "raw", os.path.join(folder, stored + "-flat.vmdk"), image],
        capture_output=True,
        text=True,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr

    # The name as the user wrote it finds the VM again: verify, and a re-run that changes nothing.
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir, vm=name))
    assert not res.get("failed") and res["name"] == vm.name and res["disks"][0]["mismatched"] == 0, res
    res = run_module("vsphere_import", args)
    assert not res.get("failed") and res["changed"] is False and res["action"] == "none", res
    assert entries_with(ds_dir, tag) == {stored}


def test_too_long_name_is_refused_before_any_upload(lab, vsphere_si, run_module, tmp_path, reliability):
    reliability(
        "vsphere",
        "target VM name of 81 characters (vSphere's limit is 80)",
        "import refused: 'the VM name ... is 81 characters long; a vSphere VM name has at most 80' and "
        "'Fix: give a shorter name'",
        "refused before any upload: no datastore entry, no VM",
    )
    tag = uuid.uuid4().hex[:6]
    name = "lab-b-long-%s-" % tag + "x" * 63  # 81 characters
    ds_dir = lab["vcsim"]["datastore_dir"]
    bundle = make_bundle(str(tmp_path / "b"), small_image(tmp_path), "source-vm")
    args = conn_vars(
        lab, bundle=bundle.dir, name=name, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"}
    )
    res = run_module("vsphere_import", args)
    assert res.get("failed") and res["error_kind"] == "input", res
    assert "the VM name %r is 81 characters long; a vSphere VM name has at most 80" % name in res["msg"], res
    assert "Fix: give a shorter name" in res["msg"]
    assert entries_with(ds_dir, tag) == set()
    assert find_vm(vsphere_si, name) is None


def test_failed_create_removes_the_folder_it_made(lab, vsphere_si, run_module, tmp_path, made_vms, reliability):
    reliability(
        "vsphere",
        "CreateVM refused after the disks were uploaded (a hardware version vCenter refuses)",
        "import fails: 'create VM <name>'",
        "the disks and the datastore folder it made removed; no VM",
    )
    """CreateVM fails after the disks are up (vcsim refuses the hardware version): nothing stays."""
    tag = uuid.uuid4().hex[:6]
    name = "lab-b-fail/%s" % tag
    stored = name.replace("/", "%2f")
    made_vms.append(stored)
    ds_dir = lab["vcsim"]["datastore_dir"]
    bundle = make_bundle(str(tmp_path / "b"), small_image(tmp_path), "source-vm")
    args = conn_vars(
        lab,
        bundle=bundle.dir,
        name=name,
        datastore=lab["vcsim"]["datastore"],
        network_map={"lab-net": "VM Network"},
        hardware_version="vmx-bad",
    )
    res = run_module("vsphere_import", args)
    assert res.get("failed") and "create VM %s" % stored in res["msg"], res
    assert entries_with(ds_dir, tag) == set()
    assert not os.path.exists(os.path.join(ds_dir, "lab-b-fail", tag))
    assert find_vm(vsphere_si, stored) is None
