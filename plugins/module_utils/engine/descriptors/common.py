# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the descriptor translations share.

The package translates between the neutral spec and VM descriptor files, one module
per format: libvirt (domain XML), vmx (VMware VMX), ovf (OVF, DMTF 1.x/2.x with VMware's
vmw: extensions, and OVA archives), and read (which format a file is; read any of them).
Pure Python: the formats are small text files, and no library on the conversion host
reads them all (libvirt reads only its own XML, ovftool is not free software), so they
are parsed here. Disk capacities come from qemu-img (_disk.info).

XML is read with xml.etree.ElementTree. defusedxml is not available; Python 3.11's
expat (2.4+) limits entity expansion (billion laughs) and ElementTree never fetches
external entities, and on top of that any document declaring an entity is refused.

The underscore helpers here are internal to the descriptors package: the format
modules import them, nothing outside the package should.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.spec import FORMATS, SUPPORT, validate

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


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


def _int(value, what, field, minimum=None):
    """A whole number from a descriptor; ``minimum`` refuses counts a VM cannot have (0 CPUs)."""
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        # ValueError also covers digit strings longer than Python converts (4300 digits)
        shown = value if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise InputError("%s: %s is %r, not a whole number" % (what, field, shown), "correct %s" % field) from None
    if minimum is not None and number < minimum:
        raise InputError(
            "%s: %s is %d, less than %d" % (what, field, number, minimum),
            "correct %s (at least %d)" % (field, minimum),
        )
    return number


def _checked(spec, what):
    """The spec a reader made, checked against schema 1, so that a value no check above
    caught fails here naming the descriptor instead of later in a translation."""
    try:
        return validate(spec)
    except InputError as exc:
        raise InputError(
            "%s: %s" % (what, exc.problem), "correct the descriptor (%s)" % exc.fix, **exc.details
        ) from None


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


def _sub(parent, tag, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k.replace("__", ":"): str(v) for k, v in attrs.items() if v is not None})
    if text is not None:
        el.text = str(text)
    return el


def _to_text(root):
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def _true(value):
    return str(value).strip().lower() in ("true", "1", "yes")


# ---------------------------------------------------------------- VMware controller slots (VMX and OVF)


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
