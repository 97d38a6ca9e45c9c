# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The neutral VM spec: schema (version 1), validation, and network/storage/bus maps.

The spec is a plain dict so that modules can return it and bundles can store it as
JSON. docs/spec.md documents every field; the file-format translations live in
engine/descriptors/ (one module per format).
"""

from __future__ import annotations

import copy
import os
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.profiles import PROFILES

SCHEMA_VERSION = 1

PLATFORMS = ("kvm", "vsphere", "hyperv")
ORIGINS = PLATFORMS + ("vmx", "ovf", "ova", "libvirt")
FIRMWARES = ("bios", "uefi")
BUSES = ("virtio", "scsi", "sata", "ide", "nvme")
CONTROLLERS = ("virtio-scsi", "pvscsi", "lsilogic", "lsisas1068", "buslogic")
FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc")
NIC_MODELS = ("virtio", "e1000", "e1000e", "vmxnet3", "rtl8139", "pcnet", "hyperv")
NETWORK_TYPES = ("bridge", "direct", "user")
REMOVABLE_TYPES = ("cdrom", "floppy")
REMOVABLE_BUSES = ("sata", "ide", "scsi", "fdc")
OS_FAMILIES = ("linux", "windows", "other")

# What each target platform can attach: the facts live in platforms/profiles.PROFILES.
_HARDWARE = ("buses", "controllers", "nic_models", "default_bus", "default_controller", "default_nic")
SUPPORT = {name: {k: profile[k] for k in _HARDWARE} for name, profile in PROFILES.items()}

# Guest OS hints: vSphere guestId -> family and libvirt osinfo id. The spec's
# guest_os.id uses vSphere guestIds because VMX and OVF carry them already; osinfo
# URLs are what libvirt metadata carries.
GUEST_OS = {
    "debian10_64Guest": ("linux", "http://debian.org/debian/10"),
    "debian11_64Guest": ("linux", "http://debian.org/debian/11"),
    "debian12_64Guest": ("linux", "http://debian.org/debian/12"),
    "ubuntu64Guest": ("linux", "http://ubuntu.com/ubuntu/22.04"),
    "rhel7_64Guest": ("linux", "http://redhat.com/rhel/7.9"),
    "rhel8_64Guest": ("linux", "http://redhat.com/rhel/8.0"),
    "rhel9_64Guest": ("linux", "http://redhat.com/rhel/9.0"),
    "centos8_64Guest": ("linux", "http://centos.org/centos/8"),
    "sles15_64Guest": ("linux", "http://suse.com/sles/15"),
    "other5xLinux64Guest": ("linux", "http://libosinfo.org/linux/2022"),
    "otherLinux64Guest": ("linux", "http://libosinfo.org/linux/2020"),
    "windows9Server64Guest": ("windows", "http://microsoft.com/win/2k16"),
    "windows2019srv_64Guest": ("windows", "http://microsoft.com/win/2k19"),
    "windows2019srvNext_64Guest": ("windows", "http://microsoft.com/win/2k22"),
    "windows9_64Guest": ("windows", "http://microsoft.com/win/10"),
    "windows11_64Guest": ("windows", "http://microsoft.com/win/11"),
    "otherGuest64": ("other", None),
}
# The guestId to use when only the family (or a distribution name) is known.
DEFAULT_GUEST_ID = {
    "debian": "debian11_64Guest",
    "ubuntu": "ubuntu64Guest",
    "rhel": "rhel8_64Guest",
    "centos": "centos8_64Guest",
    "sles": "sles15_64Guest",
    "linux": "otherLinux64Guest",
    "windows": "windows2019srv_64Guest",
    "other": "otherGuest64",
}

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def guest_family(guest_id):
    """Family (linux/windows/other) of a vSphere guestId or osinfo URL, by table then by name."""
    if not guest_id:
        return "other"
    if guest_id in GUEST_OS:
        return GUEST_OS[guest_id][0]
    low = guest_id.lower()
    if "win" in low:
        return "windows"
    if any(word in low for word in ("linux", "debian", "ubuntu", "rhel", "redhat", "centos", "sles", "suse", "fedora")):
        return "linux"
    return "other"


def osinfo_for(guest_id):
    """libvirt osinfo URL for a vSphere guestId, or None."""
    entry = GUEST_OS.get(guest_id or "")
    return entry[1] if entry else None


def guest_id_for(osinfo=None, family=None):
    """vSphere guestId for an osinfo URL (exact, then by distribution) or a family."""
    if osinfo:
        for guest_id, (_fam, url) in GUEST_OS.items():
            if url == osinfo:
                return guest_id
        for distro in ("debian", "ubuntu", "rhel", "centos", "sles"):
            if "/%s/" % distro in osinfo:
                return DEFAULT_GUEST_ID[distro]
        if "microsoft.com/win" in osinfo:
            return DEFAULT_GUEST_ID["windows"]
    return DEFAULT_GUEST_ID.get(family or "other", DEFAULT_GUEST_ID["other"])


def new_spec(**fields):
    """A spec with every field at its default, updated with ``fields``."""
    spec = {
        "schema": SCHEMA_VERSION,
        "name": None,
        "uuid": None,
        "firmware": {"type": "bios", "secure_boot": False},
        "cpu": {"sockets": 1, "cores": 1, "threads": 1},
        "memory_mib": 1024,
        "disks": [],
        "nics": [],
        "removable": [],
        "guest_os": {"family": "other", "id": None, "osinfo": None, "description": None},
        "annotations": {"description": None, "title": None},
        "origin": {"platform": None, "ref": None},
    }
    for key, value in fields.items():
        if key not in spec:
            raise InputError("unknown spec field %r" % key, "use one of %s" % ", ".join(sorted(spec)))
        if isinstance(spec[key], dict) and isinstance(value, dict):
            spec[key].update(value)
        else:
            spec[key] = value
    spec["disks"] = [new_disk(**d) for d in spec["disks"]]
    spec["nics"] = [new_nic(**n) for n in spec["nics"]]
    spec["removable"] = [new_removable(**r) for r in spec["removable"]]
    return spec


def new_disk(**fields):
    disk = {
        "id": None,
        "bus": "virtio",
        "controller": None,
        "capacity": None,
        "format": None,
        "source": {},
        "storage": None,
        "boot_order": None,
    }
    disk.update(fields)
    return disk


def new_nic(**fields):
    nic = {"mac": None, "network": None, "network_type": None, "model": "virtio"}
    nic.update(fields)
    return nic


def new_removable(**fields):
    item = {"type": "cdrom", "bus": "sata", "path": None}
    item.update(fields)
    return item


def cpu_count(spec):
    cpu = spec["cpu"]
    return cpu["sockets"] * cpu["cores"] * cpu["threads"]


def storage_of(source):
    """The storage location a disk's source lives in: pool, datastore, or directory."""
    source = source or {}
    for key in ("pool", "datastore"):
        if source.get(key):
            return source[key]
    path = source.get("path") or source.get("dev")
    if path:
        match = re.match(r"^/vmfs/volumes/([^/]+)/", path)
        if match:
            return match.group(1)
        return os.path.dirname(path) or None
    return None


# ---------------------------------------------------------------- validation


def _fail(path, problem, fix):
    raise InputError("spec field %s %s" % (path, problem), fix, field=path)


def _need_dict(value, path):
    if not isinstance(value, dict):
        _fail(path, "must be a mapping, got %s" % type(value).__name__, "give %s as a mapping" % path)
    return value


def _need_int(value, path, minimum=0, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, "must be an integer >= %d, got %r" % (minimum, value), "set %s to a whole number" % path)


def _need_choice(value, path, choices, allow_none=False):
    if value is None and allow_none:
        return
    if value not in choices:
        _fail(
            path,
            "is %r, which is not one of %s" % (value, ", ".join(choices)),
            "set %s to one of %s%s" % (path, ", ".join(choices), " or null" if allow_none else ""),
        )


def _need_str(value, path, allow_none=False):
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        _fail(path, "must be a non-empty string, got %r" % (value,), "set %s to a string" % path)


def validate(spec):
    """Check a spec against schema 1; raise InputError naming the field and the fix.

    Returns the spec unchanged so that callers can write ``spec = validate(load())``.
    """
    _need_dict(spec, "spec")
    if spec.get("schema") != SCHEMA_VERSION:
        _fail(
            "schema",
            "is %r; this collection reads spec schema %d" % (spec.get("schema"), SCHEMA_VERSION),
            "re-create the spec with this collection's version (descriptor_info or export)",
        )
    _need_str(spec.get("name"), "name")
    uuid = spec.get("uuid")
    if uuid is not None and not (isinstance(uuid, str) and _UUID_RE.match(uuid)):
        _fail("uuid", "is %r, not a lower-case UUID" % (uuid,), "give a UUID like 6f1e2d3c-... or null")
    fw = _need_dict(spec.get("firmware"), "firmware")
    _need_choice(fw.get("type"), "firmware.type", FIRMWARES)
    if not isinstance(fw.get("secure_boot"), bool):
        _fail("firmware.secure_boot", "must be true or false", "set firmware.secure_boot to a boolean")
    if fw["secure_boot"] and fw["type"] != "uefi":
        _fail("firmware.secure_boot", "is true with bios firmware", "set firmware.type to uefi or secure_boot false")
    cpu = _need_dict(spec.get("cpu"), "cpu")
    for key in ("sockets", "cores", "threads"):
        _need_int(cpu.get(key), "cpu." + key, minimum=1)
    _need_int(spec.get("memory_mib"), "memory_mib", minimum=1)

    disks = spec.get("disks")
    if not isinstance(disks, list):
        _fail("disks", "must be a list", "give disks as a list (it may be empty)")
    seen = set()
    for i, disk in enumerate(disks):
        where = "disks[%d]" % i
        _need_dict(disk, where)
        _need_str(disk.get("id"), where + ".id")
        if not re.match(r"^[A-Za-z0-9_.-]+$", disk["id"]):
            _fail(where + ".id", "is %r; ids become file names" % disk["id"], "use letters, digits, '-', '_', '.'")
        if disk["id"] in seen:
            _fail(where + ".id", "repeats %r" % disk["id"], "give every disk its own id")
        seen.add(disk["id"])
        _need_choice(disk.get("bus"), where + ".bus", BUSES)
        _need_choice(disk.get("controller"), where + ".controller", CONTROLLERS, allow_none=True)
        if disk.get("controller") and disk["bus"] != "scsi":
            _fail(
                where + ".controller",
                "is %r but bus is %r" % (disk["controller"], disk["bus"]),
                "set controller only for bus scsi, null otherwise",
            )
        _need_int(disk.get("capacity"), where + ".capacity", allow_none=True)
        _need_choice(disk.get("format"), where + ".format", FORMATS, allow_none=True)
        source = _need_dict(disk.get("source"), where + ".source")
        for key in ("path", "dev", "pool", "datastore"):  # the keys storage_of reads
            _need_str(source.get(key), "%s.source.%s" % (where, key), allow_none=True)
        _need_str(disk.get("storage"), where + ".storage", allow_none=True)
        _need_int(disk.get("boot_order"), where + ".boot_order", minimum=1, allow_none=True)

    nics = spec.get("nics")
    if not isinstance(nics, list):
        _fail("nics", "must be a list", "give nics as a list (it may be empty)")
    for i, nic in enumerate(nics):
        where = "nics[%d]" % i
        _need_dict(nic, where)
        mac = nic.get("mac")
        if mac is not None and not (isinstance(mac, str) and _MAC_RE.match(mac)):
            _fail(where + ".mac", "is %r, not a lower-case MAC address" % (mac,), "write it as 52:54:00:12:34:56")
        _need_str(nic.get("network"), where + ".network", allow_none=True)
        _need_choice(nic.get("network_type"), where + ".network_type", NETWORK_TYPES, allow_none=True)
        _need_choice(nic.get("model"), where + ".model", NIC_MODELS)

    removable = spec.get("removable")
    if not isinstance(removable, list):
        _fail("removable", "must be a list", "give removable as a list (it may be empty)")
    for i, item in enumerate(removable):
        where = "removable[%d]" % i
        _need_dict(item, where)
        _need_choice(item.get("type"), where + ".type", REMOVABLE_TYPES)
        _need_choice(item.get("bus"), where + ".bus", REMOVABLE_BUSES)
        _need_str(item.get("path"), where + ".path", allow_none=True)

    guest = _need_dict(spec.get("guest_os"), "guest_os")
    _need_choice(guest.get("family"), "guest_os.family", OS_FAMILIES)
    for key in ("id", "osinfo", "description"):
        _need_str(guest.get(key), "guest_os." + key, allow_none=True)
    notes = _need_dict(spec.get("annotations"), "annotations")
    for key in ("description", "title"):
        if notes.get(key) is not None and not isinstance(notes[key], str):
            _fail("annotations." + key, "must be a string or null", "set annotations.%s to text" % key)
    origin = _need_dict(spec.get("origin"), "origin")
    _need_choice(origin.get("platform"), "origin.platform", ORIGINS, allow_none=True)
    return spec


# ---------------------------------------------------------------- maps


def _mapped_network(value):
    """A network_map value: 'name' or {name: ..., type: bridge|direct|null}."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and value.get("name"):
        return value["name"], value.get("type")
    raise InputError(
        "network_map value %r is neither a name nor {name: ..., type: ...}" % (value,),
        "map each source network to a target network name, e.g. {'VM Network': 'default'}",
    )


def apply_maps(spec, target_platform, network_map=None, storage_map=None, strict=False):
    """Translate ``spec`` for ``target_platform``; return (new_spec, changes).

    - network_map: source network name -> target network (a name, or
      {name, type} where type 'bridge' makes a libvirt bridge interface).
    - storage_map: source storage (pool, datastore or directory, see storage_of)
      -> target pool / datastore / directory.
    A network or storage location absent from its map passes through unchanged,
    unless ``strict`` is true: then it is an InputError naming it.
    Disk buses, SCSI controllers, NIC models and removable-media buses the target
    lacks become the target's default. Every change is recorded as
    {field, from, to, reason}. The input spec is not modified.
    """
    if target_platform not in SUPPORT:
        raise InputError(
            "unknown target platform %r" % (target_platform,),
            "use one of %s" % ", ".join(PLATFORMS),
        )
    validate(spec)
    new = copy.deepcopy(spec)
    changes = []
    sup = SUPPORT[target_platform]

    def change(field, old, value, reason):
        changes.append({"field": field, "from": old, "to": value, "reason": reason})

    for i, nic in enumerate(new["nics"]):
        where = "nics[%d]" % i
        if network_map is not None and nic["network"] in network_map:
            name, ntype = _mapped_network(network_map[nic["network"]])
            if name != nic["network"]:
                change(where + ".network", nic["network"], name, "network_map")
                nic["network"] = name
            if ntype != nic["network_type"]:
                change(where + ".network_type", nic["network_type"], ntype, "network_map")
                nic["network_type"] = ntype
        elif strict and network_map is not None:
            raise InputError(
                "network %r of %s (%s) is not in network_map" % (nic["network"], where, nic["mac"]),
                "add %r to network_map, or run without strict" % (nic["network"],),
            )
        if target_platform != "kvm" and nic["network_type"] is not None:
            reason = "%s has no libvirt interface types" % target_platform
            change(where + ".network_type", nic["network_type"], None, reason)
            nic["network_type"] = None
        if nic["model"] not in sup["nic_models"]:
            change(
                where + ".model",
                nic["model"],
                sup["default_nic"],
                "%s has no %s NIC; %s is its default" % (target_platform, nic["model"], sup["default_nic"]),
            )
            nic["model"] = sup["default_nic"]

    for i, disk in enumerate(new["disks"]):
        where = "disks[%d]" % i
        disk["storage"] = disk.get("storage") or storage_of(disk.get("source"))
        if storage_map is not None and disk["storage"] in storage_map:
            target = storage_map[disk["storage"]]
            if target != disk["storage"]:
                change(where + ".storage", disk["storage"], target, "storage_map")
                disk["storage"] = target
        elif strict and storage_map is not None:
            raise InputError(
                "storage %r of %s (%s) is not in storage_map" % (disk["storage"], where, disk["id"]),
                "add %r to storage_map, or run without strict" % (disk["storage"],),
            )
        _map_bus(new, disk, where, target_platform, change)

    for i, item in enumerate(new["removable"]):
        where = "removable[%d]" % i
        bus = item["bus"]
        if item["type"] == "floppy":
            # a floppy stays on the floppy controller (Hyper-V gen 2 importers report it);
            # schema 1 lets a spec name another bus, which no writer can attach it to
            if bus != "fdc":
                change(where + ".bus", bus, "fdc", "a floppy drive attaches to the floppy controller")
                item["bus"] = "fdc"
            continue
        if target_platform == "hyperv":
            want = "scsi" if new["firmware"]["type"] == "uefi" else "ide"
        elif target_platform == "kvm" and bus == "ide" and new["firmware"]["type"] == "uefi":
            want = "sata"  # q35, which uefi guests use, has no IDE controller
        else:
            want = bus if bus in ("sata", "ide") else "sata"
        if want != bus:
            change(where + ".bus", bus, want, "%s attaches a %s there" % (target_platform, item["type"]))
            item["bus"] = want

    if target_platform == "vsphere" and not new["guest_os"].get("id"):
        guest_id = guest_id_for(new["guest_os"].get("osinfo"), new["guest_os"]["family"])
        change("guest_os.id", None, guest_id, "vSphere needs a guestId")
        new["guest_os"]["id"] = guest_id
    if target_platform == "kvm" and not new["guest_os"].get("osinfo"):
        url = osinfo_for(new["guest_os"].get("id"))
        if url:
            change("guest_os.osinfo", None, url, "libvirt metadata names the OS by osinfo id")
            new["guest_os"]["osinfo"] = url
    return new, changes


def _boot_disk(spec):
    """The disk a bios guest boots from: lowest boot_order, else the first."""
    ordered = [d for d in spec["disks"] if d.get("boot_order")]
    if ordered:
        return min(ordered, key=lambda d: d["boot_order"])
    return spec["disks"][0] if spec["disks"] else None


def _map_bus(spec, disk, where, target, change):
    bus, ctrl = disk["bus"], disk.get("controller")
    if target == "kvm":
        if bus == "scsi" and ctrl != "virtio-scsi":
            new_bus, new_ctrl = "virtio", None
            reason = "KVM has no %s controller; virtio-blk is its default disk bus" % (ctrl or "synthetic SCSI")
        elif bus == "nvme":
            new_bus, new_ctrl = "virtio", None
            reason = "libvirt 9 has no NVMe disk bus; virtio-blk is the KVM default"
        elif bus == "ide" and spec["firmware"]["type"] == "uefi":
            new_bus, new_ctrl = "sata", None
            reason = "q35 (used for uefi) has no IDE controller; SATA instead"
        else:
            return
    elif target == "vsphere":
        if bus == "virtio" or (bus == "scsi" and ctrl not in SUPPORT["vsphere"]["controllers"]):
            new_bus, new_ctrl = "scsi", "pvscsi"
            reason = "vSphere has no %s; pvscsi is its paravirtual SCSI controller" % (
                "virtio-blk" if bus == "virtio" else (ctrl or "synthetic SCSI")
            )
        else:
            return
    else:  # hyperv
        gen1_boot = spec["firmware"]["type"] == "bios" and disk is _boot_disk(spec)
        if gen1_boot:
            new_bus, new_ctrl = "ide", None
            reason = "Hyper-V generation 1 (bios) boots from IDE"
        else:
            new_bus, new_ctrl = "scsi", None
            reason = "Hyper-V attaches data disks (and generation 2 boot disks) to its synthetic SCSI controller"
        if (new_bus, new_ctrl) == (bus, ctrl):
            return
    if new_bus != bus:
        change(where + ".bus", bus, new_bus, reason)
    if new_ctrl != ctrl:
        change(where + ".controller", ctrl, new_ctrl, reason)
    disk["bus"], disk["controller"] = new_bus, new_ctrl
