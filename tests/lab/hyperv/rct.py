"""Resilient change tracking in the Hyper-V host model (a part of host.HyperVHost).

The CIM side the collection's warm export uses, under root\\virtualization\\v2:
- Get-CimInstance -Namespace -ClassName for Msvm_ComputerSystem (Name is the VM's Id),
  Msvm_VirtualSystemReferencePointService, Msvm_ImageManagementService and
  Msvm_VirtualSystemReferencePoint.
- Invoke-CimMethod -InputObject -MethodName -Arguments for
  CreateReferencePoint(AffectedSystem, ReferencePointSettings, ReferencePointType 1 = RCT)
  -> ResultingReferencePoint with ResilientChangeTrackingIdentifiers (one per disk, in
  drive order), DestroyReferencePoint(AffectedReferencePoint), and
  GetVirtualDiskChanges(Path, LimitId, TargetSnapshotId, ByteOffset, ByteLength) ->
  ProcessedByteLength, ChangedByteOffsets[], ChangedByteLengths[].
  Methods answer with ReturnValue as Hyper-V does (0 done; 32773 invalid parameter, e.g.
  an RCT id the disk does not know; 32779 file not found). With ``cim_jobs`` true in the
  state file, CreateReferencePoint and DestroyReferencePoint answer as a busy host does:
  4096 and a Msvm_ConcreteJob (JobState 4, Running, for JOB_SECONDS, then 7, Completed),
  the new reference point found from the job with Get-CimAssociatedInstance
  -ResultClassName Msvm_VirtualSystemReferencePoint.

How changes are known, honestly: a reference point keeps, per disk, a raw copy of the
guest-visible bytes at that moment (qemu-img convert, sparse); GetVirtualDiskChanges
compares that copy with what the disk file named by Path holds now, in 64 KiB blocks,
and reports the blocks that differ (merged into ranges). An RCT id belongs to the disk's
root VHDX (a checkpoint's .avhdx child is the same virtual disk).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid

from . import powershell as ps
from .powershell import Cmdlet, PSObject, PSRuntimeError

NAMESPACE = "root\\virtualization\\v2"
JOB_SECONDS = 0.5
JOB_STARTED = 4096
BLOCK = 64 * 1024
OK, INVALID_PARAMETER, FILE_NOT_FOUND = 0, 32773, 32779
CLASSES = ("Msvm_ComputerSystem", "Msvm_VirtualSystemReferencePointService", "Msvm_ImageManagementService",
           "Msvm_VirtualSystemReferencePoint", "Msvm_ConcreteJob")  # fmt: skip


def _cim(class_name, **props):
    return PSObject("Microsoft.Management.Infrastructure.CimInstance#" + NAMESPACE + "\\" + class_name, **props)


class HostRct:
    """Mixed into HyperVHost: Get-CimInstance / Invoke-CimMethod for reference points."""

    def cim_cmdlets(self):
        return {
            "Get-CimInstance": Cmdlet(
                "Get-CimInstance", {"Namespace": "value", "ClassName": "value"}, self._get_cim, required=("ClassName",)
            ),
            "Invoke-CimMethod": Cmdlet(
                "Invoke-CimMethod",
                {"InputObject": "value", "MethodName": "value", "Arguments": "value"},
                self._invoke_cim,
                pipeline="InputObject",
                required=("MethodName",),
            ),
            "Get-CimAssociatedInstance": Cmdlet(
                "Get-CimAssociatedInstance",
                {"InputObject": "value", "ResultClassName": "value", "Namespace": "value"},
                self._associated,
                pipeline="InputObject",
                required=("ResultClassName",),
            ),
        }

    def _rct_dir(self):
        path = os.path.join(self.state_dir, "rct")
        os.makedirs(path, exist_ok=True)
        return path

    def _get_cim(self, args, inputs):
        namespace = ps.to_string(args.get("Namespace") or "root\\cimv2")
        cls = ps.to_string(args["ClassName"])
        if namespace.lower() != NAMESPACE or cls not in CLASSES:
            raise PSRuntimeError(
                "Invalid class %s in namespace %s" % (cls, namespace),
                "MetadataError",
                "HRESULT 0x80041010,Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand",
                exception="Microsoft.Management.Infrastructure.CimException",
            )
        st = self.load()
        if cls == "Msvm_ComputerSystem":
            return [_cim(cls, Name=vm["id"].upper(), ElementName=vm["name"], Caption="Virtual Machine")
                    for vm in st["vms"]]  # fmt: skip
        if cls == "Msvm_VirtualSystemReferencePoint":
            return [self._rp_object(rp) for rp in st.get("reference_points", [])]
        if cls == "Msvm_ConcreteJob":
            return [self._job_object(job) for job in st.get("jobs", [])]
        return [_cim(cls, Name=cls.replace("Msvm_", "vmms "), SystemName=self.computer_name)]

    @staticmethod
    def _rp_object(rp):
        return _cim(
            "Msvm_VirtualSystemReferencePoint", InstanceID=rp["id"], VirtualSystemIdentifier=rp["vm_id"].upper(),
            ReferencePointType=1, ResilientChangeTrackingIdentifiers=[d["rct_id"] for d in rp["disks"]],
        )  # fmt: skip

    @staticmethod
    def _job_object(job):
        done = time.time() - job["started"] >= JOB_SECONDS
        return _cim("Msvm_ConcreteJob", InstanceID=job["id"], JobState=7 if done else 4, ErrorCode=0,
                    ErrorDescription="", PercentComplete=100 if done else 50)  # fmt: skip

    def _as_job(self, st, out, affected=None):
        """A busy host's answer: 4096 and a job instead of the result."""
        if not st.get("cim_jobs"):
            return out
        job = {"id": str(uuid.uuid4()).upper(), "started": time.time(), "affected": affected}
        st.setdefault("jobs", []).append(job)
        return dict(out, ReturnValue=JOB_STARTED, ResultingReferencePoint=None, Job=self._job_object(job))

    def _associated(self, args, inputs):
        given = inputs if inputs is not None else ps.unroll(args.get("InputObject"))
        want = ps.to_string(args["ResultClassName"])
        if want != "Msvm_VirtualSystemReferencePoint":
            raise ps.PSParseError("Get-CimAssociatedInstance -ResultClassName %s is not in the simulator" % want)
        st = self.load()
        ids = {ps.to_string(ps.member(g, "InstanceID")) for g in given}
        rp_ids = {j["affected"] for j in st.get("jobs", []) if j["id"] in ids}
        return [self._rp_object(rp) for rp in st.get("reference_points", []) if rp["id"] in rp_ids]

    def _invoke_cim(self, args, inputs):
        target = inputs[0] if inputs else args.get("InputObject")
        cls = (getattr(target, "type_name", "") or "").rsplit("\\", 1)[-1]
        method = ps.to_string(args["MethodName"])
        table = {
            ("Msvm_VirtualSystemReferencePointService", "CreateReferencePoint"): self._create_rp,
            ("Msvm_VirtualSystemReferencePointService", "DestroyReferencePoint"): self._destroy_rp,
            ("Msvm_ImageManagementService", "GetVirtualDiskChanges"): self._disk_changes,
        }
        fn = table.get((cls, method))
        if fn is None:
            raise ps.PSParseError("the CIM method %s.%s is not in the simulator" % (cls or "?", method))
        arguments = args.get("Arguments")
        arguments = {str(k): v for k, v in (arguments or {}).items()}
        with self._locked():
            st = self.load()
            out = fn(st, arguments)
            self.save(st)
        return [PSObject("Microsoft.Management.Infrastructure.CimMethodResult", **out)]

    # ------------------------------------------------------------ reference points

    def _root(self, st, win_path):
        """The root VHDX of a disk chain (RCT ids belong to it)."""
        while True:
            parent = st["vhds"].get(win_path.lower(), {}).get("parent")
            if not parent:
                return win_path
            win_path = parent

    def _guest_raw(self, st, win_path, dest):
        """The guest-visible bytes of a disk file (through its chain) as a sparse raw file."""
        local = self.local_path(st, win_path)
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", local, dest], check=True, capture_output=True)

    def _create_rp(self, st, a):
        vm_ref = a.get("AffectedSystem")
        vm_id = ps.to_string(ps.member(vm_ref, "Name")).lower()
        vm = next((v for v in st["vms"] if v["id"].lower() == vm_id), None)
        if vm is None or int(a.get("ReferencePointType", -1)) != 1:
            return {"ReturnValue": INVALID_PARAMETER, "ResultingReferencePoint": None, "Job": None}
        rp = {"id": "Microsoft:%s" % str(uuid.uuid4()).upper(), "vm_id": vm["id"], "disks": []}
        for d in vm["drives"]:
            rct_id = "rct:%s:1" % str(uuid.uuid4()).upper()
            copy = os.path.join(self._rct_dir(), "%s.raw" % rct_id.replace(":", "_"))
            self._guest_raw(st, d["path"], copy)
            rp["disks"].append({"root": self._root(st, d["path"]), "rct_id": rct_id, "copy": copy})
        st.setdefault("reference_points", []).append(rp)
        out = {"ReturnValue": OK, "ResultingReferencePoint": self._rp_object(rp), "Job": None}
        return self._as_job(st, out, affected=rp["id"])

    def _destroy_rp(self, st, a):
        rp_id = ps.to_string(ps.member(a.get("AffectedReferencePoint"), "InstanceID"))
        rps = st.get("reference_points", [])
        found = [rp for rp in rps if rp["id"] == rp_id]
        if not found:
            return {"ReturnValue": INVALID_PARAMETER, "Job": None}
        for d in found[0]["disks"]:
            if os.path.exists(d["copy"]):
                os.unlink(d["copy"])
        rps.remove(found[0])
        return self._as_job(st, {"ReturnValue": OK, "Job": None})

    def lose_rct(self, vm_name):
        """What Hyper-V does when a disk is changed outside it (or the VM is reset): the
        VM's reference points are gone (for tests)."""
        with self._locked():
            st = self.load()
            vm_ids = {v["id"] for v in st["vms"] if v["name"] == vm_name}
            for rp in [rp for rp in st.get("reference_points", []) if rp["vm_id"] in vm_ids]:
                self._destroy_rp(st, {"AffectedReferencePoint": self._rp_object(rp)})
            self.save(st)

    def _disk_changes(self, st, a):
        path = ps.to_string(a.get("Path"))
        limit = ps.to_string(a.get("LimitId"))
        local = self.local_path(st, path)
        fail = {"ProcessedByteLength": 0, "ChangedByteOffsets": [], "ChangedByteLengths": [], "Job": None}
        if local is None or not os.path.isfile(local):
            return dict(fail, ReturnValue=FILE_NOT_FOUND)
        root = self._root(st, path).lower()
        entry = next((d for rp in st.get("reference_points", []) for d in rp["disks"]
                      if d["rct_id"] == limit and d["root"].lower() == root), None)  # fmt: skip
        if entry is None or not os.path.exists(entry["copy"]):
            return dict(fail, ReturnValue=INVALID_PARAMETER)
        start, length = int(a.get("ByteOffset") or 0), int(a.get("ByteLength") or 0)
        tmp = tempfile.mkdtemp(dir=self.state_dir)
        try:
            now = os.path.join(tmp, "now.raw")
            self._guest_raw(st, path, now)
            ranges = _differing(entry["copy"], now, start, start + length)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return {
            "ReturnValue": OK,
            "ProcessedByteLength": length,
            "ChangedByteOffsets": [r[0] for r in ranges],
            "ChangedByteLengths": [r[1] for r in ranges],
            "Job": None,
        }


def _differing(a_path, b_path, start, end):
    """[[offset, length]] of the 64 KiB blocks in [start, end) where two raw files differ."""
    out = []
    with open(a_path, "rb") as a, open(b_path, "rb") as b:
        pos = start - start % BLOCK
        while pos < end:
            a.seek(pos)
            b.seek(pos)
            if a.read(BLOCK) != b.read(BLOCK):
                n = min(BLOCK, end - pos)
                if out and out[-1][0] + out[-1][1] == pos:
                    out[-1][1] += n
                else:
                    out.append([pos, n])
            pos += BLOCK
    return out
