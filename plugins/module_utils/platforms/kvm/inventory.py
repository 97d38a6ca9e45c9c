# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding and describing domains: their disks, pools, spec and facts, and the
provenance a target domain carries in its <metadata>."""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError, VmNotFoundError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import rollback as _rollback
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import (
    error_code,
    error_message,
    libvirt,
)

NS = "https://vmigrate.example/v2v/1"
NS_PREFIX = "v2v"
STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}

# --- domain XML ----------------------------------------------------------------------


def domain_disks(xml_text, conn=None):
    """Disks (device='disk') of a domain XML in document order, sources resolved to paths.

    Each: {"id": "disk<i>", "target": "vda", "bus", "path", "format", "type", "pool", "volume"}.
    The ids follow document order like spec_from_libvirt_xml's, so both can be joined.
    """
    root = ET.fromstring(xml_text)
    out = []
    for disk in root.findall("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        src = disk.find("source")
        drv = disk.find("driver")
        tgt = disk.find("target")
        rec = {
            "id": "disk%d" % len(out),
            "target": tgt.get("dev") if tgt is not None else None,
            "bus": tgt.get("bus") if tgt is not None else None,
            "type": disk.get("type", "file"),
            "format": drv.get("type") if drv is not None else None,
            "path": None,
            "pool": None,
            "volume": None,
        }
        if src is not None:
            rec["path"] = src.get("file") or src.get("dev")
            rec["pool"] = src.get("pool")
            rec["volume"] = src.get("volume")
            if rec["type"] == "volume" and conn is not None and rec["pool"]:
                rec["path"] = volume_path(conn, rec["pool"], rec["volume"])
        out.append(rec)
    return out


def volume_path(conn, pool_name, vol_name):
    pool = find_pool(conn, pool_name)
    try:
        return pool.storageVolLookupByName(vol_name).path()
    except libvirt.libvirtError as exc:
        raise PlatformError(
            "storage volume %s not found in pool %s: %s" % (vol_name, pool_name, error_message(exc)),
            "refresh the pool (virsh pool-refresh %s) or fix the domain's disk source" % pool_name,
        ) from exc


def find_pool(conn, name, must_be_active=True):
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            known = sorted(p.name() for p in conn.listAllStoragePools(0))
            raise InputError(
                "storage pool '%s' does not exist at %s" % (name, conn.getURI()),
                "create it (virsh pool-define-as %s dir --target <dir>; pool-start) or choose one of: %s"
                % (name, ", ".join(known) or "(none)"),
                pool=name,
            ) from exc
        raise PlatformError("cannot look up storage pool '%s': %s" % (name, error_message(exc)), None) from exc
    if must_be_active and not pool.isActive():
        raise InputError("storage pool '%s' is not active" % name, "start it: virsh pool-start %s" % name, pool=name)
    return pool


def pool_target_path(pool):
    node = ET.fromstring(pool.XMLDesc(0)).find("./target/path")
    return node.text if node is not None else None


# --- provenance ------------------------------------------------------------------------


def provenance_xml(prov):
    """<provenance/> as libvirt_xml_from_spec writes it: strings as attributes, other
    values (numbers, the per-disk fingerprints) as child elements holding JSON."""
    el = ET.Element("provenance")
    for key in sorted(prov):
        value = prov[key]
        if isinstance(value, str):
            el.set(key, value)
        elif value is not None:
            ET.SubElement(el, key).text = json.dumps(value, sort_keys=True)
    return ET.tostring(el, encoding="unicode")


def parse_provenance(text):
    """The provenance fields of an element written by provenance_xml (or an older one
    with every value an attribute string: engine/steps.read_provenance copes)."""
    if not text:
        return None
    try:
        el = ET.fromstring(text)
    except ET.ParseError:
        return None
    out = dict(el.attrib)
    for child in el:
        tag = child.tag.split("}", 1)[-1]
        try:
            out.setdefault(tag, json.loads(child.text or "null"))
        except ValueError:
            out.setdefault(tag, (child.text or "").strip())
    return out


def read_provenance(dom):
    """The provenance recorded on a domain (persistent config), or None."""
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0
    try:
        return parse_provenance(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, flags))
    except libvirt.libvirtError as exc:
        if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise


def write_provenance(dom, prov):
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, provenance_xml(prov), NS_PREFIX, NS, flags)
    show_rollback(dom, prov, flags)


def show_rollback(dom, prov, flags):
    """The rollback mark where people look (virsh list --title, virsh desc): the note in
    <title> and <description> follows the provenance, so a new import removes it."""
    read = libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0
    for kind, note, sep in (
        (libvirt.VIR_DOMAIN_METADATA_TITLE, _rollback.title(prov), " | "),
        (libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, _rollback.note(prov), "\n"),
    ):
        try:
            old = dom.metadata(kind, None, read)
        except libvirt.libvirtError as exc:
            if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                raise
            old = ""
        new = _rollback.with_note(old, note, sep)
        if new != (old or ""):
            dom.setMetadata(kind, new or None, None, None, flags)


# --- facts ----------------------------------------------------------------------------


def checkpoint_names(dom):
    try:
        return [c.getName() for c in dom.listAllCheckpoints(0)]
    except libvirt.libvirtError:
        return []


def _spec_from_xml(xml_text):
    return _libvirt_xml.spec_from_libvirt_xml(xml_text)


class KvmInventory:
    """Finding and describing domains; the provenance they carry.

    A part of KvmPlatform: ``self.conn`` (a libvirt connection) and ``self.uri`` are
    set by KvmPlatform.__init__.
    """

    def list_vms(self):
        return self._each_domain(lambda d: {"name": d.name(), "uuid": d.UUIDString(), "state": self.state(d)})

    def info_all(self):
        """info() of every domain."""
        return self._each_domain(self.info)

    def _each_domain(self, fn):
        """fn(domain) for every domain that still exists when it is asked: a transient
        domain (a boot check's twin, another tool's) may go between listing and asking."""
        out = []
        for dom in self._domains():
            try:
                out.append(fn(dom))
            except libvirt.libvirtError as exc:
                if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return out

    def _domains(self):
        try:
            return sorted(self.conn.listAllDomains(0), key=lambda d: d.name())
        except libvirt.libvirtError as exc:
            raise PlatformError("cannot list the domains at %s: %s" % (self.uri, error_message(exc)), None) from exc

    def find_vm(self, ref):
        """A domain by name or UUID; InputError naming the known ones."""
        if not ref:
            raise InputError("no domain given", "set vm to a domain's name or UUID")
        try:
            if re.match(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", ref):
                try:
                    return self.conn.lookupByUUIDString(ref)
                except libvirt.libvirtError:
                    pass  # a domain may be named like a UUID
            return self.conn.lookupByName(ref)
        except libvirt.libvirtError as exc:
            if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise PlatformError(
                    "cannot look up domain %s at %s: %s" % (ref, self.uri, error_message(exc)), None
                ) from exc
            known = [d["name"] for d in self.list_vms()]
            raise VmNotFoundError(
                "domain '%s' does not exist at %s" % (ref, self.uri),
                "check the name or UUID; known domains: %s" % (", ".join(known[:20]) or "(none)"),
                vm=ref,
            ) from exc

    def lookup(self, name):
        """A domain by name, or None."""
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise PlatformError("cannot look up domain %s: %s" % (name, error_message(exc)), None) from exc

    @staticmethod
    def state(dom):
        return STATES.get(dom.state(0)[0], "unknown")

    @staticmethod
    def config_xml(dom):
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if dom.isPersistent() else 0
        return dom.XMLDesc(flags)

    def describe(self, vm):
        """The neutral spec, with disk capacities and formats from qemu/libvirt."""
        dom = vm
        spec = _spec_from_xml(self.config_xml(dom))
        spec["origin"] = {"platform": "kvm", "ref": dom.UUIDString()}
        by_id = {r["id"]: r for r in domain_disks(self.config_xml(dom), self.conn)}
        for disk in spec.get("disks") or []:
            rec = by_id.get(disk.get("id"))
            if rec is None or not rec["target"]:
                continue
            try:
                disk["capacity"] = dom.blockInfo(rec["target"], 0)[0]
            except libvirt.libvirtError:
                if rec["path"] and os.path.exists(rec["path"]):
                    disk["capacity"] = _disk.info(rec["path"], rec["format"], check=False)["virtual-size"]
        return spec

    def info(self, dom):
        """Spec plus what only the running hypervisor knows: state, allocation, checkpoints."""
        desc = self.describe(dom)
        disks = []
        for rec in domain_disks(dom.XMLDesc(0), self.conn):
            item = dict(rec)
            try:
                cap, alloc, phys = dom.blockInfo(rec["target"], 0)
                item.update(capacity=cap, allocation=alloc, physical=phys)
            except libvirt.libvirtError as exc:
                item["error"] = error_message(exc)
            disks.append(item)
        return {
            "name": dom.name(),
            "uuid": dom.UUIDString(),
            "state": self.state(dom),
            "persistent": bool(dom.isPersistent()),
            "spec": desc,
            "disks": disks,
            "checkpoints": checkpoint_names(dom),
            "provenance": read_provenance(dom),
        }

    def _is_running(self, dom):
        return self.state(dom) in ("running", "paused", "blocked", "pmsuspended")

    # -- what run_verify asks of every platform --

    @staticmethod
    def vm_name(vm):
        return vm.name()

    @staticmethod
    def read_provenance(vm):
        return read_provenance(vm)

    @staticmethod
    def write_provenance(vm, prov):
        write_provenance(vm, prov)

    def power_state(self, vm):
        try:
            return self.state(vm) if self._is_running(vm) else "off"
        except libvirt.libvirtError as exc:
            # A transient domain vanishes when it stops (a shutdown or power off just done).
            if error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return "off"
            raise
