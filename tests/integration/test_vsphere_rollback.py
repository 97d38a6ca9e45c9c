"""What the rollback does on vSphere (vcsim), step by step as the rollback role runs it.

- Target: a VM an import made, running as after a cutover. The power step with
  mark_rolled_back powers it off and marks it: the annotation starts with the note and
  keeps what was there, the provenance in extraConfig says rolled-back; a second run
  changes nothing; starting it is refused; a new import writes its disk again and
  removes the mark.
- Source: a running VM with a warm export bundle, the user's own snapshots (one even
  named vmigrate-...), and what a killed export leaves (a vmigrate-<n> snapshot recorded
  in the bundle, a CBT stun snapshot). The cleanup step removes only ours and the
  bundle no longer records them; a second run changes nothing.
"""

from __future__ import annotations

import json
import uuid

from pyVim.task import WaitForTask
from test_vsphere_import import conn_vars, destroy, find_vm, make_bundle, small_image

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.source import (
    SNAPSHOT_DESCRIPTION,
    STUN_SNAPSHOT,
)


def snapshot_names(vm):
    out = []

    def walk(trees):
        for tree in trees or []:
            out.append(tree.name)
            walk(tree.childSnapshotList)

    if vm.snapshot is not None:
        walk(vm.snapshot.rootSnapshotList)
    return sorted(out)


def snapshot(vm, name, description=""):
    task = vm.CreateSnapshot_Task(name=name, description=description, memory=False, quiesce=False)
    WaitForTask(task)
    return task.info.result


def provenance(vm):
    value = None
    for opt in vm.config.extraConfig or []:
        if opt.key == "vmigrate.provenance":
            value = opt.value  # the last entry wins (vcsim appends)
    return json.loads(value)


def test_vsphere_rollback_marks_the_target_and_cleans_the_source(lab, vsphere_si, run_module, tmp_path):
    tag = uuid.uuid4().hex[:6]
    src, dst = "lab-rbvs-s-" + tag, "lab-rbvs-t-" + tag
    vc = conn_vars(lab)
    seed = make_bundle(str(tmp_path / "seed"), small_image(tmp_path), src)
    place = {"datastore": lab["vcsim"]["datastore"], "network_map": {"lab-net": "VM Network"}}
    try:
        for name in (src, dst):
            res = run_module("vsphere_import", dict(vc, bundle=seed.dir, name=name, **place))
            assert res.get("changed"), res
            WaitForTask(find_vm(vsphere_si, name).PowerOnVM_Task())

        # --- the target: off and marked ---
        target = find_vm(vsphere_si, dst)
        before = target.config.annotation
        args = dict(vc, vm=dst, state="off", mark_rolled_back=True)
        checked = run_module("vsphere_power", args, check=True)
        assert checked["changed"] and checked["marked_rolled_back"], checked
        assert target.runtime.powerState == "poweredOn" and provenance(target)["state"] == "complete"
        res = run_module("vsphere_power", args)
        assert res["changed"] and res["marked_rolled_back"] and res["method"] == "poweroff", res
        target = find_vm(vsphere_si, dst)
        assert target.runtime.powerState == "poweredOff"
        note = target.config.annotation
        assert note.startswith("ROLLED BACK by vmigrate.v2v at %s: not the live VM" % res["rolled_back"]), note
        assert note.endswith("\n" + before) and "Migrated by vmigrate.v2v from" in before
        prov = provenance(target)
        assert prov["state"] == "rolled-back" and prov["rolled_back"] == res["rolled_back"], prov
        again = run_module("vsphere_power", args)
        assert not again["changed"] and again["_recap_changed"] == 0, again
        assert find_vm(vsphere_si, dst).config.annotation == note
        start = run_module("vsphere_power", dict(vc, vm=dst, state="running"))
        assert start.get("failed") and "was rolled back at" in start["msg"], start
        assert find_vm(vsphere_si, dst).runtime.powerState == "poweredOff"

        # A new import writes the disk again and removes the mark.
        res = run_module("vsphere_import", dict(vc, bundle=seed.dir, name=dst, **place))
        assert res["changed"] and res["action"] == "rewrite", res
        target = find_vm(vsphere_si, dst)
        assert target.config.annotation == before and provenance(target)["state"] == "complete"
        assert not provenance(target).get("rolled_back")
        assert run_module("vsphere_verify", dict(vc, bundle=seed.dir, vm=dst)).get("ok")

        # --- the source: only what the exports made is removed ---
        source = find_vm(vsphere_si, src)
        snapshot(source, "users-own")
        export = dict(vc, vm=src, bundle=str(tmp_path / "export"))
        res = run_module("vsphere_export", export)
        assert res["changed"] and res["mode"] == "warm", res
        snapshot(source, "vmigrate-mine", "the user's, whatever its name")
        # What an export killed before removing its snapshot leaves: recorded, and a stun one.
        left = snapshot(source, "vmigrate-2", SNAPSHOT_DESCRIPTION)
        bundle = Bundle.load(export["bundle"])
        bundle.record_created("snapshots", {"name": "vmigrate-2", "moid": left._moId, "vm": source._moId})
        bundle.save()
        snapshot(source, STUN_SNAPSHOT)
        assert snapshot_names(source) == sorted(["users-own", "vmigrate-mine", "vmigrate-2", STUN_SNAPSHOT])

        cleanup = dict(vc, vm=src, bundle=export["bundle"])
        checked = run_module("vsphere_cleanup", cleanup, check=True)
        assert checked["changed"] and len(checked["removed"]) == 2, checked
        assert len(snapshot_names(find_vm(vsphere_si, src))) == 4
        res = run_module("vsphere_cleanup", cleanup)
        assert sorted(r["name"] for r in res["removed"]) == sorted(["vmigrate-2", STUN_SNAPSHOT]), res
        assert snapshot_names(find_vm(vsphere_si, src)) == ["users-own", "vmigrate-mine"]
        assert Bundle.load(export["bundle"]).manifest["created"]["snapshots"] == []
        assert find_vm(vsphere_si, src).runtime.powerState == "poweredOn"  # the source is left running
        again = run_module("vsphere_cleanup", cleanup)
        assert not again["changed"] and again["removed"] == [] and again["_recap_changed"] == 0, again
    finally:
        destroy(vsphere_si, src)
        destroy(vsphere_si, dst)
