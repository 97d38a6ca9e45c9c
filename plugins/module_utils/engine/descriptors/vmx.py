# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The neutral spec <-> VMware VMX files."""

from __future__ import annotations

import os
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors.common import (
    _check_support,
    _checked,
    _int,
    _mac,
    _probe_disks,
    _slots,
    _true,
    _uuid,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.spec import (
    GUEST_OS,
    cpu_count,
    guest_family,
    new_disk,
    new_nic,
    new_removable,
    new_spec,
    osinfo_for,
    storage_of,
    validate,
)

VMX_NIC_MODELS = {
    "vmxnet3": "vmxnet3",
    "vmxnet2": "vmxnet3",
    "vmxnet": "vmxnet3",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "vlance": "pcnet",
}
VMX_NIC_NAMES = {"vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e", "pcnet": "vlance"}

_VMX_LINE = re.compile(r"^\s*([^=\s]+)\s*=\s*(.*?)\s*$")
_VMX_SLOT = re.compile(r"^(scsi|sata|ide|nvme)(\d+):(\d+)\.")


def _vmx_unescape(value):
    # VMX escapes quotes, pipes and control characters as |XX (hex)
    return re.sub(r"\|([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), value)


def _vmx_escape(value):
    return "".join("|%02X" % ord(c) if c in '"|' or ord(c) < 32 else c for c in str(value))


def parse_vmx(text, what="VMX file"):
    """key = "value" lines -> {lower-case key: value}, in file order."""
    values = {}
    # Lines end at \n (or \r\n) only: str.splitlines() would also split a value at the
    # Unicode separators (NEL, U+2028) that VMX keeps unescaped in names and annotations.
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _VMX_LINE.match(line)
        if not match:
            raise InputError(
                '%s line %d is not `key = "value"`: %r' % (what, lineno, line[:80]),
                "repair the line or restore the VMX from a backup",
                line=lineno,
            )
        key, value = match.groups()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise InputError(
                    "%s line %d has an unterminated quoted value: %r" % (what, lineno, line[:80]),
                    "close the quote (VMX writes a quote inside a value as |22)",
                    line=lineno,
                )
            value = value[1:-1]
        values[key.lower()] = _vmx_unescape(value)
    return values


# VMX files name the guest OS by a key of their own ("debian11-64"), not by the API's
# guestId ("debian11_64Guest"); the rule below covers the regular names.
VMX_GUEST_EXCEPTIONS = {"windows9Server64Guest": "windows9srv-64", "otherGuest64": "other-64", "otherGuest": "other"}


def vmx_guest_key(guest_id):
    """VMX guestOS value for a vSphere guestId."""
    if guest_id in VMX_GUEST_EXCEPTIONS:
        return VMX_GUEST_EXCEPTIONS[guest_id]
    if not guest_id.endswith("Guest"):
        return guest_id
    key = guest_id[: -len("Guest")]
    key = re.sub(r"_?64$", "-64", key)
    return key.lower()


def guest_id_from_vmx(key):
    """vSphere guestId for a VMX guestOS value (known ids by table; others kept as written)."""
    if not key:
        return None
    for guest_id in list(GUEST_OS) + list(VMX_GUEST_EXCEPTIONS):
        if vmx_guest_key(guest_id) == key.lower():
            return guest_id
    return key


def spec_from_vmx(text, base_dir, what="VMX file"):
    """The spec of a VMX file; disk capacities from the VMDKs (qemu-img) when present."""
    return _spec_from_vmx(text, base_dir, what)[0]


def _spec_from_vmx(text, base_dir, what):
    vmx = parse_vmx(text, what)
    name = vmx.get("displayname")
    if not name:
        raise InputError("%s has no displayName" % what, 'add displayName = "<vm name>"')
    vcpus = _int(vmx.get("numvcpus", 1), what, "numvcpus", minimum=1)
    cores = _int(vmx.get("cpuid.corespersocket", 1), what, "cpuid.coresPerSocket")
    if cores < 1 or vcpus % cores:
        cores = 1
    memory = _int(vmx.get("memsize", 1024), what, "memsize", minimum=1)
    uefi = vmx.get("firmware", "bios").lower() == "efi"

    def resolve(file_name):
        if not file_name or base_dir is None:  # no base_dir: names as written, nothing probed
            return file_name or None
        return os.path.normpath(file_name if os.path.isabs(file_name) else os.path.join(base_dir, file_name))

    slots = []
    for key in vmx:
        match = _VMX_SLOT.match(key)
        if match and match.group(0)[:-1] not in slots:
            slots.append(match.group(0)[:-1])
    disks, removable = [], []
    hdd_order = vmx.get("bios.hddorder", "").split(",")[0].strip().lower()
    for slot in slots:
        if not _true(vmx.get(slot + ".present", "false")):
            continue
        bus = re.match(r"^[a-z]+", slot).group(0)
        dtype = vmx.get(slot + ".devicetype", "").lower()
        file_name = vmx.get(slot + ".filename")
        if "cdrom" in dtype:
            path = resolve(file_name) if dtype == "cdrom-image" else None
            # a cd-rom on NVMe (no such drive in schema 1) is re-attached on SATA by every target
            removable.append(new_removable(type="cdrom", bus=bus if bus != "nvme" else "sata", path=path))
            continue
        if not file_name or not (file_name.lower().endswith(".vmdk") or "disk" in dtype):
            continue
        controller = None
        if bus == "scsi":
            ctrl = slot.split(":")[0]
            dev = vmx.get(ctrl + ".virtualdev", "lsilogic").lower()
            controller = dev if dev in ("pvscsi", "lsilogic", "lsisas1068", "buslogic") else "lsilogic"
        source = {"path": resolve(file_name)}
        disks.append(
            new_disk(
                id="disk%d" % len(disks),
                bus=bus,
                controller=controller,
                format="vmdk",
                source=source,
                storage=storage_of(source),
                boot_order=1 if slot == hdd_order else None,
            )
        )
    for n in range(10):
        if _true(vmx.get("floppy%d.present" % n, "false")):
            fname = vmx.get("floppy%d.filename" % n)
            is_file = vmx.get("floppy%d.filetype" % n, "file") == "file" and fname and not fname.startswith("/dev/")
            removable.append(new_removable(type="floppy", bus="fdc", path=resolve(fname) if is_file else None))

    nic_ids = []
    for key in vmx:
        match = re.match(r"^ethernet(\d+)\.", key)
        if match and match.group(1) not in nic_ids:
            nic_ids.append(match.group(1))
    nics = []
    for n in nic_ids:
        pre = "ethernet%s." % n
        if not _true(vmx.get(pre + "present", "false")):
            continue
        if vmx.get(pre + "addresstype", "generated").lower() == "static":
            mac = vmx.get(pre + "address")
        else:
            mac = vmx.get(pre + "generatedaddress")
        nics.append(
            new_nic(
                mac=_mac(mac),
                network=vmx.get(pre + "networkname") or vmx.get(pre + "connectiontype") or None,
                model=VMX_NIC_MODELS.get(vmx.get(pre + "virtualdev", "e1000").lower(), "e1000"),
            )
        )

    guest_id = guest_id_from_vmx(vmx.get("guestos"))
    secure = uefi and _true(vmx.get("uefi.secureboot.enabled"))
    guest = {"family": guest_family(guest_id), "id": guest_id, "osinfo": osinfo_for(guest_id), "description": None}
    spec = new_spec(
        name=name,
        uuid=_uuid(vmx.get("vc.uuid") or vmx.get("uuid.bios")),
        firmware={"type": "uefi" if uefi else "bios", "secure_boot": secure},
        cpu={"sockets": vcpus // cores, "cores": cores, "threads": 1},
        memory_mib=memory,
        disks=disks,
        nics=nics,
        removable=removable,
        guest_os=guest,
        annotations={"description": vmx.get("annotation") or None, "title": None},
        origin={"platform": "vmx", "ref": None},
    )
    _checked(spec, what)
    missing = _probe_disks(spec) if base_dir is not None else []
    return spec, missing


def _vmx_uuid(uuid):
    h = uuid.replace("-", "")
    pairs = [h[i : i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


def vmx_from_spec(spec, disk_files):
    """A VMX for ``spec``; ``disk_files`` maps disk id -> VMDK file name (relative or absolute)."""
    validate(spec)
    _check_support(spec, "vsphere", "translate the spec for vSphere first (apply_maps(spec, 'vsphere'))")
    lines = []

    def put(key, value):
        lines.append('%s = "%s"' % (key, _vmx_escape(value)))

    put(".encoding", "UTF-8")
    put("config.version", "8")
    put("virtualHW.version", "19")
    put("displayName", spec["name"])
    if spec["guest_os"].get("id"):
        put("guestOS", vmx_guest_key(spec["guest_os"]["id"]))
    if spec["uuid"]:
        put("uuid.bios", _vmx_uuid(spec["uuid"]))
    put("memSize", spec["memory_mib"])
    cpu = spec["cpu"]
    put("numvcpus", cpu_count(spec))
    put("cpuid.coresPerSocket", cpu["cores"] * cpu["threads"])
    if spec["firmware"]["type"] == "uefi":
        put("firmware", "efi")
        put("uefi.secureBoot.enabled", "TRUE" if spec["firmware"]["secure_boot"] else "FALSE")
    else:
        put("firmware", "bios")
    if spec["annotations"].get("description"):
        put("annotation", spec["annotations"]["description"])
    scsi_ctrls, disk_slots, rem_slots = _slots(spec)
    for model, n in scsi_ctrls.items():
        put("scsi%d.present" % n, "TRUE")
        put("scsi%d.virtualDev" % n, model)
    for bus in ("sata", "nvme"):
        if any(s[0] == bus + "0" for s in disk_slots + [r for r in rem_slots if r]):
            put(bus + "0.present", "TRUE")
    boot = min((d for d in spec["disks"] if d["boot_order"]), key=lambda d: d["boot_order"], default=None)
    for disk, (prefix, unit) in zip(spec["disks"], disk_slots, strict=True):
        if disk["id"] not in disk_files:
            raise InputError("no VMDK file given for disk %s" % disk["id"], "pass disk_files={%r: ...}" % disk["id"])
        slot = "%s:%d" % (prefix, unit)
        put(slot + ".present", "TRUE")
        put(slot + ".fileName", disk_files[disk["id"]])
        put(slot + ".deviceType", "scsi-hardDisk" if disk["bus"] == "scsi" else "disk")
        if disk is boot:
            put("bios.hddOrder", slot)
    for item, slot_info in zip(spec["removable"], rem_slots, strict=True):
        if slot_info is None:
            continue
        slot = "%s:%d" % slot_info
        put(slot + ".present", "TRUE")
        if item["path"]:
            put(slot + ".deviceType", "cdrom-image")
            put(slot + ".fileName", item["path"])
        else:
            put(slot + ".deviceType", "atapi-cdrom")
            put(slot + ".fileName", "auto detect")
            put(slot + ".startConnected", "FALSE")
    floppies = [r for r in spec["removable"] if r["type"] == "floppy"]
    for n, item in enumerate(floppies):
        put("floppy%d.present" % n, "TRUE")
        if item["path"]:
            put("floppy%d.fileType" % n, "file")
            put("floppy%d.fileName" % n, item["path"])
    if not floppies:
        put("floppy0.present", "FALSE")
    for n, nic in enumerate(spec["nics"]):
        pre = "ethernet%d." % n
        put(pre + "present", "TRUE")
        put(pre + "virtualDev", VMX_NIC_NAMES[nic["model"]])
        if nic["network"]:
            put(pre + "networkName", nic["network"])
        if nic["mac"]:
            put(pre + "addressType", "static")
            put(pre + "address", nic["mac"])
            if not nic["mac"].startswith("00:50:56"):
                put(pre + "checkMACAddress", "FALSE")  # keep the source's MAC outside VMware's range
        else:
            put(pre + "addressType", "generated")
    return "\n".join(lines) + "\n"
