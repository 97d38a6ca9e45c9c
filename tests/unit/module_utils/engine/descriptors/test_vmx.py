"""VMX translations on an ESXi-written sample, with disks made by qemu-img."""

import os

import pytest
from descriptor_samples import MiB, carried, virtual_size

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx


def test_esxi7_vmx(esxi_dir):
    spec, missing = _read.read_descriptor(str(esxi_dir / "web01.vmx"))
    _spec.validate(spec)
    assert spec["name"] == "web01"
    assert spec["uuid"] == "501c7e2a-1122-3344-5566-778899aabbcc"  # vc.uuid (instance UUID) wins
    assert spec["firmware"] == {"type": "uefi", "secure_boot": True}
    assert spec["cpu"] == {"sockets": 2, "cores": 2, "threads": 1}
    assert spec["memory_mib"] == 2048
    assert [(d["id"], d["bus"], d["controller"], d["format"]) for d in spec["disks"]] == [
        ("disk0", "scsi", "pvscsi", "vmdk"),
        ("disk1", "scsi", "pvscsi", "vmdk"),
        ("disk2", "scsi", "pvscsi", "vmdk"),
    ]
    # capacities come from the real images
    assert spec["disks"][0]["capacity"] == virtual_size(str(esxi_dir / "web01.vmdk")) == 64 * MiB
    assert spec["disks"][1]["capacity"] == virtual_size(str(esxi_dir / "web01_1.vmdk")) == 32 * MiB
    assert spec["disks"][2]["capacity"] is None
    assert missing == [str(esxi_dir / "web01_2.vmdk")]
    assert spec["disks"][0]["source"] == {"path": str(esxi_dir / "web01.vmdk")}
    assert spec["nics"] == [
        {"mac": "00:50:56:9a:3b:7c", "network": "VM Network", "network_type": None, "model": "vmxnet3"},
        {"mac": "00:50:56:01:02:03", "network": "Backup", "network_type": None, "model": "e1000e"},
    ]
    assert spec["removable"] == [
        {
            "type": "cdrom",
            "bus": "sata",
            "path": "/vmfs/volumes/6361a7c3-2f5b1c7e-2b4e-001b21a8c0de/iso/debian-11.5.0-amd64-netinst.iso",
        }
    ]
    assert spec["guest_os"]["id"] == "debian11_64Guest" and spec["guest_os"]["family"] == "linux"
    assert spec["annotations"]["description"] == 'Web front end\nOwner: ops "team A"'
    assert spec["origin"] == {"platform": "vmx", "ref": str(esxi_dir / "web01.vmx")}


def test_vmx_flat_extent_missing_is_reported(esxi_dir):
    os.unlink(esxi_dir / "web01_1-flat.vmdk")
    spec, missing = _read.read_descriptor(str(esxi_dir / "web01.vmx"))
    assert missing == [str(esxi_dir / "web01_1.vmdk"), str(esxi_dir / "web01_2.vmdk")]
    assert spec["disks"][1]["capacity"] is None


def test_vmx_round_trip(esxi_dir):
    spec = _read.read_descriptor(str(esxi_dir / "web01.vmx"))[0]
    spec["disks"] = spec["disks"][:2]
    spec["disks"][0]["boot_order"] = 1
    spec["disks"][1].update(bus="sata", controller=None)
    spec["nics"][0]["mac"] = "52:54:00:12:34:56"  # a MAC outside VMware's range survives
    spec["removable"].append({"type": "floppy", "bus": "fdc", "path": str(esxi_dir / "boot.flp")})
    text = _vmx.vmx_from_spec(spec, {"disk0": "web01.vmdk", "disk1": str(esxi_dir / "web01_1.vmdk")})
    assert 'ethernet0.checkMACAddress = "FALSE"' in text
    out = esxi_dir / "copy.vmx"
    out.write_text(text)
    back, missing = _read.read_descriptor(str(out))
    assert missing == []
    assert carried(back, title=False) == carried(spec, title=False)


def test_vmx_from_spec_needs_vsphere_devices():
    spec = _spec.new_spec(name="k", disks=[{"id": "disk0", "bus": "virtio", "capacity": MiB}])
    with pytest.raises(InputError, match=r"disks\[0\]\.bus 'virtio' cannot be written for vsphere.*apply_maps"):
        _vmx.vmx_from_spec(spec, {"disk0": "k.vmdk"})
    mapped = _spec.apply_maps(spec, "vsphere")[0]
    assert 'scsi0.virtualDev = "pvscsi"' in _vmx.vmx_from_spec(mapped, {"disk0": "k.vmdk"})


def test_vmx_ide_channels():
    spec = _spec.new_spec(
        name="old",
        disks=[{"id": "disk%d" % i, "bus": "ide", "capacity": MiB} for i in range(3)],
        removable=[{"type": "cdrom", "bus": "ide", "path": "/iso/x.iso"}],
    )
    text = _vmx.vmx_from_spec(spec, {"disk%d" % i: "d%d.vmdk" % i for i in range(3)})
    assert [ln.split(".")[0] for ln in text.splitlines() if ln.endswith('.present = "TRUE"') and ":" in ln] == [
        "ide0:0",
        "ide0:1",
        "ide1:0",
        "ide1:1",
    ]
    back = _vmx.spec_from_vmx(text, None)
    assert [d["bus"] for d in back["disks"]] == ["ide"] * 3 and back["removable"][0]["path"] == "/iso/x.iso"
    spec["disks"].append({"id": "disk3", "bus": "ide", "capacity": MiB})
    spec = _spec.new_spec(**{k: v for k, v in spec.items() if k != "schema"})
    with pytest.raises(InputError, match="more than 4 IDE devices"):
        _vmx.vmx_from_spec(spec, {"disk%d" % i: "d%d.vmdk" % i for i in range(4)})


def test_malformed_vmx_names_file_and_line(tmp_path, reliability):
    reliability(
        "readers",
        "malformed VMX (a line without '='; an unterminated quote; no displayName)",
        "InputError 'VMX file <file> line 3 ...'; 'line 1 has an unterminated quoted value'; 'has no displayName'",
        "nothing read (a reader writes nothing)",
    )
    path = tmp_path / "bad.vmx"
    path.write_text('.encoding = "UTF-8"\ndisplayName = "x"\nthis line is broken\n')
    with pytest.raises(InputError) as err:
        _read.read_descriptor(str(path))
    assert "VMX file %s line 3" % path in err.value.message
    assert err.value.details["line"] == 3
    path.write_text('displayName = "x\nmemsize = "1"\n')
    with pytest.raises(InputError, match=r"line 1 has an unterminated quoted value"):
        _read.read_descriptor(str(path))
    path.write_text('config.version = "8"\nmemsize = "1024"\n')
    with pytest.raises(InputError, match="has no displayName"):
        _read.read_descriptor(str(path))
