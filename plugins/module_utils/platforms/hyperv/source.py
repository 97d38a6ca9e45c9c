# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hyper-V as a source: the export's source session (cold) over the share.

A VM's VHDX files are read through the share (the conversion host's mount of the Hyper-V
host's directory) and copied into the bundle by the engine: as they are when the VM is
off, from the stable parents under a temporary checkpoint while it runs. Later syncs read
only the ranges RCT (resilient change tracking) reports changed since the last sync's
reference point, or compare block digests when it cannot say. A VM whose disks are
already differencing disks (its own checkpoints, a child VHD) is refused: the merged view
is not read, and reading only the child would be half the disk.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError, PlatformError, V2VError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import SourceSession
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _inventory

CHECKPOINT_PREFIX = "vmigrate-sync-"
JOB_STARTED = 4096  # a CIM method's "Method Parameters Checked - Job Started"
JOB_TIMEOUT = 600


class HyperVSession(SourceSession):
    """One export of a VM's disks, read through the share.

    Off: the disk files as they are. Running (warm): a temporary checkpoint is made on
    entry, each disk's parent (stable while the VM writes into the checkpoint's
    differencing disk) is read, and the checkpoint is removed on exit, also on failure.
    Where the VM runs, or the bundle's chain has RCT ids, an RCT reference point is made
    on entry, just before the checkpoint: its per-disk ids are the next sync's base, and
    GetVirtualDiskChanges since the last ones says which byte ranges to read.
    """

    tracker = "rct"

    def __init__(self, platform, vm, bundle, incremental, options):
        super().__init__(vm, bundle, incremental, options)
        self.platform = platform
        self.conn = platform.conn
        name = vm["Name"]
        state = vm.get("State")
        if state not in ("Off", "Running"):
            raise InputError(
                "VM %s is %s; an export reads a VM that is off (cold) or running (warm)" % (name, state),
                "start it or shut it down (vmigrate.v2v.hyperv_power), then export again",
            )
        self.warm = state == "Running"
        self.share = platform.share()
        self.share.check()
        self.checkpoint_name = None
        self.reference_point = None  # {"Id", "Rct": [ids per disk]} made on entry
        # The reference points this bundle's syncs made: those its disks record, and the last
        # one kept under `created` (a failed new chain no longer records the old chain's).
        created = ((bundle.manifest.get("created") or {}).get("reference_points") or []) if bundle else []
        self.previous = sorted(
            {(r.get("checkpoint") or {}).get("reference_point") for r in (bundle.disks if bundle else [])}.union(
                created
            )
            - {None}
        )
        self.use_rct = self.warm or any(
            (r.get("checkpoint") or {}).get("kind") == "rct" for r in (bundle.disks if bundle else [])
        )
        for i, d in enumerate(_inventory.vm_disks(vm)):
            where = self._where(i, d)
            if d["parent_path"] or d["vhd_type"] == "Differencing":
                raise InputError(
                    "%s is a differencing disk (%s, parent %s): the VM has checkpoints or a child disk, and "
                    "reading only the child would copy half a disk" % (where, d["path"], d["parent_path"]),
                    "delete the VM's checkpoints (Remove-VMCheckpoint merges them) or merge the disk "
                    "(Merge-VHD), then export again",
                )
            local = self.share.to_local(d["path"], where)
            if not os.path.isfile(local):
                raise InputError(
                    "%s is %s, but %s is not on the share on the conversion host" % (where, d["path"], local),
                    self.share.mount_hint(),
                )
            self.disks.append(
                {
                    "id": "disk%d" % i,
                    "target": "%s %s:%s" % (d["controller_type"], d["controller_number"], d["controller_location"]),
                    "source": {"path": d["path"], "local": local, "format": d["format"]},
                    "capacity": d["capacity"],
                }
            )

    def _where(self, i, d):
        return "disk %d of VM %s (%s controller %s, location %s)" % (
            i,
            self.vm["Name"],
            d["controller_type"],
            d["controller_number"],
            d["controller_location"],
        )

    def plan_note(self):
        return " (an RCT reference point, then a temporary checkpoint)" if self.warm else ""

    # -- the point in time --

    def __enter__(self):
        vm = self.vm
        try:
            # The reference point first, then the checkpoint: what the guest writes between
            # the two is read again by the next sync rather than missed by it.
            if self.use_rct:
                self._new_reference_point()
            if self.warm:
                self.checkpoint_name = CHECKPOINT_PREFIX + uuid.uuid4().hex[:12]
                files = self.conn.run(
                    "checkpoint_begin",
                    {"Id": vm["Id"], "Checkpoint": self.checkpoint_name},
                    vm=vm["Name"],
                    what="making a temporary checkpoint",
                )
                self._read_parents(files)
        except BaseException:
            self._end(failed=True)
            raise
        return self

    def _read_parents(self, files):
        """Each disk's file (read) must now be the parent of a checkpoint child (written by
        the running VM), so it holds still while it is read."""
        parents = {(f.get("ParentPath") or "").lower() for f in files}
        for disk in self.disks:
            if disk["source"]["path"].lower() not in parents:
                raise PlatformError(
                    "after checkpoint %s, disk %s of VM %s (%s) has no differencing child"
                    % (self.checkpoint_name, disk["id"], self.vm["Name"], disk["source"]["path"]),
                    "check the VM's checkpoint type and its disks (Get-VMHardDiskDrive, Get-VHD)",
                )

    def _new_reference_point(self):
        # Hyper-V names no reference point: the ones the VM has before tell the one this call
        # makes from the others. Sent again after its answer was lost, the script finds it and
        # uses it; failing for good, the one it made is removed, not left on the host.
        known = self._reference_points()
        try:
            self._make_reference_point(known)
        except BaseException:
            self._remove_made_reference_point(known)
            raise

    def _reference_points(self):
        return (
            self.conn.run(
                "vm_reference_points",
                {"Id": self.vm["Id"]},
                vm=self.vm["Name"],
                what="listing the RCT reference points",
            )
            or []
        )

    def _remove_made_reference_point(self, known):
        with contextlib.suppress(V2VError):
            made = [rp for rp in self._reference_points() if rp not in known]
            # Only one new since the call: it is this call's (more: another tool made some too).
            if len(made) == 1:
                self._destroy(made[0])

    def _make_reference_point(self, known):
        rp = self.conn.run(
            "reference_point",
            {"Id": self.vm["Id"], "Known": known},
            vm=self.vm["Name"],
            what="making an RCT reference point",
        )
        if rp.get("ReturnValue") == JOB_STARTED and rp.get("Job"):
            # A busy host runs it as a job; the reference point is the job's affected element.
            self._wait_job(rp["Job"], "CreateReferencePoint")
            rp = dict(
                self.conn.run("job_reference_point", {"Job": rp["Job"]}, vm=self.vm["Name"], what="reading the job"),
                ReturnValue=0,
            )
        if rp.get("ReturnValue") != 0 or len(rp.get("Rct") or []) != len(self.disks):
            raise PlatformError(
                "Hyper-V did not make an RCT reference point of VM %s (CreateReferencePoint returned %s, %d ids for "
                "%d disks)" % (self.vm["Name"], rp.get("ReturnValue"), len(rp.get("Rct") or []), len(self.disks)),
                "check that the VM's configuration version is 6.2 or later (Update-VMVersion) and its disks are VHDX",
            )
        self.reference_point = rp
        self.notes["reference_point"] = rp["Id"]

    def _wait_job(self, job_id, method):
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            job = self.conn.run("cim_job", {"Job": job_id}, vm=self.vm["Name"], what="waiting for %s" % method)
            if job.get("JobState") == 7:
                return
            if job.get("JobState") in (8, 9, 10) or not job.get("Found") or time.monotonic() > deadline:
                raise PlatformError(
                    "Hyper-V's %s job %s for VM %s %s (job state %s, error %s: %s)"
                    % (method, job_id, self.vm["Name"], "did not finish in %d s" % JOB_TIMEOUT
                       if job.get("JobState") not in (8, 9, 10) else "failed", job.get("JobState"),
                       job.get("ErrorCode"), job.get("ErrorDescription") or "none"),
                    "look at the job on the host (Get-CimInstance -Namespace root\\virtualization\\v2 "
                    "-ClassName Msvm_ConcreteJob) and the Hyper-V-VMMS event log",
                )  # fmt: skip
            time.sleep(0.5)

    def __exit__(self, exc_type, exc, tb):
        self._end(failed=exc_type is not None)
        return False

    def _end(self, failed):
        """Remove the temporary checkpoint (always); on failure also the new reference point,
        so the last recorded one stays the base of the next sync."""
        errors = []
        if self.checkpoint_name:
            try:
                self.conn.run("checkpoint_end", {"Id": self.vm["Id"], "Checkpoint": self.checkpoint_name},
                              vm=self.vm["Name"], what="removing the temporary checkpoint")  # fmt: skip
                self.notes["checkpoint_removed"] = self.checkpoint_name
                self.checkpoint_name = None
            except V2VError as exc:
                errors.append(exc)
        # The export fails when the checkpoint stays: the new reference point is no base then either.
        if (failed or errors) and self.reference_point:
            self._destroy(self.reference_point["Id"])
            self.reference_point = None
        if errors and not failed:
            raise PlatformError(
                "the temporary checkpoint %s of VM %s could not be removed, so this sync is not recorded: %s"
                % (self.checkpoint_name, self.vm["Name"], errors[0].problem),
                "run the export again: it removes (merges) that checkpoint first; or remove it on the host "
                "(Remove-VMCheckpoint -VMName '%s' -Name '%s')" % (self.vm["Name"], self.checkpoint_name),
            ) from errors[0]

    def _destroy(self, rp_id):
        """True once removed (or already gone)."""
        try:
            self.conn.run(
                "destroy_reference_point", {"Id": rp_id}, vm=self.vm["Name"], what="removing a reference point"
            )
        except V2VError:
            return False
        return True

    # -- reading --

    def stamp(self, disk):
        local = disk["source"]["local"]
        return _bundle.file_stamp(local) if not self.warm and os.path.exists(local) else None

    def open_disk(self, disk):
        src = disk["source"]
        # qemu-img check first: a VHDX cut short would otherwise read as zeros past its end.
        try:
            _disk.info(src["local"], src["format"])
        except DiskError as exc:
            raise DiskError(
                "disk %s of VM %s (%s, %s) cannot be read: %s"
                % (disk["id"], self.vm["Name"], disk["target"], src["path"], exc.problem),
                "the file is damaged: check it on the Hyper-V host (Test-VHD -Path '%s'), restore it from a "
                "backup or repair it, then re-run the export" % src["path"],
            ) from exc
        return _disk.open_guest(src["local"], src["format"])

    def changes(self, disk, reader, record):
        if record is None:
            return None
        cp = record.get("checkpoint") or {}
        if cp.get("kind") != "rct" or not cp.get("id"):
            self.reasons.append("disk %s has no RCT id from the last sync: block digests compared" % disk["id"])
            return None
        areas, offset, size = [], 0, reader.size
        while offset < size:
            got = self.conn.run(
                "rct_changes",
                {"Path": disk["source"]["path"], "LimitId": cp["id"], "Offset": offset, "Length": size - offset},
                vm=self.vm["Name"],
                what="asking the changed ranges of %s" % disk["id"],
            )
            if got.get("ReturnValue") != 0 or not got.get("Processed"):
                self.reasons.append(
                    "RCT id %s of disk %s is no longer known to Hyper-V (GetVirtualDiskChanges returned %s; the "
                    "disk was changed outside Hyper-V, or its change tracking was reset): block digests compared"
                    % (cp["id"], disk["id"], got.get("ReturnValue"))
                )
                return None
            areas.extend([o, n] for o, n in zip(got.get("Offsets") or [], got.get("Lengths") or [], strict=True))
            offset += int(got["Processed"])
        return areas

    # -- the sync's record --

    def checkpoint(self, index):
        if self.reference_point:
            return {"kind": "rct", "reference_point": self.reference_point["Id"]}
        return {"kind": "digests", "id": index}

    def disk_checkpoint(self, disk, index):
        if self.reference_point:
            i = self.disks.index(disk)
            return {"kind": "rct", "id": self.reference_point["Rct"][i], "reference_point": self.reference_point["Id"]}
        return {"kind": "digests", "id": index}

    def commit(self, changed):
        """Recorded: the older reference points are no longer a base; nothing new: the
        new one is not needed (the last recorded one stays the base)."""
        if not self.reference_point:
            return False
        if changed:
            new = self.reference_point["Id"]
            # One that could not be removed (the host unreachable) stays listed: the next sync removes it.
            left = [rp_id for rp_id in self.previous if rp_id != new and not self._destroy(rp_id)]
            self.bundle.manifest.setdefault("created", {})["reference_points"] = [new, *left]
            return False
        if not self._destroy(self.reference_point["Id"]):
            created = self.bundle.manifest.setdefault("created", {})
            created["reference_points"] = [*(created.get("reference_points") or []), self.reference_point["Id"]]
        self.reference_point = None
        return False


class HyperVSource:
    """Hyper-V as a source (a part of HyperVPlatform)."""

    def export(self, vm, bundle, mode="auto", check_mode=False, options=None):
        """A temporary checkpoint an earlier export left (the host failed to remove it, the
        connection dropped, the run was killed) makes the disks differencing disks and would
        block every later sync: it is removed (merged back) first, and the result says so."""
        removed = []
        if not check_mode:
            for item in self.migration_leftovers(vm, None):
                self.remove_leftover(vm, item)
                removed.append(item["name"])
            if removed:
                vm = self.find_vm(vm["Id"])
        result = super().export(vm, bundle, mode, check_mode, options)
        if removed:
            result["leftover_checkpoints_removed"] = removed
        return result

    def source_record(self, vm):
        return {
            "platform": "hyperv",
            "id": (vm.get("Id") or "").lower(),
            "name": vm["Name"],
            "connection": {"hostname": self.conn.host, "port": self.conn.port},
        }

    def source_session(self, vm, bundle, incremental, options):
        return HyperVSession(self, vm, bundle, incremental, options)

    def migration_leftovers(self, vm, bundle):
        """A temporary checkpoint an export left (its run was killed before removing it:
        named vmigrate-sync-*). The user's checkpoints stay. RCT reference points stay too:
        they hold no data and change nothing in the VM (like CBT left on in vSphere)."""
        return [
            {"kind": "checkpoint", "name": c["Name"], "record": None}
            for c in vm.get("Checkpoints") or []
            if (c.get("Name") or "").startswith(CHECKPOINT_PREFIX)
        ]

    def remove_leftover(self, vm, item):
        # Removing it merges its differencing disks back into the VM's disks.
        self.conn.run("checkpoint_end", {"Id": vm["Id"], "Checkpoint": item["name"]}, vm=vm["Name"],
                      what="removing checkpoint %s" % item["name"])  # fmt: skip
