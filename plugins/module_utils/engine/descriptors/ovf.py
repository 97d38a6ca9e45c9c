# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The neutral spec <-> OVF descriptors (DMTF 1.x/2.x, VMware's vmw: dialect) and OVA archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import tarfile
import xml.etree.ElementTree as ET
import zlib

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import make_dirs, open_private, publish
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors.common import (
    GiB,
    KiB,
    MiB,
    _check_support,
    _checked,
    _int,
    _local,
    _mac,
    _parse_xml,
    _slots,
    _sub,
    _to_text,
    _true,
    _uuid,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.spec import (
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

OVF1_NS = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2_NS = "http://schemas.dmtf.org/ovf/envelope/2"
RASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
CIM_NS = "http://schemas.dmtf.org/wbem/wscim/1/common"
VMW_NS = "http://www.vmware.com/schema/ovf"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
VMDK_STREAM_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
OVF_DISK_FORMATS = {
    "vmdk": VMDK_STREAM_URI,
    "qcow2": "http://www.gnome.org/~markmc/qcow-image-format.html",
    "vpc": "http://go.microsoft.com/fwlink/?LinkId=137171",
}
OVF_NIC_MODELS = {
    "vmxnet3": "vmxnet3",
    "vmxnet2": "vmxnet3",
    "vmxnet": "vmxnet3",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "pcnet32": "pcnet",
    "virtio": "virtio",
    "virtio-net": "virtio",
}
OVF_NIC_NAMES = {"vmxnet3": "VmxNet3", "e1000": "E1000", "e1000e": "E1000e", "pcnet": "PCNet32"}
OVF_SCSI_MODELS = {
    "lsilogic": "lsilogic",
    "buslogic": "buslogic",
    "lsilogicsas": "lsisas1068",
    "virtualscsi": "pvscsi",
    "virtio-scsi": "virtio-scsi",
}
OVF_SCSI_NAMES = {"lsilogic": "lsilogic", "buslogic": "buslogic", "lsisas1068": "lsilogicsas", "pvscsi": "VirtualSCSI"}
# CIM_OperatingSystem OsType numbers, used by OVF's OperatingSystemSection ovf:id;
# vmw:osType carries the exact guestId and wins when present.
CIM_OS = {
    "debian": 96,
    "ubuntu": 94,
    "rhel": 80,
    "centos": 107,
    "sles": 85,
    "linux": 101,
    "windows": 103,
    "other": 102,
}
CIM_LINUX = {36, 79, 80, 82, 83, 84, 85, 89, 90, 93, 94, 95, 96, 97, 98, 99, 100, 101, 106, 107, 108, 109}
CIM_WINDOWS = {58, 63, 67, 69, 70, 71, 72, 73, 74, 75, 76, 77, 103, 105, 111, 112, 113, 114, 115, 116}


def _ovf_units(units, what):
    """OVF allocation units ('byte * 2^30', 'byte', 'MegaBytes') -> bytes per unit."""
    if not units:
        return 1
    u = units.replace(" ", "").lower()
    words = {"byte": 1, "bytes": 1, "kilobytes": KiB, "megabytes": MiB, "gigabytes": GiB}
    if u in words:
        return words[u]
    # bounded digits: 'byte * 2^99999999' must not make Python build a 12 MB number
    match = re.fullmatch(r"bytes?\*([0-9]{1,20})(?:\^([0-9]{1,3}))?", u)
    if match:
        factor = int(match.group(1)) ** int(match.group(2) or 1)
        if 1 <= factor <= 1 << 60:
            return factor
    shown = units if len(units) <= 40 else units[:40] + "..."
    raise InputError("%s: unknown allocation units %r" % (what, shown), "use 'byte * 2^N' (N up to 60)")


def _attr(el, name):
    """An ovf: attribute of either OVF version (or unqualified, as some tools write)."""
    for ns in (OVF1_NS, OVF2_NS):
        value = el.get("{%s}%s" % (ns, name))
        if value is not None:
            return value
    return el.get(name)


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _child(el, name):
    found = _children(el, name)
    return found[0] if found else None


def spec_from_ovf(text, base_dir, what="OVF descriptor"):
    """The spec of an OVF descriptor; disks resolve against ``base_dir``."""
    return _spec_from_ovf(text, base_dir, what)[0]


def _spec_from_ovf(text, base_dir, what, present=None):
    """(spec, missing). ``present``: file names known to exist (an OVA's members) instead of base_dir."""
    root = _parse_xml(text, what)
    if _local(root.tag) != "Envelope":
        raise InputError("%s: root element is <%s>, not an OVF <Envelope>" % (what, _local(root.tag)), "give an OVF")
    files = {}
    refs = _child(root, "References")
    for f in _children(refs, "File") if refs is not None else []:
        files[_attr(f, "id")] = _attr(f, "href") or None  # href='' names no file
    disk_defs = {}
    section = _child(root, "DiskSection")
    for d in _children(section, "Disk") if section is not None else []:
        capacity = _attr(d, "capacity")
        units = _ovf_units(_attr(d, "capacityAllocationUnits"), what)
        disk_defs[_attr(d, "diskId")] = {
            "capacity": _int(capacity, what, "Disk capacity", minimum=0) * units if capacity else None,
            "href": files.get(_attr(d, "fileRef")),
            "format_uri": _attr(d, "format") or "",
        }
    vs = _child(root, "VirtualSystem")
    if vs is None:
        vs = next(iter(root.iter("{%s}VirtualSystem" % OVF1_NS)), None) or next(
            iter(root.iter("{%s}VirtualSystem" % OVF2_NS)), None
        )
    if vs is None:
        raise InputError("%s has no VirtualSystem" % what, "export a single VM (a vApp is not supported)")
    name = (vs.findtext("{%s}Name" % OVF1_NS) or vs.findtext("{%s}Name" % OVF2_NS) or _attr(vs, "id") or "").strip()
    hw = _child(vs, "VirtualHardwareSection")
    if hw is None:
        raise InputError("%s has no VirtualHardwareSection" % what, "re-export the VM")

    config = {}
    for el in _children(hw, "Config") + _children(hw, "ExtraConfig"):
        config[el.get("{%s}key" % VMW_NS)] = el.get("{%s}value" % VMW_NS)
    items = []
    for el in hw:
        if _local(el.tag) in ("Item", "StorageItem", "EthernetPortItem"):
            items.append({_local(c.tag): (c.text or "").strip() for c in el})
    controllers = {}
    for item in items:
        rtype = item.get("ResourceType")
        sub = item.get("ResourceSubType", "").lower()
        if rtype == "5":
            controllers[item.get("InstanceID")] = ("ide", None, item.get("Address", "0"))
        elif rtype == "6":
            controllers[item.get("InstanceID")] = ("scsi", OVF_SCSI_MODELS.get(sub, "lsilogic"), item.get("Address"))
        elif rtype == "20":
            controllers[item.get("InstanceID")] = ("nvme" if "nvme" in sub else "sata", None, item.get("Address"))

    vcpus, cores, memory_mib = 1, 1, 1024
    disks, nics, removable, missing = [], [], [], []
    for item in items:
        rtype = item.get("ResourceType")
        if rtype == "3":
            vcpus = _int(item.get("VirtualQuantity", 1), what, "CPU VirtualQuantity", minimum=1)
            cores = _int(item.get("CoresPerSocket", 1), what, "CoresPerSocket")
        elif rtype == "4":
            qty = _int(item.get("VirtualQuantity"), what, "memory VirtualQuantity", minimum=1)
            memory_mib = qty * _ovf_units(item.get("AllocationUnits") or "byte * 2^20", what) // MiB
            if memory_mib < 1:
                raise InputError("%s: the memory Item is under 1 MiB" % what, "correct its VirtualQuantity")
        elif rtype == "17":
            ref = item.get("HostResource", "")
            disk_id = ref.rsplit("/", 1)[-1]
            if disk_id not in disk_defs:
                raise InputError("%s: disk item refers to %r, which DiskSection lacks" % (what, ref), "re-export")
            d = disk_defs[disk_id]
            bus, ctrl, _addr = controllers.get(item.get("Parent"), ("scsi", "lsilogic", None))
            fmt = next((f for f in ("vmdk", "qcow2") if f in d["format_uri"].lower()), None)
            if not fmt and d["href"]:
                fmt = {".vmdk": "vmdk", ".qcow2": "qcow2", ".vhd": "vpc", ".vhdx": "vhdx", ".img": "raw"}.get(
                    os.path.splitext(d["href"])[1].lower()
                )
            if d["href"] is None:
                source = {}
            elif present is not None:
                source = {"member": d["href"]}
                if d["href"] not in present:
                    missing.append(d["href"])
            elif base_dir is None:
                source = {"path": d["href"]}  # no base_dir: names as written, nothing checked
            else:
                source = {"path": os.path.normpath(os.path.join(base_dir, d["href"]))}
                if not os.path.exists(source["path"]):
                    missing.append(source["path"])
            disks.append(
                new_disk(
                    id="disk%d" % len(disks),
                    bus=bus,
                    controller=ctrl,
                    capacity=d["capacity"],
                    format=fmt or "vmdk",
                    source=source,
                    storage=storage_of(source),
                )
            )
        elif rtype == "10":
            nics.append(
                new_nic(
                    mac=_mac(item.get("Address")),
                    network=item.get("Connection") or None,
                    model=OVF_NIC_MODELS.get(item.get("ResourceSubType", "").lower(), "e1000"),
                )
            )
        elif rtype in ("14", "15", "16"):
            bus = controllers.get(item.get("Parent"), ("sata", None, None))[0] if rtype != "14" else "fdc"
            bus = "sata" if bus == "nvme" else bus  # schema 1 has no NVMe cd-rom; targets use SATA
            removable.append(new_removable(type="floppy" if rtype == "14" else "cdrom", bus=bus, path=None))
    if cores < 1 or vcpus % cores:
        cores = 1

    os_section = _child(vs, "OperatingSystemSection")
    guest_id, description, family = None, None, "other"
    if os_section is not None:
        guest_id = os_section.get("{%s}osType" % VMW_NS)
        description = (
            os_section.findtext("{%s}Description" % OVF1_NS) or os_section.findtext("{%s}Description" % OVF2_NS) or None
        )
        cim = _attr(os_section, "id")
        family = guest_family(guest_id) if guest_id else None
        if not family or family == "other":
            cim = int(cim) if cim and cim.isdecimal() else 0  # isdigit() admits '²', which int() refuses
            family = "linux" if cim in CIM_LINUX else "windows" if cim in CIM_WINDOWS else family or "other"
    annotation = _child(vs, "AnnotationSection")
    product = _child(vs, "ProductSection")
    uefi = (config.get("firmware") or "").lower() == "efi"
    spec = new_spec(
        name=name,
        uuid=_uuid(config.get("uuid")),
        firmware={
            "type": "uefi" if uefi else "bios",
            "secure_boot": uefi and _true(config.get("bootOptions.efiSecureBootEnabled")),
        },
        cpu={"sockets": vcpus // cores, "cores": cores, "threads": 1},
        memory_mib=memory_mib,
        disks=disks,
        nics=nics,
        removable=removable,
        guest_os={"family": family, "id": guest_id, "osinfo": osinfo_for(guest_id), "description": description},
        annotations={
            "description": _text_of(annotation, "Annotation"),
            "title": _text_of(product, "Product"),
        },
        origin={"platform": "ovf", "ref": None},
    )
    if not name:
        raise InputError("%s: the VirtualSystem has no name or ovf:id" % what, "add <Name> to the VirtualSystem")
    return _checked(spec, what), missing


def _text_of(section, name):
    if section is None:
        return None
    el = _child(section, name)
    return el.text if el is not None and el.text else None


def ovf_from_spec(spec, disk_files):
    """An OVF 1.x descriptor (VMware dialect) for ``spec``.

    ``disk_files`` maps disk id -> the disk file (its base name becomes the href; its
    size is recorded when the file exists). VMDK files in an OVF are expected to be
    streamOptimized (qemu-img convert -O vmdk -o subformat=streamOptimized).
    """
    validate(spec)
    _check_support(spec, "vsphere", "translate the spec for vSphere first (apply_maps(spec, 'vsphere'))")
    env = ET.Element(
        "Envelope",
        {
            "xmlns": OVF1_NS,
            "xmlns:ovf": OVF1_NS,
            "xmlns:cim": CIM_NS,
            "xmlns:rasd": RASD_NS,
            "xmlns:vssd": VSSD_NS,
            "xmlns:vmw": VMW_NS,
            "xmlns:xsi": XSI_NS,
            "ovf:version": "1.0",
        },
    )
    refs = _sub(env, "References")
    disk_section = _sub(env, "DiskSection")
    _sub(disk_section, "Info", "Virtual disk information")
    for n, disk in enumerate(spec["disks"], 1):
        if disk["id"] not in disk_files:
            raise InputError("no disk file given for disk %s" % disk["id"], "pass disk_files={%r: ...}" % disk["id"])
        if disk["capacity"] is None:
            raise InputError(
                "disks[%d].capacity is unknown; OVF must state it" % (n - 1), "describe the disk from its image"
            )
        path = disk_files[disk["id"]]
        size = os.path.getsize(path) if os.path.isfile(path) else None
        _sub(refs, "File", ovf__href=os.path.basename(path), ovf__id="file%d" % n, ovf__size=size)
        cap, units = disk["capacity"], "byte"
        for exp in (30, 20):
            if cap % (1 << exp) == 0:
                cap, units = cap >> exp, "byte * 2^%d" % exp
                break
        _sub(
            disk_section,
            "Disk",
            ovf__capacity=cap,
            ovf__capacityAllocationUnits=units,
            ovf__diskId="vmdisk%d" % n,
            ovf__fileRef="file%d" % n,
            ovf__format=OVF_DISK_FORMATS.get(disk["format"] or "vmdk", VMDK_STREAM_URI),
        )
    networks = []
    for nic in spec["nics"]:
        if nic["network"] and nic["network"] not in networks:
            networks.append(nic["network"])
    if networks:
        net_section = _sub(env, "NetworkSection")
        _sub(net_section, "Info", "The list of logical networks")
        for net in networks:
            el = _sub(net_section, "Network", ovf__name=net)
            _sub(el, "Description", "The %s network" % net)

    vs = _sub(env, "VirtualSystem", ovf__id=spec["name"])
    _sub(vs, "Info", "A virtual machine")
    _sub(vs, "Name", spec["name"])
    if spec["annotations"].get("description"):
        ann = _sub(vs, "AnnotationSection")
        _sub(ann, "Info", "A human-readable annotation")
        _sub(ann, "Annotation", spec["annotations"]["description"])
    if spec["annotations"].get("title"):
        prod = _sub(vs, "ProductSection")
        _sub(prod, "Info", "Information about the installed software")
        _sub(prod, "Product", spec["annotations"]["title"])
    guest = spec["guest_os"]
    cim_key = next((k for k in ("debian", "ubuntu", "rhel", "centos", "sles") if k in (guest.get("id") or "")), None)
    os_el = _sub(
        vs,
        "OperatingSystemSection",
        ovf__id=CIM_OS[cim_key or guest["family"]],
        vmw__osType=guest.get("id"),
    )
    _sub(os_el, "Info", "The kind of installed guest operating system")
    if guest.get("description"):
        _sub(os_el, "Description", guest["description"])

    hw = _sub(vs, "VirtualHardwareSection")
    _sub(hw, "Info", "Virtual hardware requirements")
    system = _sub(hw, "System")
    _sub(system, "vssd:ElementName", "Virtual Hardware Family")
    _sub(system, "vssd:InstanceID", 0)
    _sub(system, "vssd:VirtualSystemIdentifier", spec["name"])
    _sub(system, "vssd:VirtualSystemType", "vmx-19")
    instance = [0]

    def item(fields, cores_per_socket=None):
        """Add one hardware Item; return its InstanceID."""
        instance[0] += 1
        el = _sub(hw, "Item")
        fields = dict(fields, InstanceID=instance[0])
        for key in sorted(fields):  # rasd elements in alphabetical order, as the schema's sequence wants
            if fields[key] is not None:
                _sub(el, "rasd:" + key, fields[key])
        if cores_per_socket:
            _sub(el, "vmw:CoresPerSocket", cores_per_socket, ovf__required="false")
        return instance[0]

    cpu = spec["cpu"]
    item(
        {
            "AllocationUnits": "hertz * 10^6",
            "Description": "Number of Virtual CPUs",
            "ElementName": "%d virtual CPU(s)" % cpu_count(spec),
            "ResourceType": 3,
            "VirtualQuantity": cpu_count(spec),
        },
        cores_per_socket=cpu["cores"] * cpu["threads"],
    )
    item(
        {
            "AllocationUnits": "byte * 2^20",
            "Description": "Memory Size",
            "ElementName": "%dMB of memory" % spec["memory_mib"],
            "ResourceType": 4,
            "VirtualQuantity": spec["memory_mib"],
        }
    )
    scsi_ctrls, disk_slots, rem_slots = _slots(spec)
    ctrl_ids = {}
    for model, n in scsi_ctrls.items():
        ctrl_ids["scsi%d" % n] = item(
            {
                "Address": n,
                "Description": "SCSI Controller",
                "ElementName": "SCSI Controller %d" % n,
                "ResourceSubType": OVF_SCSI_NAMES[model],
                "ResourceType": 6,
            }
        )
    used_prefixes = {s[0] for s in disk_slots} | {r[0] for r in rem_slots if r}
    for prefix, sub, label in (("sata0", "vmware.sata.ahci", "SATA"), ("nvme0", "vmware.nvme.controller", "NVME")):
        if prefix in used_prefixes:
            ctrl_ids[prefix] = item(
                {
                    "Address": 0,
                    "Description": "%s Controller" % label,
                    "ElementName": "%s Controller 0" % label,
                    "ResourceSubType": sub,
                    "ResourceType": 20,
                }
            )
    for n in (0, 1):
        if "ide%d" % n in used_prefixes:
            ctrl_ids["ide%d" % n] = item(
                {"Address": n, "Description": "IDE Controller", "ElementName": "IDE %d" % n, "ResourceType": 5}
            )
    for n, (_d, (prefix, unit)) in enumerate(zip(spec["disks"], disk_slots, strict=True), 1):
        item(
            {
                "AddressOnParent": unit,
                "ElementName": "Hard Disk %d" % n,
                "HostResource": "ovf:/disk/vmdisk%d" % n,
                "Parent": ctrl_ids[prefix],
                "ResourceType": 17,
            }
        )
    for n, (rem, slot) in enumerate(zip(spec["removable"], rem_slots, strict=True), 1):
        if rem["type"] == "floppy":
            item({"AutomaticAllocation": "false", "ElementName": "Floppy Drive %d" % n, "ResourceType": 14})
            continue
        item(
            {
                "AddressOnParent": slot[1],
                "AutomaticAllocation": "false",
                "ElementName": "CD/DVD Drive %d" % n,
                "Parent": ctrl_ids[slot[0]],
                "ResourceType": 15,
            }
        )
    for n, nic in enumerate(spec["nics"], 1):
        item(
            {
                "Address": nic["mac"],
                "AddressOnParent": 6 + n,
                "AutomaticAllocation": "true",
                "Connection": nic["network"],
                "Description": "%s ethernet adapter%s"
                % (OVF_NIC_NAMES[nic["model"]], ' on "%s"' % nic["network"] if nic["network"] else ""),
                "ElementName": "Network adapter %d" % n,
                "ResourceSubType": OVF_NIC_NAMES[nic["model"]],
                "ResourceType": 10,
            }
        )
    uefi = spec["firmware"]["type"] == "uefi"
    _sub(hw, "vmw:Config", ovf__required="false", vmw__key="firmware", vmw__value="efi" if uefi else "bios")
    if uefi:
        _sub(
            hw,
            "vmw:Config",
            ovf__required="false",
            vmw__key="bootOptions.efiSecureBootEnabled",
            vmw__value="true" if spec["firmware"]["secure_boot"] else "false",
        )
    if spec["uuid"]:
        _sub(hw, "vmw:Config", ovf__required="false", vmw__key="uuid", vmw__value=spec["uuid"])
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _to_text(env)


# What a damaged archive raises while it is read: tarfile's own errors, and those of the
# decompressors tarfile.open("r:*") may have put in front (an OVA is plain tar, but
# compressed ones are read too).
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)

_MF_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def _safe_member(member, path):
    name = member.name
    parts = name.replace("\\", "/").split("/")
    # a trailing "/" (or "/.") on a plain file would make its extracted path a directory
    if name.startswith("/") or ".." in parts or parts[-1] in ("", ".") or not member.isfile():
        raise InputError(
            "OVA %s holds an unsafe member %r (absolute, '..', link, directory or special file)" % (path, name),
            "an OVA holds plain files only; re-create it",
            file=name,
        )
    return name


def _check_members(members, path):
    """Names of the OVA's members, each safe, none also the directory of another."""
    names = [_safe_member(m, path) for m in members]
    files = {os.path.normpath(n.replace("\\", "/")) for n in names}
    for name in sorted(files):
        parent = os.path.dirname(name)
        while parent:
            if parent in files:
                raise InputError(
                    "OVA %s holds %r both as a file and as the directory of %r" % (path, parent, name),
                    "an OVA holds each file once; re-create it",
                    file=name,
                )
            parent = os.path.dirname(parent)
    return names


def _damaged(path, exc):
    return InputError("OVA %s is damaged: %s" % (path, exc), "re-export or re-download it")


def read_ova(path, extract_dir=None):
    """Read an OVA: check every file against the manifest (.mf), return (spec, missing).

    With ``extract_dir``, the files are extracted there (each written as .part and
    renamed only once its digest matched) and disk sources are paths. Without it,
    nothing is written: digests are checked while reading the archive and disk sources
    are {"ova": path, "member": name}.
    """
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise InputError(
            "OVA %s is not a readable tar archive: %s" % (path, exc), "re-export or re-download it"
        ) from None
    try:
        with tar:
            members = tar.getmembers()
            names = _check_members(members, path)
            ovf_members = [m for m in members if m.name.lower().endswith(".ovf")]
            if len(ovf_members) != 1:
                raise InputError(
                    "OVA %s holds %d .ovf descriptors, expected 1" % (path, len(ovf_members)), "re-export the VM as OVA"
                )
            digests = {}
            for mf in (m for m in members if m.name.lower().endswith(".mf")):
                text = tar.extractfile(mf).read().decode("utf-8", "replace")
                for lineno, line in enumerate(text.splitlines(), 1):
                    if not line.strip():
                        continue
                    match = _MF_LINE.match(line.strip())
                    if not match:
                        raise InputError(
                            "OVA %s: manifest %s line %d is not `SHA256(file)= digest`" % (path, mf.name, lineno),
                            "re-create the manifest",
                        )
                    digests[match.group(2)] = (match.group(1).lower(), match.group(3).lower())
            for fname in digests:
                if fname not in names:
                    raise InputError(
                        "OVA %s: manifest lists %s, which the archive lacks" % (path, fname), "re-export the VM as OVA"
                    )
            if extract_dir is not None:
                make_dirs(extract_dir)
            ovf_text = None
            for member in members:
                if member.name.lower().endswith((".mf", ".cert")):
                    continue
                algo, want = digests.get(member.name, (None, None))
                h = hashlib.new(algo) if algo else None
                src = tar.extractfile(member)
                out_path = os.path.join(extract_dir, member.name) if extract_dir is not None else None
                keep = member is ovf_members[0]
                buf = io.BytesIO() if keep else None
                out = None
                if out_path:
                    make_dirs(os.path.dirname(out_path))
                    out = os.fdopen(open_private(out_path + ".part", os.O_WRONLY | os.O_TRUNC), "wb")
                try:
                    while True:
                        chunk = src.read(4 * MiB)
                        if not chunk:
                            break
                        if h:
                            h.update(chunk)
                        if out:
                            out.write(chunk)
                        if buf:
                            buf.write(chunk)
                except BaseException:
                    if out:  # a damaged member: leave no partial file behind
                        out.close()
                        os.unlink(out_path + ".part")
                    raise
                if out:
                    out.close()
                if h and h.hexdigest() != want:
                    if out_path:
                        os.unlink(out_path + ".part")
                    raise InputError(
                        "OVA %s: %s does not match its manifest %s digest (file is %s, manifest says %s)"
                        % (path, member.name, algo.upper(), h.hexdigest(), want),
                        "the archive is corrupt or was altered; download or export it again",
                        file=member.name,
                    )
                if out_path:
                    publish(out_path + ".part", out_path)
                if keep:
                    ovf_text = buf.getvalue().decode("utf-8", "replace")
    except _TAR_ERRORS as exc:
        raise _damaged(path, exc) from None
    what = "OVF descriptor %s in OVA %s" % (ovf_members[0].name, path)
    if extract_dir is not None:
        spec, missing = _spec_from_ovf(ovf_text, extract_dir, what)
    else:
        spec, missing = _spec_from_ovf(ovf_text, None, what, present=set(names))
        for disk in spec["disks"]:
            if "member" in disk["source"]:
                disk["source"] = {"ova": os.path.abspath(path), "member": disk["source"]["member"]}
                disk["storage"] = None
        missing = ["%s:%s" % (path, name) for name in missing]
    spec["origin"] = {"platform": "ova", "ref": os.path.abspath(path)}
    return spec, missing


def write_ova(path, ovf_text, files):
    """Write an OVA: the descriptor, a SHA256 manifest, then ``files`` (paths), in that order.

    The archive is written as ``path + '.part'`` and renamed when complete. USTAR,
    as OVF requires; GNU size fields only for members above USTAR's 8 GiB limit.
    """
    base = os.path.splitext(os.path.basename(path))[0]
    ovf_name, mf_name = base + ".ovf", base + ".mf"
    ovf_bytes = ovf_text.encode("utf-8")
    lines = ["SHA256(%s)= %s" % (ovf_name, hashlib.sha256(ovf_bytes).hexdigest())]
    for fpath in files:
        h = hashlib.sha256()
        with open(fpath, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(4 * MiB), b""):
                h.update(chunk)
        lines.append("SHA256(%s)= %s" % (os.path.basename(fpath), h.hexdigest()))
    mf_bytes = ("\n".join(lines) + "\n").encode("utf-8")
    big = any(os.path.getsize(f) >= 8 * GiB for f in files)
    part = path + ".part"
    with tarfile.open(part, "w", format=tarfile.GNU_FORMAT if big else tarfile.USTAR_FORMAT) as tar:
        for name, data in ((ovf_name, ovf_bytes), (mf_name, mf_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for fpath in files:
            info = tar.gettarinfo(fpath, arcname=os.path.basename(fpath))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(fpath, "rb") as fh:
                tar.addfile(info, fh)
    publish(part, path)
    return path


def _read_ova_unverified(path):
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            names = _check_members(members, path)
            ovf = next((m for m in members if m.name.lower().endswith(".ovf")), None)
            if ovf is None:
                raise InputError("OVA %s holds no .ovf descriptor" % path, "re-export the VM as OVA")
            text = tar.extractfile(ovf).read().decode("utf-8", "replace")
    except OSError as exc:  # tarfile.open's own refusal of a file that is no archive (or unreadable)
        raise InputError("OVA %s is not a readable tar archive: %s" % (path, exc), "re-export it") from None
    except _TAR_ERRORS as exc:
        raise _damaged(path, exc) from None
    spec, missing = _spec_from_ovf(text, None, "OVF descriptor %s in OVA %s" % (ovf.name, path), present=set(names))
    for disk in spec["disks"]:
        if "member" in disk["source"]:
            disk["source"] = {"ova": path, "member": disk["source"]["member"]}
    spec["origin"] = {"platform": "ova", "ref": path}
    return spec, ["%s:%s" % (path, name) for name in missing]
