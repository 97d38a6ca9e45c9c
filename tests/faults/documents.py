"""Real documents the writers produce, the starting points of the fuzz runs."""

from __future__ import annotations

import os

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx

# One VM using most of what the formats express: uefi with secure boot, three buses,
# two controllers, NICs with and without MACs, a cd-rom and a floppy, notes with escapes.
RICH = _spec.new_spec(
    name="fuzz-vm01",
    uuid="6f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b",
    firmware={"type": "uefi", "secure_boot": True},
    cpu={"sockets": 2, "cores": 2, "threads": 1},
    memory_mib=4096,
    disks=[
        {"id": "disk0", "bus": "scsi", "controller": "pvscsi", "capacity": 64 << 20, "format": "vmdk", "boot_order": 1},
        {"id": "disk1", "bus": "scsi", "controller": "lsilogic", "capacity": 1 << 30, "format": "vmdk"},
        {"id": "disk2", "bus": "sata", "capacity": 3 << 20, "format": "qcow2"},
    ],
    nics=[
        {"mac": "52:54:00:12:34:56", "network": "VM Network", "model": "vmxnet3"},
        {"mac": None, "network": "Backup", "model": "e1000e"},
    ],
    removable=[
        {"type": "cdrom", "bus": "sata", "path": "/isos/debian.iso"},
        {"type": "floppy", "bus": "fdc", "path": None},
    ],
    guest_os={"family": "linux", "id": "debian11_64Guest", "description": "Debian GNU/Linux 11 (64-bit)"},
    annotations={"description": 'owner: "ops" | line2\nline3', "title": "Fuzz VM"},
)


def write_documents(directory):
    """{format: path} of a libvirt XML, a VMX, an OVF and an OVA (with small disk files) in ``directory``."""
    kvm = _spec.apply_maps(RICH, "kvm")[0]
    vs = _spec.apply_maps(RICH, "vsphere")[0]
    paths = {}
    disks = {d["id"]: {"path": os.path.join(directory, d["id"] + ".qcow2"), "format": "qcow2"} for d in kvm["disks"]}
    xml = _libvirt.libvirt_xml_from_spec(kvm, disks, provenance={"bundle": "/b", "chain": [1, 2]})
    paths["libvirt"] = os.path.join(directory, "vm.xml")
    vmx = _vmx.vmx_from_spec(vs, {d["id"]: d["id"] + ".vmdk" for d in vs["disks"]})
    paths["vmx"] = os.path.join(directory, "vm.vmx")
    files = {}
    for i, d in enumerate(vs["disks"]):
        files[d["id"]] = os.path.join(directory, "vm-%s.vmdk" % d["id"])
        with open(files[d["id"]], "wb") as fh:
            fh.write(b"disk %d data\n" % i * 40)
    ovf = _ovf.ovf_from_spec(vs, files)
    paths["ovf"] = os.path.join(directory, "vm.ovf")
    for fmt, text in (("libvirt", xml), ("vmx", vmx), ("ovf", ovf)):
        with open(paths[fmt], "w", encoding="utf-8") as fh:
            fh.write(text)
    os.makedirs(os.path.join(directory, "ova"))
    paths["ova"] = _ovf.write_ova(os.path.join(directory, "ova", "vm.ova"), ovf, list(files.values()))
    return paths
