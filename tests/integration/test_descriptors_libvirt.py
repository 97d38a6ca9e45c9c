"""libvirt accepts the domain XML written from a spec, and gives back the same spec."""

import os
import subprocess

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

libvirt = pytest.importorskip("libvirt")
URI = "qemu:///system"


@pytest.fixture(scope="module")
def conn():
    try:
        c = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        pytest.skip("libvirtd does not answer at %s (%s); `tests/lab/lab up` starts it" % (URI, exc))
    yield c
    c.close()


def carried(spec):
    return {
        "name": spec["name"],
        "uuid": spec["uuid"],
        "firmware": spec["firmware"],
        "cpu": spec["cpu"],
        "memory_mib": spec["memory_mib"],
        "disks": [
            {k: d[k] for k in ("id", "bus", "controller", "format", "source", "boot_order")} for d in spec["disks"]
        ],
        "nics": spec["nics"],
        "removable": spec["removable"],
        "guest_os": {k: spec["guest_os"][k] for k in ("family", "id", "osinfo")},
        "annotations": spec["annotations"],
    }


def define_and_read_back(conn, spec, disks, provenance):
    xml = _libvirt_xml.libvirt_xml_from_spec(spec, disks, provenance=provenance)
    dom = conn.defineXML(xml)
    try:
        back_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(spec["name"])
    return back_xml


def test_uefi_secure_boot_domain(conn, tmp_path):
    disk = str(tmp_path / "tiny.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
    spec = _spec.new_spec(
        name="vmigrate-test-desc-uefi-%d" % os.getpid(),
        uuid="6f1e2d3c-4b5a-4968-8776-6554433221%02x" % (os.getpid() % 256),
        firmware={"type": "uefi", "secure_boot": True},
        cpu={"sockets": 1, "cores": 2, "threads": 1},
        memory_mib=256,
        disks=[{"id": "disk0", "bus": "virtio", "format": "qcow2", "source": {"path": disk}, "boot_order": 1}],
        nics=[{"mac": "52:54:00:a1:b2:c3", "network": "default", "model": "virtio"}],
        removable=[{"type": "cdrom", "bus": "sata", "path": None}],
        guest_os={"family": "linux", "id": "debian12_64Guest", "osinfo": "http://debian.org/debian/12"},
        annotations={"description": "descriptor acceptance test\nsecond line", "title": "acceptance"},
    )
    prov = {"source_id": "vm-42", "source_platform": "vsphere", "checkpoint": {"changeId": "52 1e/7"}}
    back_xml = define_and_read_back(conn, spec, {"disk0": {"path": disk, "format": "qcow2"}}, prov)
    back = _libvirt_xml.spec_from_libvirt_xml(back_xml)
    assert carried(back) == carried(spec)
    assert _libvirt_xml.read_provenance(back_xml) == prov


def test_bios_domain_with_scsi_volume_and_bridge(conn, tmp_path):
    disk = str(tmp_path / "boot.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
    spec = _spec.new_spec(
        name="vmigrate-test-desc-bios-%d" % os.getpid(),
        cpu={"sockets": 2, "cores": 1, "threads": 2},
        memory_mib=128,
        disks=[
            {"id": "disk0", "bus": "virtio", "format": "qcow2", "source": {"path": disk}},
            {
                "id": "disk1",
                "bus": "scsi",
                "controller": "virtio-scsi",
                "format": "raw",
                "source": {"pool": "vmigrate-none", "volume": "data.raw"},
            },
        ],
        nics=[{"mac": "52:54:00:a1:b2:c4", "network": "br-none", "network_type": "bridge", "model": "e1000e"}],
        removable=[{"type": "cdrom", "bus": "ide", "path": None}],
    )
    disks = {"disk0": {"path": disk, "format": "qcow2"}, "disk1": {"pool": "vmigrate-none", "volume": "data.raw"}}
    back_xml = define_and_read_back(conn, spec, disks, None)
    back = _libvirt_xml.spec_from_libvirt_xml(back_xml)
    expected = carried(spec)
    expected["uuid"] = back["uuid"]  # libvirt made one up
    assert back["uuid"]
    assert carried(back) == expected
    assert _libvirt_xml.read_provenance(back_xml) is None
