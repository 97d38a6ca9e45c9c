# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM as a source: the export's source session, through libvirt-python.

A shut-off domain's disk files are referenced in place (or streamed when libvirt is
remote); a running domain is read through libvirt checkpoints and the backup API in
pull mode (an NBD export per disk on a private unix socket, read through libnbd), for
the first full copy and for every incremental (the dirty bitmap of the previous
checkpoint says what changed). What is copied and recorded is engine/export.py's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from urllib.parse import quote

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import atomic_file, make_dirs
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import SourceSession
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
# A backup job's NBD socket lives in a private directory of this prefix: how a job an
# export left running (its module killed) is told from anyone else's.
BACKUP_DIR_PREFIX = "vmigrate-backup-"


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
    qcow2 disk, which is what libvirt does itself for a running domain. A checkpoint whose
    metadata someone else deleted (virsh checkpoint-delete --metadata) leaves its bitmap in
    the disks: a shut-off domain's are removed too (and the name counts as deleted); a
    running domain's stay until a sync with the domain off.
    """
    deleted = []
    active = dom.isActive()
    for name in names:
        try:
            chk = dom.checkpointLookupByName(name, 0)
            chk.delete(0 if active else libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as exc:
            if error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise PlatformError(
                    "cannot delete checkpoint %s of domain %s: %s" % (name, dom.name(), error_message(exc)),
                    "delete it by hand (virsh checkpoint-delete %s %s)" % (dom.name(), name),
                ) from exc
            if active:
                continue
        if not active:
            for rec in domain_disks(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
                if rec["format"] == "qcow2" and rec["path"] and os.path.exists(rec["path"]):
                    _disk._qemu_img(
                        ["bitmap", "--remove", "-f", "qcow2", rec["path"], name],
                        "cannot remove bitmap %s from %s" % (name, rec["path"]),
                        ok_codes=(0, 1),  # a disk that had no bitmap of that name
                    )
        deleted.append(name)
    return deleted


def leftover_backup_job(dom):
    """The NBD socket of a pull-mode backup job an export of ours left running on ``dom``
    (its module was killed, so nothing ended it), or None."""
    if not dom.isActive():
        return None
    try:
        xml = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return None  # no backup job
    server = ET.fromstring(xml).find("server")
    sock = server.get("socket") if server is not None else None
    if sock and os.path.basename(os.path.dirname(sock)).startswith(BACKUP_DIR_PREFIX):
        return sock
    return None


def end_backup_job(dom, sock):
    """End a backup job found by leftover_backup_job and remove its socket directory."""
    try:
        dom.abortJob()
    except libvirt.libvirtError as exc:
        if leftover_backup_job(dom):
            raise PlatformError(
                "cannot end the backup job an earlier export left on domain %s: %s" % (dom.name(), error_message(exc)),
                "end it by hand (virsh domjobabort %s)" % dom.name(),
            ) from exc
    shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


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
        self.tmpdir = tempfile.mkdtemp(prefix=BACKUP_DIR_PREFIX)
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


# --- the source session ---------------------------------------------------------------


class KvmSession(SourceSession):
    """One export's view of a domain's disks (engine/export.py drives it).

    Running domain: a backup job in pull mode fixes the point in time; with qcow2 disks
    it makes a new checkpoint there, and an incremental asks the job for the dirty
    bitmap since the last sync's checkpoint. Shut-off domain: the disk files themselves;
    a full sync references them in place (or streams them when libvirt is remote), the
    final sync of a warm chain reads the persistent bitmap QEMU stored in each qcow2 at
    shut-down (qemu-nbd -B), so only what changed since the last sync is read.
    """

    tracker = "libvirt-bitmap"

    def __init__(self, platform, dom, bundle, incremental, options):
        super().__init__(dom, bundle, incremental, options)
        self.platform = platform
        self.running = platform._is_running(dom)
        self.live = {r["id"]: r for r in domain_disks(dom.XMLDesc(0), platform.conn)}
        self.disks = [
            {"id": r["id"], "target": r["target"], "source": {"path": r["path"], "format": r["format"]}}
            for r in self.live.values()
        ]
        transfer = options.get("transfer") or "auto"
        local = is_local_uri(platform.uri)
        if transfer == "path" and not local and not self.running:
            raise InputError(
                "transfer=path needs the disks on this host, but %s is remote" % platform.uri,
                "use transfer=stream (or auto) for remote libvirt",
            )
        self.stream = transfer == "stream" or (transfer == "auto" and not local)
        self.since = None  # the libvirt checkpoint changes are asked since
        self.contexts = {}  # disk id -> NBD meta context listing its changes
        if incremental:
            last = bundle.manifest["sync"][-1].get("checkpoint") or {}
            if last.get("kind") != "libvirt":
                self.reasons.append(
                    "the last sync made no libvirt checkpoint (%s), so block digests were compared "
                    "(the whole disk read)" % (last.get("kind") or "none")
                )
            elif last.get("id") not in checkpoint_names(dom):
                self.reasons.append(
                    "checkpoint %s of the last sync no longer exists on domain %s, so block digests were "
                    "compared (the whole disk read)" % (last.get("id"), dom.name())
                )
            else:
                self.since = last["id"]
        self.new_checkpoint = None
        if self.running:
            non_qcow2 = [r["target"] for r in self.live.values() if r["format"] != "qcow2"]
            if non_qcow2:
                self.reasons.append(
                    "disk(s) %s are not qcow2: libvirt checkpoints need qcow2 (persistent dirty bitmaps), "
                    "so incrementals compare block digests (reading the whole disk)" % ", ".join(non_qcow2)
                )
            else:
                self.new_checkpoint = "%s%s-%d" % (CHECKPOINT_PREFIX, dom.UUIDString()[:8], int(time.time()))
                if self.new_checkpoint == self.since:
                    self.new_checkpoint += "b"  # two syncs within one second
        self.job = None

    def plan_note(self):
        return " (new checkpoint %s)" % self.new_checkpoint if self.new_checkpoint else ""

    def __enter__(self):
        if not self.running:
            return self
        dom = self.vm
        for rec in self.live.values():
            if not rec["path"]:
                self.platform._check_source_disk(rec, dom)  # raises: nothing to back up
        # An export killed while it read (no except clause ran) leaves its backup job
        # running in libvirtd, and a domain holds one backup job at a time: end it.
        sock = leftover_backup_job(dom)
        if sock:
            end_backup_job(dom, sock)
            self.notes["ended_leftover_backup_job"] = sock
        name = self.new_checkpoint
        if name:
            # Recorded before it exists: a run that dies leaves nothing unrecorded.
            self.bundle.record_created("checkpoints", name)
            self.bundle.save()
        targets = [r["target"] for r in self.live.values()]  # QEMU holds the image lock: it reads
        incremental = self.since if self.incremental else None
        job = BackupJob(
            dom, targets, checkpoint=name, incremental=incremental, freeze=self.options.get("quiesce", True)
        )
        try:
            self.job = job.__enter__()
        except BaseException:
            if name:
                self._forget([name])
            raise
        self.frozen, self.freeze_reason = job.frozen, job.freeze_reason
        return self

    def __exit__(self, exc_type, *exc):
        if self.job is not None:
            self.job.__exit__(exc_type, *exc)
            self.job = None
        if exc_type is not None and self.new_checkpoint:
            # The sync failed: its checkpoint would only make QEMU track writes for nothing.
            try:
                delete_checkpoints(self.vm, [self.new_checkpoint])
            except PlatformError:
                pass  # recorded in the bundle: the next sync deletes it
        return False

    def _forget(self, names):
        created = self.bundle.manifest.setdefault("created", {}).setdefault("checkpoints", [])
        created[:] = [c for c in created if c not in names]

    def stamp(self, disk):
        path = self.live[disk["id"]]["path"]
        if self.running or self.stream or not path or not os.path.exists(path):
            return None
        return _bundle.file_stamp(path)

    def plan_disk(self, disk):
        rec = self.live[disk["id"]]
        allocated = None
        if rec["path"] and is_local_uri(self.platform.uri):
            try:  # a file's allocated bytes, as qemu-img's actual-size counts them
                allocated = os.stat(rec["path"]).st_blocks * 512
            except OSError:
                allocated = None
        if self.running:
            return {"method": "copy", "format": "raw", "path": "disks/%s.raw" % rec["id"], "allocated": allocated}
        # Shut off: referenced in place, or (remote libvirt) downloaded as it is (see reference).
        path = "disks/%s.%s" % (rec["id"], rec["format"] or "img") if self.stream else rec["path"]
        return {"method": "reference", "format": rec["format"], "path": path, "allocated": allocated}

    def reference(self, disk):
        if self.running:
            return None
        rec = self.live[disk["id"]]
        dom = self.vm
        if not self.stream:
            info = self.platform._check_source_disk(rec, dom)
            return {"path": rec["path"], "format": info["format"], "allocated": info.get("actual-size")}
        # The source path may be on another host: the bundle gets a copy, qemu-img checks it.
        rel = "disks/%s.%s" % (rec["id"], rec["format"] or "img")
        path = os.path.join(self.bundle.dir, rel)
        written = self.platform._download(rec, path)
        info = self.platform._check_source_disk(rec, dom, path)
        return {"path": rel, "format": info["format"], "allocated": info.get("actual-size"), "bytes_written": written}

    def open_disk(self, disk):
        rec = self.live[disk["id"]]
        if self.running:
            context = BackupJob.bitmap_context(rec["target"]) if self.incremental and self.since else None
            self.contexts[disk["id"]] = context
            return _disk.open_nbd(self.job.uri(rec["target"]), context)
        info = self.platform._check_source_disk(rec, self.vm)
        bitmap = None
        if self.incremental and self.since:
            why = _disk.qcow2_bitmap(info, self.since)
            if why:
                self.reasons.append(
                    "disk %s: %s, so its block digests were compared (the whole disk read)" % (rec["target"], why)
                )
            else:
                bitmap = self.since
        self.contexts[disk["id"]] = _disk.bitmap_context(bitmap) if bitmap else None
        return _disk.open_guest(rec["path"], info["format"], bitmap=bitmap)

    def changes(self, disk, reader, record):
        context = self.contexts.get(disk["id"]) if record is not None else None
        if not context:
            return None
        return [[e.start, e.length] for e in reader.extents(context) if e.data]

    def checkpoint(self, index):
        if self.new_checkpoint:
            return {"kind": "libvirt", "id": self.new_checkpoint}
        return {"kind": "digests", "id": index}

    def commit(self, changed):
        """Keep only the newest checkpoint (the next incremental starts from it); with
        cleanup_checkpoints, none once the domain is off. True when that deleted
        checkpoints beyond what the sync replaced."""
        created = list(((self.bundle.manifest.get("created") or {}).get("checkpoints")) or [])
        name = self.new_checkpoint
        if name and not changed:
            drop = [name]  # nothing was written since the last sync: its checkpoint stays the base
        elif name:
            drop = [c for c in created if c != name]
        else:
            drop = []
        extra = []
        if self.options.get("cleanup_checkpoints"):
            last = (self.bundle.manifest.get("sync") or [{}])[-1].get("checkpoint") or {}
            keep = [last.get("id")] if self.running else []
            extra = [c for c in created if c not in keep and c not in drop]
            if not self.running:
                # Named as ours but recorded in no bundle: an earlier chain whose work dir
                # was deleted. The domain is off (the cutover): no sync needs them now.
                ours = "%s%s-" % (CHECKPOINT_PREFIX, self.vm.UUIDString()[:8])
                extra += [c for c in checkpoint_names(self.vm) if c.startswith(ours) and c not in extra + drop]
        deleted = delete_checkpoints(self.vm, drop + extra)
        self._forget(deleted)
        if self.options.get("cleanup_checkpoints"):
            self.notes["checkpoints_deleted"] = deleted
        return bool(set(deleted) & set(extra))


class KvmSource(KvmInventory):
    """KVM as a source (a part of KvmPlatform): the export itself is engine/export.py's."""

    def source_record(self, vm):
        return {"platform": "kvm", "id": vm.UUIDString(), "name": vm.name(), "connection": {"uri": self.uri}}

    def source_session(self, vm, bundle, incremental, options):
        return KvmSession(self, vm, bundle, incremental, options)

    def migration_leftovers(self, vm, bundle):
        """A backup job an export left running, and the checkpoints exports made: those
        ``bundle`` records and those named as ours (vmigrate-<UUID start>-<time>). A
        checkpoint of any other name is the user's and stays."""
        out = []
        sock = leftover_backup_job(vm)
        if sock:
            out.append({"kind": "backup job", "name": sock, "record": None})
        recorded = list(((bundle.manifest.get("created") or {}).get("checkpoints")) or []) if bundle else []
        ours = "%s%s-" % (CHECKPOINT_PREFIX, vm.UUIDString()[:8])
        for name in checkpoint_names(vm):
            if name in recorded or name.startswith(ours):
                out.append({"kind": "checkpoint", "name": name, "record": name if name in recorded else None})
        return out

    def remove_leftover(self, vm, item):
        if item["kind"] == "backup job":
            end_backup_job(vm, item["name"])
        else:
            delete_checkpoints(vm, [item["name"]])

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
        make_dirs(os.path.dirname(path))
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
