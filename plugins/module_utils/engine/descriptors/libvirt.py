# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The neutral spec <-> libvirt domain XML, and the provenance a domain carries."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors.common import (
    GiB,
    KiB,
    MiB,
    TiB,
    _check_support,
    _checked,
    _int,
    _local,
    _mac,
    _parse_xml,
    _sub,
    _to_text,
    _uuid,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.spec import (
    BUSES,
    FORMATS,
    GUEST_OS,
    REMOVABLE_BUSES,
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

V2V_NS = "https://vmigrate.example/v2v/1"
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"

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


def _dev_name(prefix, index):
    """vda, vdb, ... vdz, vdaa: the kernel's disk naming, which libvirt's target dev uses."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return prefix + letters


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
    if memory_mib < 1:
        raise InputError("%s: <%s> is under 1 MiB" % (what, mem.tag), "give the domain its memory in KiB or MiB")
    vcpus = _int(root.findtext("vcpu") or 1, what, "vcpu", minimum=1)
    topo = root.find("cpu/topology")
    if topo is not None:
        cpu = {
            "sockets": _int(topo.get("sockets", 1), what, "sockets", 1) * _int(topo.get("dies", 1), what, "dies", 1),
            "cores": _int(topo.get("cores", 1), what, "cores", 1),
            "threads": _int(topo.get("threads", 1), what, "threads", 1),
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
            if bus not in REMOVABLE_BUSES:  # usb, sd, virtio...: the targets attach it afresh anyway
                bus = "fdc" if device == "floppy" else "sata"
            removable.append(new_removable(type=device, bus=bus, path=src.get("file") or src.get("dev")))
            continue
        if bus not in BUSES:
            raise InputError(
                "%s: disk %s is on bus %r, which cannot be migrated" % (what, dev or "(no target dev)", bus),
                "detach it, or move it to one of the buses %s" % ", ".join(BUSES),
                disk=dev,
            )
        dtype = el.get("type", "file")
        if dtype == "volume":
            source = {"pool": src.get("pool"), "volume": src.get("volume")}
        elif dtype == "block":
            source = {"dev": src.get("dev")}
        elif dtype == "network":
            source = {"protocol": src.get("protocol"), "name": src.get("name")}
        else:
            source = {"path": src.get("file")}
        source = {k: v or None for k, v in source.items()}  # file='' names no file
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
                boot_order=_int(boot.get("order"), what, "boot order", minimum=1) if boot is not None else None,
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
        network = network or None  # source network='' names no network
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
        osinfo = os_meta.get("id") or None
    guest_id = next((gid for gid in GUEST_OS if osinfo_for(gid) == osinfo), None) if osinfo else None
    spec = new_spec(
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
    return _checked(spec, what)


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
