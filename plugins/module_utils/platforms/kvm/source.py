# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM/libvirt as a source and a target, through libvirt-python only.

Cold export references the domain's disk files in place and records their digests;
warm export uses libvirt checkpoints and the backup API in pull mode (an NBD export
per disk on a private unix socket, read through libnbd) for the first full copy and
for every incremental (the dirty bitmap of the previous checkpoint says what changed).
Import creates storage volumes and the domain, and records provenance in the domain's
<metadata>; the target is the journal that makes every step idempotent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from urllib.parse import quote, urlparse

from ansible_collections.vmigrate.v2v.plugins.module_utils import _retry
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import (
    DiskError,
    InputError,
    MissingLibraryError,
    PlatformError,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import atomic_file, part_path, publish
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress, human_bytes
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import descriptors as _descriptors
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import BOOT_TIMEOUT, Platform, check_target

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError as exc:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = exc

NS = "https://vmigrate.example/v2v/1"
NS_PREFIX = "v2v"
CHECKPOINT_PREFIX = "vmigrate-"
DEFAULT_URI = "qemu:///system"
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
CONNECT_ATTEMPTS = 3
CONNECT_DELAY = 0.5


def argument_spec(**extra):
    """The connection options (doc fragment vmigrate.v2v.kvm) plus the module's own."""
    spec = dict(
        uri=dict(type="str"),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
    )
    spec.update(extra)
    return spec


def require_libvirt():
    if not HAS_LIBVIRT:
        raise MissingLibraryError(
            "the Python binding of libvirt (module libvirt) is not importable: %s" % LIBVIRT_IMPORT_ERROR,
            "pip install libvirt-python (needs libvirt-dev and pkg-config) or install python3-libvirt",
        )


def _code(exc):
    try:
        return exc.get_error_code()
    except Exception:  # noqa: BLE001 - not a libvirtError
        return None


def _msg(exc):
    try:
        return exc.get_error_message() or str(exc)
    except Exception:  # noqa: BLE001
        return str(exc)


# --- connection --------------------------------------------------------------------


def connect(uri=None, username=None, password=None, attempts=CONNECT_ATTEMPTS, delay=CONNECT_DELAY):
    """Open a libvirt connection, retrying briefly: libvirtd may be restarting.

    Refused credentials, permission denials and bad URIs are not retried (they will not heal).
    """
    require_libvirt()
    uri = uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
    # libvirt prints every error on stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    fix = "check the URI and that libvirtd (or virtqemud) is running and reachable on the host it names"
    opener = _retry.retry(_connect_transient, "connecting to libvirt at %s" % uri, fix, attempts, delay)(_open)
    try:
        return opener(uri, username, password)
    except libvirt.libvirtError as exc:  # not transient: a URI libvirt does not support
        raise PlatformError("cannot connect to libvirt at %s: %s" % (uri, _msg(exc)), fix, uri=uri) from exc


def _connect_transient(exc):
    return isinstance(exc, libvirt.libvirtError) and _code(exc) not in (
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_INVALID_ARG,
    )


def _open(uri, username, password):
    """One attempt; errors that retrying cannot fix become PlatformErrors saying what to change."""
    try:
        if username or password:
            return libvirt.openAuth(uri, _auth(username, password), 0)
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        code = _code(exc)
        if code in (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_ACCESS_DENIED):
            raise PlatformError(
                "libvirt at %s refused the credentials: %s" % (uri, _msg(exc)),
                "check username/password, or that this user may use %s (polkit, unix socket group)" % uri,
                uri=uri,
            ) from exc
        if _denied(exc):
            raise PlatformError(
                "permission denied: libvirt at %s does not let this user (uid %d) connect: %s"
                % (uri, os.getuid(), _msg(exc)),
                "run as root or as a member of the group that owns the libvirt socket (often 'libvirt'), "
                "allow the user in a polkit rule (org.libvirt.unix.manage), or use a URI this user may "
                "open (qemu:///session)",
                uri=uri,
            ) from exc
        raise


def _denied(exc):
    """True when libvirt refused this user rather than failed to answer (not worth retrying).

    A unix socket without rights for us says "Permission denied"; with polkit access
    control (auth_unix_rw=polkit) a non-root client is checked over the system D-Bus,
    and a host without polkit or D-Bus refuses it with "Unable to get system bus
    connection" or a polkit message, which is an access decision too.
    """
    message = _msg(exc).lower()
    return any(word in message for word in ("permission denied", "polkit", "system bus", "not authorized"))


def _auth(username, password):
    def callback(creds, _opaque):
        for cred in creds:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = username or ""
            elif cred[0] == libvirt.VIR_CRED_PASSPHRASE:
                cred[4] = password or ""
            else:
                return -1
        return 0

    return [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], callback, None]


def is_local_uri(uri):
    """True when the hypervisor runs on this host, so its disk paths are ours to read."""
    parsed = urlparse(uri)
    return parsed.hostname in (None, "", "localhost", "127.0.0.1", "::1") and "+ssh" not in parsed.scheme


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
            "storage volume %s not found in pool %s: %s" % (vol_name, pool_name, _msg(exc)),
            "refresh the pool (virsh pool-refresh %s) or fix the domain's disk source" % pool_name,
        ) from exc


def find_pool(conn, name, must_be_active=True):
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
            known = sorted(p.name() for p in conn.listAllStoragePools(0))
            raise InputError(
                "storage pool '%s' does not exist at %s" % (name, conn.getURI()),
                "create it (virsh pool-define-as %s dir --target <dir>; pool-start) or choose one of: %s"
                % (name, ", ".join(known) or "(none)"),
                pool=name,
            ) from exc
        raise PlatformError("cannot look up storage pool '%s': %s" % (name, _msg(exc)), None) from exc
    if must_be_active and not pool.isActive():
        raise InputError("storage pool '%s' is not active" % name, "start it: virsh pool-start %s" % name, pool=name)
    return pool


def pool_target_path(pool):
    node = ET.fromstring(pool.XMLDesc(0)).find("./target/path")
    return node.text if node is not None else None


def domain_type_for(conn):
    """'kvm' when the host offers hardware virtualisation to libvirt, else 'qemu' (TCG)."""
    caps = ET.fromstring(conn.getCapabilities())
    for guest in caps.findall("./guest"):
        arch = guest.find("arch")
        if arch is not None and arch.get("name") == "x86_64":
            if any(d.get("type") == "kvm" for d in arch.findall("domain")):
                return "kvm"
    return "qemu"


def with_cpu_mode(xml_text, mode):
    """Set the <cpu> mode; 'default' leaves the model to QEMU (qemu64 with KVM).

    Some hosts (nested KVM on AMD among them) cannot start host-passthrough or
    host-model guests ("failed to set MSR 0x10a"), so the choice is the user's.
    """
    if not mode:
        return xml_text
    root = ET.fromstring(xml_text)
    cpu = root.find("cpu")
    if cpu is None:
        cpu = ET.SubElement(root, "cpu")
    for attr in ("mode", "check", "migratable", "match"):
        cpu.attrib.pop(attr, None)
    for model in cpu.findall("model"):
        cpu.remove(model)
    if mode != "default":
        cpu.set("mode", mode)
    return ET.tostring(root, encoding="unicode")


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
        if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise


def write_provenance(dom, prov):
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, provenance_xml(prov), NS_PREFIX, NS, flags)


# --- checkpoints and the backup API -----------------------------------------------------


def checkpoint_names(dom):
    try:
        return [c.getName() for c in dom.listAllCheckpoints(0)]
    except libvirt.libvirtError:
        return []


def checkpoint_xml(name, targets):
    root = ET.Element("domaincheckpoint")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "description").text = "vmigrate.v2v warm migration sync point"
    disks = ET.SubElement(root, "disks")
    for t in targets:
        ET.SubElement(disks, "disk", name=t, checkpoint="bitmap")
    return ET.tostring(root, encoding="unicode")


def backup_xml(socket_path, disks, scratch_dir, incremental=None):
    """<domainbackup mode='pull'> exporting ``disks`` (target names) over NBD on a unix socket.

    Scratch files hold the old contents of blocks the guest overwrites while we read
    (copy-before-write), so what we read is the disk at backupBegin time.
    """
    root = ET.Element("domainbackup", mode="pull")
    if incremental:
        ET.SubElement(root, "incremental").text = incremental
    ET.SubElement(root, "server", transport="unix", socket=socket_path)
    el = ET.SubElement(root, "disks")
    for t in disks:
        d = ET.SubElement(el, "disk", name=t, backup="yes", type="file")
        ET.SubElement(d, "scratch", file=os.path.join(scratch_dir, "%s.scratch" % t))
    return ET.tostring(root, encoding="unicode")


def delete_checkpoints(dom, names):
    """Delete the given checkpoints (ours); missing ones are skipped. Returns the deleted names.

    libvirt 9 refuses to delete a checkpoint of a shut-off domain, so there its metadata
    is deleted and qemu-img removes the bitmap (named like the checkpoint) from each
    qcow2 disk, which is what libvirt does itself for a running domain.
    """
    deleted = []
    active = dom.isActive()
    for name in names:
        try:
            chk = dom.checkpointLookupByName(name, 0)
            if active:
                chk.delete(0)
            else:
                chk.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
                for rec in domain_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
                    if rec["format"] == "qcow2" and rec["path"] and os.path.exists(rec["path"]):
                        _disk._qemu_img(
                            ["bitmap", "--remove", "-f", "qcow2", rec["path"], name],
                            "cannot remove bitmap %s from %s" % (name, rec["path"]),
                            ok_codes=(0, 1),  # a disk that had no bitmap of that name
                        )
            deleted.append(name)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise PlatformError(
                    "cannot delete checkpoint %s of domain %s: %s" % (name, dom.name(), _msg(exc)),
                    "delete it by hand (virsh checkpoint-delete %s %s)" % (dom.name(), name),
                ) from exc
    return deleted


class GuestFreeze:
    """fsFreeze/fsThaw through the qemu guest agent, when one answers.

    Without an agent the copy is crash-consistent; ``frozen`` says which it was.
    """

    def __init__(self, dom, wanted=True):
        self.dom = dom
        self.wanted = wanted
        self.frozen = False
        self.reason = None

    def __enter__(self):
        if not self.wanted:
            self.reason = "freeze disabled"
            return self
        try:
            self.frozen = self.dom.fsFreeze(None, 0) > 0
        except libvirt.libvirtError as exc:
            self.reason = "no guest agent answered: %s" % _msg(exc)
        return self

    def __exit__(self, *exc):
        if self.frozen:
            try:
                self.dom.fsThaw(None, 0)
            except libvirt.libvirtError as err:
                raise PlatformError(
                    "cannot thaw the guest filesystems of %s: %s" % (self.dom.name(), _msg(err)),
                    "run virsh domfsthaw %s" % self.dom.name(),
                ) from err


def _qemu_owner(dom):
    """uid/gid of the domain's QEMU process, which must create the NBD socket we read.

    libvirt does not make the directory of a pull-mode backup socket; QEMU binds it
    under its own user (libvirt-qemu on Debian), so the private directory is handed
    to that user. Only meaningful on the local host, which unix sockets imply.
    """
    for run_dir in ("/run/libvirt/qemu", "/var/run/libvirt/qemu"):
        pid_file = os.path.join(run_dir, "%s.pid" % dom.name())
        try:
            with open(pid_file) as fh:
                st = os.stat("/proc/%d" % int(fh.read().strip()))
            return st.st_uid, st.st_gid
        except (OSError, ValueError):
            continue
    return None


class BackupJob:
    """A pull-mode backup job: NBD exports of the disks as of backupBegin, ended by abortJob."""

    def __init__(self, dom, targets, checkpoint=None, incremental=None, freeze=True):
        self.dom = dom
        self.targets = list(targets)
        self.checkpoint = checkpoint
        self.incremental = incremental
        self.freeze = freeze
        self.frozen = False
        self.freeze_reason = None
        self.tmpdir = None
        self.socket = None

    def __enter__(self):
        self.tmpdir = tempfile.mkdtemp(prefix="vmigrate-backup-")
        owner = _qemu_owner(self.dom)
        if owner:
            os.chown(self.tmpdir, owner[0], owner[1])
        self.socket = os.path.join(self.tmpdir, "nbd.sock")
        bxml = backup_xml(self.socket, self.targets, self.tmpdir, self.incremental)
        cxml = checkpoint_xml(self.checkpoint, self.targets) if self.checkpoint else None
        try:
            # The point in time is backupBegin: freeze only around it.
            with GuestFreeze(self.dom, self.freeze) as fz:
                self.dom.backupBegin(bxml, cxml, 0)
            self.frozen, self.freeze_reason = fz.frozen, fz.reason
        except libvirt.libvirtError as exc:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise PlatformError(
                "cannot start a backup job on domain %s: %s" % (self.dom.name(), _msg(exc)),
                "check that no other block job runs on it (virsh domjobinfo %s) and that its disks are qcow2"
                % self.dom.name(),
            ) from exc
        return self

    def uri(self, target):
        return "nbd+unix:///%s?socket=%s" % (quote(target), quote(self.socket))

    @staticmethod
    def bitmap_context(target):
        return "qemu:dirty-bitmap:backup-%s" % target

    def __exit__(self, *exc):
        try:
            self.dom.abortJob()
        except libvirt.libvirtError:
            pass  # the job is gone already (domain stopped)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


# --- bundle helpers ----------------------------------------------------------------------


def _bundle_path(bundle_dir, rel):
    return rel if os.path.isabs(rel) else os.path.join(bundle_dir, rel)


def _stat_key(path):
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _read_pieces(path, extents, chunk=_disk.MAX_REQUEST):
    """(offset, bytes) pieces of a delta file, for apply_delta."""
    with open(path, "rb") as fh:
        for start, length in extents:
            for off in range(start, start + length, chunk):
                n = min(chunk, start + length - off)
                data = os.pread(fh.fileno(), n, off)
                if len(data) < n:  # a sparse tail that was never written: zeros
                    data += bytes(n - len(data))
                yield off, data


def _merge_runs(indices, block_size, size):
    runs = []
    for i in sorted(indices):
        start = i * block_size
        end = min(start + block_size, size)
        if runs and runs[-1][0] + runs[-1][1] == start:
            runs[-1][1] = end - runs[-1][0]
        else:
            runs.append([start, end - start])
    return runs


def _write_delta(reader, runs, delta_path, size, digests, progress=None):
    """Copy the block-aligned ``runs`` of ``reader`` into a sparse raw delta file.

    The delta file is as large as the disk and holds data only in ``runs`` (zero
    blocks are left as holes, which read back as zeros); ``digests`` is updated for
    every block of the runs. Returns bytes read and written.
    """
    bs = digests.block_size
    stats = {"bytes_read": 0, "bytes_written": 0}
    chunk = max(bs, (_disk.MAX_REQUEST // bs) * bs)
    with atomic_file(delta_path) as fh:
        fh.truncate(size)
        for start, length in runs:
            for off in range(start, start + length, chunk):
                n = min(chunk, start + length - off)
                data = reader.pread(n, off)
                stats["bytes_read"] += n
                view = memoryview(data)
                # Runs are block-aligned, so each block lies whole in this chunk.
                for bstart in range(0, n, bs):
                    blen = min(bs, n - bstart)
                    index = (off + bstart) // bs
                    if data.startswith(bytes(blen), bstart):
                        digests[index] = _blocks.ZERO_DIGEST
                        continue
                    digests[index] = _blocks.block_digest(view[bstart : bstart + blen])
                    os.pwrite(fh.fileno(), view[bstart : bstart + blen], off + bstart)
                    stats["bytes_written"] += blen
                if progress is not None:
                    progress.advance(n)
    return stats


def _load_manifest(bundle_dir):
    """The bundle's manifest as a dict, or None when there is none yet."""
    if not _bundle.Bundle.exists(bundle_dir):
        return None
    return _bundle.load_manifest(bundle_dir)


def _save_manifest(bundle_dir, manifest):
    _bundle.save_manifest(bundle_dir, manifest)


def _spec_from_xml(xml_text):
    return _descriptors.spec_from_libvirt_xml(xml_text)


def _xml_from_spec(spec, disks, provenance, domain_type):
    return _descriptors.libvirt_xml_from_spec(spec, disks, provenance=provenance, domain_type=domain_type)


# --- the platform -------------------------------------------------------------------------


class KvmPlatform(Platform):
    """One libvirt connection; a source (export) and a target (import, verify)."""

    name = "kvm"

    @classmethod
    def missing_library(cls):
        return None if HAS_LIBVIRT else ("libvirt-python", str(LIBVIRT_IMPORT_ERROR))

    def __init__(self, params):
        super().__init__(params)
        self.uri = params.get("uri") or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
        self.conn = connect(self.uri, params.get("username"), params.get("password"))

    def close(self):
        if getattr(self, "conn", None) is not None:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None

    # -- describe --

    def list_vms(self):
        return [{"name": d.name(), "uuid": d.UUIDString(), "state": self.state(d)} for d in self._domains()]

    def _domains(self):
        try:
            return sorted(self.conn.listAllDomains(0), key=lambda d: d.name())
        except libvirt.libvirtError as exc:
            raise PlatformError("cannot list the domains at %s: %s" % (self.uri, _msg(exc)), None) from exc

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
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise PlatformError("cannot look up domain %s at %s: %s" % (ref, self.uri, _msg(exc)), None) from exc
            known = [d["name"] for d in self.list_vms()]
            raise InputError(
                "domain '%s' does not exist at %s" % (ref, self.uri),
                "check the name or UUID; known domains: %s" % (", ".join(known[:20]) or "(none)"),
                vm=ref,
            ) from exc

    def lookup(self, name):
        """A domain by name, or None."""
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise PlatformError("cannot look up domain %s: %s" % (name, _msg(exc)), None) from exc

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
                item["error"] = _msg(exc)
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

    # -- export --

    def export(self, vm, bundle, mode="auto", check_mode=False, options=None):
        """Write or refresh the bundle at ``bundle`` (a directory) for domain ``vm``.

        options: full, quiesce, block_size (every platform); transfer, cleanup_checkpoints.
        Returns a result dict: changed, mode, kind (cold|full|incremental), bytes_read,
        bytes_written, per-disk records, checkpoint, frozen, fallback_reason.
        """
        options = options or {}
        dom = vm
        started = time.monotonic()
        running = self._is_running(dom)
        live = domain_disks(dom.XMLDesc(0), self.conn)
        spec = self.describe(dom)
        prev = _load_manifest(bundle)
        if prev is not None and (prev.get("source") or {}).get("id") not in (None, dom.UUIDString()):
            raise InputError(
                "bundle %s belongs to VM %s (%s), not to domain %s (%s)"
                % (bundle, prev["source"].get("name"), prev["source"].get("id"), dom.name(), dom.UUIDString()),
                "use another bundle directory for this domain",
            )
        restart = None
        if prev is not None and prev.get("state") != "complete":
            # A run that died half-way: continue from its last finished sync, if it can be.
            restart = _steps.resume_refusal(_bundle.Bundle(bundle, prev))
            prev = None if restart else prev
        warm_chain = bool(prev and (prev.get("sync") or [{}])[0].get("mode") == "warm")
        read_mode = _steps.check_export_mode(mode, running, warm_chain, dom.name(), bundle)
        full = bool(options.get("full"))
        fallback = self._chain_broken(dom, prev, live) if warm_chain and not full else None
        new_chain = full
        if not running:
            # Cold, or the final sync of a warm chain: see _export_cold. A missing
            # checkpoint does not matter there (digests are compared instead).
            kind = "cold"
            if fallback and "checkpoint" in fallback:
                fallback = None
            elif fallback:
                new_chain = True
        elif full or not warm_chain or fallback:
            kind = "full"
        else:
            kind = "incremental"
        os.makedirs(bundle, exist_ok=True) if not check_mode else None
        ctx = {
            "dom": dom,
            "bundle": bundle,
            "prev": prev,
            "live": live,
            "spec": spec,
            "running": running,
            "check_mode": check_mode,
            "transfer": options.get("transfer") or "auto",
            "freeze": options.get("quiesce", True),
            "block_size": options.get("block_size") or _blocks.DEFAULT_BLOCK_SIZE,
            "new_chain": new_chain,
        }
        if kind == "cold" or not running:
            # Shut off: cold, or the final incremental of a warm chain (see _export_cold).
            result = self._export_cold(ctx)
        elif kind == "full":
            result = self._export_full(ctx)
        else:
            result = self._export_incremental(ctx)
        if options.get("cleanup_checkpoints") and not check_mode:
            ours = list(((prev or {}).get("created") or {}).get("checkpoints", []))
            manifest = result.pop("_manifest", None) or _load_manifest(bundle)
            keep = [] if not running else [c for c in ours if c == result.get("checkpoint")]
            deleted = delete_checkpoints(dom, [c for c in ours if c not in keep])
            if deleted:
                result["changed"] = True
                manifest["created"]["checkpoints"] = keep
                _save_manifest(bundle, manifest)
            result["checkpoints_deleted"] = deleted
        result.pop("_manifest", None)
        result["fallback_reason"] = result.get("fallback_reason") or fallback or restart
        result["mode"] = read_mode
        result["bundle"] = bundle
        result["vm"] = {"name": dom.name(), "uuid": dom.UUIDString(), "state": self.state(dom)}
        return _steps.finish_export(result, dom.name(), started)

    def _chain_broken(self, dom, prev, live):
        """Why the manifest's checkpoint chain cannot give an incremental, or None."""
        old = [d.get("target") for d in prev.get("disks", [])]
        new = [d["target"] for d in live]
        if old != new:
            return "the domain's disks changed since the last sync (%s, now %s): full copy" % (old, new)
        last = (prev.get("sync") or [{}])[-1].get("checkpoint")
        if last and last.get("kind") == "libvirt" and last.get("id") not in checkpoint_names(dom):
            return "checkpoint %s of the last sync no longer exists on domain %s: full copy" % (
                last.get("id"),
                dom.name(),
            )
        return None

    def _new_manifest(self, ctx, mode):
        dom = ctx["dom"]
        return {
            "version": 1,
            "kind": "vmigrate.v2v/bundle",
            "state": "incomplete",
            "source": {
                "platform": "kvm",
                "id": dom.UUIDString(),
                "name": dom.name(),
                "connection": {"uri": self.uri},
            },
            "target_platform": None,
            "spec": ctx["spec"],
            "disks": [],
            "sync": [],
            "created": {"checkpoints": [], "snapshots": []},
        }

    def _disk_record(self, rec, spec_disk, size, block_size):
        return {
            "id": rec["id"],
            "target": rec["target"],
            "path": None,
            "format": None,
            "capacity": size,
            "allocated": None,
            "block_size": block_size,
            "digests": "digests/%s.blocks" % rec["id"],
            "digests_sha256": None,
            "blocks": _blocks.block_count(size, block_size),
            "checkpoint": None,
            "deltas": [],
            "source": {"path": rec["path"], "format": rec["format"]},
            "bus": (spec_disk or {}).get("bus"),
        }

    def _spec_disk(self, spec, disk_id):
        for d in spec.get("disks") or []:
            if d.get("id") == disk_id:
                return d
        return None

    def _check_source_disk(self, rec, dom, path=None):
        """qemu-img info of a shut-off domain's disk, with `qemu-img check` for qcow2/vmdk/vhdx.

        The check matters: qemu reads a qcow2 cut short as zeros past its end, so an
        export of a truncated image would otherwise succeed with wrong data. ``path``
        is a downloaded copy when the disk was streamed.
        """
        if not rec["path"]:
            raise InputError(
                "disk %s of domain %s has no source file or volume" % (rec["target"], dom.name()),
                "only file, block and volume disks can be exported; detach network disks first",
            )
        path = path or rec["path"]
        try:
            return _disk.info(path, rec["format"], check=True)
        except DiskError as exc:
            raise DiskError(
                "disk %s of domain %s cannot be read: %s" % (rec["target"], dom.name(), exc.problem),
                exc.fix,
                path=rec["path"],
            ) from exc

    def _export_cold(self, ctx):
        """Shut-off domain: reference its disks in place (or stream them) and record digests."""
        dom, bundle, prev = ctx["dom"], ctx["bundle"], ctx["prev"]
        local = is_local_uri(self.uri)
        stream = ctx["transfer"] == "stream" or (ctx["transfer"] == "auto" and not local)
        if ctx["transfer"] == "path" and not local:
            raise InputError(
                "transfer=path needs the disks on this host, but %s is remote" % self.uri,
                "use transfer=stream (or auto) for remote libvirt",
            )
        warm_chain = bool(prev and prev["sync"][0].get("mode") == "warm") and not ctx["new_chain"]
        if not stream:
            stats = {r["id"]: _stat_key(r["path"]) for r in ctx["live"] if r["path"]}
            old_stats = [d.get("source", {}).get("stat") for d in (prev or {}).get("disks", [])]
            unchanged = (
                prev is not None
                and old_stats == [stats.get(r["id"]) for r in ctx["live"]]
                and prev.get("spec") == ctx["spec"]
            )
            if unchanged:
                return self._result(prev, "cold" if not warm_chain else "incremental", changed=False)
        if warm_chain:
            return self._export_offline_incremental(ctx)
        manifest = self._new_manifest(ctx, "cold")
        if ctx["check_mode"]:
            return self._result(manifest, "cold", changed=True)
        if prev is not None:
            prev["state"] = "incomplete"
            _save_manifest(bundle, prev)
        totals = {"bytes_read": 0, "bytes_written": 0}
        for rec in ctx["live"]:
            if stream:
                # The source path may be on another host: qemu-img looks at the copy.
                path = os.path.join(bundle, "disks", "%s.%s" % (rec["id"], rec["format"] or "img"))
                totals["bytes_written"] += self._download(rec, path)
                info = self._check_source_disk(rec, dom, path)
            else:
                info = self._check_source_disk(rec, dom)
                path = rec["path"]
            fmt = info["format"]
            size = info["virtual-size"]
            drec = self._disk_record(rec, self._spec_disk(ctx["spec"], rec["id"]), size, ctx["block_size"])
            if stream:
                drec["path"] = os.path.relpath(path, bundle)
            else:
                drec["path"] = path
                drec["source"]["stat"] = _stat_key(path)
            drec["format"] = fmt
            drec["allocated"] = info.get("actual-size")
            progress = Progress("digest %s %s" % (dom.name(), rec["id"]), size)
            with _disk.open_guest(path, fmt) as reader:
                digests = _blocks.digest_disk(reader, ctx["block_size"], progress=progress)
            totals["bytes_read"] += digests.bytes_read
            drec["digests_sha256"] = digests.save(os.path.join(bundle, drec["digests"]))
            drec["progress"] = progress.finish()
            manifest["disks"].append(drec)
        if self._same_content(prev, manifest):
            # Same bytes and spec as the last cold export (a stream export re-reads, a
            # touched file has a new mtime): keep its chain, or a target imported from
            # it would look like another chain's and be refused.
            for old, new in zip(prev["disks"], manifest["disks"], strict=True):
                old["source"], old["path"] = new["source"], new["path"]
            prev["state"] = "complete"
            _save_manifest(bundle, prev)
            return self._result(prev, "cold", changed=False)
        _bundle.append_sync(manifest, "full", mode="cold", index=1, chain=_steps.new_chain_id(), **totals)
        manifest["state"] = "complete"
        _save_manifest(bundle, manifest)
        return self._result(manifest, "cold", changed=True)

    @staticmethod
    def _same_content(prev, manifest):
        if prev is None or prev.get("spec") != manifest["spec"] or len(prev["sync"]) != 1:
            return False
        if prev["sync"][0].get("mode") != "cold":
            return False

        def key(m):
            return [(d["id"], d["format"], d["capacity"], d["digests_sha256"]) for d in m["disks"]]

        return key(prev) == key(manifest)

    def _volume_by_path(self, path):
        """The storage volume of a file; pools are refreshed once when libvirt does not know it
        (a file put into a pool's directory without libvirt is a volume only after a refresh)."""
        try:
            return self.conn.storageVolLookupByPath(path)
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        for pool in self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
            try:
                pool.refresh(0)
            except libvirt.libvirtError:
                pass  # a pool that cannot refresh does not hold the file either
        return self.conn.storageVolLookupByPath(path)

    def _download(self, rec, path):
        """Copy a volume's file through virStorageVolDownload (sparse stream) into ``path``."""
        try:
            vol = self._volume_by_path(rec["path"])
        except libvirt.libvirtError as exc:
            raise PlatformError(
                "disk %s (%s) is not a libvirt storage volume, so it cannot be streamed: %s"
                % (rec["target"], rec["path"], _msg(exc)),
                "put the disk in a storage pool, or run the export on the libvirt host with transfer=path",
            ) from exc
        os.makedirs(os.path.dirname(path), exist_ok=True)
        written = [0]
        with atomic_file(path) as fh:
            st = self.conn.newStream(0)
            vol.download(st, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)

            def sink(_st, data, _fh):
                written[0] += len(data)
                return _fh.write(data)

            def hole(_st, length, _fh):
                _fh.seek(length, os.SEEK_CUR)
                return 0

            st.sparseRecvAll(sink, hole, fh)
            st.finish()
            fh.truncate(fh.tell())
        return written[0]

    def _export_full(self, ctx):
        """Running domain: a backup job (with a new checkpoint when the disks allow it)."""
        dom, bundle, prev = ctx["dom"], ctx["bundle"], ctx["prev"]
        reason = None
        targets = []
        for rec in ctx["live"]:
            if not rec["path"]:
                self._check_source_disk(rec, dom)  # raises: nothing to back up
            targets.append(rec["target"])  # QEMU holds the image lock: it reads, not qemu-img
        non_qcow2 = [r["target"] for r in ctx["live"] if r["format"] != "qcow2"]
        if non_qcow2:
            reason = (
                "disk(s) %s are not qcow2: libvirt checkpoints need qcow2 (persistent dirty bitmaps), "
                "so incrementals will compare block digests (reading the whole disk)" % ", ".join(non_qcow2)
            )
        manifest = self._new_manifest(ctx, "warm")
        index = 1
        name = None if non_qcow2 else "%s%s-%d" % (CHECKPOINT_PREFIX, dom.UUIDString()[:8], int(time.time()))
        if ctx["check_mode"]:
            res = self._result(manifest, "full", changed=True)
            res.update(checkpoint=name, fallback_reason=reason)
            return res
        if prev is not None:
            prev["state"] = "incomplete"
            _save_manifest(bundle, prev)
        old_checkpoints = ((prev or {}).get("created") or {}).get("checkpoints", [])
        totals = {"bytes_read": 0, "bytes_written": 0}
        with BackupJob(dom, targets, checkpoint=name, freeze=ctx["freeze"]) as job:
            if name:
                manifest["created"]["checkpoints"].append(name)
            for rec in ctx["live"]:
                drec = self._copy_full(ctx, job, rec, totals)
                drec["checkpoint"] = {"kind": "libvirt", "id": name} if name else {"kind": "digests", "id": index}
                manifest["disks"].append(drec)
        _bundle.append_sync(
            manifest,
            "full",
            checkpoint={"kind": "libvirt", "id": name} if name else {"kind": "digests", "id": index},
            mode="warm",
            index=index,
            chain=_steps.new_chain_id(),
            frozen=job.frozen,
            **totals,
        )
        # The new chain replaces the old one: its checkpoints are no use any more.
        delete_checkpoints(dom, [c for c in old_checkpoints if c != name])
        manifest["state"] = "complete"
        _save_manifest(bundle, manifest)
        res = self._result(manifest, "full", changed=True)
        res.update(frozen=job.frozen, freeze_reason=job.freeze_reason, fallback_reason=reason)
        return res

    def _copy_full(self, ctx, job, rec, totals):
        bundle = ctx["bundle"]
        os.makedirs(os.path.join(bundle, "disks"), exist_ok=True)
        path = os.path.join(bundle, "disks", "%s.qcow2" % rec["id"])
        for old in os.listdir(os.path.join(bundle, "disks")):
            if old.startswith(rec["id"] + ".delta-"):
                os.unlink(os.path.join(bundle, "disks", old))
        with _disk.open_nbd(job.uri(rec["target"])) as reader:
            size = reader.size
            drec = self._disk_record(rec, self._spec_disk(ctx["spec"], rec["id"]), size, ctx["block_size"])
            tmp = part_path(path)
            _disk.create(tmp, "qcow2", size)
            progress = Progress("copy %s %s" % (ctx["dom"].name(), rec["id"]), size)
            with _disk.open_guest(tmp, "qcow2", writable=True) as writer:
                digests, stats = _blocks.copy_with_digests(reader, writer, ctx["block_size"], progress=progress)
            publish(tmp, path)
        drec.update(path=os.path.relpath(path, bundle), format="qcow2", allocated=stats["bytes_written"])
        drec["digests_sha256"] = digests.save(os.path.join(bundle, drec["digests"]))
        drec["progress"] = progress.finish()
        totals["bytes_read"] += stats["bytes_read"]
        totals["bytes_written"] += stats["bytes_written"]
        return drec

    def _export_incremental(self, ctx):
        """Running domain with a chain: copy only what changed since the last sync."""
        dom, bundle, prev = ctx["dom"], ctx["bundle"], ctx["prev"]
        last = prev["sync"][-1]
        index = last["index"] + 1
        use_bitmap = (last.get("checkpoint") or {}).get("kind") == "libvirt"
        name = "%s%s-%d" % (CHECKPOINT_PREFIX, dom.UUIDString()[:8], int(time.time())) if use_bitmap else None
        if name == last["checkpoint"]["id"] if use_bitmap else False:
            name += "b"  # two syncs within one second
        if ctx["check_mode"]:
            res = self._result(prev, "incremental", changed=True)
            res["checkpoint"] = name
            return res
        targets = [d["target"] for d in prev["disks"]]
        prev["state"] = "incomplete"
        _save_manifest(bundle, prev)
        totals = {"bytes_read": 0, "bytes_written": 0}
        changed = False
        incremental = last["checkpoint"]["id"] if use_bitmap else None
        with BackupJob(dom, targets, checkpoint=name, incremental=incremental, freeze=ctx["freeze"]) as job:
            for drec in prev["disks"]:
                context = job.bitmap_context(drec["target"]) if use_bitmap else None
                with _disk.open_nbd(job.uri(drec["target"]), context) as reader:
                    changed |= self._delta_from(ctx, drec, reader, index, totals, context)
        if not changed:
            # Nothing was written since the last sync: keep the last checkpoint, drop the new one.
            if name:
                delete_checkpoints(dom, [name])
            prev["state"] = "complete"
            _save_manifest(bundle, prev)
            res = self._result(prev, "incremental", changed=False)
            res.update(frozen=job.frozen, freeze_reason=job.freeze_reason)
            return res
        checkpoint = {"kind": "libvirt", "id": name} if use_bitmap else {"kind": "digests", "id": index}
        for drec in prev["disks"]:
            drec["checkpoint"] = checkpoint
        _bundle.append_sync(
            prev,
            "incremental",
            checkpoint=checkpoint,
            mode="warm",
            index=index,
            chain=_steps.chain_id(prev),
            frozen=job.frozen,
            **totals,
        )
        old = [c for c in prev["created"]["checkpoints"] if c != name]
        if name:
            prev["created"]["checkpoints"] = [name]
        prev["state"] = "complete"
        _save_manifest(bundle, prev)
        # Keep only the newest checkpoint: the next incremental starts from it.
        delete_checkpoints(dom, old)
        res = self._result(prev, "incremental", changed=True)
        res.update(frozen=job.frozen, freeze_reason=job.freeze_reason)
        return res

    def _export_offline_incremental(self, ctx):
        """Shut-off domain with a warm chain (the cutover's final sync): compare digests.

        The domain has no QEMU to run a backup job, so the disk file is read in place
        and its block digests are compared with the last sync's; only changed blocks go
        into the delta.
        """
        dom, bundle, prev = ctx["dom"], ctx["bundle"], ctx["prev"]
        index = prev["sync"][-1]["index"] + 1
        if ctx["check_mode"]:
            return self._result(prev, "incremental", changed=True)
        prev["state"] = "incomplete"
        _save_manifest(bundle, prev)
        totals = {"bytes_read": 0, "bytes_written": 0}
        changed = False
        live = {r["target"]: r for r in ctx["live"]}
        for drec in prev["disks"]:
            rec = live[drec["target"]]
            info = self._check_source_disk(rec, dom)
            with _disk.open_guest(rec["path"], info["format"]) as reader:
                changed |= self._delta_from(ctx, drec, reader, index, totals, None)
            drec["source"]["stat"] = _stat_key(rec["path"])
        if changed:
            checkpoint = {"kind": "digests", "id": index}
            _bundle.append_sync(
                prev,
                "incremental",
                checkpoint=checkpoint,
                mode="offline",
                index=index,
                chain=_steps.chain_id(prev),
                **totals,
            )
        prev["state"] = "complete"
        _save_manifest(bundle, prev)
        return self._result(prev, "incremental", changed=changed)

    def _delta_from(self, ctx, drec, reader, index, totals, bitmap_context):
        """Write disk ``drec``'s changes since the last sync as delta ``index``; True if any."""
        bundle = ctx["bundle"]
        bs = drec["block_size"]
        size = reader.size
        if size != drec["capacity"]:
            raise PlatformError(
                "disk %s changed size (%d -> %d bytes) since the last sync" % (drec["target"], drec["capacity"], size),
                "start a new chain: export with mode warm (a full copy)",
            )
        digests = _blocks.DigestList.load(
            os.path.join(bundle, drec["digests"]), bs, expected_sha256=drec["digests_sha256"]
        )
        if bitmap_context:
            blocks = set()
            for e in reader.extents(bitmap_context):
                if e.data:
                    blocks.update(range(e.start // bs, (e.start + e.length - 1) // bs + 1))
        else:
            fresh = _blocks.digest_disk(reader, bs)
            totals["bytes_read"] += fresh.bytes_read
            blocks = set(digests.changed_blocks(fresh))
        runs = _merge_runs(blocks, bs, size)
        if not runs:
            return False
        rel = os.path.join("disks", "%s.delta-%d.raw" % (drec["id"], index))
        progress = Progress("delta %s %s #%d" % (ctx["dom"].name(), drec["id"], index), sum(r[1] for r in runs))
        stats = _write_delta(reader, runs, os.path.join(bundle, rel), size, digests, progress)
        totals["bytes_read"] += stats["bytes_read"]
        totals["bytes_written"] += stats["bytes_written"]
        drec.setdefault("deltas", []).append(
            {
                "index": index,
                "path": rel,
                "format": "raw",
                "extents": runs,
                "bytes": sum(r[1] for r in runs),
                "bytes_written": stats["bytes_written"],
            }
        )
        drec["digests_sha256"] = digests.save(os.path.join(bundle, drec["digests"]))
        drec["progress"] = progress.finish()
        return True

    def _result(self, manifest, kind, changed):
        last = (manifest.get("sync") or [{}])[-1] if changed else {}
        disks = []
        for d in manifest.get("disks", []):
            deltas = d.get("deltas") or []
            disks.append(
                {
                    "id": d["id"],
                    "target": d.get("target"),
                    "path": d.get("path"),
                    "format": d.get("format"),
                    "capacity": d.get("capacity"),
                    "digests_sha256": d.get("digests_sha256"),
                    "checkpoint": d.get("checkpoint"),
                    "last_delta": deltas[-1] if deltas and changed and kind == "incremental" else None,
                }
            )
        return {
            "changed": changed,
            "kind": kind,
            "sync_index": (manifest.get("sync") or [{}])[-1].get("index"),
            "checkpoint": ((manifest.get("sync") or [{}])[-1].get("checkpoint") or {}).get("id"),
            "bytes_read": last.get("bytes_read", 0),
            "bytes_written": last.get("bytes_written", 0),
            "disks": disks,
            "frozen": last.get("frozen", False),
            "fallback_reason": None,
        }

    # -- import --

    def import_vm(self, bundle, options, check_mode=False):
        """Create the target domain from ``bundle``, or bring an existing one up to date.

        options: name, pool, volume_format, network_map, replace, start, domain_type,
        cpu_mode, transfer (auto|path|stream: how volumes are filled, as for export).
        What happens to an existing domain is engine/steps.plan_import's decision.
        """
        started = time.monotonic()
        _steps.require_complete(bundle)
        # A hand-edited or damaged bundle is refused before any lookup or volume is made.
        bundle.check_integrity()
        manifest = bundle.manifest
        if manifest.get("target_platform") not in (None, "kvm"):
            raise InputError(
                "bundle %s was converted for %s, not kvm" % (bundle.dir, manifest["target_platform"]),
                "convert the export bundle again with target_platform kvm",
            )
        spec, changes = _spec.apply_maps(
            manifest["spec"],
            "kvm",
            network_map=options.get("network_map") or None,
            storage_map=options.get("storage_map") or None,
        )
        # Each disk goes to the pool storage_map maps its storage to, else to `pool`.
        mapped = {c["field"]: c["to"] for c in changes if c["reason"] == "storage_map"}
        pools = {
            d["id"]: mapped.get("disks[%d].storage" % i) or options.get("pool") or "default"
            for i, d in enumerate(spec["disks"])
        }
        bundle = bundle.dir  # the helpers below read files relative to it
        name = options.get("name") or spec.get("name")
        # A name libvirt refuses, or a capacity a volume cannot hold exactly: say so now.
        check_target("kvm", name, manifest["disks"])
        spec["name"] = name
        spec["uuid"] = None  # a new domain: the source keeps its UUID
        existing = self.lookup(name)
        found = read_provenance(existing) if existing is not None else None
        plan = _steps.plan_import(manifest, name, existing is not None, found, bool(options.get("replace")))
        want = plan.want
        result = dict(_steps.import_result(plan, name, changes), volumes=[], deltas_applied=[])
        if plan.action == "record" and not check_mode:
            write_provenance(existing, want)
        elif plan.action == "deltas":
            result.update(self._apply_deltas(existing, manifest, bundle, plan, check_mode))
        elif plan.action == "rewrite":
            result.update(self._rewrite_disks(existing, manifest, bundle, plan, options, check_mode))
        elif plan.action in ("create", "replace"):
            if plan.action == "replace":
                result["replaced"] = self._remove_domain(existing, set(pools.values()), check_mode)
            result.update(self._create(manifest, bundle, spec, name, want, dict(options, pools=pools), check_mode))
            existing = self.lookup(name)
        result.update(self._maybe_start(existing, options, check_mode, changed=result["changed"]))
        return _steps.finish_step(result, started, "import %s (%s)" % (name, plan.action))

    def _maybe_start(self, dom, options, check_mode, changed=False):
        if not options.get("start") or dom is None or self._is_running(dom):
            return {"changed": changed, "started": False}
        if not check_mode:
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                raise PlatformError(
                    "domain %s was imported but does not start: %s" % (dom.name(), _msg(exc)),
                    "see the libvirt log (/var/log/libvirt/qemu/%s.log)" % dom.name(),
                ) from exc
        return {"changed": True, "started": True}

    def _volume_name(self, name, disk, fmt):
        return "%s-%s.%s" % (name, disk["id"], fmt)

    def _remove_domain(self, dom, pool_names, check_mode):
        """Remove a domain being replaced, and its volumes in the pools the import writes to."""
        name = dom.name()
        paths = [r["path"] for r in domain_disks(self.config_xml(dom), self.conn) if r["path"]]
        if check_mode:
            return {"name": name, "volumes": paths}
        if self._is_running(dom):
            dom.destroy()
        flags = libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        dom.undefineFlags(flags)
        removed = []
        for path in paths:
            try:
                vol = self.conn.storageVolLookupByPath(path)
            except libvirt.libvirtError:
                continue
            if vol.storagePoolLookupByVolume().name() in pool_names:
                vol.delete(0)
                removed.append(path)
        return {"name": name, "volumes": removed}

    def _create(self, manifest, bundle, spec, name, want, options, check_mode):
        fmt = options.get("volume_format") or "qcow2"
        if fmt not in ("qcow2", "raw"):
            raise InputError("volume_format %r is not supported on kvm" % fmt, "use qcow2 or raw")
        pools = {}
        for pool_name in sorted(set(options["pools"].values())):
            pools[pool_name] = find_pool(self.conn, pool_name)
            pools[pool_name].refresh(0)
        plan = []
        need = {}
        for disk in manifest["disks"]:
            pool = pools[options["pools"][disk["id"]]]
            vname = self._volume_name(name, disk, fmt)
            try:
                pool.storageVolLookupByName(vname)
                exists = True
            except libvirt.libvirtError:
                exists = False
            if exists and not options.get("replace"):
                raise InputError(
                    "storage volume %s already exists in pool %s" % (vname, pool.name()),
                    "remove it, choose another name, or set replace=true",
                )
            plan.append({"disk": disk, "volume": vname, "exists": exists, "pool": pool})
            need[pool.name()] = need.get(pool.name(), 0) + int(disk.get("allocated") or disk["capacity"])
        for pool_name, bytes_needed in need.items():
            available = pools[pool_name].info()[3]
            if bytes_needed > available:
                raise InputError(
                    "storage pool %s has %s free, the disks need up to %s"
                    % (pool_name, human_bytes(available), human_bytes(bytes_needed)),
                    "free space in the pool or import into another pool (pool, storage_map)",
                    pool=pool_name,
                )
        local = is_local_uri(self.uri)
        transfer = options.get("transfer") or "auto"
        if transfer == "path" and not local:
            raise InputError(
                "transfer=path writes the volumes' files on this host, but %s is remote" % self.uri,
                "use transfer=stream (or auto) for remote libvirt",
            )
        stream = transfer == "stream" or (transfer == "auto" and not local)
        result = {
            "changed": True,
            "volumes": [{"pool": p["pool"].name(), "name": p["volume"], "format": fmt} for p in plan],
            "bytes_written": 0,
            "deltas_applied": [],
            "transfer": "stream" if stream else "path",
        }
        if check_mode:
            return result
        made = []
        dom = None
        try:
            disks_map = {}
            for item in plan:
                disk, pool = item["disk"], item["pool"]
                if item["exists"]:
                    pool.storageVolLookupByName(item["volume"]).delete(0)
                src = _bundle_path(bundle, disk["path"])
                deltas = [d for d in disk.get("deltas") or [] if d["index"] <= want["sync_index"]]
                progress = Progress("import %s %s" % (name, disk["id"]), disk["capacity"])
                if stream:
                    path, written, applied = self._upload(pool, item["volume"], disk, src, fmt, bundle, deltas, made)
                else:
                    vol = pool.createXML(self._volume_xml(item["volume"], disk["capacity"], fmt), 0)
                    made.append(vol)
                    self._exact_capacity(vol, disk["capacity"])
                    path = vol.path()
                    _disk._run_with_progress(
                        ["convert", "-p", "-n", "--target-is-zero", "-f", disk["format"], "-O", fmt, src, path],
                        progress,
                        "cannot copy %s into volume %s" % (src, item["volume"]),
                    )
                    written = (vol.info()[2]) or 0
                    applied = [(delta, self._apply_one(path, fmt, bundle, delta)) for delta in deltas]
                result["bytes_written"] += written
                for delta, st in applied:
                    result["bytes_written"] += st["bytes_written"]
                    result["deltas_applied"].append({"disk": disk["id"], "index": delta["index"], **st})
                disks_map[disk["id"]] = {"path": path, "format": fmt}
                progress.finish()
            if stream:
                for pool in pools.values():
                    pool.refresh(0)  # libvirt made the volumes raw; let it see the uploaded format
            xml = _xml_from_spec(spec, disks_map, want, options.get("domain_type") or domain_type_for(self.conn))
            dom = self.conn.defineXML(with_cpu_mode(xml, options.get("cpu_mode")))
            write_provenance(dom, want)
        except BaseException as exc:
            # Leave nothing half-made behind: the domain and the volumes we created.
            if dom is not None:
                try:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                except libvirt.libvirtError:
                    pass
            for vol in made:
                try:
                    vol.delete(0)
                except libvirt.libvirtError:
                    pass
            if isinstance(exc, libvirt.libvirtError):
                raise PlatformError(
                    "cannot import %s into pool(s) %s: %s" % (name, ", ".join(pools), _msg(exc)),
                    "check the pool and the domain definition; nothing was left behind",
                ) from exc
            raise
        result["provenance"] = want
        return result

    @staticmethod
    def _exact_capacity(vol, capacity):
        """Give a new, still empty volume exactly ``capacity`` bytes before it is filled.

        libvirt asks qemu-img for qcow2 volumes in whole KiB, so a disk of 300 MiB + 512
        bytes would come out 512 bytes bigger (and ``qemu-img convert -n`` keeps the
        target's size). virStorageVolResize passes bytes through.
        """
        have = vol.info()[1]
        if have == capacity:
            return
        vol.resize(capacity, libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if have > capacity else 0)
        have = vol.info()[1]
        if have != capacity:
            raise PlatformError(
                "volume %s has %d bytes after resizing to %d" % (vol.name(), have, capacity),
                "check that libvirt and qemu-img on the host can resize %s volumes" % vol.name().rsplit(".", 1)[-1],
            )

    @staticmethod
    def _volume_xml(name, capacity, fmt):
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity", unit="bytes").text = str(int(capacity))
        ET.SubElement(root, "allocation", unit="bytes").text = "0"
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "format", type=fmt)
        return ET.tostring(root, encoding="unicode")

    def _upload(self, pool, vname, disk, src, fmt, bundle, deltas, made):
        """Make the volume's file here with qemu-img (deltas applied), then stream it up.

        The volume is created as an empty raw file of the image file's size and the image
        is written over it with a sparse upload: holes in the upload leave zeros, which is
        what the image holds there (a volume created as qcow2 by libvirt would keep its own
        header and tables wherever the upload has a hole). Returns the volume's path,
        bytes sent and the applied deltas.
        """
        tmpdir = tempfile.mkdtemp(prefix=".upload.", dir=bundle)
        try:
            tmp = os.path.join(tmpdir, "volume.%s" % fmt)
            _disk.convert(src, disk["format"], tmp, fmt)
            applied = [(delta, self._apply_one(tmp, fmt, bundle, delta)) for delta in deltas]
            size = os.path.getsize(tmp)
            vol = pool.createXML(self._volume_xml(vname, size, "raw"), 0)
            made.append(vol)
            sent = self._send_file(vol, tmp, size)
            return vol.path(), sent, applied
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _send_file(self, vol, path, size):
        """virStorageVolUpload of a local file, sending its holes as holes."""
        fd = os.open(path, os.O_RDONLY)
        # One position of our own: os.lseek(SEEK_DATA/SEEK_HOLE) moves the fd's offset, so
        # reads use pread at ``pos`` rather than the fd's offset.
        pos = [0]
        sent = [0]

        def section(_st, _opaque):
            if pos[0] >= size:
                return [True, 0]  # the data handler then reads nothing: the end
            try:
                data_at = os.lseek(fd, pos[0], os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole up to the end
                data_at = size
            if data_at > pos[0]:
                return [False, data_at - pos[0]]
            return [True, os.lseek(fd, pos[0], os.SEEK_HOLE) - pos[0]]

        def data(_st, nbytes, _opaque):
            chunk = os.pread(fd, nbytes, pos[0])
            pos[0] += len(chunk)
            sent[0] += len(chunk)
            return chunk

        def skip(_st, length, _opaque):
            pos[0] += length
            return 0

        try:
            st = self.conn.newStream(0)
            vol.upload(st, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            try:
                st.sparseSendAll(data, section, skip, None)
                st.finish()
            except BaseException:
                try:
                    st.abort()
                except libvirt.libvirtError:
                    pass
                raise
        finally:
            os.close(fd)
        return sent[0]

    def _apply_one(self, path, fmt, bundle, delta):
        src = _bundle_path(bundle, delta["path"])
        if not os.path.exists(src):
            raise InputError(
                "delta %s (sync %d) is missing from bundle %s" % (delta["path"], delta["index"], bundle),
                "re-run the export; if its chain is gone, import with replace=true after a full export",
            )
        progress = Progress("apply delta %d to %s" % (delta["index"], os.path.basename(path)), delta["bytes"])
        stats = _blocks.apply_delta(path, fmt, _read_pieces(src, delta["extents"]), progress=progress)
        progress.finish()
        return {"bytes_written": stats["bytes_written"], "pieces": stats["pieces"]}

    def _target_disks(self, dom, manifest, bundle):
        """The target domain's disks paired with the bundle's, by position."""
        disks = domain_disks(self.config_xml(dom), self.conn)
        if len(disks) != len(manifest["disks"]):
            raise InputError(
                "target domain %s has %d disks, bundle %s has %d"
                % (dom.name(), len(disks), bundle, len(manifest["disks"])),
                "import with replace=true to make the target again",
            )
        return list(zip(disks, manifest["disks"], strict=True))

    def _begin_update(self, dom, plan):
        """Refuse a running target; mark the disks about to change as unknown.

        The mark is the provenance with state incomplete and those disks' fingerprints
        cleared: a run that dies half-way leaves a target that a re-run finishes and that
        never looks complete.
        """
        if self._is_running(dom):
            raise InputError(
                "target domain %s is running; its disks can only be updated while it is shut off" % dom.name(),
                "shut the target down, then import again",
            )
        write_provenance(dom, _steps.mark_updating(plan))

    def _apply_deltas(self, dom, manifest, bundle, plan, check_mode):
        """Bring an existing target from its recorded sync to the bundle's last one."""
        pairs = self._target_disks(dom, manifest, bundle)
        todo = [(t, d, x) for t, d in pairs for x in plan.deltas.get(d["id"], [])]
        result = {
            "deltas_applied": [{"disk": d["id"], "index": x["index"], "bytes": x["bytes"]} for _t, d, x in todo],
            "bytes_written": 0,
        }
        if check_mode:
            return result
        self._begin_update(dom, plan)
        applied = []
        for tdisk, disk, delta in todo:
            st = self._apply_one(tdisk["path"], tdisk["format"] or "raw", bundle, delta)
            result["bytes_written"] += st["bytes_written"]
            applied.append({"disk": disk["id"], "index": delta["index"], **st})
        result["deltas_applied"] = applied
        write_provenance(dom, plan.want)
        return result

    def _rewrite_disks(self, dom, manifest, bundle, plan, options, check_mode):
        """Write the changed disks again, whole, into the target's own volumes."""
        pairs = [(t, d) for t, d in self._target_disks(dom, manifest, bundle) if d["id"] in plan.disks]
        result = {"rewritten": [d["id"] for _t, d in pairs], "bytes_written": 0, "deltas_applied": []}
        for tdisk, disk in pairs:
            size = _disk.info(tdisk["path"], tdisk["format"], check=False)["virtual-size"]
            if size != disk["capacity"]:
                raise InputError(
                    "disk %s of target domain %s holds %d bytes, the bundle's disk %d"
                    % (tdisk["target"], dom.name(), size, disk["capacity"]),
                    "import with replace=true to make the target again at the new size",
                )
        if check_mode:
            return result
        self._begin_update(dom, plan)
        local = is_local_uri(self.uri) and (options.get("transfer") or "auto") != "stream"
        for tdisk, disk in pairs:
            src = _bundle_path(bundle, disk["path"])
            fmt = tdisk["format"] or "raw"
            deltas = [d for d in disk.get("deltas") or [] if d["index"] <= plan.want["sync_index"]]
            if local:
                # No --target-is-zero: every byte of the volume is written, zeros included.
                progress = Progress("rewrite %s %s" % (dom.name(), disk["id"]), disk["capacity"])
                _disk._run_with_progress(
                    ["convert", "-p", "-n", "-f", disk["format"], "-O", fmt, src, tdisk["path"]],
                    progress,
                    "cannot copy %s into %s" % (src, tdisk["path"]),
                )
                progress.finish()
                result["bytes_written"] += disk["capacity"]
                for delta in deltas:
                    result["bytes_written"] += self._apply_one(tdisk["path"], fmt, bundle, delta)["bytes_written"]
            else:
                # A sparse upload over old data would keep it in the holes: make the
                # volume again under the same name (and path), then upload.
                vol = self.conn.storageVolLookupByPath(tdisk["path"])
                pool, vname = vol.storagePoolLookupByVolume(), vol.name()
                vol.delete(0)
                _path, sent, applied = self._upload(pool, vname, disk, src, fmt, bundle, deltas, [])
                pool.refresh(0)
                result["bytes_written"] += sent + sum(st["bytes_written"] for _d, st in applied)
        write_provenance(dom, plan.want)
        return result

    # -- verify --

    # -- the target primitives run_verify uses --

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
        return self.state(vm) if self._is_running(vm) else "off"

    def target_disks(self, vm):
        return [dict(r, where=r["path"]) for r in domain_disks(self.config_xml(vm), self.conn)]

    @staticmethod
    def open_disk(vm, tdisk):
        fmt = tdisk["format"] or _disk.info(tdisk["path"], check=False)["format"]
        return _disk.open_guest(tdisk["path"], fmt)

    def boot_check(self, vm, options):
        """Boot a twin of the target to the guest's serial marker (see _boot_twin)."""
        return self._boot_twin(vm, options.get("boot_marker"), options.get("boot_timeout") or BOOT_TIMEOUT)

    def _boot_twin(self, dom, marker=None, timeout=BOOT_TIMEOUT):
        """Boot the target's disks and wait for ``marker`` on the serial console.

        The boot runs in a transient twin of the domain whose disks are qcow2 overlays
        backed by the target's (kept beside them, removed afterwards) and whose NICs get
        new MACs: the target's disks stay byte-identical, so digests still verify, and
        the target's own power state is never touched.
        """
        if self._is_running(dom):
            return {"ok": True, "checked": False, "reason": "target is already running"}
        root = ET.fromstring(self.config_xml(dom))
        twin = "%s-vmigrate-bootcheck" % dom.name()
        root.find("name").text = twin
        for tag in ("uuid", "metadata", "title", "description"):
            el = root.find(tag)
            if el is not None:
                root.remove(el)
        overlays = []
        devices = root.find("devices")
        for iface in devices.findall("interface"):
            mac = iface.find("mac")
            if mac is not None:
                iface.remove(mac)
        for nv in root.findall("os/nvram"):
            root.find("os").remove(nv)
        try:
            for disk, rec in zip(
                [d for d in devices.findall("disk") if d.get("device", "disk") == "disk"],
                domain_disks(self.config_xml(dom), self.conn),
                strict=True,
            ):
                overlay = "%s.bootcheck-%s.qcow2" % (rec["path"], uuidlib.uuid4().hex[:8])
                _disk._qemu_img(
                    ["create", "-q", "-f", "qcow2", "-b", rec["path"], "-F", rec["format"] or "raw", overlay],
                    "cannot create a boot-check overlay for %s" % rec["path"],
                )
                overlays.append(overlay)
                for child in list(disk):
                    if child.tag in ("source", "driver", "backingStore"):
                        disk.remove(child)
                disk.set("type", "file")
                ET.SubElement(disk, "driver", name="qemu", type="qcow2")
                ET.SubElement(disk, "source", file=overlay)
            # The serial console goes to a file (written by virtlogd) that we poll: no
            # console stream to hold open, and nothing printed before we look is lost.
            log = "/var/log/libvirt/qemu/%s-serial.log" % twin
            for el in devices.findall("serial") + devices.findall("console"):
                devices.remove(el)
            serial = ET.SubElement(devices, "serial", type="pty")
            ET.SubElement(serial, "log", file=log, append="off")
            ET.SubElement(serial, "target", port="0")
            console = ET.SubElement(devices, "console", type="pty")
            ET.SubElement(console, "target", type="serial", port="0")
            return self._boot_and_watch(ET.tostring(root, encoding="unicode"), twin, log, marker, timeout)
        finally:
            for path in overlays:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _boot_and_watch(self, xml, twin, log, marker, timeout):
        if not is_local_uri(self.uri):
            return {"ok": False, "checked": False, "reason": "the boot check reads the serial log: local URIs only"}
        started = time.monotonic()
        stale = self.lookup(twin)
        if stale is not None:  # left by a run that was killed
            stale.destroy()
        try:
            tdom = self.conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            return {"ok": False, "checked": True, "reason": "the target does not start: %s" % _msg(exc)}
        output = b""
        found = False
        want = marker.encode() if marker else None
        try:
            while time.monotonic() - started < timeout:
                time.sleep(0.5)
                try:
                    with open(log, "rb") as fh:
                        output = fh.read()
                except OSError:
                    continue
                if want and want in output:
                    found = True
                    break
                if not tdom.isActive():
                    break
                if not want and time.monotonic() - started > 10:
                    found = True  # no marker asked for: running for 10 s counts as booted
                    break
        finally:
            try:
                tdom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                os.unlink(log)
            except OSError:
                pass
        tail = output.decode("utf-8", "replace")[-2000:]
        seconds = round(time.monotonic() - started, 1)
        if found:
            return {"ok": True, "checked": True, "marker": marker, "seconds": seconds, "console_tail": tail}
        return {
            "ok": False,
            "checked": True,
            "marker": marker,
            "seconds": seconds,
            "reason": "marker %r not seen on the serial console within %d s" % (marker, timeout),
            "console_tail": tail,
        }
