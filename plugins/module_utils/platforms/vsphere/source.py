# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere as a source: export from snapshots, with changed block tracking (CBT) where
it is on, into the bundle (whole disks, then deltas of each sync)."""

from __future__ import annotations

import os
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError, V2VError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import part_path, publish
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle, DeltaFile
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import (
    HTTP_CHUNK,
    DatastoreFile,
    fault_text,
    flat_name,
    split_ds_path,
    vim,
    vmodl,
    wait_task,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.inventory import (
    VsphereInventory,
    describe_vm,
    snapshot_list,
    vm_disks,
)

SNAPSHOT_PREFIX = "vmigrate-"


class VsphereSource(VsphereInventory):
    """vSphere as a source: export (a part of VspherePlatform)."""

    def export(self, vm, bundle, mode="auto", check_mode=False, options=None):
        """Write or refresh a bundle from a VM (see vsphere_export's documentation).

        cold: the VM is off; each disk is read from the datastore (first run: all of it).
        warm: a snapshot vmigrate-<n> is taken and its (frozen) base disks are read; with
        CBT only the areas QueryChangedDiskAreas reports since the recorded changeId,
        without CBT every byte is read and only blocks whose digest changed are written.
        Snapshots this run makes are removed before it returns, also on failure; their
        changeIds stay valid for the next sync (that is how CBT works).
        """
        bundle_dir = bundle  # a path here; `bundle` becomes the Bundle object below
        options = options or {}
        started = time.monotonic()
        powered_on = vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOff
        source_id = (vm.config.instanceUuid or vm.config.uuid).lower()
        bundle = Bundle.load(bundle_dir) if Bundle.exists(bundle_dir) else None
        if bundle is not None and bundle.manifest["source"].get("id") != source_id:
            raise InputError(
                "bundle %s was made from %s %s, not from VM %s (%s)"
                % (
                    bundle_dir,
                    bundle.manifest["source"].get("platform"),
                    bundle.manifest["source"].get("id"),
                    vm.name,
                    source_id,
                ),
                "use another bundle directory for this VM",
            )
        # A bundle whose last run died half-way is continued from its last finished sync,
        # unless it no longer agrees with itself (then a new chain, and the result says why).
        restart = None if bundle is None or bundle.complete else _steps.resume_refusal(bundle)
        has_chain = bundle is not None and bool(bundle.manifest.get("sync")) and not restart
        mode = _steps.check_export_mode(mode, powered_on, has_chain, vm.name, bundle_dir)
        first = not has_chain or options.get("full")
        cbt_on = bool(vm.config.changeTrackingEnabled)
        use_cbt = options.get("use_cbt", True) and (cbt_on or options.get("enable_cbt"))
        result = {
            "changed": False,
            "mode": mode,
            "cbt": bool(use_cbt),
            "kind": "full" if first else "incremental",
            "frozen": False,
            "bytes_read": 0,
            "bytes_written": 0,
            "fallback_reason": restart,
        }
        if check_mode:
            result["changed"] = True
            result["would"] = "%s %s sync of %s%s" % (
                mode,
                result["kind"],
                vm.name,
                " (enabling CBT first)" if use_cbt and not cbt_on else "",
            )
            return _steps.finish_export(result, vm.name, started)
        if use_cbt and not cbt_on:
            self._enable_cbt(vm, powered_on, result)
        spec = describe_vm(vm)
        if bundle is None:
            source = {
                "platform": "vsphere",
                "id": source_id,
                "name": vm.name,
                "moid": vm._moId,
                "connection": {"hostname": self.conn.host, "port": self.conn.port, "datacenter": self.dc.name},
            }
            bundle = Bundle.create(bundle_dir, source, spec)
        else:
            bundle.manifest["spec"] = spec
            bundle.mark_incomplete()
        self._remove_leftover_snapshots(vm, bundle, result)
        snapshot = None
        need_snapshot = mode == "warm" or use_cbt
        try:
            if need_snapshot:
                snapshot = self._snapshot(vm, bundle, options.get("quiesce", True), result)
                config = snapshot.config
            else:
                config = vm.config
            stats = self._export_disks(vm, bundle, spec, config, snapshot, first, use_cbt, options, None)
        except Exception as exc:
            if snapshot is not None:
                self._remove_snapshot(vm, snapshot, bundle, failure=exc)
            raise
        if snapshot is not None:
            self._remove_snapshot(vm, snapshot, bundle)
        changed = first or any(s["bytes_written"] for s in stats)
        checkpoint = {d["id"]: d.get("checkpoint") for d in bundle.disks}
        syncs = bundle.manifest.get("sync") or []
        if first:
            # A full sync starts a new chain; deltas of an older chain no longer apply.
            for record in bundle.disks:
                for old_delta in record.pop("deltas", None) or []:
                    _remove_quietly(os.path.join(bundle.dir, old_delta["path"]))
            bundle.manifest["sync"] = syncs = []
        bundle.add_sync(
            result["kind"],
            index=len(syncs) + 1,
            chain=syncs[0].get("chain") if syncs else _steps.new_chain_id(),
            bytes_read=sum(s["bytes_read"] for s in stats),
            bytes_written=sum(s["bytes_written"] for s in stats),
            checkpoint=checkpoint,
            mode=mode,
            method="cbt" if use_cbt else ("full-read" if first else "hash-diff"),
            snapshot=snapshot is not None,
            changed_extents={s["id"]: s["extents"] for s in stats if s.get("extents") is not None},
        )
        bundle.mark_complete()
        result.update(
            changed=bool(changed),
            bundle=bundle.dir,
            sync_index=len(bundle.manifest["sync"]),
            bytes_read=sum(s["bytes_read"] for s in stats),
            bytes_written=sum(s["bytes_written"] for s in stats),
            disks=[{k: v for k, v in s.items() if k != "extents"} for s in stats],
            fingerprint=bundle.fingerprint(),
        )
        return _steps.finish_export(result, vm.name, started)

    def _enable_cbt(self, vm, powered_on, result):
        """Turn on changed block tracking.

        On ESXi tracking starts at the VM's next stun/unstun cycle; for a running VM a
        snapshot create + remove is such a cycle, so one is done here (and said so).
        """
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        wait_task(vm.ReconfigVM_Task(spec=spec), "enable change tracking on %s" % vm.name, self.conn.timeout)
        result["cbt_enabled_now"] = True
        if powered_on:
            task = vm.CreateSnapshot_Task(name=SNAPSHOT_PREFIX + "cbt-stun", memory=False, quiesce=False)
            snap = wait_task(task, "stun snapshot of %s" % vm.name, self.conn.timeout)
            wait_task(snap.RemoveSnapshot_Task(removeChildren=False), "remove stun snapshot", self.conn.timeout)
            result["stun_cycle"] = "a snapshot was created and removed so that change tracking starts"

    def _snapshot(self, vm, bundle, quiesce, result):
        name = "%s%d" % (SNAPSHOT_PREFIX, len(bundle.manifest.get("sync") or []) + 1)
        # Quiescing needs VMware Tools running in the guest; without them the snapshot is
        # crash-consistent, as KVM's is without a guest agent, and `frozen` says so.
        tools = vm.guest.toolsRunningStatus if vm.guest else None
        quiesce = bool(quiesce) and tools == "guestToolsRunning"
        result["frozen"] = quiesce
        task = vm.CreateSnapshot_Task(
            name=name, description="vmigrate.v2v sync; removed by it", memory=False, quiesce=quiesce
        )
        snap = wait_task(task, "snapshot %s of %s" % (name, vm.name), self.conn.timeout)
        bundle.record_created("snapshots", {"name": name, "moid": snap._moId, "vm": vm._moId})
        bundle.save()
        return snap

    def _remove_snapshot(self, vm, snap, bundle, failure=None):
        """Remove a snapshot this run took and drop it from the bundle's record.

        When removal fails the snapshot stays recorded in the bundle (the next run removes
        it) and the error names it. ``failure`` is the error the export already had: it is
        reported first, never replaced. Names come from the bundle, not from vSphere,
        which may be the thing that is down.
        """
        created = bundle.manifest.setdefault("created", {}).setdefault("snapshots", [])
        name = next((s.get("name") for s in created if s.get("moid") == snap._moId), snap._moId)
        vm_name = bundle.manifest["source"].get("name") or vm._moId
        try:
            try:
                wait_task(
                    snap.RemoveSnapshot_Task(removeChildren=False),
                    "remove snapshot %s of %s" % (name, vm_name),
                    self.conn.timeout,
                )
            except vmodl.fault.ManagedObjectNotFound:
                pass
        except Exception as exc:
            why = exc.problem if isinstance(exc, PlatformError) else "%s: %s" % (type(exc).__name__, exc)
            left = (
                "snapshot %s (%s) of VM %s could not be removed (%s); it is recorded in bundle %s and the "
                "next run removes it" % (name, snap._moId, vm_name, why, bundle.dir)
            )
            if failure is None:
                raise PlatformError(
                    left, "re-run the export once vSphere can remove it, or delete the snapshot in vCenter"
                ) from exc
            if isinstance(failure, V2VError):
                raise type(failure)("%s; also, %s" % (failure.problem.rstrip("."), left), failure.fix) from failure
            raise PlatformError(
                "export of VM %s failed: %s: %s; also, %s" % (vm_name, type(failure).__name__, failure, left),
                "fix the first error, then re-run",
            ) from failure
        created[:] = [s for s in created if s.get("moid") != snap._moId]
        bundle.save()

    def _remove_leftover_snapshots(self, vm, bundle, result):
        """Snapshots an earlier, interrupted run made and could not remove."""
        recorded = bundle.manifest.get("created", {}).get("snapshots") or []
        existing = {s["moid"]: s for s in snapshot_list(vm)}
        removed = []
        for item in list(recorded):
            if item.get("moid") in existing:
                snap = vim.vm.Snapshot(item["moid"], vm._stub)
                what = "snapshot %s (%s) of VM %s" % (item.get("name"), item["moid"], vm.name)
                try:
                    wait_task(snap.RemoveSnapshot_Task(removeChildren=False), "remove " + what, self.conn.timeout)
                except PlatformError as exc:
                    bundle.save()  # what was removed so far is no longer recorded
                    raise PlatformError(
                        "%s, left by an earlier run, could not be removed: %s" % (what, exc.problem),
                        "fix what prevents its removal (or delete it in vCenter), then re-run; "
                        "it stays recorded in bundle %s" % bundle.dir,
                    ) from exc
                removed.append(item["name"])
            recorded.remove(item)
        if removed:
            result["removed_leftover_snapshots"] = removed
        bundle.save()

    def _export_disks(self, vm, bundle, spec, config, snapshot, first, use_cbt, options, progress_factory):
        block_size = int(options.get("block_size") or _blocks.DEFAULT_BLOCK_SIZE)
        sync_index = len(bundle.manifest.get("sync") or []) + 1
        disks = vm_disks(vm, config)
        stats = []
        for sdisk, vdisk in zip(spec["disks"], disks, strict=True):
            disk_id = sdisk["id"]
            capacity = vdisk["capacity"]
            record = None
            if not first:
                try:
                    record = bundle.disk(disk_id)
                except InputError:
                    record = None
            rel = "disks/%s.raw" % disk_id
            path = os.path.join(bundle.dir, rel)
            full = first or record is None or record.get("capacity") != capacity or not os.path.exists(path)
            prev_change = ((record or {}).get("checkpoint") or {}).get("change_id")
            if use_cbt and not full and not prev_change:
                full = True  # tracking was off at the last sync: nothing to ask about
            ds_name, vmdk = split_ds_path(vdisk["file"])
            reader = self._disk_reader(ds_name, vmdk, capacity)
            progress = (progress_factory or Progress)("export %s" % disk_id, capacity)
            try:
                if use_cbt:
                    areas = self.changed_areas(vm, snapshot, vdisk["key"], capacity, "*" if full else prev_change)
                else:
                    areas = None
                if full:
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    tmp = part_path(path)
                    with open(tmp, "wb") as fh:
                        fh.truncate(capacity)
                    extents = None if areas is None else [_disk.Extent(s, n, True, False) for s, n in areas]
                    with _disk.RawFile(tmp, writable=True) as writer:
                        digests, st = _blocks.copy_with_digests(
                            reader, writer, block_size, progress=progress, extents=extents
                        )
                    publish(tmp, path)
                    changed_extents = None
                else:
                    old = bundle.load_digests(record)
                    delta = DeltaFile(bundle.dir, disk_id, sync_index, capacity)
                    try:
                        if areas is not None:
                            pieces = delta.tee(self._read_pieces(reader, areas, progress))
                            st = _blocks.apply_delta(path, "raw", pieces, digests=old)
                            st = {"bytes_read": reader.bytes_read, "bytes_written": st["bytes_written"]}
                            digests = old
                            changed_extents = [list(a) for a in areas]
                        else:
                            digests, st, changed_extents = self._hash_diff(reader, path, old, progress, delta)
                        delta.finish(record, changed_extents)
                    finally:
                        delta.discard()
                record = dict(record or {})
                record.update(id=disk_id, path=rel, format="raw", capacity=capacity)
                record["checkpoint"] = (
                    {"kind": "cbt", "change_id": vdisk["change_id"], "device_key": vdisk["key"], "file": vdisk["file"]}
                    if use_cbt and vdisk["change_id"]
                    else {"kind": "digests"}
                )
                record["allocated"] = (
                    sum(1 for i in range(len(digests)) if digests[i] != _blocks.ZERO_DIGEST) * block_size
                )
                bundle.save_digests(record, digests)
                bundle.set_disk(record)
                bundle.save()
                stats.append(
                    {
                        "id": disk_id,
                        "file": vdisk["file"],
                        "bytes_read": reader.bytes_read,
                        "bytes_written": st["bytes_written"],
                        "change_id": vdisk["change_id"],
                        "full": full,
                        "extents": changed_extents,
                        "progress": progress.finish(),
                    }
                )
            finally:
                reader.close()
        return stats

    def _disk_reader(self, ds_name, vmdk, capacity):
        """Guest bytes of a disk on a datastore: the flat extent, read in place with Range."""
        try:
            reader = DatastoreFile(self.conn, ds_name, flat_name(vmdk))
        except PlatformError as exc:
            raise PlatformError(
                "disk [%s] %s has no flat extent (%s): it is a sparse or vSAN disk" % (ds_name, vmdk, exc.problem),
                "this module reads flat/thin VMFS and NFS disks; export sparse disks with ovftool or NBD/VDDK",
            ) from exc
        if reader.size < capacity:
            # A thin file shorter than the disk: the rest reads as zeros.
            reader.data_end = reader.size
            reader.size = capacity
        return reader

    @staticmethod
    def _read_pieces(reader, areas, progress):
        for start, length in areas:
            for off in range(start, start + length, HTTP_CHUNK):
                n = min(HTTP_CHUNK, start + length - off)
                data = reader.pread(n, off)
                if progress is not None:
                    progress.advance(n)
                yield off, data

    @staticmethod
    def _hash_diff(reader, path, old, progress, delta):
        """No CBT: read everything, write only the blocks whose digest changed."""
        new = _blocks.digest_disk(reader, old.block_size, progress=progress)
        runs = new.changed_extents(old, reader.size)
        pieces = delta.tee((start, reader.pread(length, start)) for start, length in runs)
        st = _blocks.apply_delta(path, "raw", pieces)
        return new, {"bytes_written": st["bytes_written"]}, [list(r) for r in runs]

    def changed_areas(self, vm, snapshot, device_key, capacity, change_id):
        """QueryChangedDiskAreas paged through the whole disk: merged [(start, length)]."""
        areas = []
        offset = 0
        while offset < capacity:
            try:
                info = vm.QueryChangedDiskAreas(
                    snapshot=snapshot, deviceKey=device_key, startOffset=offset, changeId=change_id
                )
            except vmodl.MethodFault as exc:
                raise PlatformError(
                    "QueryChangedDiskAreas on %s disk %d since %s failed: %s"
                    % (vm.name, device_key, change_id, fault_text(exc)),
                    "the changeId is no longer valid (CBT was reset): run a full export (full=true)",
                ) from exc
            for area in info.changedArea or []:
                if areas and areas[-1][0] + areas[-1][1] == area.start:
                    areas[-1] = (areas[-1][0], areas[-1][1] + area.length)
                else:
                    areas.append((area.start, area.length))
            if info.length <= 0:
                break
            offset = info.startOffset + info.length
        return areas


def _remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
