"""platforms/hyperv/inventory.py: the vm_info answer as neutral specs and facts, and the
lookup by name (with a fake connection)."""

from __future__ import annotations

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _inv

GEN1 = {
    "Name": "old",
    "Id": "6F1E2D3C-0000-4000-8000-000000000001",
    "State": "Running",
    "Generation": 1,
    "ProcessorCount": 2,
    "Notes": "",
    "MemoryStartup": 536870912,
    "DynamicMemoryEnabled": True,
    "MemoryMinimum": 268435456,
    "MemoryMaximum": 1073741824,
    "SecureBoot": "",
    "SecureBootTemplate": None,
    # Out of order on purpose: the spec lists IDE first, then SCSI, by number and location.
    "Drives": [
        {"ControllerType": "SCSI", "ControllerNumber": 0, "ControllerLocation": 0, "Path": "D:\\VMs\\data.vhd"},
        {"ControllerType": "IDE", "ControllerNumber": 0, "ControllerLocation": 0, "Path": "D:\\VMs\\Boot.vhdx"},
    ],
    "Vhds": [
        {
            "Path": "D:\\VMs\\boot.vhdx",
            "VhdFormat": "VHDX",
            "VhdType": "Differencing",
            "Size": 1 << 30,
            "FileSize": 4 << 20,
            "ParentPath": "D:\\VMs\\base.vhdx",
        },
        {
            "Path": "D:\\VMs\\data.vhd",
            "VhdFormat": "VHD",
            "VhdType": "Fixed",
            "Size": 1 << 29,
            "FileSize": (1 << 29) + 512,
            "ParentPath": None,
        },
    ],  # fmt: skip
    "Nics": [
        {
            "Name": "Network Adapter",
            "MacAddress": "000000000000",
            "DynamicMacAddressEnabled": True,
            "SwitchName": "",
            "VlanMode": "Untagged",
            "AccessVlanId": 0,
        },
    ],  # fmt: skip
    "Checkpoints": [{"Name": "before upgrade", "Id": "ABC", "SnapshotType": "Standard"}],
    "IntegrationServices": [{"Name": "Heartbeat", "Enabled": True, "Status": "OK"}],
}

GEN2 = {
    "Name": "new",
    "Id": "6F1E2D3C-0000-4000-8000-000000000002",
    "State": "Off",
    "Generation": 2,
    "ProcessorCount": 4,
    "Notes": "keep me",
    "MemoryStartup": 2147483648,
    "DynamicMemoryEnabled": False,
    "MemoryMinimum": 536870912,
    "MemoryMaximum": 1099511627776,
    "SecureBoot": "On",
    "SecureBootTemplate": "MicrosoftUEFICertificateAuthority",
    "Drives": [{"ControllerType": "SCSI", "ControllerNumber": 0, "ControllerLocation": 0, "Path": "C:\\VMs\\new.vhdx"}],
    "Vhds": [
        {"Path": "C:\\VMs\\new.vhdx", "VhdFormat": "VHDX", "VhdType": "Dynamic", "Size": 8 << 30, "FileSize": 1 << 20}
    ],
    "Nics": [
        {
            "Name": "Network Adapter",
            "MacAddress": "00155D0A0B0C",
            "DynamicMacAddressEnabled": False,
            "SwitchName": "LAN",
            "VlanMode": "Access",
            "AccessVlanId": 12,
        },
    ],  # fmt: skip
    "Checkpoints": [],
    "IntegrationServices": [],
}


def test_generation_1_is_bios_with_ide_boot_disk_first():
    spec = _spec.validate(_inv.describe_vm(GEN1))
    assert spec["firmware"] == {"type": "bios", "secure_boot": False}
    assert spec["uuid"] == "6f1e2d3c-0000-4000-8000-000000000001" and spec["origin"]["platform"] == "hyperv"
    assert [(d["bus"], d["format"], d["capacity"], d["boot_order"]) for d in spec["disks"]] == [
        ("ide", "vhdx", 1 << 30, 1),
        ("scsi", "vpc", 1 << 29, None),
    ]
    assert spec["disks"][0]["source"]["parent_path"] == "D:\\VMs\\base.vhdx"  # Windows paths compare case-insensitively
    assert spec["disks"][0]["storage"] == "D:\\VMs"
    assert spec["cpu"] == {"sockets": 1, "cores": 2, "threads": 1} and spec["memory_mib"] == 512
    assert spec["nics"] == [{"mac": None, "network": None, "network_type": None, "model": "hyperv"}]


def test_generation_2_is_uefi_with_secure_boot_and_static_mac():
    spec = _spec.validate(_inv.describe_vm(GEN2))
    assert spec["firmware"] == {"type": "uefi", "secure_boot": True}
    assert spec["nics"][0]["mac"] == "00:15:5d:0a:0b:0c" and spec["nics"][0]["network"] == "LAN"
    assert spec["annotations"]["description"] == "keep me" and spec["memory_mib"] == 2048


def test_facts():
    facts = _inv.vm_facts(GEN1)
    assert facts["differencing"] is True and facts["state"] == "Running"
    assert facts["memory"] == {"startup": 536870912, "dynamic": True, "minimum": 268435456, "maximum": 1073741824}
    assert facts["firmware"]["secure_boot_template"] is None
    assert facts["nics"][0]["dynamic_mac"] is True and facts["nics"][0]["vlan_id"] is None
    assert facts["checkpoints"] == [{"name": "before upgrade", "id": "abc", "type": "Standard"}]
    facts = _inv.vm_facts(GEN2)
    assert facts["firmware"] == {
        "type": "uefi",
        "secure_boot": True,
        "secure_boot_template": "MicrosoftUEFICertificateAuthority",
    }
    assert facts["nics"][0]["vlan_id"] == 12


class FakeConn:
    host = "hv1"

    def __init__(self, vms):
        self.vms = vms
        self.calls = []

    def run(self, script, params, vm=None, what=None):
        self.calls.append((script, params))
        if script == "vm_names":
            return [v["Name"] for v in self.vms]
        want = {n.lower() for n in params["Names"]}
        return [v for v in self.vms if not want or v["Name"].lower() in want]


def test_read_vms_by_name_and_unknown_names():
    conn = FakeConn([GEN1, GEN2])
    assert [v["Name"] for v in _inv.read_vms(conn, ["NEW"])] == ["new"]
    with pytest.raises(InputError, match="VM 'gone' not found on Hyper-V host hv1") as err:
        _inv.read_vms(conn, ["new", "gone"])
    assert "new, old" in err.value.fix
    names = ["vm%d" % i for i in range(45)]
    conn = FakeConn([dict(GEN2, Name=n) for n in names])
    assert len(_inv.read_vms(conn, names)) == 45
    assert [len(p["Names"]) for s, p in conn.calls] == [20, 20, 5]  # the command line stays short
