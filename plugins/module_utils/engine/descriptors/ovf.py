# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Translations between the neutral spec and VM descriptor files.

libvirt domain XML, VMware VMX, OVF (DMTF 1.x/2.x with VMware's vmw: extensions) and
OVA archives. Pure Python: the formats are small text files, and no library on the
conversion host reads them all (libvirt reads only its own XML, ovftool is not free
software), so they are parsed here. Disk capacities come from qemu-img (_disk.info).

XML is read with xml.etree.ElementTree. defusedxml is not available; Python 3.11's
expat (2.4+) limits entity expansion (billion laughs) and ElementTree never fetches
external entities, and on top of that any document declaring an entity is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import xml.etree.ElementTree as ET

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import publish
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.spec import (
    FORMATS,
    GUEST_OS,
    SUPPORT,
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

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4
MAX_DESCRIPTOR_BYTES = 16 * MiB  # descriptors are small text files; refuse anything else
V2V_NS = "https://vmigrate.example/v2v/1"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

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

# libvirt's names for SCSI controller models and NIC models -> the spec's
LIBVIRT_SCSI_MODELS = {
    "virtio-scsi": "virtio-scsi",
    "virtio-transitional": "virtio-scsi",
    "virtio-non-transitional": "virtio-scsi",
    "vmpvscsi": "pvscsi",
    "lsilogic": "lsilogic",
    "lsisas1068": "lsisas1068",
    "buslogic": "buslogic",
}
LIBVIRT_NIC_MODELS = {
    "virtio": "virtio",
    "virtio-transitional": "virtio",
    "virtio-non-transitional": "virtio",
    "e1000": "e1000",
    "e1000-82545em": "e1000",
    "e1000e": "e1000e",
    "rtl8139": "rtl8139",
    "vmxnet3": "vmxnet3",
    "pcnet": "pcnet",
}
VMX_NIC_MODELS = {
    "vmxnet3": "vmxnet3",
    "vmxnet2": "vmxnet3",
    "vmxnet": "vmxnet3",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "vlance": "pcnet",
}
VMX_NIC_NAMES = {"vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e", "pcnet": "vlance"}
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

# ---------------------------------------------------------------- helpers


def _parse_xml(text, what):
    """Parse XML text; malformed input becomes an InputError naming ``what`` and the line."""
    if "<!ENTITY" in text:
        raise InputError(
            "%s declares XML entities, which descriptors never need" % what,
            "remove the <!DOCTYPE>/<!ENTITY> declarations from the file",
        )
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        line, col = exc.position
        reason = str(exc).split(":", maxsplit=1)[0]  # "mismatched tag: line 3, column 2"
        raise InputError(
            "%s is not well-formed XML: %s at line %d, column %d" % (what, reason, line, col),
            "repair or re-export the file",
            line=line,
        ) from None


def _local(tag):
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _int(value, what, field):
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise InputError("%s: %s is %r, not a whole number" % (what, field, value), "correct %s" % field) from None


def _to_bytes(value, unit, what, field):
    factors = {
        "b": 1,
        "bytes": 1,
        "k": KiB,
        "kib": KiB,
        "kb": 1000,
        "m": MiB,
        "mib": MiB,
        "mb": 1000**2,
        "g": GiB,
        "gib": GiB,
        "gb": 1000**3,
        "t": TiB,
        "tib": TiB,
        "tb": 1000**4,
    }
    factor = factors.get((unit or "KiB").lower())
    if factor is None:
        raise InputError("%s: %s has unknown unit %r" % (what, field, unit), "use KiB, MiB or GiB")
    return _int(value, what, field) * factor


def _uuid(text):
    """Normalise 'XXXXXXXX-...' or VMware's '56 4d 9b ... 2c-54 ...' to lower-case 8-4-4-4-12."""
    if not text:
        return None
    hexdigits = re.sub(r"[\s-]", "", text).lower()
    if not re.match(r"^[0-9a-f]{32}$", hexdigits):
        return None
    h = hexdigits
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def _mac(text):
    if not text:
        return None
    mac = text.strip().lower().replace("-", ":")
    return mac if re.match(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$", mac) else None


def _probe_disks(spec):
    """Fill capacity (and format) of file-backed disks from qemu-img; return the missing paths.

    A disk whose file, or a file its descriptor names (a flat VMDK extent, a snapshot
    parent), is absent is reported as missing instead of failing, so that a
    descriptor can be described on its own. A present but unreadable image raises
    DiskError naming it.
    """
    missing = []
    for disk in spec["disks"]:
        path = disk["source"].get("path") or disk["source"].get("dev")
        if not path:
            continue
        if not os.path.exists(path):
            missing.append(path)
            continue
        try:
            data = _disk.info(path, check=False)
        except DiskError as exc:
            if "No such file" in exc.problem:
                missing.append(path)
                continue
            raise
        disk["capacity"] = int(data["virtual-size"])
        if not disk.get("format") and data.get("format") in FORMATS:
            disk["format"] = data["format"]
    return missing


def _check_support(spec, platform, fix):
    """Refuse buses/controllers/NIC models the target format cannot express."""
    sup = SUPPORT[platform]
    for i, disk in enumerate(spec["disks"]):
        if disk["bus"] not in sup["buses"]:
            raise InputError("disks[%d].bus %r cannot be written for %s" % (i, disk["bus"], platform), fix)
        if disk["bus"] == "scsi" and sup["controllers"] and disk["controller"] not in sup["controllers"]:
            raise InputError(
                "disks[%d].controller %r cannot be written for %s" % (i, disk["controller"], platform), fix
            )
    for i, nic in enumerate(spec["nics"]):
        if nic["model"] not in sup["nic_models"] and not (platform == "vsphere" and nic["model"] == "pcnet"):
            raise InputError("nics[%d].model %r cannot be written for %s" % (i, nic["model"], platform), fix)


def _dev_name(prefix, index):
    """vda, vdb, ... vdz, vdaa: the kernel's disk naming, which libvirt's target dev uses."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


def _sub(parent, tag, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k.replace("__", ":"): str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = str(text)
    return el


def _to_text(root):
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


# ---------------------------------------------------------------- libvirt domain XML


def spec_from_libvirt_xml(xml_text, what="libvirt domain XML"):
    """The spec of a libvirt domain XML document (disk capacities stay null: see read_descriptor)."""
    root = _parse_xml(xml_text, what)
    if root.tag != "domain":
        raise InputError("%s: root element is <%s>, not <domain>" % (what, _local(root.tag)), "give a domain XML")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InputError("%s has no <name>" % what, "add <name> to the domain")
    mem = root.find("memory")
    if mem is None:
        mem = root.find("currentMemory")
    memory_mib = _to_bytes(mem.text, mem.get("unit"), what, "memory") // MiB if mem is not None else 1024
    vcpus = _int(root.findtext("vcpu") or 1, what, "vcpu")
    topo = root.find("cpu/topology")
    if topo is not None:
        cpu = {
            "sockets": _int(topo.get("sockets", 1), what, "sockets") * _int(topo.get("dies", 1), what, "dies"),
            "cores": _int(topo.get("cores", 1), what, "cores"),
            "threads": _int(topo.get("threads", 1), what, "threads"),
        }
    else:
        cpu = {"sockets": vcpus, "cores": 1, "threads": 1}

    os_el = root.find("os")
    firmware = {"type": "bios", "secure_boot": False}
    if os_el is not None:
        loader = os_el.find("loader")
        if os_el.get("firmware") == "efi" or (
            loader is not None
            and (loader.get("type") == "pflash" or re.search(r"OVMF|edk2|AAVMF", loader.text or "", re.I))
        ):
            firmware["type"] = "uefi"
            feature = os_el.find("firmware/feature[@name='secure-boot']")
            firmware["secure_boot"] = (feature is not None and feature.get("enabled") == "yes") or (
                loader is not None and loader.get("secure") == "yes"
            )

    scsi_models = {}
    devices = root.find("devices")
    devices = devices if devices is not None else ET.Element("devices")
    for ctrl in devices.findall("controller[@type='scsi']"):
        scsi_models[ctrl.get("index", "0")] = LIBVIRT_SCSI_MODELS.get(ctrl.get("model") or "lsilogic")

    disks, removable = [], []
    for el in devices.findall("disk"):
        device = el.get("device", "disk")
        src = el.find("source")
        src = src if src is not None else ET.Element("source")
        target = el.find("target")
        dev = target.get("dev", "") if target is not None else ""
        bus = target.get("bus") if target is not None else None
        bus = bus or {"vd": "virtio", "sd": "scsi", "hd": "ide", "fd": "fdc"}.get(dev[:2], "virtio")
        if device in ("cdrom", "floppy"):
            removable.append(new_removable(type=device, bus=bus, path=src.get("file") or src.get("dev")))
            continue
        dtype = el.get("type", "file")
        if dtype == "volume":
            source = {"pool": src.get("pool"), "volume": src.get("volume")}
        elif dtype == "block":
            source = {"dev": src.get("dev")}
        elif dtype == "network":
            source = {"protocol": src.get("protocol"), "name": src.get("name")}
        else:
            source = {"path": src.get("file")}
        driver = el.find("driver")
        fmt = driver.get("type") if driver is not None else None
        controller = None
        if bus == "scsi":
            addr = el.find("address")
            index = addr.get("controller", "0") if addr is not None else "0"
            controller = scsi_models.get(index, "lsilogic")
        boot = el.find("boot")
        disks.append(
            new_disk(
                id="disk%d" % len(disks),
                bus=bus,
                controller=controller,
                format=fmt if fmt in FORMATS else None,
                source=source,
                storage=storage_of(source),
                boot_order=_int(boot.get("order"), what, "boot order") if boot is not None else None,
            )
        )
    nics = []
    for el in devices.findall("interface"):
        itype = el.get("type", "network")
        src = el.find("source")
        src = src if src is not None else ET.Element("source")
        mac = el.find("mac")
        model = el.find("model")
        model_name = model.get("type") if model is not None else None
        network = {"network": src.get("network"), "bridge": src.get("bridge"), "direct": src.get("dev")}.get(itype)
        nics.append(
            new_nic(
                mac=_mac(mac.get("address")) if mac is not None else None,
                network=network,
                network_type=itype if itype in ("bridge", "direct", "user") else None,
                model=LIBVIRT_NIC_MODELS.get(model_name, "e1000"),
            )
        )

    osinfo = None
    os_meta = root.find("metadata/{%s}libosinfo/{%s}os" % (LIBOSINFO_NS, LIBOSINFO_NS))
    if os_meta is not None:
        osinfo = os_meta.get("id")
    guest_id = next((gid for gid in GUEST_OS if osinfo_for(gid) == osinfo), None) if osinfo else None
    return new_spec(
        name=name,
        uuid=_uuid(root.findtext("uuid")),
        firmware=firmware,
        cpu=cpu,
        memory_mib=memory_mib,
        disks=disks,
        nics=nics,
        removable=removable,
        guest_os={"family": guest_family(osinfo), "id": guest_id, "osinfo": osinfo, "description": None},
        annotations={"description": root.findtext("description"), "title": root.findtext("title")},
        origin={"platform": "libvirt", "ref": None},
    )


def read_provenance(xml_text, what="libvirt domain XML"):
    """The provenance dict a domain carries in <metadata><v2v:provenance>, or None."""
    root = _parse_xml(xml_text, what)
    el = root.find("metadata/{%s}provenance" % V2V_NS)
    if el is None:
        return None
    prov = {_local(k): v for k, v in el.attrib.items()}
    for child in el:
        try:
            prov[_local(child.tag)] = json.loads(child.text or "null")
        except ValueError:
            prov[_local(child.tag)] = child.text
    return prov


def libvirt_xml_from_spec(spec, disks, provenance=None, domain_type="kvm", machine=None):
    """A domain XML for ``spec`` that libvirt (9.0+) defines as is.

    ``disks`` maps disk id -> {"path": ..., "format": ...} (a file),
    {"pool": ..., "volume": ...} (a storage volume) or {"dev": ...} (a block device).
    ``provenance`` (a dict) goes into <metadata><v2v:provenance>: string values as
    attributes, anything else as a child element holding JSON, so read_provenance
    returns it unchanged. Machine: q35 for uefi, pc for bios, unless given.
    """
    validate(spec)
    fix = "translate the spec for KVM first (apply_maps(spec, 'kvm'), or the convert module)"
    _check_support(spec, "kvm", fix)
    uefi = spec["firmware"]["type"] == "uefi"
    machine = machine or ("q35" if uefi else "pc")
    if machine.startswith("q35") or machine.startswith("pc-q35"):
        for field, items in (("disks", spec["disks"]), ("removable", spec["removable"])):
            for i, item in enumerate(items):
                if item["bus"] == "ide":
                    raise InputError("%s[%d].bus is ide, which machine %s lacks" % (field, i, machine), fix)

    dom = ET.Element("domain", {"type": domain_type})
    _sub(dom, "name", spec["name"])
    if spec["uuid"]:
        _sub(dom, "uuid", spec["uuid"])
    notes = spec["annotations"]
    if notes.get("title"):
        _sub(dom, "title", " ".join(notes["title"].splitlines()))  # libvirt refuses newlines in titles
    if notes.get("description"):
        _sub(dom, "description", notes["description"])
    osinfo = spec["guest_os"].get("osinfo") or osinfo_for(spec["guest_os"].get("id"))
    if osinfo or provenance:
        meta = _sub(dom, "metadata")
        if osinfo:
            lib = _sub(meta, "libosinfo:libosinfo", **{"xmlns:libosinfo": LIBOSINFO_NS})
            _sub(lib, "libosinfo:os", id=osinfo)
        if provenance:
            prov = _sub(meta, "v2v:provenance", **{"xmlns:v2v": V2V_NS})
            for key, value in sorted(provenance.items()):
                if isinstance(value, str):
                    prov.set(key, value)
                else:
                    _sub(prov, "v2v:" + key, json.dumps(value, sort_keys=True))
    _sub(dom, "memory", spec["memory_mib"], unit="MiB")
    _sub(dom, "currentMemory", spec["memory_mib"], unit="MiB")
    _sub(dom, "vcpu", cpu_count(spec), placement="static")

    os_el = _sub(dom, "os", firmware="efi" if uefi else None)
    _sub(os_el, "type", "hvm", arch="x86_64", machine=machine)
    if uefi:
        fw = _sub(os_el, "firmware")
        secure = "yes" if spec["firmware"]["secure_boot"] else "no"
        _sub(fw, "feature", enabled=secure, name="enrolled-keys")
        _sub(fw, "feature", enabled=secure, name="secure-boot")
    per_device_boot = any(d["boot_order"] for d in spec["disks"])
    if not per_device_boot:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec["firmware"]["secure_boot"]:
        _sub(features, "smm", state="on")  # the secure-boot OVMF builds need SMM
    cpu = spec["cpu"]
    # kvm: the host's CPU, since qemu64 lacks what current guests need (x86-64-v2);
    # TCG ('qemu') has no host CPU to pass through, so libvirt's default stays.
    cpu_el = _sub(dom, "cpu", mode="host-passthrough" if domain_type == "kvm" else None)
    _sub(cpu_el, "topology", sockets=cpu["sockets"], dies=1, cores=cpu["cores"], threads=cpu["threads"])
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devs = _sub(dom, "devices")
    counters = {}

    def target_dev(bus):
        prefix = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd", "fdc": "fd"}[bus]
        n = counters.get(prefix, 0)
        counters[prefix] = n + 1
        return _dev_name(prefix, n)

    for i, disk in enumerate(spec["disks"]):
        where = disks.get(disk["id"]) if isinstance(disks, dict) else None
        if not where:
            raise InputError(
                "no storage given for disks[%d] (%s)" % (i, disk["id"]),
                "pass disks={%r: {'path': ..., 'format': ...}}" % disk["id"],
            )
        fmt = where.get("format") or disk["format"]
        if "pool" in where:
            el = _sub(devs, "disk", type="volume", device="disk")
            _sub(el, "driver", name="qemu", type=fmt, discard="unmap")
            _sub(el, "source", pool=where["pool"], volume=where["volume"])
        elif "dev" in where:
            el = _sub(devs, "disk", type="block", device="disk")
            _sub(el, "driver", name="qemu", type=fmt or "raw", discard="unmap")
            _sub(el, "source", dev=where["dev"])
        else:
            el = _sub(devs, "disk", type="file", device="disk")
            _sub(el, "driver", name="qemu", type=fmt or "raw", discard="unmap")
            _sub(el, "source", file=where["path"])
        _sub(el, "target", dev=target_dev(disk["bus"]), bus=disk["bus"])
        if disk["boot_order"]:
            _sub(el, "boot", order=disk["boot_order"])
    for item in spec["removable"]:
        el = _sub(devs, "disk", type="file", device=item["type"])
        _sub(el, "driver", name="qemu", type="raw")
        if item["path"]:
            _sub(el, "source", file=item["path"])
        _sub(el, "target", dev=target_dev(item["bus"]), bus=item["bus"])
        _sub(el, "readonly")
    if any(d["bus"] == "scsi" for d in spec["disks"]) or any(r["bus"] == "scsi" for r in spec["removable"]):
        _sub(devs, "controller", type="scsi", index=0, model="virtio-scsi")
    for nic in spec["nics"]:
        itype = nic["network_type"] or ("network" if nic["network"] else "user")
        el = _sub(devs, "interface", type=itype)
        if nic["mac"]:
            _sub(el, "mac", address=nic["mac"])
        if itype == "network":
            _sub(el, "source", network=nic["network"])
        elif itype == "bridge":
            _sub(el, "source", bridge=nic["network"])
        elif itype == "direct":
            _sub(el, "source", dev=nic["network"], mode="bridge")
        _sub(el, "model", type=nic["model"])
    serial = _sub(devs, "serial", type="pty")
    _sub(serial, "target", port=0)
    console = _sub(devs, "console", type="pty")
    _sub(console, "target", type="serial", port=0)
    channel = _sub(devs, "channel", type="unix")
    _sub(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    _sub(devs, "memballoon", model="virtio")
    return _to_text(dom)


# ---------------------------------------------------------------- VMware VMX

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
    for lineno, line in enumerate(text.splitlines(), 1):
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


def _true(value):
    return str(value).strip().lower() in ("true", "1", "yes")


def spec_from_vmx(text, base_dir, what="VMX file"):
    """The spec of a VMX file; disk capacities from the VMDKs (qemu-img) when present."""
    return _spec_from_vmx(text, base_dir, what)[0]


def _spec_from_vmx(text, base_dir, what):
    vmx = parse_vmx(text, what)
    name = vmx.get("displayname")
    if not name:
        raise InputError("%s has no displayName" % what, 'add displayName = "<vm name>"')
    vcpus = _int(vmx.get("numvcpus", 1), what, "numvcpus")
    cores = _int(vmx.get("cpuid.corespersocket", 1), what, "cpuid.coresPerSocket")
    if cores < 1 or vcpus % cores:
        cores = 1
    memory = _int(vmx.get("memsize", 1024), what, "memsize")
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
            removable.append(new_removable(type="cdrom", bus=bus, path=path))
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
                network=vmx.get(pre + "networkname") or vmx.get(pre + "connectiontype"),
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
    missing = _probe_disks(spec) if base_dir is not None else []
    return spec, missing


def _vmx_uuid(uuid):
    h = uuid.replace("-", "")
    pairs = [h[i : i + 2] for i in range(0, 32, 2)]
    return " ".join(pairs[:8]) + "-" + " ".join(pairs[8:])


def _ide_prefix(used):
    """ide0 or ide1: VMware has two IDE channels with two devices each."""
    n = used.get("ide0", 0) + used.get("ide1", 0)
    if n >= 4:
        raise InputError("more than 4 IDE devices", "put disks on scsi or sata (apply_maps(spec, 'vsphere'))")
    return "ide%d" % (n // 2)


def _slots(spec):
    """Assign VMware controller slots (scsi0:0, sata0:1, ...) in spec order."""
    scsi_ctrls = {}  # controller model -> scsi bus number
    used = {}
    out_disks, out_rem = [], []
    limits = {"scsi": 16, "sata": 30, "nvme": 15, "ide": 2}  # units per controller (SCSI skips 7)

    def next_slot(prefix):
        unit = used.get(prefix, 0)
        if prefix.startswith("scsi") and unit == 7:
            unit = 8  # unit 7 is the SCSI controller itself
        used[prefix] = unit + 1
        return unit

    for disk in spec["disks"]:
        bus = disk["bus"]
        if bus == "scsi":
            ctrl = scsi_ctrls.setdefault(disk["controller"], len(scsi_ctrls))
            prefix = "scsi%d" % ctrl
        elif bus == "ide":
            prefix = _ide_prefix(used)
        else:
            prefix = bus + "0"
        unit = next_slot(prefix)
        if unit >= limits[bus]:
            raise InputError("too many %s disks for one VMware controller" % bus, "spread the disks over other buses")
        out_disks.append((prefix, unit))
    for item in spec["removable"]:
        if item["type"] != "cdrom":
            out_rem.append(None)
            continue
        bus = item["bus"] if item["bus"] in ("sata", "ide") else "sata"
        prefix = _ide_prefix(used) if bus == "ide" else "sata0"
        out_rem.append((prefix, next_slot(prefix)))
    return scsi_ctrls, out_disks, out_rem


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


# ---------------------------------------------------------------- OVF / OVA


def _ovf_units(units, what):
    """OVF allocation units ('byte * 2^30', 'byte', 'MegaBytes') -> bytes per unit."""
    if not units:
        return 1
    u = units.replace(" ", "").lower()
    words = {"byte": 1, "bytes": 1, "kilobytes": KiB, "megabytes": MiB, "gigabytes": GiB}
    if u in words:
        return words[u]
    match = re.match(r"^bytes?\*(\d+)(?:\^(\d+))?$", u)
    if match:
        return int(match.group(1)) ** int(match.group(2) or 1)
    raise InputError("%s: unknown allocation units %r" % (what, units), "use 'byte * 2^N'")


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
        files[_attr(f, "id")] = _attr(f, "href")
    disk_defs = {}
    section = _child(root, "DiskSection")
    for d in _children(section, "Disk") if section is not None else []:
        capacity = _attr(d, "capacity")
        units = _ovf_units(_attr(d, "capacityAllocationUnits"), what)
        disk_defs[_attr(d, "diskId")] = {
            "capacity": _int(capacity, what, "Disk capacity") * units if capacity else None,
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
            vcpus = _int(item.get("VirtualQuantity", 1), what, "CPU VirtualQuantity")
            cores = _int(item.get("CoresPerSocket", 1), what, "CoresPerSocket")
        elif rtype == "4":
            qty = _int(item.get("VirtualQuantity"), what, "memory VirtualQuantity")
            memory_mib = qty * _ovf_units(item.get("AllocationUnits") or "byte * 2^20", what) // MiB
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
            removable.append(new_removable(type="floppy" if rtype == "14" else "cdrom", bus=bus, path=None))
    if cores < 1 or vcpus % cores:
        cores = 1

    os_section = _child(vs, "OperatingSystemSection")
    guest_id, description, family = None, None, "other"
    if os_section is not None:
        guest_id = os_section.get("{%s}osType" % VMW_NS)
        description = os_section.findtext("{%s}Description" % OVF1_NS) or os_section.findtext(
            "{%s}Description" % OVF2_NS
        )
        cim = _attr(os_section, "id")
        family = guest_family(guest_id) if guest_id else None
        if not family or family == "other":
            cim = int(cim) if cim and cim.isdigit() else 0
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
    return spec, missing


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


_MF_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def _safe_member(member, path):
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts or not member.isfile():
        raise InputError(
            "OVA %s holds an unsafe member %r (absolute, '..', link or special file)" % (path, name),
            "an OVA holds plain files only; re-create it",
        )
    return name


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
    with tar:
        members = tar.getmembers()
        names = [_safe_member(m, path) for m in members]
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
            os.makedirs(extract_dir, exist_ok=True)
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
                os.makedirs(os.path.dirname(out_path), exist_ok=True)
                out = open(out_path + ".part", "wb")
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
            finally:
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


# ---------------------------------------------------------------- any descriptor


def detect_format(path):
    """vmx, ovf, ova or libvirt, by content (extension only breaks ties)."""
    if not os.path.isfile(path):
        raise InputError("descriptor %s does not exist or is not a file" % path, "check the path")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if len(head) > 262 and head[257:262] == b"ustar":
        return "ova"
    text = head.decode("utf-8", "replace").lstrip("\ufeff \t\r\n")
    if text.startswith("<"):
        body = re.sub(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(\[.*?\])?\s*>", "", text, flags=re.S).lstrip()
        if re.match(r"<([A-Za-z_][\w.-]*:)?Envelope\b", body):
            return "ovf"
        if re.match(r"<domain\b", body):
            return "libvirt"
        raise InputError(
            "%s is XML but neither an OVF Envelope nor a libvirt <domain>" % path, "give a VMX, OVF, OVA or domain XML"
        )
    ext = os.path.splitext(path)[1].lower()
    if ext == ".ova":
        return "ova"
    if ext == ".vmx" or re.search(r"^\s*(displayName|config\.version|\.encoding)\s*=", text, re.M | re.I):
        return "vmx"
    raise InputError(
        "%s is not a VMX, OVF, OVA or libvirt domain XML" % path, "give a descriptor in one of those formats"
    )


def _read_text(path, encoding=None):
    size = os.path.getsize(path)
    if size > MAX_DESCRIPTOR_BYTES:
        raise InputError(
            "%s is %d bytes, too large for a descriptor" % (path, size), "give the .vmx/.ovf/.xml file itself"
        )
    with open(path, "rb") as fh:
        data = fh.read()
    if encoding is None:
        match = re.search(rb'^\s*\.encoding\s*=\s*"([^"]+)"', data, re.M)
        encoding = match.group(1).decode("ascii", "replace") if match else "utf-8"
    try:
        return data.decode(encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise InputError("%s cannot be decoded as %s: %s" % (path, encoding, exc), "save it as UTF-8") from None


def read_descriptor(path, verify_manifest=True):
    """(spec, missing) for a VMX, OVF, OVA or libvirt domain XML file; changes nothing.

    ``missing`` lists the disk files the descriptor names that are absent. An OVA is
    read in place (its manifest digests checked unless ``verify_manifest`` is false).
    spec["origin"] is {"platform": <format>, "ref": <absolute path>}.
    """
    path = os.path.abspath(path)
    fmt = detect_format(path)
    base_dir = os.path.dirname(path)
    if fmt == "ova":
        if verify_manifest:
            return read_ova(path)
        return _read_ova_unverified(path)
    text = _read_text(path)
    if fmt == "vmx":
        spec, missing = _spec_from_vmx(text, base_dir, "VMX file %s" % path)
    elif fmt == "ovf":
        spec, missing = _spec_from_ovf(text, base_dir, "OVF descriptor %s" % path)
    else:
        spec = spec_from_libvirt_xml(text, "libvirt domain XML %s" % path)
        missing = _probe_disks(spec)
    spec["origin"] = {"platform": fmt, "ref": path}
    return spec, missing


def _read_ova_unverified(path):
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            names = [_safe_member(m, path) for m in members]
            ovf = next((m for m in members if m.name.lower().endswith(".ovf")), None)
            if ovf is None:
                raise InputError("OVA %s holds no .ovf descriptor" % path, "re-export the VM as OVA")
            text = tar.extractfile(ovf).read().decode("utf-8", "replace")
    except tarfile.TarError as exc:
        raise InputError("OVA %s is not a readable tar archive: %s" % (path, exc), "re-export it") from None
    spec, missing = _spec_from_ovf(text, None, "OVF descriptor %s in OVA %s" % (ovf.name, path), present=set(names))
    for disk in spec["disks"]:
        if "member" in disk["source"]:
            disk["source"] = {"ova": path, "member": disk["source"]["member"]}
    spec["origin"] = {"platform": "ova", "ref": path}
    return spec, ["%s:%s" % (path, name) for name in missing]
