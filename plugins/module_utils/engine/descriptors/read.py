# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which descriptor format a file is, and reading any of them into the neutral spec."""

from __future__ import annotations

import os
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors.common import MiB, _probe_disks

MAX_DESCRIPTOR_BYTES = 16 * MiB  # descriptors are small text files; refuse anything else


def detect_format(path):
    """vmx, ovf, ova or libvirt, by content (extension only breaks ties)."""
    if not os.path.isfile(path):
        raise InputError("descriptor %s does not exist or is not a file" % path, "check the path")
    with open(path, "rb") as fh:
        head = fh.read(64 * 1024)  # enough to pass a long leading comment or DOCTYPE
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
            return _ovf.read_ova(path)
        return _ovf._read_ova_unverified(path)
    text = _read_text(path)
    if fmt == "vmx":
        spec, missing = _vmx._spec_from_vmx(text, base_dir, "VMX file %s" % path)
    elif fmt == "ovf":
        spec, missing = _ovf._spec_from_ovf(text, base_dir, "OVF descriptor %s" % path)
    else:
        spec = _libvirt_xml.spec_from_libvirt_xml(text, "libvirt domain XML %s" % path)
        missing = _probe_disks(spec)
    spec["origin"] = {"platform": fmt, "ref": path}
    return spec, missing
