# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere as a source: the export's source session, from snapshots, with changed block
tracking (CBT) where it is on. What is copied and recorded is engine/export.py's."""

from __future__ import annotations

import contextlib
import os
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, PlatformError, V2VError
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import SourceSession
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import (
    DatastoreFile,
    fault_text,
    flat_name,
    get_file,
    split_ds_path,
    vim,
    vmodl,
    wait_task,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.inventory import (
    VsphereInventory,
    snapshot_list,
    vm_disks,
)

SNAPSHOT_PREFIX = "vmigrate-"
_EXTENT = re.compile(r'^\s*(?:RW|RDONLY)\s+(\d+)\s+(?:FLAT|VMFS)\s+"([^"]+)"', re.M)
SNAPSHOT_DESCRIPTION = "vmigrate.v2v sync; removed by it"
STUN_SNAPSHOT = SNAPSHOT_PREFIX + "cbt-stun"


def allocated_of(layout_ex, disk_key):
    """Bytes the datastore holds for a virtual disk (the extents of every link of its
    chain: base and snapshot deltas), from the VM's layoutEx: about what a copy reads.
    None when the server does not say (vcsim reports every size as 0, which is read as
    unknown rather than empty)."""
    if layout_ex is None or disk_key is None:
        return None
    extents = {f.key: f.size or 0 for f in layout_ex.file or [] if f.type == "diskExtent"}
    for disk in layout_ex.disk or []:
        if disk.key == disk_key:
            total = sum(extents.get(k, 0) for link in disk.chain or [] for k in link.fileKey)
            return total or None
    return None


def extent_bytes(descriptor, extent):
    """The bytes a VMDK descriptor's extent lines give the file ``extent`` (sectors x 512),
    or None when the descriptor (bytes, or None when there is none) names no such extent."""
    text = (descriptor or b"")[:65536].decode("utf-8", "replace")
    sectors = [int(n) for n, name in _EXTENT.findall(text) if os.path.basename(name) == os.path.basename(extent)]
    return sum(sectors) * 512 if sectors else None


class VsphereSession(SourceSession):
    """One export's view of a VM's disks (engine/export.py drives it).

    A snapshot vmigrate-<n> fixes the point in time for a running VM, and for a shut-off
    one when CBT is used (its changeIds are read from the snapshot's disks); the flat
    extents are read in place over HTTP with Range. With CBT, QueryChangedDiskAreas says
    what changed since the last sync's changeId (or, for a full copy, with changeId *,
    what holds data); without it the engine compares block digests. The snapshot is
    removed when the session ends, also on failure; its changeIds stay valid for the next
    sync (that is how CBT works).
    """

    tracker = "cbt"

    def __init__(self, platform, vm, bundle, incremental, options):
        super().__init__(vm, bundle, incremental, options)
        self.platform = platform
        self.powered_on = vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOff
        cbt_on = bool(vm.config.changeTrackingEnabled)
        self.use_cbt = bool(options.get("use_cbt", True) and (cbt_on or options.get("enable_cbt")))
        self.enable_cbt = self.use_cbt and not cbt_on
        self.snapshot = None
        self.vdisks = {}
        self.notes = {"cbt": self.use_cbt}
        self.disks = [{"id": "disk%d" % i} for i in range(len(vm_disks(vm)))]

    def plan_note(self):
        return " (enabling CBT first)" if self.enable_cbt else ""

    def plan_disk(self, disk):
        vdisks = vm_disks(self.vm)
        index = int(disk["id"][4:])
        key = vdisks[index]["key"] if index < len(vdisks) else None
        planned = {"method": "copy", "format": "raw", "path": "disks/%s.raw" % disk["id"]}
        planned["allocated"] = allocated_of(getattr(self.vm, "layoutEx", None), key)
        return planned

    def __enter__(self):
        vm = self.vm
        if self.enable_cbt:
            self.platform._enable_cbt(vm, self.powered_on, self.notes)
        self.platform._remove_leftover_snapshots(vm, self.bundle, self.notes)
        config = vm.config
        if self.powered_on or self.use_cbt:
            self.snapshot = self.platform._snapshot(vm, self.bundle, self.options.get("quiesce", True), self)
            config = self.snapshot.config
        vdisks = vm_disks(vm, config)
        self.disks = []
        for i, vdisk in enumerate(vdisks):
            self.disks.append({"id": "disk%d" % i, "target": vdisk["file"], "source": {"file": vdisk["file"]}})
            self.vdisks["disk%d" % i] = vdisk
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.snapshot is not None:
            self.platform._remove_snapshot(self.vm, self.snapshot, self.bundle, failure=exc)
        return False

    def open_disk(self, disk):
        vdisk = self.vdisks[disk["id"]]
        ds_name, vmdk = split_ds_path(vdisk["file"])
        reader = self.platform._disk_reader(ds_name, vmdk, vdisk["capacity"])
        return contextlib.closing(reader)

    def changes(self, disk, reader, record):
        last = ((record or {}).get("checkpoint") or {}).get("change_id")
        if not self.use_cbt:
            if last:
                self.reasons.append(
                    "CBT is off on VM %s now (the last sync of disk %s used changeId %s), so block digests "
                    "were compared" % (self.vm.name, disk["id"], last)
                )
            return None
        vdisk = self.vdisks[disk["id"]]
        since = "*"
        if record is not None:
            since = last or None
            if since is None:
                self.reasons.append(
                    "disk %s had no changeId at the last sync (CBT was off), so block digests were compared"
                    % disk["id"]
                )
                return None
        try:
            areas = self.platform.changed_areas(self.vm, self.snapshot, vdisk["key"], vdisk["capacity"], since)
        except PlatformError as exc:
            # A changeId vSphere refuses (CBT was reset: turned off and on, a disk moved or
            # restored) says nothing about what changed: compare every block's digest with
            # the bundle's instead, never apply areas against the wrong base. A refusal for
            # our own snapshot is another fault and stays one.
            if since == "*" or exc.details.get("fault") == "vmodl.fault.ManagedObjectNotFound":
                raise
            self.reasons.append(
                "vSphere refused the changeId %s of disk %s from the last sync (%s): change tracking was "
                "reset, so block digests were compared (the whole disk was read)" % (since, disk["id"], exc.problem)
            )
            return None
        return [list(a) for a in areas]

    def disk_checkpoint(self, disk, index):
        vdisk = self.vdisks[disk["id"]]
        if self.use_cbt and vdisk["change_id"]:
            return {"kind": "cbt", "change_id": vdisk["change_id"], "device_key": vdisk["key"], "file": vdisk["file"]}
        return {"kind": "digests", "id": index}

    def checkpoint(self, index):
        return {d["id"]: self.disk_checkpoint(d, index) for d in self.disks}


class VsphereSource(VsphereInventory):
    """vSphere as a source (a part of VspherePlatform): the export itself is engine/export.py's."""

    def source_record(self, vm):
        return {
            "platform": "vsphere",
            "id": (vm.config.instanceUuid or vm.config.uuid).lower(),
            "name": vm.name,
            "moid": vm._moId,
            "connection": {"hostname": self.conn.host, "port": self.conn.port, "datacenter": self.dc.name},
        }

    def source_session(self, vm, bundle, incremental, options):
        return VsphereSession(self, vm, bundle, incremental, options)

    def migration_leftovers(self, vm, bundle):
        """Snapshots exports made and left (a run killed before removing its own): those
        ``bundle`` records, and those made as ours (vmigrate-<n> with our description, the
        CBT stun snapshot). Any other snapshot is the user's and stays. CBT, when an export
        turned it on, stays on (it changes no guest data)."""
        recorded = (
            {s.get("moid"): s for s in ((bundle.manifest.get("created") or {}).get("snapshots") or [])}
            if bundle
            else {}
        )
        out = []
        for snap in snapshot_list(vm):
            ours = snap["name"] == STUN_SNAPSHOT or (
                snap["name"].startswith(SNAPSHOT_PREFIX) and snap.get("description") == SNAPSHOT_DESCRIPTION
            )
            if snap["moid"] in recorded or ours:
                out.append(
                    {
                        "kind": "snapshot",
                        "name": snap["name"],
                        "moid": snap["moid"],
                        "record": recorded.get(snap["moid"]),
                    }
                )
        # Children first: removing one never re-parents a snapshot still to be removed.
        return out[::-1]

    def remove_leftover(self, vm, item):
        snap = vim.vm.Snapshot(item["moid"], vm._stub)
        what = "snapshot %s (%s) of VM %s" % (item["name"], item["moid"], vm.name)
        try:
            wait_task(snap.RemoveSnapshot_Task(removeChildren=False), "remove " + what, self.conn.timeout)
        except vmodl.fault.ManagedObjectNotFound:
            pass  # gone meanwhile: what was asked

    def _enable_cbt(self, vm, powered_on, result):
        """Turn on changed block tracking.

        On ESXi tracking starts at the VM's next stun/unstun cycle; for a running VM a
        snapshot create + remove is such a cycle, so one is done here (and said so).
        """
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        wait_task(vm.ReconfigVM_Task(spec=spec), "enable change tracking on %s" % vm.name, self.conn.timeout)
        result["cbt_enabled_now"] = True
        if powered_on:
            task = vm.CreateSnapshot_Task(name=STUN_SNAPSHOT, memory=False, quiesce=False)
            snap = wait_task(task, "stun snapshot of %s" % vm.name, self.conn.timeout)
            wait_task(snap.RemoveSnapshot_Task(removeChildren=False), "remove stun snapshot", self.conn.timeout)
            result["stun_cycle"] = "a snapshot was created and removed so that change tracking starts"

    def _snapshot(self, vm, bundle, quiesce, result):
        name = "%s%d" % (SNAPSHOT_PREFIX, len(bundle.manifest.get("sync") or []) + 1)
        # Quiescing needs VMware Tools running in the guest; without them the snapshot is
        # crash-consistent, as KVM's is without a guest agent, and `frozen` says so.
        tools = vm.guest.toolsRunningStatus if vm.guest else None
        quiesce = bool(quiesce) and tools == "guestToolsRunning"
        result.frozen = quiesce
        result.freeze_reason = None if quiesce else "VMware Tools are not running in the guest, or quiesce is off"
        task = vm.CreateSnapshot_Task(name=name, description=SNAPSHOT_DESCRIPTION, memory=False, quiesce=quiesce)
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
        gone = []
        for item in list(recorded):
            if item.get("moid") not in existing:
                gone.append(item.get("name") or item.get("moid"))  # removed behind our back: said, not an error
            else:
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
        if gone:
            result["leftover_snapshots_gone"] = gone
        bundle.save()

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
            # vSphere keeps a flat extent at its full size (thin ones are sparse files), so
            # a file shorter than its descriptor says was cut: its tail would read as zeros.
            declared = extent_bytes(get_file(self.conn, ds_name, vmdk), flat_name(vmdk))
            if declared and reader.size < declared:
                raise DiskError(
                    "disk [%s] %s: its flat extent [%s] %s holds %d bytes, its descriptor says %d: the file "
                    "is truncated (damaged)" % (ds_name, vmdk, ds_name, flat_name(vmdk), reader.size, declared),
                    "restore the disk's files (a backup, or vSphere's own repair), then re-run the export; "
                    "nothing was read into the bundle",
                )
            # No extent size to check against (vcsim's own empty disks have an empty
            # descriptor): the rest reads as zeros.
            reader.data_end = reader.size
            reader.size = capacity
        return reader

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
                    fault=type(exc).__name__,
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
