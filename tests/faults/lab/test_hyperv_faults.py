"""Hyper-V faults (issue 14) on this module's own Hyper-V simulator (test_hyperv_migrate's
`hv` fixture: free ports, state and share under tmp; the lab's shared simulator on
5985/5986 is never touched).

- The connection dropped, or a WS-Management fault, in the middle of hyperv_export (warm:
  at the temporary checkpoint, at the RCT query) and hyperv_import (at New-VM, at the
  VM's configuration): a clear message, no checkpoint left on the source, no VM that looks
  complete on the target, and a plain re-run finishing with equal bytes. The faults come
  from the simulator's switch (tests/lab/hyperv/winrm.py, fault.json in its state dir).
- An answer lost after the host acted (the connection dropped, or a fault, after the
  cmdlet ran) at each state-changing step: CreateReferencePoint, Remove-VMCheckpoint,
  DestroyReferencePoint, Set-VM, Remove-VM: the step sent again finds what it did (or
  removes it), so the source keeps one reference point of ours and another tool's is left
  alone.
- An RCT reference point removed between warm syncs: detected, the digests compared, the
  result saying so, the bytes equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

from test_hyperv_migrate import (
    MIB,
    avhdx_files,
    make_hyperv_source,
    notes_provenance,
    reference_points,
    remove_hyperv_vm,
    sha256,
    share_files,
    vms,
)

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.connection import SCRIPTS, build_script


def inject(hv, match, how="drop", when="before", times=1):
    """The simulator's fault switch: the next `times` scripts naming `match` fail."""
    with open(os.path.join(hv["state"], "fault.json"), "w", encoding="utf-8") as f:
        json.dump({"match": match, "how": how, "when": when, "times": times}, f)


def fault_pending(hv):
    return os.path.exists(os.path.join(hv["state"], "fault.json"))


def same(a, fa, b, fb):
    return subprocess.run(["qemu-img", "compare", "-U", "-f", fa, "-F", fb, a, b], capture_output=True).returncode == 0


def no_traceback(res):
    text = json.dumps(res)
    return "Traceback" not in text and "MODULE FAILURE" not in text


def guest_write(vhdx, offset, byte):
    # The running guest writes its disk (the simulator's VM runs nothing: qemu-io writes for it).
    subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P %d %d 10000" % (byte, offset), vhdx],
                   check=True, capture_output=True)  # fmt: skip


def checkpoints(hv, name):
    return [c["name"] for vm in vms(hv, name) for c in vm["checkpoints"]]


class Flow:
    """export -> convert -> hyperv_import of one source VM into a target VM of this simulator;
    `equal()` compares the target's VHDX with the source's (qemu-img, an independent reader)."""

    def __init__(self, lab, hv, run_module, tmp_path, tag, kind):
        self.hv, self.run_module = hv, run_module
        self.src, self.dst = "lab-fh-%s-%s" % (kind, tag), "lab-fh-%st-%s" % (kind, tag)
        self.vhdx = make_hyperv_source(lab, hv, self.src)
        self.export = dict(hv["conn"], vm=self.src, bundle=str(tmp_path / "export"))
        self.convert = {"src": self.export["bundle"], "dest": str(tmp_path / "hv"), "target_platform": "hyperv"}
        self.imp = dict(hv["conn"], bundle=self.convert["dest"], name=self.dst)
        self.target = os.path.join(hv["share"], "%s-disk0.vhdx" % self.dst)

    def import_(self):
        assert not self.run_module("convert", self.convert).get("failed")
        res = self.run_module("hyperv_import", self.imp)
        assert not res.get("failed"), res
        return res

    def equal(self):
        return same(self.target, "vhdx", self.vhdx, "vhdx")

    def cleanup(self):
        for name in (self.src, self.dst):
            remove_hyperv_vm(self.hv, name)
        for f in share_files(self.hv):
            if f.startswith((self.src, self.dst)):
                os.unlink(os.path.join(self.hv["share"], f))


def manifest(bundle):
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def syncs(bundle):
    return [x["index"] for x in manifest(bundle).get("sync") or []]


def raw_copy(vhdx, path):
    subprocess.run(["qemu-img", "convert", "-U", "-f", "vhdx", "-O", "raw", vhdx, path], check=True)
    return path


def test_export_connection_dropped_and_winrm_faults(lab, hv, run_module, reliability, tmp_path):
    reliability("hyperv", "connection dropped after Checkpoint-VM ran (answer lost), warm export",
                "nothing: the script is sent again, finds its checkpoint, the export completes",
                "one temporary checkpoint, removed; the sync recorded")  # fmt: skip
    reliability("hyperv", "connection dropped at every attempt to make the warm export's checkpoint",
                "export fails: 'sending making a temporary checkpoint to <endpoint> failed 3 times' and the fix",
                "source: no checkpoint, no new RCT reference point; bundle marked incomplete; the re-run "
                "makes a new full copy (said in fallback_reason), bytes equal (qemu-img compare)")  # fmt: skip
    reliability("hyperv", "WinRM fault answering GetVirtualDiskChanges mid warm incremental",
                "export fails: 'WinRM at <endpoint> answered asking the changed ranges of disk0 with a fault: ...'",
                "source: checkpoint removed, no new reference point; bundle's last sync unchanged, marked "
                "incomplete; the re-run "
                "makes a new full copy (said in fallback_reason), bytes equal")  # fmt: skip
    reliability("hyperv", "WinRM fault answering Remove-VMCheckpoint after a warm sync",
                "export fails: 'the temporary checkpoint <name> of VM <vm> could not be removed, so this sync is "
                "not recorded' and the fix (run the export again)",
                "the checkpoint stays, visible; the re-run removes it first (leftover_checkpoints_removed), "
                "completes, bytes equal")  # fmt: skip
    f = Flow(lab, hv, run_module, tmp_path, uuid.uuid4().hex[:6], "x")
    try:
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nStart-VM -Name '%s'" % f.src)

        # Dropped once after the checkpoint was made: sent again, the same checkpoint found.
        inject(hv, "Checkpoint-VM", "drop", "after")
        res = run_module("hyperv_export", f.export)
        assert not res.get("failed") and res["kind"] == "full" and res["mode"] == "warm", res
        assert not fault_pending(hv) and checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
        assert reference_points(hv, f.src) == [res["reference_point"]]
        base_rp, recorded = res["reference_point"], syncs(f.export["bundle"])

        # A WS-Management fault in the middle of the incremental (the RCT query).
        guest_write(f.vhdx, 1 << 20, 0x41)
        inject(hv, "GetVirtualDiskChanges", "fault", "before")
        res = run_module("hyperv_export", f.export)
        assert res["failed"] and no_traceback(res), res
        assert "asking the changed ranges of disk0 with a fault" in res["msg"], res
        assert checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
        assert reference_points(hv, f.src) == [base_rp] and syncs(f.export["bundle"]) == recorded
        assert manifest(f.export["bundle"])["state"] == "incomplete"

        # Dropped at every attempt: a clear failure, nothing left on the source.
        inject(hv, "Checkpoint-VM", "drop", "before", times=3)
        res = run_module("hyperv_export", f.export)
        assert res["failed"] and no_traceback(res), res
        assert "making a temporary checkpoint" in res["msg"] and "failed 3 times" in res["msg"], res
        assert not fault_pending(hv) and checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
        # That run was a new full copy (the last one left the base in flux): nothing recorded.
        assert reference_points(hv, f.src) == [base_rp] and manifest(f.export["bundle"])["state"] == "incomplete"

        # A fault removing the checkpoint: it stays (visibly); the re-run removes it first.
        inject(hv, "Remove-VMCheckpoint", "fault", "before")
        res = run_module("hyperv_export", f.export)
        assert res["failed"] and no_traceback(res), res
        (left,) = checkpoints(hv, f.src)
        assert "temporary checkpoint %s of VM %s could not be removed" % (left, f.src) in res["msg"], res
        assert "run the export again" in res["msg"] and base_rp in reference_points(hv, f.src), res
        assert len(reference_points(hv, f.src)) == 1  # the failed sync's new one is destroyed

        guest_write(f.vhdx, 3 << 20, 0x42)
        expected = raw_copy(f.vhdx, str(tmp_path / "expected.raw"))
        res = run_module("hyperv_export", f.export)
        assert not res.get("failed") and res["leftover_checkpoints_removed"] == [left], res
        # The failed syncs left the bundle's base in flux: a new full copy, and the result says so.
        assert res["kind"] == "full" and "a new full copy" in res["fallback_reason"], res
        assert checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
        assert reference_points(hv, f.src) == [res["reference_point"]]
        # No data lost on the source through the checkpoints and merges; the target equals it.
        assert same(f.vhdx, "vhdx", expected, "raw")
        f.import_()
        assert f.equal()
        assert notes_provenance(vms(hv, f.dst)[0]["notes"])["state"] == "complete"
    finally:
        f.cleanup()


def test_import_connection_dropped_and_winrm_faults(lab, hv, run_module, reliability, tmp_path):
    reliability("hyperv", "connection dropped after New-VM ran (answer lost)",
                "nothing: the script is sent again, finds the VM it made (name and Notes), the import completes",
                "one VM, complete; VHDX equal to the source")  # fmt: skip
    reliability("hyperv", "connection dropped while configuring the new VM (after it ran)",
                "import fails: 'the connection to WinRM at <endpoint> failed while configuring the new VM (not "
                "sent again ...)' and the fix",
                "no VM of that name, no VHDX left in the share; a re-run completes, VHDX equal")  # fmt: skip
    reliability("hyperv", "WinRM fault answering New-VM (the VM was made)",
                "import fails: 'WinRM at <endpoint> answered creating the VM with a fault: ...'",
                "the half-made VM and its VHDX removed; a re-run completes, VHDX equal")  # fmt: skip
    reliability("hyperv", "WinRM fault writing the complete provenance (last step of a create)",
                "import fails: 'WinRM at <endpoint> answered writing Notes with a fault: ...'",
                "the VM (Notes still 'incomplete') and its VHDX removed; a re-run completes, VHDX equal")  # fmt: skip
    f = Flow(lab, hv, run_module, tmp_path, uuid.uuid4().hex[:6], "i")
    try:
        before = sha256(f.vhdx)
        assert run_module("hyperv_export", f.export).get("changed")
        assert not run_module("convert", f.convert).get("failed")
        others = [vm["name"] for vm in vms(hv)]

        inject(hv, "New-VM", "drop", "after")
        res = run_module("hyperv_import", f.imp)
        assert not res.get("failed") and res["action"] == "create", res
        assert not fault_pending(hv) and len(vms(hv, f.dst)) == 1 and f.equal()
        assert notes_provenance(vms(hv, f.dst)[0]["notes"])["state"] == "complete"
        remove_hyperv_vm(hv, f.dst)
        os.unlink(f.target)

        faults = [
            ("Add-VMHardDiskDrive", "drop", "after", "failed while configuring the new VM (not sent again"),
            ("New-VM", "fault", "after", "answered creating the VM with a fault"),
            ("Set-VM -VM (Get-VM -Id", "fault", "before", "answered writing Notes with a fault"),
        ]
        for match, how, when, says in faults:
            inject(hv, match, how, when)
            res = run_module("hyperv_import", f.imp)
            assert res["failed"] and says in res["msg"] and no_traceback(res), (match, res)
            assert not fault_pending(hv), match
            assert [vm["name"] for vm in vms(hv)] == others and not os.path.exists(f.target), match

        res = run_module("hyperv_import", f.imp)
        assert not res.get("failed") and res["action"] == "create", res
        assert f.equal() and len(vms(hv, f.dst)) == 1
        assert notes_provenance(vms(hv, f.dst)[0]["notes"])["state"] == "complete"
        assert sha256(f.vhdx) == before  # the source VHDX was only read
    finally:
        f.cleanup()


def test_rct_reference_point_gone_between_warm_syncs(lab, hv, run_module, reliability, tmp_path):
    reliability("hyperv", "RCT reference point removed on the host between warm syncs",
                "export succeeds; fallback_reason: 'RCT id ... is no longer known to Hyper-V ...: block digests "
                "compared'",
                "delta from the digest comparison on the right base; checkpoint removed; only the new reference "
                "point left; target VHDX equal to the source")  # fmt: skip
    f = Flow(lab, hv, run_module, tmp_path, uuid.uuid4().hex[:6], "r")
    try:
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nStart-VM -Name '%s'" % f.src)
        first = run_module("hyperv_export", f.export)
        assert first["mode"] == "warm" and first["kind"] == "full", first
        f.import_()

        # The reference point the bundle records is gone from the host (state edited).
        with hv["host"]._locked():
            st = hv["host"].load()
            st["reference_points"] = [rp for rp in st["reference_points"] if rp["id"] != first["reference_point"]]
            hv["host"].save(st)
        guest_write(f.vhdx, 2 << 20, 0x51)
        guest_write(f.vhdx, 5 << 20, 0x52)
        res = run_module("hyperv_export", f.export)
        assert not res.get("failed") and res["kind"] == "incremental" and res["mode"] == "warm", res
        assert "no longer known to Hyper-V" in res["fallback_reason"], res
        assert "block digests compared" in res["fallback_reason"], res
        assert res["disks"][0]["method"] == "delta" and res["bytes_read"] >= 32 * MIB, res
        assert checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
        assert reference_points(hv, f.src) == [res["reference_point"]]

        res = f.import_()
        assert res["action"] == "deltas", res
        assert f.equal()
        assert notes_provenance(vms(hv, f.dst)[0]["notes"])["sync_index"] == 2

        # The next sync uses RCT again (the new reference point).
        guest_write(f.vhdx, 7 << 20, 0x53)
        res = run_module("hyperv_export", f.export)
        assert res["kind"] == "incremental" and res["fallback_reason"] is None and res["bytes_read"] <= 64 * 1024, res
    finally:
        f.cleanup()


def foreign_reference_point(hv, name):
    """A reference point another tool (a backup product) made on the VM: never ours to use or remove."""
    (vm,) = vms(hv, name)
    script = build_script(SCRIPTS["reference_point"], {"Id": vm["id"], "Known": reference_points(hv, name)})
    out, err, code = hv["host"].run_powershell(script)
    assert code == 0, err
    return json.loads(out.decode("utf-8").splitlines()[0])["result"]["Id"]


def test_export_answers_lost_after_the_host_acted(lab, hv, run_module, reliability, tmp_path):
    reliability("hyperv", "connection dropped after CreateReferencePoint ran (answer lost), warm export",
                "nothing: the script is sent again, finds the reference point it made (one the VM did not have "
                "before) and uses it",
                "one reference point of ours (the sync's); another tool's left alone; no checkpoint")  # fmt: skip
    reliability("hyperv", "WinRM fault answering CreateReferencePoint after it ran",
                "export fails: 'WinRM at <endpoint> answered making an RCT reference point with a fault: ...'",
                "the reference point it made found (new since the call) and removed; no checkpoint; a re-run "
                "completes, bytes equal")  # fmt: skip
    reliability("hyperv", "connection dropped after CreateReferencePoint ran, at every attempt",
                "export fails: 'sending making an RCT reference point to <endpoint> failed 3 times' and the fix",
                "one reference point made (each retry found it), then removed; no checkpoint")  # fmt: skip
    reliability("hyperv", "connection dropped after Remove-VMCheckpoint ran (answer lost)",
                "nothing: sent again, the checkpoint is already gone, the export completes",
                "no checkpoint; one reference point of ours")  # fmt: skip
    reliability("hyperv", "connection dropped after DestroyReferencePoint ran (answer lost)",
                "nothing: sent again, the reference point is already gone, the export completes",
                "one reference point of ours")  # fmt: skip
    reliability("hyperv", "connection dropped at every attempt to remove the last sync's reference point",
                "nothing: the export completes; the old reference point stays listed in the bundle",
                "two reference points of ours until the next sync that completes removes the old one")  # fmt: skip
    f = Flow(lab, hv, run_module, tmp_path, uuid.uuid4().hex[:6], "l")
    try:
        hv["host"].run_powershell("$ErrorActionPreference = 'Stop'\nStart-VM -Name '%s'" % f.src)
        other = foreign_reference_point(hv, f.src)

        def ours():
            rps = reference_points(hv, f.src)
            assert other in rps  # another tool's reference point is never touched
            return sorted(set(rps) - {other})

        def synced(res, kind=None):
            assert not res.get("failed") and res["mode"] == "warm", res
            assert kind is None or res["kind"] == kind, res
            assert not fault_pending(hv) and checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
            assert ours() == [res["reference_point"]], res
            return res["reference_point"]

        # The answer of CreateReferencePoint lost: sent again, the one it made is found and used.
        inject(hv, "CreateReferencePoint", "drop", "after")
        synced(run_module("hyperv_export", f.export), "full")
        # Remove-VMCheckpoint's and DestroyReferencePoint's answers lost: sent again, already done.
        for i, match in enumerate(("Remove-VMCheckpoint", "DestroyReferencePoint")):
            guest_write(f.vhdx, (1 + i) << 20, 0x61 + i)
            inject(hv, match, "drop", "after")
            synced(run_module("hyperv_export", f.export), "incremental")

        # The last sync's reference point cannot be removed: it stays listed, the next sync removes it.
        old = ours()[0]
        guest_write(f.vhdx, 4 << 20, 0x64)
        inject(hv, "DestroyReferencePoint", "drop", "before", times=3)
        res = run_module("hyperv_export", f.export)
        assert not res.get("failed") and not fault_pending(hv), res
        assert ours() == sorted([old, res["reference_point"]]) and checkpoints(hv, f.src) == []
        assert sorted(manifest(f.export["bundle"])["created"]["reference_points"]) == ours()
        kept = ours()

        # The host made a reference point but the answer was a fault, or never came: it is removed.
        guest_write(f.vhdx, 5 << 20, 0x65)
        for how, times, says in (("fault", 1, "answered making an RCT reference point with a fault"),
                                 ("drop", 3, "failed 3 times")):  # fmt: skip
            inject(hv, "CreateReferencePoint", how, "after", times=times)
            res = run_module("hyperv_export", f.export)
            assert res["failed"] and says in res["msg"] and no_traceback(res), res
            assert "making an RCT reference point" in res["msg"], res
            assert not fault_pending(hv) and checkpoints(hv, f.src) == [] and avhdx_files(hv) == []
            assert ours() == kept, how

        expected = raw_copy(f.vhdx, str(tmp_path / "expected.raw"))
        synced(run_module("hyperv_export", f.export))
        assert same(f.vhdx, "vhdx", expected, "raw")
        f.import_()
        assert f.equal()
    finally:
        f.cleanup()


def test_import_answers_lost_after_the_host_acted(lab, hv, run_module, reliability, tmp_path):
    reliability("hyperv", "connection dropped after Remove-VM ran (answer lost), import replace=true",
                "nothing: sent again, no VM of that Id is left to remove, the import completes",
                "one VM of that name, complete; its VHDX written again, equal to the source")  # fmt: skip
    reliability("hyperv", "connection dropped after Set-VM wrote the complete provenance (answer lost)",
                "nothing: sent again (the same Notes), the import completes",
                "one VM, complete; VHDX equal")  # fmt: skip
    f = Flow(lab, hv, run_module, tmp_path, uuid.uuid4().hex[:6], "m")
    try:
        assert run_module("hyperv_export", f.export).get("changed")
        inject(hv, "Set-VM -VM (Get-VM -Id", "drop", "after")
        res = f.import_()
        assert res["action"] == "create" and not fault_pending(hv), res
        (first,) = vms(hv, f.dst)
        assert notes_provenance(first["notes"])["state"] == "complete" and f.equal()

        inject(hv, "Remove-VM -VM", "drop", "after")
        res = run_module("hyperv_import", dict(f.imp, replace=True))
        assert not res.get("failed") and res["action"] == "replace" and not fault_pending(hv), res
        (vm,) = vms(hv, f.dst)
        assert vm["id"] != first["id"] and notes_provenance(vm["notes"])["state"] == "complete"
        assert f.equal()
    finally:
        f.cleanup()


def test_hung_winrm_endpoint_times_out(run_module, reliability):
    """A host that accepts the connection and never answers (a hung WinRM service)."""
    import socket
    import time

    reliability(
        "hyperv",
        "hung WinRM endpoint (accepts, never answers)",
        "'WinRM at <endpoint> did not answer in N s (operation_timeout + 10) while <step>' and the fix "
        "(Test-WSMan; a larger operation_timeout for a slow host)",
        "nothing sent or changed; the step ends after operation_timeout + 10 s, without a traceback",
    )
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    port = listener.getsockname()[1]
    try:
        args = {"hostname": "127.0.0.1", "port": port, "scheme": "http", "transport": "ntlm"}
        args.update(username="lab", password="never-sent-anywhere", operation_timeout=2, vms=["any"])
        started = time.monotonic()
        res = run_module("hyperv_vm_info", args)
        took = time.monotonic() - started
        assert res.get("failed"), res
        assert (
            "WinRM at http://127.0.0.1:%d/wsman did not answer in 12 s (operation_timeout + 10)" % port in res["msg"]
        ), res
        assert "Test-WSMan 127.0.0.1" in res["msg"] and "operation_timeout" in res["msg"], res
        no_traceback(res)
        assert took < 60, took
    finally:
        listener.close()
