# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bundles: a directory with manifest.json, disk data (or references) and digest files.

Every step reads one manifest and writes one. The manifest says `complete` only when
the step that wrote it finished, and it is replaced atomically, so a crash never leaves
a half-written manifest or one that calls half-written disks complete.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import (
    atomic_file,
    make_dirs,
    open_private,
    part_path,
    publish,
)

VERSION = 1
KIND = "vmigrate.v2v/bundle"
MANIFEST = "manifest.json"
STATES = ("incomplete", "complete")
PLATFORMS = ("kvm", "vsphere", "hyperv", "vmx", "ovf", "ova", "libvirt")
TARGETS = ("kvm", "vsphere", "hyperv")
DISK_FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc")
# Left out of the fingerprint: they change when a step runs, not what the bundle holds.
VOLATILE = ("state", "sync", "created", "updated")
VOLATILE_DISK = ("allocated", "files", "ref_stamp")
_DISK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def now():
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def append_sync(manifest, kind, bytes_read=0, bytes_written=0, checkpoint=None, **extra):
    """Record one sync (newest last) in a manifest dict; returns the record."""
    entry = {
        "kind": kind,
        "at": now(),
        "bytes_read": int(bytes_read),
        "bytes_written": int(bytes_written),
        "checkpoint": checkpoint,
    }
    entry.update(extra)
    manifest.setdefault("sync", []).append(entry)
    return entry


def manifest_path(directory):
    return os.path.join(directory, MANIFEST)


def _bad(path, field, problem, fix="fix the field, or re-run the step that writes this bundle"):
    return InputError("%s: field %s %s" % (path, field, problem), fix)


def validate_manifest(manifest, path=MANIFEST):
    """Raise InputError naming the manifest and the field when something is wrong."""
    if not isinstance(manifest, dict):
        raise _bad(path, "(top level)", "is not a JSON object")
    if manifest.get("version") != VERSION:
        raise _bad(
            path,
            "version",
            "is %r; this collection reads version %d" % (manifest.get("version"), VERSION),
            "write the bundle again with this collection's export",
        )
    if manifest.get("kind") != KIND:
        raise _bad(path, "kind", "is %r, not %r" % (manifest.get("kind"), KIND), "point at a vmigrate bundle")
    if manifest.get("state") not in STATES:
        raise _bad(path, "state", "is %r, not one of %s" % (manifest.get("state"), ", ".join(STATES)))
    source = manifest.get("source")
    if not isinstance(source, dict):
        raise _bad(path, "source", "is missing or not a mapping")
    if source.get("platform") not in PLATFORMS:
        raise _bad(path, "source.platform", "is %r, not one of %s" % (source.get("platform"), ", ".join(PLATFORMS)))
    target = manifest.get("target_platform")
    if target is not None and target not in TARGETS:
        raise _bad(path, "target_platform", "is %r, not one of %s" % (target, ", ".join(TARGETS)))
    if not isinstance(manifest.get("spec"), dict):
        raise _bad(path, "spec", "is missing or not a mapping")
    disks = manifest.get("disks")
    if not isinstance(disks, list):
        raise _bad(path, "disks", "is missing or not a list")
    seen = set()
    for i, disk in enumerate(disks):
        _validate_disk(disk, "disks[%d]" % i, path, seen, manifest["state"] == "complete")
    for field in ("sync",):
        if not isinstance(manifest.get(field, []), list):
            raise _bad(path, field, "is not a list")
    if not isinstance(manifest.get("created", {}), dict):
        raise _bad(path, "created", "is not a mapping")
    return manifest


def _validate_disk(disk, where, path, seen, complete=True):
    if not isinstance(disk, dict):
        raise _bad(path, where, "is not a mapping")
    did = disk.get("id")
    if not isinstance(did, str) or not _DISK_ID.match(did):
        raise _bad(path, where + ".id", "is %r; it must be a name of letters, digits, '.', '_' or '-'" % (did,))
    if did in seen:
        raise _bad(path, where + ".id", "repeats %r" % did)
    seen.add(did)
    dpath = disk.get("path")
    if dpath is not None:
        if not isinstance(dpath, str) or not dpath:
            raise _bad(path, where + ".path", "is not a file path")
        if not os.path.isabs(dpath) and ".." in dpath.split("/"):
            raise _bad(path, where + ".path", "%r leaves the bundle directory" % dpath)
    if disk.get("format") not in DISK_FORMATS + (None,):
        raise _bad(path, where + ".format", "is %r, not one of %s" % (disk.get("format"), ", ".join(DISK_FORMATS)))
    if dpath is not None and disk.get("format") is None:
        raise _bad(path, where + ".format", "is missing for disk file %s" % dpath)
    for field in ("capacity", "allocated", "block_size", "blocks"):
        value = disk.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise _bad(path, "%s.%s" % (where, field), "is %r, not a whole number >= 0" % (value,))
    if not isinstance(disk.get("capacity"), int):
        raise _bad(path, where + ".capacity", "is missing")
    if disk.get("digests") is not None:
        if not isinstance(disk["digests"], str) or ".." in disk["digests"].split("/"):
            raise _bad(path, where + ".digests", "is not a path inside the bundle")
        if not disk.get("block_size"):
            raise _bad(path, where + ".block_size", "is missing although digests are recorded")
        sha = disk.get("digests_sha256")
        # While a step runs the digests may not be written yet; a complete bundle has them.
        if (sha is not None or complete) and (not isinstance(sha, str) or not _HEX64.match(sha)):
            raise _bad(path, where + ".digests_sha256", "is not a SHA-256 hex digest")
    checkpoint = disk.get("checkpoint")
    if checkpoint is not None and (not isinstance(checkpoint, dict) or "kind" not in checkpoint):
        raise _bad(path, where + ".checkpoint", "is neither null nor a mapping with a kind")


def canonical(data):
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def fingerprint_of(manifest):
    """SHA-256 over the manifest's content minus the fields a run changes (VOLATILE)."""
    content = {k: v for k, v in manifest.items() if k not in VOLATILE}
    content["disks"] = [{k: v for k, v in d.items() if k not in VOLATILE_DISK} for d in manifest.get("disks", [])]
    return hashlib.sha256(canonical(content)).hexdigest()


def write_json_atomic(path, data):
    """Readers (and a re-run after a crash) see the old file or the new one."""
    with atomic_file(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")


def file_stamp(path):
    """What changes when a file is written in place: size, mtime, inode."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def new_manifest(source, spec, target_platform=None, disks=None):
    """The manifest of a bundle no step has finished yet (state incomplete)."""
    return {
        "version": VERSION,
        "kind": KIND,
        "state": "incomplete",
        "source": dict(source),
        "target_platform": target_platform,
        "spec": spec,
        "disks": list(disks or []),
        "sync": [],
        "created": {"checkpoints": [], "snapshots": []},
    }


def load_manifest(directory):
    return Bundle.load(directory).manifest


def save_manifest(directory, manifest):
    """Validate and write ``manifest`` into ``directory`` atomically."""
    bundle = Bundle(directory, manifest)
    bundle.save()
    return bundle


class Bundle:
    """A bundle directory and its manifest dict."""

    def __init__(self, directory, manifest):
        self.dir = os.path.abspath(directory)
        self.manifest = manifest

    @property
    def path(self):
        return manifest_path(self.dir)

    @classmethod
    def exists(cls, directory):
        return os.path.isfile(manifest_path(directory))

    @classmethod
    def create(cls, directory, source, spec, target_platform=None, disks=None, save=True):
        """A new bundle in state incomplete (saved at once unless ``save`` is false)."""
        manifest = new_manifest(source, spec, target_platform, disks)
        bundle = cls(directory, manifest)
        if save:
            make_dirs(bundle.dir)
            bundle.save()
        return bundle

    @classmethod
    def load(cls, directory):
        path = manifest_path(os.path.abspath(directory))
        try:
            with open(path) as fh:
                manifest = json.load(fh)
        except FileNotFoundError as exc:
            raise InputError(
                "%s does not exist: %s is not a bundle" % (path, directory),
                "point at a directory written by export or convert",
            ) from exc
        except (OSError, ValueError) as exc:
            raise InputError("cannot read %s: %s" % (path, exc), "re-run the step that writes this bundle") from exc
        validate_manifest(manifest, path)
        return cls(directory, manifest)

    def validate(self):
        return validate_manifest(self.manifest, self.path)

    def save(self):
        self.validate()
        write_json_atomic(self.path, self.manifest)

    # -- disks --

    @property
    def disks(self):
        return self.manifest["disks"]

    def disk(self, disk_id):
        for disk in self.disks:
            if disk["id"] == disk_id:
                return disk
        raise InputError(
            "bundle %s has no disk %r" % (self.dir, disk_id), "use one of: %s" % ", ".join(d["id"] for d in self.disks)
        )

    def resolve(self, rel):
        """A path recorded in the manifest: relative to the bundle, or absolute."""
        return rel if os.path.isabs(rel) else os.path.join(self.dir, rel)

    def disk_path(self, disk):
        if isinstance(disk, str):
            disk = self.disk(disk)
        return self.resolve(disk["path"]) if disk.get("path") else None

    def digest_path(self, disk):
        if isinstance(disk, str):
            disk = self.disk(disk)
        return self.resolve(disk["digests"]) if disk.get("digests") else None

    def set_disk(self, record):
        """Add or replace the disk record with the same id."""
        for i, disk in enumerate(self.disks):
            if disk["id"] == record["id"]:
                self.disks[i] = record
                return record
        self.disks.append(record)
        return record

    def load_digests(self, disk):
        """The disk's DigestList, checked against digests_sha256; None when not recorded."""
        from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.blocks import DigestList

        if isinstance(disk, str):
            disk = self.disk(disk)
        if not disk.get("digests"):
            return None
        return DigestList.load(
            self.digest_path(disk), disk["block_size"], expected_sha256=disk["digests_sha256"], count=disk.get("blocks")
        )

    def check_integrity(self):
        """Check the bundle against itself before a step acts on it; raise InputError if not.

        Catches a hand-edited or damaged bundle: for every disk the digest file exists and
        matches ``digests_sha256``, holds one digest per block of ``capacity``, the disk
        image (the source file when referenced in place) is ``capacity`` bytes, the spec's
        disk of that id says the same capacity, and the delta files it lists exist.
        Cheap: the digest file is hashed (32 bytes per MiB), the disk data is not read.
        """
        from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError
        from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
        from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk

        spec_disks = self.manifest["spec"].get("disks") or []
        spec_index = {d.get("id"): k for k, d in enumerate(spec_disks) if isinstance(d, dict)}
        record_ids = {d["id"] for d in self.disks}
        for k, sdisk in enumerate(spec_disks):
            if isinstance(sdisk, dict) and sdisk.get("id") not in record_ids:
                raise self._integrity(sdisk.get("id"), "spec.disks[%d].id" % k, "names no disk in field disks")

        for i, disk in enumerate(self.disks):
            did = disk["id"]
            where = "disks[%d]" % i
            if not disk.get("digests"):
                raise self._integrity(did, where + ".digests", "is missing: the bundle holds no block digests")
            digest_path = self.digest_path(disk)
            try:
                with open(digest_path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise self._integrity(
                    did, where + ".digests", "names %s, which cannot be read: %s" % (digest_path, exc.strerror)
                ) from exc
            actual = hashlib.sha256(data).hexdigest()
            if actual != disk.get("digests_sha256"):
                raise self._integrity(
                    did,
                    where + ".digests_sha256",
                    "is %s, but the digest file %s hashes to %s" % (disk.get("digests_sha256"), digest_path, actual),
                )
            # A whole number of digests (a truncated file is caught by the hash above
            # unless digests_sha256 was edited to match it).
            held = len(data) // _blocks.DIGEST_SIZE
            want = _blocks.block_count(disk["capacity"], disk["block_size"])
            if len(data) % _blocks.DIGEST_SIZE or held != want:
                raise self._integrity(
                    did,
                    where + ".capacity",
                    "is %d bytes, %d blocks of %s.block_size %d, but the digest file %s holds %d"
                    % (disk["capacity"], want, where, disk["block_size"], digest_path, held),
                )
            if disk.get("blocks") is not None and disk["blocks"] != held:
                problem = "is %d, but the digest file %s holds %d" % (disk["blocks"], digest_path, held)
                raise self._integrity(did, where + ".blocks", problem)

            path = self.disk_path(disk)
            if not path:
                raise self._integrity(did, where + ".path", "is missing: the disk has no data file")
            if not os.path.exists(path):
                raise self._integrity(did, where + ".path", "names %s, which does not exist" % path)
            # A disk referenced in another bundle (convert does not copy what it need not)
            # may have been written since by that bundle's next export: its bytes are no
            # longer the ones this bundle's digests describe.
            if disk.get("ref_stamp") and file_stamp(path) != disk["ref_stamp"]:
                raise self._integrity(
                    did,
                    where + ".ref_stamp",
                    "records %s as it was when this bundle referenced it; the file has been written since "
                    "(a later export of its bundle): run the convert again" % path,
                )
            try:
                # Header only (no `qemu-img check`): the virtual size is all that is compared.
                size = _disk.info(path, disk.get("format"), check=False)["virtual-size"]
            except DiskError as exc:
                raise DiskError(
                    "bundle %s, disk %s (fields %s.path, %s.format): %s" % (self.dir, did, where, where, exc.problem),
                    "the file is damaged or not in that format: copy the bundle again, or re-run the export "
                    "(and convert) that wrote it",
                ) from exc
            if size != disk["capacity"]:
                raise self._integrity(
                    did,
                    where + ".capacity",
                    "is %d bytes, but the disk image %s (%s) holds %d" % (disk["capacity"], path, disk["format"], size),
                )

            k = spec_index.get(did)
            if k is None:
                raise self._integrity(did, where + ".id", "names no disk in field spec.disks")
            spec_capacity = spec_disks[k].get("capacity")
            if spec_capacity is not None and spec_capacity != disk["capacity"]:
                raise self._integrity(
                    did,
                    "spec.disks[%d].capacity" % k,
                    "is %r bytes, but %s.capacity is %d" % (spec_capacity, where, disk["capacity"]),
                )

            for j, delta in enumerate(disk.get("deltas") or []):
                rel = delta.get("path") if isinstance(delta, dict) else None
                if not rel or not os.path.isfile(self.resolve(rel)):
                    raise self._integrity(
                        did,
                        "%s.deltas[%d].path" % (where, j),
                        "names %s, which does not exist" % (self.resolve(rel) if rel else "no file"),
                    )
        return self

    def _integrity(self, disk_id, field, problem):
        return InputError(
            "bundle %s, disk %s: field %s %s" % (self.dir, disk_id, field, problem),
            "re-run the export/convert that wrote this bundle (it was changed after it was written)",
        )

    def save_digests(self, disk, digest_list):
        """Write digests/<id>.blocks and record block_size, blocks and digests_sha256."""
        rel = "digests/%s.blocks" % disk["id"]
        disk["digests_sha256"] = digest_list.save(os.path.join(self.dir, rel))
        disk["digests"] = rel
        disk["block_size"] = digest_list.block_size
        disk["blocks"] = len(digest_list)
        return disk

    # -- state and history --

    def add_sync(self, kind, bytes_read=0, bytes_written=0, checkpoint=None, **extra):
        return append_sync(self.manifest, kind, bytes_read, bytes_written, checkpoint, **extra)

    def record_created(self, what, item):
        """Remember something made on the source (checkpoint, snapshot) so it can be cleaned up."""
        self.manifest.setdefault("created", {}).setdefault(what, []).append(item)

    def forget_created(self, what, item):
        """Drop ``item`` from what the bundle records as made on the source (it was removed)."""
        created = (self.manifest.get("created") or {}).get(what)
        if created:
            created[:] = [c for c in created if c != item]

    @property
    def complete(self):
        return self.manifest.get("state") == "complete"

    def mark_incomplete(self):
        self.manifest["state"] = "incomplete"
        self.save()

    def mark_complete(self):
        self.manifest["state"] = "complete"
        self.save()

    def fingerprint(self):
        return fingerprint_of(self.manifest)

    def copy_manifest(self):
        return copy.deepcopy(self.manifest)


class DeltaFile:
    """The bytes of one incremental sync of one disk, kept in the bundle.

    ``disks/<id>.delta-<index>.raw`` is as large as the disk and holds data only at the
    changed offsets (a sparse file: what was not written reads as zeros, costs nothing),
    so an import applies exactly those ranges to an earlier target (blocks.apply_delta).
    It is written under a .part name and appears only when finish() records it.
    """

    def __init__(self, bundle_dir, disk_id, index, size):
        self.rel = "disks/%s.delta-%d.raw" % (disk_id, index)
        self.path = os.path.join(bundle_dir, self.rel)
        self.index = index
        self.tmp = part_path(self.path)
        make_dirs(os.path.dirname(self.path))
        # Guest data: for its owner only (a .part left by a crash is made private again).
        self.fh = os.fdopen(open_private(self.tmp, os.O_WRONLY | os.O_TRUNC, 0o600), "wb")
        self.fh.truncate(size)
        self.written = 0

    def write(self, offset, data):
        os.pwrite(self.fh.fileno(), data, offset)
        self.written += len(data)

    def tee(self, pieces):
        """Pass (offset, bytes) pieces through, keeping a copy of each."""
        for offset, data in pieces:
            self.write(offset, data)
            yield offset, data

    def finish(self, record, extents):
        """Publish the file and append it to the disk ``record``'s deltas; with no
        ``extents`` (nothing changed) there is no delta and the file goes."""
        self.fh.close()
        if not extents:
            self.discard()
            return None
        publish(self.tmp, self.path)
        delta = {
            "index": self.index,
            "path": self.rel,
            "format": "raw",
            "extents": [list(e) for e in extents],
            "bytes": sum(e[1] for e in extents),
            "bytes_written": self.written,
        }
        record.setdefault("deltas", []).append(delta)
        return delta

    def discard(self):
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def delta_pieces(path, extents, chunk=None):
    """(offset, bytes) pieces of the delta file ``path`` over its ``extents``, for blocks.apply_delta."""
    chunk = chunk or 32 * 1024 * 1024
    with open(path, "rb") as fh:
        for start, length in extents:
            for off in range(start, start + length, chunk):
                n = min(chunk, start + length - off)
                data = os.pread(fh.fileno(), n, off)
                if len(data) < n:  # a sparse tail that was never written: zeros
                    data += bytes(n - len(data))
                yield off, data
