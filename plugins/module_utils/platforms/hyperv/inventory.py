# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding and describing Hyper-V VMs: the vm_info script's answer as neutral specs and facts.

The script (connection.SCRIPTS["vm_info"]) returns per VM what Get-VM, Get-VMMemory,
Get-VMFirmware, Get-VMHardDiskDrive, Get-VHD, Get-VMNetworkAdapter, Get-VMSnapshot and
Get-VMIntegrationService report, enum values already as names; everything below is plain
dict work, so it is unit-tested without a host.
"""

from __future__ import annotations

import ntpath

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import VmNotFoundError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

MIB = 1024 * 1024
# Names per vm_info call: each name lengthens the encoded command line (8191 characters).
NAMES_PER_CALL = 20
FORMATS = {"VHDX": "vhdx", "VHD": "vpc"}


def mac_colons(mac):
    """'00155D000042' (Hyper-V's form) -> '00:15:5d:00:00:42'; None for the all-zero MAC a
    dynamic adapter shows until the VM first starts."""
    mac = (mac or "").replace("-", "").replace(":", "").lower()
    if len(mac) != 12 or mac == "0" * 12:
        return None
    return ":".join(mac[i : i + 2] for i in range(0, 12, 2))


def vm_disks(raw):
    """The VM's hard disks in controller order (IDE before SCSI, then number, location),
    each with what Get-VHD says about its file."""
    vhds = {(v.get("Path") or "").lower(): v for v in raw.get("Vhds") or []}
    order = {"IDE": 0, "SCSI": 1}
    drives = sorted(
        raw.get("Drives") or [],
        key=lambda d: (order.get(d["ControllerType"], 9), d["ControllerNumber"], d["ControllerLocation"]),
    )
    out = []
    for d in drives:
        vhd = vhds.get((d.get("Path") or "").lower(), {})
        out.append(
            {
                "controller_type": d["ControllerType"],
                "controller_number": d["ControllerNumber"],
                "controller_location": d["ControllerLocation"],
                "path": d.get("Path"),
                "format": FORMATS.get(vhd.get("VhdFormat")),
                "vhd_type": vhd.get("VhdType"),
                "capacity": vhd.get("Size"),
                "file_size": vhd.get("FileSize"),
                "parent_path": vhd.get("ParentPath") or None,
            }
        )
    return out


def describe_vm(raw):
    """The neutral spec of one VM (docs/spec.md): generation 1 -> bios, 2 -> uefi."""
    gen2 = raw.get("Generation") == 2
    disks = []
    for i, d in enumerate(vm_disks(raw)):
        disks.append(
            {
                "id": "disk%d" % i,
                "bus": "ide" if d["controller_type"] == "IDE" else "scsi",
                # Hyper-V's SCSI controller is synthetic: no model the spec names.
                "controller": None,
                "capacity": d["capacity"],
                "format": d["format"],
                "source": {
                    "path": d["path"],
                    "controller_type": d["controller_type"],
                    "controller_number": d["controller_number"],
                    "controller_location": d["controller_location"],
                    "vhd_type": d["vhd_type"],
                    "parent_path": d["parent_path"],
                },
                "storage": ntpath.dirname(d["path"]) if d["path"] else None,
                "boot_order": 1 if i == 0 else None,
            }
        )
    nics = [
        {
            "mac": mac_colons(n.get("MacAddress")),
            "network": n.get("SwitchName") or None,
            "network_type": None,
            "model": "hyperv",
        }
        for n in raw.get("Nics") or []
    ]
    return _spec.new_spec(
        name=raw["Name"],
        uuid=(raw.get("Id") or "").lower() or None,
        firmware={"type": "uefi" if gen2 else "bios", "secure_boot": gen2 and raw.get("SecureBoot") == "On"},
        # Hyper-V gives a count of virtual processors; it shows them to the guest as cores.
        cpu={"sockets": 1, "cores": max(1, int(raw.get("ProcessorCount") or 1)), "threads": 1},
        memory_mib=max(1, int(raw.get("MemoryStartup") or 0) // MIB),
        disks=disks,
        nics=nics,
        # Hyper-V does not know the guest's OS without the KVP integration service's data.
        guest_os={"family": "other", "id": None, "osinfo": None, "description": None},
        annotations={"description": raw.get("Notes") or None, "title": None},
        origin={"platform": "hyperv", "ref": (raw.get("Id") or "").lower() or None},
    )


def vm_facts(raw):
    """What hyperv_vm_info returns for one VM: the spec plus Hyper-V's own facts."""
    # The provenance lives in Notes (platform.py writes it; imported here, not at the top,
    # because platform.py imports this module).
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import split_notes

    gen2 = raw.get("Generation") == 2
    vm_id = (raw.get("Id") or "").lower() or None
    return {
        "name": raw["Name"],
        "id": vm_id,
        # The name the other platforms' vm_info use for the id a provenance records, so the
        # roles read every platform alike.
        "uuid": vm_id,
        "provenance": split_notes(raw.get("Notes"))[1],
        "state": raw.get("State"),
        "generation": raw.get("Generation"),
        "processor_count": raw.get("ProcessorCount"),
        "memory": {
            "startup": raw.get("MemoryStartup"),
            "dynamic": bool(raw.get("DynamicMemoryEnabled")),
            "minimum": raw.get("MemoryMinimum"),
            "maximum": raw.get("MemoryMaximum"),
        },
        "firmware": {
            "type": "uefi" if gen2 else "bios",
            "secure_boot": gen2 and raw.get("SecureBoot") == "On",
            "secure_boot_template": (raw.get("SecureBootTemplate") or None) if gen2 else None,
        },
        "disks": vm_disks(raw),
        "differencing": any(v.get("VhdType") == "Differencing" for v in raw.get("Vhds") or []),
        "nics": [
            {
                "name": n.get("Name"),
                "mac": mac_colons(n.get("MacAddress")),
                "dynamic_mac": bool(n.get("DynamicMacAddressEnabled")),
                "switch": n.get("SwitchName") or None,
                "vlan_mode": n.get("VlanMode"),
                "vlan_id": n.get("AccessVlanId") or None,
            }
            for n in raw.get("Nics") or []
        ],
        "checkpoints": [
            {"name": c.get("Name"), "id": (c.get("Id") or "").lower() or None, "type": c.get("SnapshotType")}
            for c in raw.get("Checkpoints") or []
        ],
        "integration_services": [
            {"name": s.get("Name"), "enabled": bool(s.get("Enabled")), "status": s.get("Status")}
            for s in raw.get("IntegrationServices") or []
        ],
        "notes": raw.get("Notes") or "",
        "spec": describe_vm(raw),
    }


def read_vms(conn, names=None):
    """The raw vm_info answer for ``names`` (exact, case-insensitive: Hyper-V's names), or
    for every VM; a name that matches no VM is an InputError listing what exists."""
    names = list(names or [])
    if not names:
        return conn.run("vm_info", {"Names": []}, what="listing VMs")
    found = []
    for start in range(0, len(names), NAMES_PER_CALL):
        chunk = names[start : start + NAMES_PER_CALL]
        found.extend(conn.run("vm_info", {"Names": chunk}, vm=", ".join(chunk), what="describing VMs"))
    have = {vm["Name"].lower() for vm in found}
    missing = [n for n in names if n.lower() not in have]
    if missing:
        listing = sorted(conn.run("vm_names", {}, what="listing VMs"))
        raise VmNotFoundError(
            "VM %s not found on Hyper-V host %s" % (", ".join("'%s'" % n for n in missing), conn.host),
            "use one of the VMs the host has: %s" % (", ".join(listing[:50]) or "none"),
            vm=", ".join(missing),
        )
    return found
