"""libvirt domain XML translations on a libvirt-written sample, with disks made by qemu-img."""

import pytest
from descriptor_samples import LIBVIRT_XML, MiB, carried

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read


def test_libvirt_q35_ovmf_domain(libvirt_dir):
    spec, missing = _read.read_descriptor(str(libvirt_dir / "db01.xml"))
    _spec.validate(spec)
    assert missing == []
    assert spec["name"] == "db01" and spec["uuid"] == "7d3f1b2a-9c8e-4f6d-a5b4-0c1d2e3f4a5b"
    assert spec["firmware"] == {"type": "uefi", "secure_boot": True}
    assert spec["cpu"] == {"sockets": 1, "cores": 2, "threads": 2}
    assert spec["memory_mib"] == 4096
    assert [(d["bus"], d["controller"], d["format"], d["capacity"], d["boot_order"]) for d in spec["disks"]] == [
        ("virtio", None, "qcow2", 64 * MiB, 1),
        ("scsi", "virtio-scsi", "raw", None, None),  # a pool volume: libvirt knows its size
        ("virtio", None, "raw", 16 * MiB, None),
    ]
    assert spec["disks"][1]["source"] == {"pool": "fast", "volume": "db01-data"}
    assert spec["disks"][1]["storage"] == "fast"
    assert spec["nics"] == [
        {"mac": "52:54:00:6b:3c:58", "network": "default", "network_type": None, "model": "virtio"},
        {"mac": "52:54:00:6b:3c:59", "network": "br0", "network_type": "bridge", "model": "e1000e"},
    ]
    assert spec["removable"] == [{"type": "cdrom", "bus": "sata", "path": None}]
    assert spec["guest_os"] == {
        "family": "linux",
        "id": "debian12_64Guest",
        "osinfo": "http://debian.org/debian/12",
        "description": None,
    }
    assert spec["annotations"] == {"description": "PostgreSQL 15 primary", "title": "Database"}


def test_libvirt_round_trip_and_provenance(libvirt_dir):
    spec = _read.read_descriptor(str(libvirt_dir / "db01.xml"))[0]
    disks = {
        "disk0": {"path": str(libvirt_dir / "db01.qcow2"), "format": "qcow2"},
        "disk1": {"pool": "fast", "volume": "db01-data", "format": "raw"},
        "disk2": {"path": str(libvirt_dir / "db01-wal.img"), "format": "raw"},
    }
    prov = {"source_id": "vm-42", "source_platform": "vsphere", "checkpoint": {"changeId": "52 7a/4"}, "n": 3}
    text = _libvirt_xml.libvirt_xml_from_spec(spec, disks, provenance=prov)
    out = libvirt_dir / "copy.xml"
    out.write_text(text)
    back, missing = _read.read_descriptor(str(out))
    assert missing == []
    assert carried(back) == carried(spec)
    assert [d["source"] for d in back["disks"]] == [d["source"] for d in spec["disks"]]
    assert [(n["network"], n["network_type"]) for n in back["nics"]] == [("default", None), ("br0", "bridge")]
    assert _libvirt_xml.read_provenance(text) == prov
    assert _libvirt_xml.read_provenance(LIBVIRT_XML) is None
    assert '<type arch="x86_64" machine="q35">hvm</type>' in text and '<smm state="on" />' in text


def test_libvirt_xml_refuses_what_kvm_lacks():
    spec = _spec.new_spec(
        name="v",
        disks=[{"id": "disk0", "bus": "scsi", "controller": "pvscsi", "capacity": MiB}],
        nics=[{"model": "vmxnet3", "network": "VM Network"}],
    )
    with pytest.raises(InputError, match=r"disks\[0\]\.controller 'pvscsi' cannot be written for kvm"):
        _libvirt_xml.libvirt_xml_from_spec(spec, {"disk0": {"path": "/x"}})
    mapped = _spec.apply_maps(spec, "kvm")[0]
    with pytest.raises(InputError, match=r"no storage given for disks\[0\] \(disk0\)"):
        _libvirt_xml.libvirt_xml_from_spec(mapped, {})
    uefi_ide = _spec.new_spec(name="v", firmware={"type": "uefi"}, removable=[{"type": "cdrom", "bus": "ide"}])
    with pytest.raises(InputError, match=r"removable\[0\]\.bus is ide, which machine q35 lacks"):
        _libvirt_xml.libvirt_xml_from_spec(uefi_ide, {})
    assert 'machine="pc"' in _libvirt_xml.libvirt_xml_from_spec(
        _spec.new_spec(name="v", removable=[{"bus": "ide"}]), {}
    )


def test_malformed_libvirt_xml_names_file(tmp_path, reliability):
    reliability(
        "readers",
        "malformed libvirt domain XML (an unclosed tag; a memory unit 'parsecs')",
        "InputError 'libvirt domain XML <file> is not well-formed XML' with the line; \"memory has unknown "
        "unit 'parsecs'\"",
        "nothing read (a reader writes nothing)",
    )
    path = tmp_path / "dom.xml"
    path.write_text("<domain type='kvm'>\n  <name>x</name>\n  <memory unit='KiB'>1</memory\n</domain>\n")
    with pytest.raises(InputError) as err:
        _read.read_descriptor(str(path))
    assert "libvirt domain XML %s is not well-formed XML" % path in err.value.message
    assert "line 4" in err.value.message
    path.write_text("<domain><name>x</name><memory unit='parsecs'>1</memory></domain>")
    with pytest.raises(InputError, match="memory has unknown unit 'parsecs'"):
        _read.read_descriptor(str(path))
