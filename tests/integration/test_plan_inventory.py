"""The vmigrate.v2v.plan inventory plugin with validate_sources on, against the lab.

A KVM domain and three vcsim VMs (two in a folder of their own) are made for the test;
`ansible-inventory --list` must print a host per VM with the plan's variables, expand a
selector (name glob + folder) on vSphere, and refuse a plan whose network map misses
a NIC's network, naming it. The vCenter password reaches the plugin only through an
env lookup, and is printed nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest
from plan_lab import vsphere_endpoint  # tests/integration/plan_lab.py
from pyVim.task import WaitForTask
from pyVmomi import vim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PW_ENV = "VMIGRATE_PLAN_TEST_PASSWORD"

DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:70:6c:01'/>
      <source network='{network}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


def unwrap(value):
    """ansible-core 2.19 prints strings it did not load as {"__ansible_unsafe": s}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def create_vc_vm(si, dc, folder, name):
    """A powered-off vcsim VM with one 16 MiB disk on LocalDS_0 and a NIC on 'VM Network'."""
    pool = dc.hostFolder.childEntity[0].resourcePool
    network = next(n for n in dc.network if n.name == "VM Network")
    scsi = vim.vm.device.VirtualDeviceSpec(
        operation="add", device=vim.vm.device.ParaVirtualSCSIController(key=-101, busNumber=0, sharedBus="noSharing")
    )
    disk = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        fileOperation="create",
        device=vim.vm.device.VirtualDisk(
            key=-102,
            controllerKey=-101,
            unitNumber=0,
            capacityInKB=16 * 1024,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", thinProvisioned=True),
        ),
    )
    nic = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        device=vim.vm.device.VirtualVmxnet3(
            key=-103,
            backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(network=network, deviceName="VM Network"),
        ),
    )
    config = vim.vm.ConfigSpec(
        name=name,
        memoryMB=64,
        numCPUs=1,
        guestId="otherLinux64Guest",
        files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
        deviceChange=[scsi, disk, nic],
    )
    WaitForTask(folder.CreateVM_Task(config=config, pool=pool))


@pytest.fixture
def lab_vms(lab, libvirt_conn, vsphere_si, tmp_path):
    tag = "lab-plan-%s" % uuid.uuid4().hex[:6]
    disk_dir = tmp_path / "disks"
    disk_dir.mkdir()
    disk = disk_dir / "kvm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    dom = libvirt_conn.defineXML(DOMAIN_XML.format(name=tag + "-kvm", disk=disk, network=lab["network"]))
    content = vsphere_si.RetrieveContent()
    dc = next(e for e in content.rootFolder.childEntity if e.name == lab["vcsim"]["datacenter"])
    folder = dc.vmFolder.CreateFolder(tag)
    made = []
    try:
        for where, name in ((folder, tag + "-vc1"), (folder, tag + "-vc2"), (dc.vmFolder, tag + "-vc3")):
            create_vc_vm(vsphere_si, dc, where, name)
            made.append(name)
        yield {"tag": tag, "kvm": tag + "-kvm", "disk_dir": str(disk_dir)}
    finally:
        dom.undefine()
        view = content.viewManager.CreateContainerView(dc.vmFolder, [vim.VirtualMachine], True)
        try:
            for vm in view.view:
                if vm.name.startswith(tag):
                    WaitForTask(vm.Destroy_Task())
        finally:
            view.Destroy()
        WaitForTask(folder.Destroy_Task())


def plan_text(lab, vms, network_map):
    vc = lab["vcsim"]
    return "\n".join(
        [
            "plugin: vmigrate.v2v.plan",
            "version: 1",
            "endpoints:",
            "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}"
            % (lab["libvirt_uri"], lab["pools"]["target"]),
            *vsphere_endpoint(vc, PW_ENV),
            "network_map: %s" % json.dumps(network_map),
            "storage_map: %s" % json.dumps({vms["disk_dir"]: vc["datastore"], vc["datastore"]: lab["pools"]["target"]}),
            "waves:",
            "  - name: to-vsphere",
            "    source: lab-kvm",
            "    target: lab-vc",
            "    vms: ['%s']" % vms["kvm"],
            "  - name: to-kvm",
            "    source: lab-vc",
            "    target: lab-kvm",
            "    concurrency: 2",
            "    vms:",
            "      - {select: {name: '%s-vc*', folder: '%s'}, mode: warm}" % (vms["tag"], vms["tag"]),
            "",
        ]
    )


def inventory(lab, path):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env[PW_ENV] = lab["vcsim"]["password"]
    for key in [k for k in env if k.startswith("VMWARE_")]:
        del env[key]
    return subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible-inventory"), "-i", str(path), "--list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_plan_inventory_validates_sources(lab, lab_vms, tmp_path):
    vc = lab["vcsim"]
    path = tmp_path / "lab.v2v.yml"
    maps = {lab["network"]: "VM Network", "VM Network": lab["network"]}
    path.write_text(plan_text(lab, lab_vms, maps))
    proc = inventory(lab, path)
    assert proc.returncode == 0, proc.stderr
    assert vc["password"] not in proc.stdout + proc.stderr
    inv = unwrap(json.loads(proc.stdout))
    tag = lab_vms["tag"]
    hostvars = inv["_meta"]["hostvars"]
    # vc3 matches the name glob but is not in the folder
    assert inv["v2v"]["hosts"] == [tag + "-kvm", tag + "-vc1", tag + "-vc2"]
    assert inv["wave_to_kvm"]["hosts"] == [tag + "-vc1", tag + "-vc2"]
    assert inv["source_vsphere"]["hosts"] == inv["mode_warm"]["hosts"] == [tag + "-vc1", tag + "-vc2"]
    kvm = hostvars[tag + "-kvm"]
    assert kvm["v2v_source"] == {"endpoint": "lab-kvm", "platform": "kvm", "connection": {"uri": lab["libvirt_uri"]}}
    assert kvm["v2v_target"]["connection"]["password"] == "{{ lookup('env', '%s') }}" % PW_ENV
    assert kvm["v2v_target"]["placement"] == {"datastore": vc["datastore"]}
    assert kvm["v2v_storage_map"][lab_vms["disk_dir"]] == vc["datastore"]
    vc1 = hostvars[tag + "-vc1"]
    assert vc1["v2v_vm"] == tag + "-vc1" and vc1["v2v_wave"] == "to-kvm" and vc1["v2v_wave_index"] == 1
    assert vc1["v2v_target"] == {
        "endpoint": "lab-kvm",
        "platform": "kvm",
        "connection": {"uri": lab["libvirt_uri"]},
        "placement": {"pool": lab["pools"]["target"]},
    }
    assert vc1["v2v_waves"][1]["hosts"] == [tag + "-vc1", tag + "-vc2"]
    assert vc1["v2v_waves"][1]["concurrency"] == 2


def test_plan_inventory_refuses_missing_map_entry(lab, lab_vms, tmp_path, reliability):
    reliability(
        "plan",
        "a source VM's network missing from network_map (checked against the lab's real VMs)",
        "ansible-inventory fails: \"waves[0].vms[0] VM 'v' nics[0] (<mac>) is on network 'n', which has no "
        'network_map entry" and the fix "add \'n\': <target network> to network_map"; no password in output',
        "no inventory (nothing run)",
    )
    path = tmp_path / "lab.v2v.yml"
    path.write_text(plan_text(lab, lab_vms, {"VM Network": lab["network"]}))
    proc = inventory(lab, path)
    assert proc.returncode != 0
    assert (
        "waves[0].vms[0] VM '%s' nics[0] (52:54:00:70:6c:01) is on network '%s', which has no network_map entry"
        % (lab_vms["kvm"], lab["network"])
    ) in proc.stderr, proc.stderr
    assert "add '%s': <target network> to network_map" % lab["network"] in proc.stderr
    assert lab["vcsim"]["password"] not in proc.stdout + proc.stderr
