"""The rollback's decisions without a lab: the mark a rolled-back target carries (and the
note people see), the import writing every disk of a marked target again, the power
step refusing to start one, and the source cleanup (only what is ours, forgotten by the
bundle, idempotent, nothing in check mode)."""

from __future__ import annotations

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import power, rollback, steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle

A, B = "a" * 64, "b" * 64


def manifest(syncs=1, deltas=None):
    return {
        "source": {"platform": "kvm", "id": "src-1", "name": "web01"},
        "disks": [
            {"id": "disk0", "digests_sha256": A, "deltas": (deltas or {}).get("disk0", [])},
            {"id": "disk1", "digests_sha256": B, "deltas": (deltas or {}).get("disk1", [])},
        ],
        "sync": [{"index": i + 1, "chain": "c1", "checkpoint": "cp%d" % (i + 1)} for i in range(syncs)],
    }


class Fake:
    """Just what the power and cleanup steps ask of a platform."""

    def __init__(self, state="running", prov=None, leftovers=(), fail_on=None):
        self.state, self.prov = state, prov
        self.leftovers = list(leftovers)
        self.fail_on = fail_on
        self.writes = 0

    def vm_name(self, vm):
        return vm

    def power_state(self, vm):
        return self.state

    def start_vm(self, vm):
        self.state = "running"

    def power_off(self, vm):
        self.state = "off"

    def request_shutdown(self, vm, check_mode):
        return None

    def read_provenance(self, vm):
        return self.prov

    def write_provenance(self, vm, prov):
        self.prov = prov
        self.writes += 1

    def migration_leftovers(self, vm, bundle):
        return list(self.leftovers)

    def remove_leftover(self, vm, item):
        if item["name"] == self.fail_on:
            raise PlatformError("cannot remove %s" % item["name"], "by hand")
        self.leftovers.remove(item)


def test_the_mark_vouches_for_nothing_and_keeps_the_origin():
    prov = steps.provenance(manifest())
    marked = rollback.mark(dict(prov, verified=prov["fingerprint"]), "2026-12-01T00:00:00Z")
    assert marked["state"] == "rolled-back" and marked["rolled_back"] == "2026-12-01T00:00:00Z"
    assert marked["verified"] is None and marked["source_id"] == "src-1"
    assert rollback.rolled_back(marked) == "2026-12-01T00:00:00Z" and rollback.rolled_back(prov) is None
    assert steps.read_provenance(marked)["rolled_back"] == "2026-12-01T00:00:00Z"  # kept when read back


def test_the_note_is_replaced_never_stacked_and_removed_by_a_fresh_provenance():
    marked = rollback.mark(steps.provenance(manifest()), "T1")
    note = rollback.note(marked)
    assert note.startswith(rollback.MARK) and "kvm VM web01 runs again" in note and "T1" in note
    text = rollback.with_note("the user's own words\nline two", note)
    assert text == note + "\nthe user's own words\nline two"
    again = rollback.with_note(text, rollback.note(rollback.mark(steps.provenance(manifest()), "T2")))
    assert again.count(rollback.MARK) == 1 and "T2" in again and again.endswith("line two")
    assert rollback.with_note(again, rollback.note(steps.provenance(manifest()))) == "the user's own words\nline two"
    assert rollback.with_note("", None) == "" and rollback.with_note(None, note) == note
    assert rollback.title(marked) == rollback.TITLE and rollback.title(steps.provenance(manifest())) is None
    assert rollback.with_note("web", rollback.TITLE, " | ") == rollback.TITLE + " | web"


def test_import_writes_every_disk_of_a_rolled_back_target_again():
    m = manifest()
    marked = rollback.mark(steps.provenance(m), "T")
    plan = steps.plan_import(m, "t", exists=True, found=marked)
    assert plan.action == "rewrite" and plan.disks == ["disk0", "disk1"] and "rolled back" in plan.reason
    assert plan.want.get("rolled_back") is None and plan.want["state"] == "complete"  # clears the mark
    # Even with a delta chain that would lead there: the target ran, deltas would land on its writes.
    newer = manifest(syncs=2, deltas={"disk0": [{"index": 2}], "disk1": [{"index": 2}]})
    assert steps.plan_import(newer, "t", exists=True, found=marked).action == "rewrite"
    # A rewrite killed half-way keeps the mark, so the next run writes everything again.
    half = steps.mark_updating(plan)
    assert half["rolled_back"] == "T" and steps.plan_import(m, "t", exists=True, found=half).disks == ["disk0", "disk1"]


def test_power_off_with_mark_is_idempotent_and_check_mode_changes_nothing():
    fake = Fake(state="running", prov=steps.provenance(manifest()))
    checked = power.run_power(fake, "t", {"state": "off", "mark_rolled_back": True}, check_mode=True)
    assert checked["changed"] and checked["marked_rolled_back"] and fake.state == "running" and fake.writes == 0
    assert "would be marked rolled back" in checked["summary"]
    first = power.run_power(fake, "t", {"state": "off", "mark_rolled_back": True})
    assert first["changed"] and first["marked_rolled_back"] and fake.state == "off"
    assert fake.prov["state"] == "rolled-back" and fake.prov["rolled_back"] == first["rolled_back"]
    second = power.run_power(fake, "t", {"state": "off", "mark_rolled_back": True})
    assert not second["changed"] and not second["marked_rolled_back"] and fake.writes == 1
    assert second["rolled_back"] == first["rolled_back"] and second["summary"].endswith("(nothing to do)")


def test_marking_an_off_target_alone_is_a_change():
    fake = Fake(state="off", prov=steps.provenance(manifest()))
    res = power.run_power(fake, "t", {"state": "shutdown", "mark_rolled_back": True})
    assert res["changed"] and res["method"] == "none" and fake.prov["state"] == "rolled-back"
    assert res["diff"]["before"]["rolled_back"] is None and res["diff"]["after"]["rolled_back"]


def test_only_a_target_of_ours_is_marked_and_only_when_off():
    with pytest.raises(InputError, match="carries no vmigrate provenance"):
        power.run_power(Fake(state="off", prov=None), "t", {"state": "off", "mark_rolled_back": True})
    with pytest.raises(InputError, match="state is running"):
        power.run_power(Fake(prov=steps.provenance(manifest())), "t", {"state": "running", "mark_rolled_back": True})


def test_a_rolled_back_target_is_not_started():
    fake = Fake(state="off", prov=rollback.mark(steps.provenance(manifest()), "T"))
    with pytest.raises(InputError) as err:
        power.run_power(fake, "t", {"state": "running"})
    assert "was rolled back at T" in str(err.value) and "cutover" in err.value.fix and fake.state == "off"
    # A checked cutover would import (clearing the mark) before it starts the target: said, not refused.
    checked = power.run_power(fake, "t", {"state": "running"}, check_mode=True)
    assert checked["changed"] and "refuses to start it unless an import" in checked["reason"] and fake.state == "off"
    unmarked = Fake(state="off", prov=steps.provenance(manifest()))
    assert power.run_power(unmarked, "t", {"state": "running"})["changed"] and unmarked.state == "running"


def bundle_with(tmp_path, created):
    bundle = Bundle.create(str(tmp_path / "export"), {"platform": "kvm", "id": "src-1", "name": "web01"}, {})
    for item in created:
        bundle.record_created("checkpoints", item)
    bundle.save()
    return bundle


def test_cleanup_removes_what_is_ours_and_forgets_it_in_the_bundle(tmp_path):
    bundle = bundle_with(tmp_path, ["vmigrate-1", "vmigrate-gone"])
    items = [
        {"kind": "checkpoint", "name": "vmigrate-1", "record": "vmigrate-1"},
        {"kind": "checkpoint", "name": "vmigrate-0a1b-2", "record": None},  # ours by name, not recorded
    ]
    fake = Fake(leftovers=items)
    checked = rollback.run_cleanup(fake, "web01", bundle.dir, check_mode=True)
    assert (
        checked["changed"] and len(fake.leftovers) == 2 and "would remove checkpoint vmigrate-1" in checked["summary"]
    )
    assert checked["removed"] == [
        {"kind": "checkpoint", "name": "vmigrate-1"},
        {"kind": "checkpoint", "name": "vmigrate-0a1b-2"},
    ]
    done = rollback.run_cleanup(fake, "web01", bundle.dir, check_mode=False)
    assert done["changed"] and fake.leftovers == [] and done["diff"]["after"] == {"leftovers": []}
    assert Bundle.load(bundle.dir).manifest["created"]["checkpoints"] == ["vmigrate-gone"]
    again = rollback.run_cleanup(fake, "web01", bundle.dir, check_mode=False)
    assert not again["changed"] and again["removed"] == [] and "nothing of ours left" in again["summary"]


def test_cleanup_without_a_bundle_and_a_failed_removal(tmp_path):
    bundle = bundle_with(tmp_path, ["vmigrate-1", "vmigrate-2"])
    items = [{"kind": "checkpoint", "name": n, "record": n} for n in ("vmigrate-1", "vmigrate-2")]
    fake = Fake(leftovers=items, fail_on="vmigrate-2")
    with pytest.raises(PlatformError):
        rollback.run_cleanup(fake, "web01", bundle.dir, check_mode=False)
    # What was removed before the failure is no longer recorded; the rest is.
    assert Bundle.load(bundle.dir).manifest["created"]["checkpoints"] == ["vmigrate-2"]
    fake.fail_on = None
    res = rollback.run_cleanup(fake, "web01", str(tmp_path / "none"), check_mode=False)
    assert res["removed"] == [{"kind": "checkpoint", "name": "vmigrate-2"}] and not (tmp_path / "none").exists()
