# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM as a source: export through libvirt-python.

Cold export references the domain's disk files in place and records their digests;
warm export uses libvirt checkpoints and the backup API in pull mode (an NBD export
per disk on a private unix socket, read through libnbd) for the first full copy and
for every incremental (the dirty bitmap of the previous checkpoint says what changed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import atomic_file, part_path, publish
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import (
    error_code,
    error_message,
    is_local_uri,
    libvirt,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import (
    KvmInventory,
    checkpoint_names,
    domain_disks,
)

CHECKPOINT_PREFIX = "vmigrate-"


# --- checkpoints and the backup API -----------------------------------------------------


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
            if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise PlatformError(
                    "cannot delete checkpoint %s of domain %s: %s" % (name, dom.name(), error_message(exc)),
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
            self.reason = "no guest agent answered: %s" % error_message(exc)
        return self

    def __exit__(self, *exc):
        if self.frozen:
            try:
                self.dom.fsThaw(None, 0)
            except libvirt.libvirtError as err:
                raise PlatformError(
                    "cannot thaw the guest filesystems of %s: %s" % (self.dom.name(), error_message(err)),
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
                "cannot start a backup job on domain %s: %s" % (self.dom.name(), error_message(exc)),
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


def _read_extents(reader, extents, stats, progress=None):
    """(offset, bytes) pieces of ``reader`` over ``extents`` (the next read in flight while
    the caller writes), counting bytes_read in ``stats``."""
    for off, data, n in _blocks._read_ahead(reader, extents, _disk.MAX_REQUEST, 512):
        stats["bytes_read"] += n
        if progress is not None:
            progress.advance(n)
        yield off, bytes(data[:n]) if len(data) != n else data


def _base_path(bundle_dir, drec):
    return drec["path"] if os.path.isabs(drec["path"]) else os.path.join(bundle_dir, drec["path"])


def _bring_base_current(bundle_dir, drec):
    """Apply to the bundle's base image every delta it does not hold yet (``in_base``).

    Each sync writes its delta into the base too, so this only does work for a bundle
    written before bases were kept current. Returns the bytes written.
    """
    written = 0
    for delta in drec.get("deltas") or []:
        if delta.get("in_base"):
            continue
        src = os.path.join(bundle_dir, delta["path"])
        st = _blocks.apply_delta(
            _base_path(bundle_dir, drec), drec["format"], _bundle.delta_pieces(src, delta["extents"])
        )
        written += st["bytes_written"]
        delta["in_base"] = True
    return written


def _write_delta(bundle_dir, drec, reader, extents, delta, digests, progress=None):
    """Copy ``extents`` of ``reader`` into ``delta`` (a bundle.DeltaFile) and into the base.

    The base image (the bundle's copy of the disk as of the last sync) gets the same
    bytes, so it stays the disk as of this sync; blocks.write_with_digests hashes every
    digest block a piece covers whole from the piece and re-reads a partly covered block
    from the base after the writes (the rest of that block did not change since the last sync,
    so the base's bytes are the source's). Extents may have any 512-aligned bounds.
    Returns bytes read (from the source) and written (into the delta).
    """
    stats = {"bytes_read": 0}

    def tee(pieces):
        for off, data in pieces:
            if not data.startswith(_blocks._zeros(len(data))):
                delta.write(off, data)  # zeros stay a hole of the sparse delta file
            yield off, data

    before = delta.written
    with _disk.open_guest(_base_path(bundle_dir, drec), drec["format"], writable=True) as base:
        _blocks.write_with_digests(base, tee(_read_extents(reader, extents, stats, progress)), digests)
        base.flush()
    return {"bytes_read": stats["bytes_read"], "bytes_written": delta.written - before}


def _load_manifest(bundle_dir):
    """The bundle's manifest as a dict, or None when there is none yet."""
    if not _bundle.Bundle.exists(bundle_dir):
        return None
    return _bundle.load_manifest(bundle_dir)


def _save_manifest(bundle_dir, manifest):
    _bundle.save_manifest(bundle_dir, manifest)


@dataclass
class ExportRun:
    """What one export of one domain works from (made by KvmSource.export)."""

    dom: object  # the libvirt domain
    bundle: str  # the bundle directory
    prev: dict | None  # the bundle's manifest before this run (changed in place), None to start anew
    live: list  # domain_disks of the domain's live definition
    spec: dict  # the neutral spec, as describe() gives it
    check_mode: bool
    transfer: str  # auto | path | stream
    freeze: bool  # quiesce through the guest agent
    block_size: int
    new_chain: bool  # start a new chain, not continue the warm one (full=true, or the disks changed)


class KvmSource(KvmInventory):
    """KVM as a source: export (a part of KvmPlatform)."""

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
            if not restart and prev.get("base_in_flux"):
                # The sync that died was writing into the base images: they may hold part
                # of a sync no manifest records, so no delta may be built on them.
                restart = "the last sync of bundle %s died while updating its base images: a new full copy" % bundle
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
        run = ExportRun(
            dom=dom,
            bundle=bundle,
            prev=prev,
            live=live,
            spec=spec,
            check_mode=check_mode,
            transfer=options.get("transfer") or "auto",
            freeze=options.get("quiesce", True),
            block_size=options.get("block_size") or _blocks.DEFAULT_BLOCK_SIZE,
            new_chain=new_chain,
        )
        if kind == "cold" or not running:
            # Shut off: cold, or the final incremental of a warm chain (see _export_cold).
            result = self._export_cold(run)
        elif kind == "full":
            result = self._export_full(run)
        else:
            result = self._export_incremental(run)
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

    def _new_manifest(self, run):
        source = {
            "platform": "kvm",
            "id": run.dom.UUIDString(),
            "name": run.dom.name(),
            "connection": {"uri": self.uri},
        }
        return _bundle.new_manifest(source, run.spec)

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

    def _export_cold(self, run):
        """Shut-off domain: reference its disks in place (or stream them) and record digests."""
        dom, bundle, prev = run.dom, run.bundle, run.prev
        local = is_local_uri(self.uri)
        stream = run.transfer == "stream" or (run.transfer == "auto" and not local)
        if run.transfer == "path" and not local:
            raise InputError(
                "transfer=path needs the disks on this host, but %s is remote" % self.uri,
                "use transfer=stream (or auto) for remote libvirt",
            )
        warm_chain = bool(prev and prev["sync"][0].get("mode") == "warm") and not run.new_chain
        if not stream:
            stats = {r["id"]: _bundle.file_stamp(r["path"]) for r in run.live if r["path"]}
            old_stats = [d.get("source", {}).get("stat") for d in (prev or {}).get("disks", [])]
            unchanged = (
                prev is not None
                and old_stats == [stats.get(r["id"]) for r in run.live]
                and prev.get("spec") == run.spec
            )
            if unchanged:
                return self._result(prev, "cold" if not warm_chain else "incremental", changed=False)
        if warm_chain:
            return self._export_offline_incremental(run)
        manifest = self._new_manifest(run)
        if run.check_mode:
            return self._result(manifest, "cold", changed=True)
        if prev is not None:
            prev["state"] = "incomplete"
            _save_manifest(bundle, prev)
        totals = {"bytes_read": 0, "bytes_written": 0}
        for rec in run.live:
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
            drec = self._disk_record(rec, self._spec_disk(run.spec, rec["id"]), size, run.block_size)
            if stream:
                drec["path"] = os.path.relpath(path, bundle)
            else:
                drec["path"] = path
                drec["source"]["stat"] = _bundle.file_stamp(path)
            drec["format"] = fmt
            drec["allocated"] = info.get("actual-size")
            progress = Progress("digest %s %s" % (dom.name(), rec["id"]), size)
            with _disk.open_guest(path, fmt) as reader:
                digests = _blocks.digest_disk(reader, run.block_size, progress=progress)
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
            if error_code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
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
                % (rec["target"], rec["path"], error_message(exc)),
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

    def _export_full(self, run):
        """Running domain: a backup job (with a new checkpoint when the disks allow it)."""
        dom, bundle, prev = run.dom, run.bundle, run.prev
        reason = None
        targets = []
        for rec in run.live:
            if not rec["path"]:
                self._check_source_disk(rec, dom)  # raises: nothing to back up
            targets.append(rec["target"])  # QEMU holds the image lock: it reads, not qemu-img
        non_qcow2 = [r["target"] for r in run.live if r["format"] != "qcow2"]
        if non_qcow2:
            reason = (
                "disk(s) %s are not qcow2: libvirt checkpoints need qcow2 (persistent dirty bitmaps), "
                "so incrementals will compare block digests (reading the whole disk)" % ", ".join(non_qcow2)
            )
        manifest = self._new_manifest(run)
        index = 1
        name = None if non_qcow2 else "%s%s-%d" % (CHECKPOINT_PREFIX, dom.UUIDString()[:8], int(time.time()))
        if run.check_mode:
            res = self._result(manifest, "full", changed=True)
            res.update(checkpoint=name, fallback_reason=reason)
            return res
        if prev is not None:
            prev["state"] = "incomplete"
            _save_manifest(bundle, prev)
        old_checkpoints = ((prev or {}).get("created") or {}).get("checkpoints", [])
        totals = {"bytes_read": 0, "bytes_written": 0}
        with BackupJob(dom, targets, checkpoint=name, freeze=run.freeze) as job:
            if name:
                manifest["created"]["checkpoints"].append(name)
            for rec in run.live:
                drec = self._copy_full(run, job, rec, totals)
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

    def _copy_full(self, run, job, rec, totals):
        bundle = run.bundle
        os.makedirs(os.path.join(bundle, "disks"), exist_ok=True)
        path = os.path.join(bundle, "disks", "%s.qcow2" % rec["id"])
        for old in os.listdir(os.path.join(bundle, "disks")):
            if old.startswith(rec["id"] + ".delta-"):
                os.unlink(os.path.join(bundle, "disks", old))
        with _disk.open_nbd(job.uri(rec["target"])) as reader:
            size = reader.size
            drec = self._disk_record(rec, self._spec_disk(run.spec, rec["id"]), size, run.block_size)
            tmp = part_path(path)
            _disk.create(tmp, "qcow2", size)
            progress = Progress("copy %s %s" % (run.dom.name(), rec["id"]), size)
            with _disk.open_guest(tmp, "qcow2", writable=True) as writer:
                digests, stats = _blocks.copy_with_digests(reader, writer, run.block_size, progress=progress)
            publish(tmp, path)
        drec.update(path=os.path.relpath(path, bundle), format="qcow2", allocated=stats["bytes_written"])
        drec["digests_sha256"] = digests.save(os.path.join(bundle, drec["digests"]))
        drec["progress"] = progress.finish()
        totals["bytes_read"] += stats["bytes_read"]
        totals["bytes_written"] += stats["bytes_written"]
        return drec

    def _export_incremental(self, run):
        """Running domain with a chain: copy only what changed since the last sync."""
        dom, bundle, prev = run.dom, run.bundle, run.prev
        last = prev["sync"][-1]
        index = last["index"] + 1
        use_bitmap = (last.get("checkpoint") or {}).get("kind") == "libvirt"
        name = "%s%s-%d" % (CHECKPOINT_PREFIX, dom.UUIDString()[:8], int(time.time())) if use_bitmap else None
        if name == last["checkpoint"]["id"] if use_bitmap else False:
            name += "b"  # two syncs within one second
        if run.check_mode:
            res = self._result(prev, "incremental", changed=True)
            res["checkpoint"] = name
            return res
        targets = [d["target"] for d in prev["disks"]]
        prev["state"] = "incomplete"
        prev["base_in_flux"] = True  # the base images change in place: see export()
        _save_manifest(bundle, prev)
        totals = {"bytes_read": 0, "bytes_written": 0}
        changed = False
        incremental = last["checkpoint"]["id"] if use_bitmap else None
        with BackupJob(dom, targets, checkpoint=name, incremental=incremental, freeze=run.freeze) as job:
            for drec in prev["disks"]:
                context = job.bitmap_context(drec["target"]) if use_bitmap else None
                with _disk.open_nbd(job.uri(drec["target"]), context) as reader:
                    changed |= self._delta_from(run, drec, reader, index, totals, context)
        if not changed:
            # Nothing was written since the last sync: keep the last checkpoint, drop the new one.
            if name:
                delete_checkpoints(dom, [name])
            prev.pop("base_in_flux", None)
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
        prev.pop("base_in_flux", None)
        prev["state"] = "complete"
        _save_manifest(bundle, prev)
        # Keep only the newest checkpoint: the next incremental starts from it.
        delete_checkpoints(dom, old)
        res = self._result(prev, "incremental", changed=True)
        res.update(frozen=job.frozen, freeze_reason=job.freeze_reason)
        return res

    def _export_offline_incremental(self, run):
        """Shut-off domain with a warm chain (the cutover's final sync).

        The domain has no QEMU to run a backup job, so the disk file is read in place
        through qemu-nbd. When the last sync made a libvirt checkpoint, its persistent
        dirty bitmap in the qcow2 file (QEMU stores it at shut-down) lists what changed
        since that sync and only that is read (qemu-nbd -B). Otherwise (raw disks, a
        deleted checkpoint, a bitmap QEMU did not store) the whole disk's block digests
        are compared with the last sync's, and fallback_reason says why.
        """
        dom, bundle, prev = run.dom, run.bundle, run.prev
        index = prev["sync"][-1]["index"] + 1
        if run.check_mode:
            return self._result(prev, "incremental", changed=True)
        last = prev["sync"][-1].get("checkpoint") or {}
        prev["state"] = "incomplete"
        prev["base_in_flux"] = True  # the base images change in place: see export()
        _save_manifest(bundle, prev)
        totals = {"bytes_read": 0, "bytes_written": 0}
        changed = False
        reasons = []
        live = {r["target"]: r for r in run.live}
        for drec in prev["disks"]:
            rec = live[drec["target"]]
            info = self._check_source_disk(rec, dom)
            bitmap, why = None, None
            if last.get("kind") == "libvirt":
                why = _disk.qcow2_bitmap(info, last["id"])
                bitmap = None if why else last["id"]
            else:
                why = "the last sync made no libvirt checkpoint (%s)" % (last.get("kind") or "none")
            if why:
                reasons.append(
                    "disk %s: %s, so its block digests were compared (the whole disk read)" % (drec["target"], why)
                )
            with _disk.open_guest(rec["path"], info["format"], bitmap=bitmap) as reader:
                context = _disk.bitmap_context(bitmap) if bitmap else None
                changed |= self._delta_from(run, drec, reader, index, totals, context)
            drec["source"]["stat"] = _bundle.file_stamp(rec["path"])
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
        prev.pop("base_in_flux", None)
        prev["state"] = "complete"
        _save_manifest(bundle, prev)
        res = self._result(prev, "incremental", changed=changed)
        res["fallback_reason"] = "; ".join(reasons) or None
        return res

    def _delta_from(self, run, drec, reader, index, totals, bitmap_context):
        """Write disk ``drec``'s changes since the last sync as delta ``index``; True if any.

        With a dirty bitmap the delta holds exactly its dirty extents (at the bitmap's
        granularity); without, the digest blocks whose digest changed (the whole disk is
        read to find them).
        """
        bundle = run.bundle
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
            extents = [[e.start, e.length] for e in reader.extents(bitmap_context) if e.data]
        else:
            fresh = _blocks.digest_disk(reader, bs)
            totals["bytes_read"] += fresh.bytes_read
            extents = _merge_runs(digests.changed_blocks(fresh), bs, size)
        if not extents:
            return False
        # The base must be the disk as of the last sync before a partly dirty block is
        # hashed from it.
        _bring_base_current(bundle, drec)
        progress = Progress("delta %s %s #%d" % (run.dom.name(), drec["id"], index), sum(e[1] for e in extents))
        delta = _bundle.DeltaFile(bundle, drec["id"], index, size)
        try:
            stats = _write_delta(bundle, drec, reader, extents, delta, digests, progress)
        except BaseException:
            delta.discard()
            raise
        totals["bytes_read"] += stats["bytes_read"]
        totals["bytes_written"] += stats["bytes_written"]
        record = delta.finish(drec, extents)
        record["in_base"] = True
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
