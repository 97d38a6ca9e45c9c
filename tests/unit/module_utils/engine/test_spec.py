"""The neutral spec: validation names the field, maps record every change."""

import copy

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec


def vmware_spec():
    return _spec.new_spec(
        name="web01",
        uuid="421c5f0e-3c0b-2b3a-9d4f-528a1d9e2f11",
        firmware={"type": "uefi", "secure_boot": True},
        cpu={"sockets": 2, "cores": 2, "threads": 1},
        memory_mib=2048,
        disks=[
            {
                "id": "disk0",
                "bus": "scsi",
                "controller": "pvscsi",
                "capacity": 64 << 20,
                "format": "vmdk",
                "source": {"datastore": "datastore1", "file": "web01/web01.vmdk"},
                "boot_order": 1,
            },
            {
                "id": "disk1",
                "bus": "nvme",
                "capacity": 32 << 20,
                "format": "vmdk",
                "source": {"path": "/vmfs/volumes/fast-ds/web01/data.vmdk"},
            },
        ],
        nics=[
            {"mac": "00:50:56:aa:bb:cc", "network": "VM Network", "model": "vmxnet3"},
            {"mac": "00:50:56:aa:bb:cd", "network": "DMZ", "model": "e1000e"},
        ],
        removable=[{"type": "cdrom", "bus": "ide", "path": None}],
        guest_os={"family": "linux", "id": "debian11_64Guest"},
        origin={"platform": "vsphere", "ref": "vm-42"},
    )


def kvm_spec():
    return _spec.new_spec(
        name="db01",
        firmware={"type": "bios", "secure_boot": False},
        disks=[
            {"id": "disk0", "bus": "virtio", "capacity": 1 << 30, "format": "qcow2", "source": {"pool": "default"}},
            {"id": "disk1", "bus": "scsi", "controller": "virtio-scsi", "capacity": 1 << 30, "source": {}},
        ],
        nics=[{"mac": "52:54:00:12:34:56", "network": "default", "model": "virtio"}],
        guest_os={"family": "linux", "osinfo": "http://debian.org/debian/12"},
    )


def by_field(changes):
    return {c["field"]: c for c in changes}


def test_new_spec_defaults_validate():
    spec = _spec.new_spec(name="x")
    assert spec["schema"] == _spec.SCHEMA_VERSION == 1
    assert _spec.validate(spec) is spec
    assert spec["disks"] == [] and spec["firmware"] == {"type": "bios", "secure_boot": False}


def test_new_spec_rejects_unknown_field(reliability):
    reliability("engine", "spec: an unknown field", "InputError \"unknown spec field 'colour'\"", "nothing made")
    with pytest.raises(InputError, match="unknown spec field 'colour'"):
        _spec.new_spec(name="x", colour="red")


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda s: s.pop("name"), "name"),
        (lambda s: s.update(schema=2), "schema"),
        (lambda s: s.update(uuid="not-a-uuid"), "uuid"),
        (lambda s: s["firmware"].update(type="efi"), "firmware.type"),
        (lambda s: s["firmware"].update(type="bios"), "firmware.secure_boot"),
        (lambda s: s["cpu"].update(cores=0), "cpu.cores"),
        (lambda s: s.update(memory_mib="2G"), "memory_mib"),
        (lambda s: s["disks"][1].update(capacity=-1), "disks[1].capacity"),
        (lambda s: s["disks"][1].update(id="disk0"), "disks[1].id"),
        (lambda s: s["disks"][1].update(id="a/b"), "disks[1].id"),
        (lambda s: s["disks"][0].update(bus="usb"), "disks[0].bus"),
        (lambda s: s["disks"][1].update(controller="pvscsi"), "disks[1].controller"),
        (lambda s: s["disks"][0].update(format="vdi"), "disks[0].format"),
        (lambda s: s["disks"][0].update(boot_order=0), "disks[0].boot_order"),
        (lambda s: s["nics"][1].update(mac="00:50:56:AA:BB"), "nics[1].mac"),
        (lambda s: s["nics"][0].update(model="ne2k"), "nics[0].model"),
        (lambda s: s["removable"][0].update(type="tape"), "removable[0].type"),
        (lambda s: s["guest_os"].update(family="beos"), "guest_os.family"),
        (lambda s: s["origin"].update(platform="xen"), "origin.platform"),
        (lambda s: s.update(disks={}), "disks"),
    ],
)
def test_validate_names_the_field_and_the_fix(mutate, field, reliability):
    reliability(
        "engine",
        "spec: field %s invalid or missing" % field,
        "InputError 'spec field %s ...' with a 'Fix:'" % field,
        "refused by validation: nothing made",
    )
    spec = vmware_spec()
    mutate(spec)
    with pytest.raises(InputError) as err:
        _spec.validate(spec)
    assert err.value.details["field"] == field
    assert "spec field %s " % field in err.value.message
    assert "Fix:" in err.value.message


def test_kvm_target_maps_vmware_devices_and_records_changes():
    spec = vmware_spec()
    before = copy.deepcopy(spec)
    new, changes = _spec.apply_maps(spec, "kvm", network_map={"VM Network": "default"})
    assert spec == before, "the input spec must not be modified"
    ch = by_field(changes)
    assert new["disks"][0]["bus"] == "virtio" and new["disks"][0]["controller"] is None
    assert ch["disks[0].bus"]["from"] == "scsi" and ch["disks[0].bus"]["to"] == "virtio"
    assert ch["disks[0].controller"] == {
        "field": "disks[0].controller",
        "from": "pvscsi",
        "to": None,
        "reason": ch["disks[0].bus"]["reason"],
    }
    assert "pvscsi" in ch["disks[0].bus"]["reason"]
    assert new["disks"][1]["bus"] == "virtio" and ch["disks[1].bus"]["from"] == "nvme"
    assert [n["model"] for n in new["nics"]] == ["virtio", "e1000e"]
    assert ch["nics[0].model"]["from"] == "vmxnet3" and ch["nics[0].model"]["to"] == "virtio"
    assert "nics[1].model" not in ch  # e1000e exists on KVM
    assert new["nics"][0]["network"] == "default" and ch["nics[0].network"]["reason"] == "network_map"
    assert new["nics"][1]["network"] == "DMZ"  # unmapped: passes through
    assert new["removable"][0]["bus"] == "sata"  # q35 (uefi) has no IDE
    assert new["guest_os"]["osinfo"] == "http://debian.org/debian/11"
    for c in changes:
        assert set(c) == {"field", "from", "to", "reason"} and c["reason"]
    _spec.validate(new)


def test_kvm_keeps_what_kvm_has():
    new, changes = _spec.apply_maps(kvm_spec(), "kvm")
    assert changes == []
    assert new["disks"][1]["controller"] == "virtio-scsi"


def test_vsphere_target_maps_virtio():
    new, changes = _spec.apply_maps(kvm_spec(), "vsphere", network_map={"default": "VM Network"})
    ch = by_field(changes)
    for i in (0, 1):
        assert (new["disks"][i]["bus"], new["disks"][i]["controller"]) == ("scsi", "pvscsi")
    assert ch["disks[0].bus"] == {
        "field": "disks[0].bus",
        "from": "virtio",
        "to": "scsi",
        "reason": ch["disks[0].bus"]["reason"],
    }
    assert ch["disks[1].controller"]["from"] == "virtio-scsi"
    assert "disks[1].bus" not in ch
    assert new["nics"][0]["model"] == "vmxnet3" and ch["nics[0].model"]["from"] == "virtio"
    assert new["nics"][0]["network"] == "VM Network"
    assert new["guest_os"]["id"] == "debian12_64Guest"  # from the osinfo id
    _spec.validate(new)


def test_hyperv_generation_rules():
    bios = kvm_spec()
    new, changes = _spec.apply_maps(bios, "hyperv")
    assert [d["bus"] for d in new["disks"]] == ["ide", "scsi"]
    assert [d["controller"] for d in new["disks"]] == [None, None]
    assert new["nics"][0]["model"] == "hyperv"
    assert by_field(changes)["disks[0].bus"]["reason"].startswith("Hyper-V generation 1")

    uefi = vmware_spec()
    new = _spec.apply_maps(uefi, "hyperv")[0]
    assert [d["bus"] for d in new["disks"]] == ["scsi", "scsi"]
    assert new["removable"][0]["bus"] == "scsi"
    assert {n["model"] for n in new["nics"]} == {"hyperv"}


def test_network_map_to_bridge_and_strict(reliability):
    reliability(
        "engine",
        "a NIC's network missing from network_map (strict), or a map value of the wrong type",
        "InputError \"network 'DMZ' of nics[1] ... not in network_map\" with \"add 'DMZ' to network_map\"; "
        "'network_map value ...'",
        "nothing translated",
    )
    spec = kvm_spec()
    new, changes = _spec.apply_maps(spec, "kvm", network_map={"default": {"name": "br0", "type": "bridge"}})
    assert (new["nics"][0]["network"], new["nics"][0]["network_type"]) == ("br0", "bridge")
    assert by_field(changes)["nics[0].network_type"]["to"] == "bridge"

    with pytest.raises(InputError, match=r"network 'DMZ' of nics\[1\].*not in network_map") as err:
        _spec.apply_maps(vmware_spec(), "kvm", network_map={"VM Network": "default"}, strict=True)
    assert "add 'DMZ' to network_map" in err.value.message

    with pytest.raises(InputError, match="network_map value"):
        _spec.apply_maps(spec, "kvm", network_map={"default": 42})


def test_storage_map(reliability):
    reliability(
        "engine",
        "a disk's storage missing from storage_map (strict)",
        "InputError \"storage 'fast-ds' of disks[1] (disk1) is not in storage_map\"",
        "nothing translated",
    )
    spec = vmware_spec()
    new, changes = _spec.apply_maps(spec, "kvm", storage_map={"datastore1": "default"})
    assert new["disks"][0]["storage"] == "default"
    assert by_field(changes)["disks[0].storage"] == {
        "field": "disks[0].storage",
        "from": "datastore1",
        "to": "default",
        "reason": "storage_map",
    }
    # the second disk's storage comes from its /vmfs/volumes path and is not mapped
    assert new["disks"][1]["storage"] == "fast-ds"
    with pytest.raises(InputError, match=r"storage 'fast-ds' of disks\[1\] \(disk1\) is not in storage_map"):
        _spec.apply_maps(spec, "kvm", storage_map={"datastore1": "default"}, strict=True)


def test_apply_maps_rejects_unknown_target_and_invalid_spec(reliability):
    reliability(
        "engine",
        "an unknown target platform, or a spec with a bus the target cannot take",
        "InputError \"unknown target platform 'xen'\"; one naming disks[0].bus",
        "nothing translated",
    )
    with pytest.raises(InputError, match="unknown target platform 'xen'"):
        _spec.apply_maps(kvm_spec(), "xen")
    bad = kvm_spec()
    bad["disks"][0]["bus"] = "floppy"
    with pytest.raises(InputError, match=r"disks\[0\]\.bus"):
        _spec.apply_maps(bad, "vsphere")


def test_guest_os_tables():
    assert _spec.guest_family("windows2019srv_64Guest") == "windows"
    assert _spec.guest_family("http://ubuntu.com/ubuntu/24.04") == "linux"
    assert _spec.guest_family("freebsd13_64Guest") == "other"
    assert _spec.guest_id_for("http://ubuntu.com/ubuntu/24.04") == "ubuntu64Guest"
    assert _spec.guest_id_for("http://microsoft.com/win/2k19") == "windows2019srv_64Guest"
    assert _spec.guest_id_for(None, "linux") == "otherLinux64Guest"
    assert _spec.osinfo_for("rhel9_64Guest") == "http://redhat.com/rhel/9.0"
    assert _spec.storage_of({"path": "/var/lib/libvirt/images/a.qcow2"}) == "/var/lib/libvirt/images"
    assert _spec.storage_of({"pool": "default", "volume": "a"}) == "default"
