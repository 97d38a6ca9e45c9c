"""KVM <-> vSphere through the lab: libvirt on one side, vcsim over verified TLS on the other.

- KVM -> vSphere, cold: playbooks/kvm_to_vsphere.yml (kvm_export, convert, vsphere_import,
  vsphere_verify); the flat extent in vcsim's datastore directory equals the lab guest.
- vSphere -> KVM, warm with CBT: full, guest writes, incremental (bytes read bounded by
  what changed), cutover (power off, final sync), kvm_import applies the delta to the
  earlier target, which then boots the lab guest to its serial marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from pyVim.task import WaitForTask
from pyVmomi import vim
from test_vsphere_import import conn_vars, destroy, find_vm, flat_path, make_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def undefine(conn, name):
    import libvirt

    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    except libvirt.libvirtError:
        dom.undefine()


def target_disk(conn, name):
    import xml.etree.ElementTree as ET

    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    disk = root.find("./devices/disk[@device='disk']")
    return disk.find("source").get("file"), disk.find("driver").get("type")


def test_kvm_to_vsphere_cold_playbook(lab, vsphere_si, libvirt_conn, run_playbook, tmp_path):
    tag = uuid.uuid4().hex[:6]
    names = {"demo_src": "v2v-ks-" + tag, "demo_dst": "v2v-kd-" + tag, "demo_work": str(tmp_path / "work")}
    names["demo_src_uuid"] = str(uuid.uuid4())  # the playbook's fixed UUID belongs to the demo's domain
    if os.environ.get("VMIGRATE_LAB_FACTS"):  # the lab the test checks is the one the playbook uses
        names["lab_facts_file"] = os.environ["VMIGRATE_LAB_FACTS"]
    src_disk = os.path.join(lab["pool_paths"][lab["pools"]["source"]], names["demo_src"] + ".qcow2")
    try:
        proc = run_playbook(os.path.join(ROOT, "playbooks", "kvm_to_vsphere.yml"), names)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        vm = find_vm(vsphere_si, names["demo_dst"])
        # Bytes, read independently: vcsim's datastore directory vs the lab guest image.
        cmp = subprocess.run(
            ["qemu-img", "compare", "-f", "raw", "-F", "raw", flat_path(lab, names["demo_dst"]), lab["guest_image"]],
            capture_output=True,
            text=True,
        )
        assert cmp.returncode == 0, cmp.stdout
        # Spec fields as vcsim reports them through pyvmomi.
        assert vm.config.hardware.numCPU == 2 and vm.config.hardware.memoryMB == 256
        assert vm.config.firmware == "bios"
        nics = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        assert [n.macAddress for n in nics] == ["52:54:00:76:6d:02"]
        assert vm.runtime.powerState == "poweredOn"  # verify powered it on

        again = run_playbook(os.path.join(ROOT, "playbooks", "kvm_to_vsphere.yml"), names)
        assert again.returncode == 0 and again.changed == 0, again.stdout
    finally:
        destroy(vsphere_si, names["demo_dst"])
        undefine(libvirt_conn, names["demo_src"])
        if os.path.exists(src_disk):
            os.unlink(src_disk)


def test_vsphere_to_kvm_warm_with_cbt(lab, vsphere_si, libvirt_conn, run_module, tmp_path):
    tag = uuid.uuid4().hex[:6]
    src, dst = "v2v-vs-" + tag, "v2v-vk-" + tag
    image = str(tmp_path / "guest.raw")
    shutil.copyfile(lab["guest_image"], image)
    seed = make_bundle(str(tmp_path / "seed"), image, src)
    vc = conn_vars(lab)
    kvm = {"uri": lab["libvirt_uri"]}
    export = dict(vc, vm=src, bundle=str(tmp_path / "export"))
    convert = {"src": export["bundle"], "dest": str(tmp_path / "kvm"), "target_platform": "kvm"}
    convert["network_map"] = {"VM Network": lab["network"]}
    kvm_import = dict(kvm, bundle=convert["dest"], name=dst, pool=lab["pools"]["target"])
    kvm_import.update(domain_type=lab["domain_type"], cpu_mode="default")
    try:
        res = run_module(
            "vsphere_import",
            dict(vc, bundle=seed.dir, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"}),
        )
        assert res.get("changed"), res
        vm = find_vm(vsphere_si, src)
        WaitForTask(vm.PowerOnVM_Task())
        flat = flat_path(lab, src)

        # Full warm sync with CBT, then the first KVM target.
        res = run_module("vsphere_export", dict(export, enable_cbt=True))
        assert res.get("cbt") and res["kind"] == "full", res
        assert not run_module("convert", convert).get("failed")
        res = run_module("kvm_import", kvm_import)
        assert res.get("changed"), res

        # The guest writes (into the gap before partition 1, so the guest still boots);
        # the incremental reads only about that.
        data = os.urandom(10000)
        with open(flat, "r+b") as fh:
            fh.seek(128 * 1024)
            fh.write(data)
        res = run_module("vsphere_export", export)
        assert res["kind"] == "incremental" and len(data) <= res["bytes_read"] <= 64 * 1024, res

        # Cutover: the source stops, a final sync, the target catches up and boots.
        WaitForTask(vm.PowerOffVM_Task())
        with open(flat, "r+b") as fh:
            fh.seek(512 * 1024 + 3)
            fh.write(b"final write")
        res = run_module("vsphere_export", export)
        assert res["mode"] == "cold" and 0 < res["bytes_read"] <= 64 * 1024, res
        assert not run_module("convert", convert).get("failed")
        res = run_module("kvm_import", kvm_import)
        assert res.get("changed") and res["deltas_applied"], res

        path, fmt = target_disk(libvirt_conn, dst)
        cmp = subprocess.run(
            ["qemu-img", "compare", "-F", "raw", "-f", fmt, path, flat], capture_output=True, text=True
        )
        assert cmp.returncode == 0, cmp.stdout
        res = run_module(
            "kvm_verify",
            dict(
                kvm,
                bundle=convert["dest"],
                name=dst,
                boot_check=True,
                boot_marker="VMIGRATE-GUEST-READY",
                boot_timeout=180,
            ),
        )
        assert not res.get("failed"), res
    finally:
        if not os.environ.get("V2V_KEEP"):
            destroy(vsphere_si, src)
            undefine(libvirt_conn, dst)
