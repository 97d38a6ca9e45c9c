# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The export step, the same on every platform (see docs/architecture.md).

The engine decides: whether the bundle's chain continues (an incremental) or a new one
starts (a full sync), what each disk's copy, reference or delta holds, the manifest, the
result. A platform supplies a source session (platforms/base.SourceSession): one point
in time of the VM's disks that it can open as readers, tell what changed since the last
sync's checkpoint, and keep or drop the checkpoint it made.

Bundle layout written here: a full sync copies each disk to ``disks/<id>.raw`` (sparse;
a raw base is written in place cheaply by later syncs) or, where the session can keep a
shut-off disk where it is, references it; each incremental writes
``disks/<id>.delta-<n>.raw`` and the same bytes into the base copy, so the base is always
the disk as of the last sync and a partly changed digest block is re-hashed locally.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import make_dirs, part_path, publish
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps

COPY_FORMAT = "raw"


def run_export(platform, vm, bundle_dir, mode="auto", options=None, check_mode=False):
    """Write or refresh the bundle directory ``bundle_dir`` from ``vm``; the step's result.

    ``options``: full, quiesce, block_size (doc fragment vmigrate.v2v.export) and the
    platform's own, which only its session reads.
    """
    options = options or {}
    started = time.monotonic()
    block_size = options.get("block_size")
    if block_size is not None and (block_size < 4096 or block_size & (block_size - 1)):
        raise InputError(
            "block_size %r is not a power of two of at least 4096 bytes" % (block_size,),
            "leave it out (it follows the disk's capacity) or give e.g. 65536 or 1048576",
        )
    name = platform.vm_name(vm)
    power_state = platform.power_state(vm)
    running = power_state != "off"
    source = platform.source_record(vm)
    spec = platform.describe(vm)
    bundle = _bundle.Bundle.load(bundle_dir) if _bundle.Bundle.exists(bundle_dir) else None
    if bundle is not None:
        _check_owner(bundle, source, name)
    reasons = []
    restart = _restart_reason(bundle)
    if restart:
        reasons.append(restart)
    chain = bundle if bundle is not None and not restart and _holds_copies(bundle) else None
    read_mode = _steps.check_export_mode(mode, running, chain is not None, name, bundle_dir)
    if chain is not None and not options.get("full"):
        changed_disks = _disks_changed(chain, spec)
        if changed_disks:
            reasons.append(changed_disks)
            chain = None
    elif chain is not None:
        chain = None  # full=true: a new chain
    incremental = chain is not None
    before = _view(bundle)
    session = platform.source_session(vm, bundle, incremental, options)
    result = {
        "changed": True,
        "mode": read_mode,
        "kind": "incremental" if incremental else "full",
        "bundle": os.path.abspath(bundle_dir),
        "vm": {"name": name, "id": source.get("id"), "power_state": power_state},
        "bytes_read": 0,
        "bytes_written": 0,
        "frozen": False,
        "freeze_reason": None,
    }
    if bundle is not None and bundle.complete and _unchanged(bundle, session, spec, options):
        return _finish(result, bundle, session, reasons, name, started, changed=False, before=before)
    if check_mode:
        result["would"] = "%s %s sync of %s%s" % (read_mode, result["kind"], name, session.plan_note())
        result.update(session.notes)
        # What the bundle would hold, so a checked convert and import can say what they
        # would do with it (their option `planned`) although nothing was written.
        result["planned"] = planned_bundle(result, source, spec, session, bundle if incremental else None)
        result["diff"] = {"before": before, "after": {"would": result["would"]}}
        return _finish(result, bundle, session, reasons, name, started, changed=True)
    if incremental:
        changed = _incremental(bundle, session, spec, name, result)
    else:
        bundle, changed = _full(bundle, bundle_dir, source, spec, session, name, result, options)
    session.commit(changed)
    bundle.save()
    result["frozen"], result["freeze_reason"] = session.frozen, session.freeze_reason
    result.update(session.notes)
    return _finish(result, bundle, session, reasons, name, started, changed=changed, before=before)


def planned_bundle(result, source, spec, session, chain):
    """The manifest a checked export would write, as far as it is known without reading
    the disks: source, spec, the sync it would add (``chain``: the bundle an incremental
    continues, else None for a new chain) and per disk its capacity, what the export would
    do with it (copy, reference or delta), the format and path of its data and the source's
    allocated bytes when the platform can tell. Digests are unknown (None)."""
    capacities = {d.get("id"): d.get("capacity") for d in spec.get("disks") or []}
    records = {r["id"]: r for r in (chain.disks if chain is not None else [])}
    syncs = [dict(x) for x in (chain.manifest.get("sync") or [])] if chain is not None else []
    index = (syncs[-1].get("index") or len(syncs)) + 1 if syncs else 1
    disks = []
    for disk in session.disks:
        record = records.get(disk["id"])
        if record is not None:  # an incremental: a delta on the chain's base copy
            planned = {"method": "delta", "format": record["format"], "path": record.get("path")}
            planned["allocated"] = record.get("allocated")
            deltas = [dict(x) for x in record.get("deltas") or []] + [{"index": index, "planned": True}]
        else:
            planned = dict(session.plan_disk(disk))
            deltas = []
        planned.update(id=disk["id"], capacity=capacities.get(disk["id"]), digests_sha256=None, deltas=deltas)
        disks.append(planned)
    sync = {"index": index, "kind": result["kind"], "mode": result["mode"], "planned": True}
    sync["chain"] = _steps.chain_id(chain.manifest) if chain is not None else None
    return {
        "bundle": result["bundle"],
        "source": dict(source),
        "spec": spec,
        "target_platform": None,
        "sync": syncs + [sync],
        "disks": disks,
    }


def _check_owner(bundle, source, name):
    have = bundle.manifest.get("source") or {}
    if have.get("id") not in (None, source.get("id")):
        raise InputError(
            "bundle %s was made from %s VM %s (%s), not from VM %s (%s)"
            % (bundle.dir, have.get("platform"), have.get("name"), have.get("id"), name, source.get("id")),
            "use another bundle directory for this VM",
        )


def _restart_reason(bundle):
    """Why an incomplete bundle is not continued (a new chain starts), or None."""
    if bundle is None or bundle.complete:
        return None
    why = _steps.resume_refusal(bundle)
    if not why and bundle.manifest.get("base_in_flux"):
        # The sync that died was writing into the base copies: they may hold part of a
        # sync no manifest records, so no delta may be built on them.
        why = "the last sync of bundle %s died while updating its base copies: a new full copy" % bundle.dir
    return why


def _holds_copies(bundle):
    """True when the bundle has a chain whose disks are its own copies (so a delta can be
    built on them); disks referenced in place are read whole again instead."""
    if not bundle.manifest.get("sync") or not bundle.disks:
        return False
    first = bundle.manifest["sync"][0]
    for record in bundle.disks:
        origin = record.get("origin")
        if origin is None:  # bundles written before `origin` was recorded
            copied = first.get("mode") == "warm" or (bundle.manifest.get("source") or {}).get("platform") != "kvm"
            origin = "copy" if copied else "reference"
        if origin != "copy":
            return False
    return True


def _disks_changed(bundle, spec):
    """Why the VM's disks no longer match the chain's (a new full copy), or None."""
    have = [(d["id"], d["capacity"]) for d in bundle.disks]
    now = [(d.get("id"), d.get("capacity")) for d in spec.get("disks") or []]
    if have != now:
        return "the VM's disks changed since the last sync (%s, now %s): a new full copy" % (
            ", ".join("%s %d B" % d for d in have),
            ", ".join("%s %s B" % d for d in now),
        )
    return None


def _unchanged(bundle, session, spec, options):
    """True when the session can tell, without reading, that nothing changed since the
    bundle's last sync (a shut-off VM's disk files as they were)."""
    if options.get("full") or bundle.manifest.get("spec") != spec:
        return False
    stamps = [session.stamp(d) for d in session.disks]
    recorded = [(r.get("source") or {}).get("stat") for r in bundle.disks]
    return all(stamps) and len(stamps) == len(recorded) and stamps == recorded


# --- a full sync: a new chain ---------------------------------------------------------


def _full(old, bundle_dir, source, spec, session, name, result, options):
    """Copy (or reference) every disk into a new chain; returns (bundle, changed)."""
    block_size = int(options.get("block_size") or 0) or None  # None: by capacity, see _sized
    manifest = _bundle.new_manifest(source, spec)
    if old is not None:
        # What earlier runs made on the source stays recorded until it is removed.
        manifest["created"] = old.manifest.get("created") or manifest.get("created") or {}
    bundle = _bundle.Bundle(bundle_dir, manifest)
    made_dir = not os.path.isdir(bundle.dir)
    make_dirs(os.path.join(bundle.dir, "disks"))
    bundle.save()
    session.bundle = bundle
    try:
        return _full_sync(old, bundle, spec, session, name, result, block_size)
    except BaseException:
        if old is None and not any((manifest.get("created") or {}).values()):
            _remove_new_bundle(bundle, made_dir)  # a first export that failed leaves nothing
        raise


def _remove_new_bundle(bundle, made_dir):
    for sub in ("disks", "digests"):
        shutil.rmtree(os.path.join(bundle.dir, sub), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(bundle.path)
    if made_dir:
        with contextlib.suppress(OSError):
            os.rmdir(bundle.dir)


def _full_sync(old, bundle, spec, session, name, result, block_size):
    manifest = bundle.manifest
    totals = {"bytes_read": 0, "bytes_written": 0}
    disks = []
    with session:
        for disk in session.disks:
            record = _new_record(disk, spec, block_size)
            ref = session.reference(disk)
            if ref is not None:
                disks.append(_digest_reference(bundle, record, ref, name, totals))
            else:
                disks.append(_copy(bundle, record, session, disk, name, totals))
            record["checkpoint"] = session.disk_checkpoint(disk, 1)
            record["source"]["stat"] = session.stamp(disk)
            manifest["disks"].append(record)
    if old is not None and _same_content(old.manifest, manifest):
        # The same bytes and spec as the last full sync of disks referenced in place (a
        # touched file has a new mtime): keep that chain, or a target imported from it
        # would look like another chain's and be refused.
        for was, now in zip(old.disks, manifest["disks"], strict=True):
            was["source"], was["path"] = now["source"], now["path"]
        old.manifest["created"] = manifest["created"]
        old.manifest["state"] = "complete"
        result.update(totals, disks=disks)
        return old, False
    checkpoint = session.checkpoint(1)
    _bundle.append_sync(
        manifest,
        "full",
        checkpoint=checkpoint,
        mode=result["mode"],
        index=1,
        chain=_steps.new_chain_id(),
        method="reference" if all(d["method"] == "reference" for d in disks) else "copy",
        frozen=session.frozen,
        **totals,
    )
    manifest["state"] = "complete"
    _remove_stale_files(bundle)
    result.update(totals, disks=disks)
    return bundle, True


def _new_record(disk, spec, block_size):
    sdisk = next((d for d in spec.get("disks") or [] if d.get("id") == disk["id"]), {})
    return {
        "id": disk["id"],
        "target": disk.get("target"),
        "path": None,
        "format": None,
        "capacity": None,
        "allocated": None,
        "block_size": block_size,
        "digests": "digests/%s.blocks" % disk["id"],
        "digests_sha256": None,
        "blocks": None,
        "checkpoint": None,
        "deltas": [],
        "source": dict(disk.get("source") or {}),
        "bus": sdisk.get("bus"),
    }


def _sized(record, capacity):
    """The record's digest block size: the option's, else blocks.auto_block_size."""
    record["block_size"] = record["block_size"] or _blocks.auto_block_size(capacity)
    return record["block_size"]


def _digest_reference(bundle, record, ref, name, totals):
    """A disk kept where it is (or where the session put it): record its digests."""
    path = bundle.resolve(ref["path"])
    with _disk.open_guest(path, ref["format"]) as reader:
        _sized(record, reader.size)
        progress = Progress("digest %s %s" % (name, record["id"]), reader.size)
        digests = _blocks.digest_disk(reader, record["block_size"], progress=progress)
        size = reader.size
    record.update(
        path=ref["path"],
        format=ref["format"],
        origin="reference",
        capacity=size,
        allocated=ref.get("allocated"),
        blocks=len(digests),
    )
    bundle.save_digests(record, digests)
    totals["bytes_read"] += digests.bytes_read
    totals["bytes_written"] += ref.get("bytes_written") or 0
    return _disk_result(record, "reference", digests.bytes_read, ref.get("bytes_written") or 0, progress)


def _copy(bundle, record, session, disk, name, totals):
    """Copy a disk whole (its data extents only) into the bundle, hashing on the way."""
    rel = "disks/%s.%s" % (record["id"], COPY_FORMAT)
    path = bundle.resolve(rel)
    with session.open_disk(disk) as reader:
        size = reader.size
        _sized(record, size)
        areas = session.changes(disk, reader, None)
        extents = None if areas is None else [_disk.Extent(s, n, True, False) for s, n in areas]
        progress = Progress("copy %s %s" % (name, record["id"]), size)
        tmp = part_path(path)
        _disk.create(tmp, COPY_FORMAT, size)
        with _disk.open_guest(tmp, COPY_FORMAT, writable=True) as writer:
            digests, stats = _blocks.copy_with_digests(
                reader, writer, record["block_size"], progress=progress, extents=extents
            )
        publish(tmp, path)
    record.update(
        path=rel,
        format=COPY_FORMAT,
        origin="copy",
        capacity=size,
        allocated=stats["bytes_written"],
        blocks=len(digests),
    )
    bundle.save_digests(record, digests)
    totals["bytes_read"] += stats["bytes_read"]
    totals["bytes_written"] += stats["bytes_written"]
    return _disk_result(record, "copy", stats["bytes_read"], stats["bytes_written"], progress)


def _same_content(prev, manifest):
    """True when ``manifest`` (a new full sync of disks referenced in place) holds what the
    previous one-sync reference chain ``prev`` held."""
    if prev.get("spec") != manifest["spec"] or len(prev.get("sync") or []) != 1:
        return False
    if any(d.get("origin") != "reference" for d in manifest["disks"]):
        return False

    def key(m):
        return [(d["id"], d["format"], d["capacity"], d["digests_sha256"]) for d in m["disks"]]

    return key(prev) == key(manifest)


def _remove_stale_files(bundle):
    """Files of an older chain in disks/ (deltas, copies of disks now referenced)."""
    keep = {os.path.basename(d["path"]) for d in bundle.disks if not os.path.isabs(d["path"])}
    directory = os.path.join(bundle.dir, "disks")
    for entry in os.listdir(directory):
        if entry not in keep and not entry.endswith(".part"):
            os.unlink(os.path.join(directory, entry))


# --- an incremental sync: the chain goes on ---------------------------------------------


def _incremental(bundle, session, spec, name, result):
    """Write what changed since the last sync as deltas (and into the base copies)."""
    index = bundle.manifest["sync"][-1]["index"] + 1
    bundle.manifest["spec"] = spec
    bundle.manifest["state"] = "incomplete"
    bundle.manifest["base_in_flux"] = True  # the base copies change in place: see _restart_reason
    bundle.save()
    totals = {"bytes_read": 0, "bytes_written": 0}
    disks = []
    tracked = []
    with session:
        for disk, record in zip(session.disks, bundle.disks, strict=True):
            with session.open_disk(disk) as reader:
                extents = session.changes(disk, reader, record)
                tracked.append(extents is not None)
                disks.append(_delta(bundle, record, reader, extents, index, name, totals))
            record["source"]["stat"] = session.stamp(disk)
        changed = any(d["method"] == "delta" for d in disks)
        if changed:
            for disk, record in zip(session.disks, bundle.disks, strict=True):
                record["checkpoint"] = session.disk_checkpoint(disk, index)
    if changed:
        _bundle.append_sync(
            bundle.manifest,
            "incremental",
            checkpoint=session.checkpoint(index),
            mode=result["mode"],
            index=index,
            chain=_steps.chain_id(bundle.manifest),
            method=session.tracker if all(tracked) else "digests",
            frozen=session.frozen,
            **totals,
        )
    bundle.manifest.pop("base_in_flux", None)
    bundle.manifest["state"] = "complete"
    result.update(totals, disks=disks)
    return changed


def _delta(bundle, record, reader, extents, index, name, totals):
    """Disk ``record``'s changes since the last sync as delta ``index``.

    ``extents`` are what the change tracker reports (any 512-aligned bounds); None means
    the source cannot say, so the whole disk is read and the digest blocks that differ
    from the last sync's are the delta.
    """
    size = reader.size
    if size != record["capacity"]:
        raise PlatformError(
            "disk %s of %s changed size (%d -> %d bytes) since the last sync"
            % (record["id"], name, record["capacity"], size),
            "start a new chain: export with full=true",
        )
    digests = bundle.load_digests(record)
    read = 0
    if extents is None:
        fresh = _blocks.digest_disk(reader, record["block_size"])
        read = fresh.bytes_read
        extents = [list(r) for r in fresh.changed_extents(digests, size)]
    totals["bytes_read"] += read
    if not extents:
        return _disk_result(record, "none", read, 0, None)
    # The base must be the disk as of the last sync before a partly changed block is
    # hashed from it (bundles written before bases were kept current).
    totals["bytes_written"] += _bring_base_current(bundle, record)
    progress = Progress("delta %s %s #%d" % (name, record["id"], index), sum(e[1] for e in extents))
    delta = _bundle.DeltaFile(bundle.dir, record["id"], index, size)
    try:
        stats = _write_delta(bundle, record, reader, extents, delta, digests, progress)
        entry = delta.finish(record, extents)
    finally:
        delta.discard()
    entry["in_base"] = True
    bundle.save_digests(record, digests)
    totals["bytes_read"] += stats["bytes_read"]
    totals["bytes_written"] += stats["bytes_written"]
    res = _disk_result(record, "delta", read + stats["bytes_read"], stats["bytes_written"], progress)
    res["last_delta"] = entry
    return res


def _bring_base_current(bundle, record):
    """Apply to the base copy every delta it does not hold yet; the bytes written."""
    written = 0
    for delta in record.get("deltas") or []:
        if delta.get("in_base"):
            continue
        base = bundle.resolve(record["path"])
        # The export's own progress covers this: no events of its own.
        written += _blocks.apply_delta_file(
            base, record["format"], bundle.resolve(delta["path"]), delta, show_progress=False
        )["bytes_written"]
        delta["in_base"] = True
    return written


def _write_delta(bundle, record, reader, extents, delta, digests, progress):
    """Copy ``extents`` of ``reader`` into ``delta`` (a bundle.DeltaFile) and into the base.

    blocks.write_with_digests hashes every digest block a piece covers whole from the
    piece, and re-reads a partly covered block from the base after the writes (the rest
    of that block did not change since the last sync, so the base's bytes are the
    source's). Returns bytes read (from the source) and written (into the delta).
    """
    stats = {"bytes_read": 0}

    def pieces():
        for off, data, n in _blocks._read_ahead(reader, extents, _disk.MAX_REQUEST, 512):
            data = bytes(data[:n]) if len(data) != n else data
            stats["bytes_read"] += n
            progress.advance(n)
            if data.count(0) != n:
                delta.write(off, data)  # zeros stay a hole of the sparse delta file
            yield off, data

    before = delta.written
    with _disk.open_guest(bundle.resolve(record["path"]), record["format"], writable=True) as base:
        _blocks.write_with_digests(base, pieces(), digests)
        base.flush()
    return {"bytes_read": stats["bytes_read"], "bytes_written": delta.written - before}


# --- the result ------------------------------------------------------------------------


def _disk_result(record, method, read, written, progress):
    return {
        "id": record["id"],
        "path": record.get("path"),
        "format": record.get("format"),
        "capacity": record.get("capacity"),
        "method": method,
        "bytes_read": read,
        "bytes_written": written,
        "progress": progress.finish() if progress is not None else None,
    }


def _view(bundle):
    """What --diff shows of a bundle: its chain and latest sync, not its disk data."""
    if bundle is None:
        return {}
    last = (bundle.manifest.get("sync") or [{}])[-1]
    return {
        "state": bundle.manifest.get("state"),
        "chain": _steps.chain_id(bundle.manifest),
        "sync_index": last.get("index"),
        "checkpoint": last.get("checkpoint"),
        "fingerprint": _steps.content_fingerprint(bundle.manifest) if bundle.disks else None,
    }


def _finish(result, bundle, session, reasons, name, started, changed, before=None):
    result["changed"] = changed
    if before is not None:
        result["diff"] = {"before": before, "after": _view(bundle)}
    if bundle is not None and bundle.manifest.get("sync"):
        last = bundle.manifest["sync"][-1]
        result["sync_index"] = last.get("index")
        result["checkpoint"] = last.get("checkpoint")
        result["fingerprint"] = _steps.content_fingerprint(bundle.manifest)
        for disk in result.get("disks") or []:
            record = next((r for r in bundle.disks if r["id"] == disk["id"]), {})
            disk.update(digests_sha256=record.get("digests_sha256"), checkpoint=record.get("checkpoint"))
    result.setdefault("disks", [])
    result["fallback_reason"] = "; ".join(reasons + session.reasons) or None
    return _steps.finish_export(result, name, started)
