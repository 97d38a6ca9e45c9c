"""The shared import/verify decisions, without a lab."""

from __future__ import annotations

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.blocks import ZERO_DIGEST, DigestList

A, B, C = "a" * 64, "b" * 64, "c" * 64


def manifest(digests=(A, B), syncs=1, chain="c1", deltas=None, source_id="src-1"):
    disks = []
    for i, fp in enumerate(digests):
        disks.append({"id": "disk%d" % i, "digests_sha256": fp, "deltas": (deltas or {}).get("disk%d" % i, [])})
    return {
        "source": {"platform": "kvm", "id": source_id, "name": "web01"},
        "disks": disks,
        "sync": [{"index": i + 1, "chain": chain, "checkpoint": "cp%d" % (i + 1)} for i in range(syncs)],
    }


def test_provenance_has_one_shape():
    prov = steps.provenance(manifest())
    assert set(prov) == set(steps.PROVENANCE_KEYS)
    assert prov["chain"] == "c1" and prov["sync_index"] == 1 and prov["checkpoint"] == "cp1"
    assert prov["disks"] == {"disk0": A, "disk1": B} and prov["state"] == "complete"


def test_fingerprint_follows_disk_content_only():
    m = manifest()
    assert steps.content_fingerprint(m) == steps.content_fingerprint(dict(m, sync=[], spec={"x": 1}))
    assert steps.content_fingerprint(m) != steps.content_fingerprint(manifest(digests=(A, C)))


def test_chain_ids_are_hex_and_new_each_time():
    a, b = steps.new_chain_id(), steps.new_chain_id()
    assert a != b and len(a) == 32 and int(a, 16) >= 0


def test_read_provenance_accepts_older_targets():
    legacy = {"source_id": "src-1", "source_platform": "kvm", "sync_index": "2", "bundle_fingerprint": "x"}
    prov = steps.read_provenance(legacy)
    assert prov["sync_index"] == 2 and prov["fingerprint"] is None and prov["disks"] == {}
    assert prov["state"] == "complete"
    assert steps.read_provenance(None) is None and steps.read_provenance({"state": "complete"}) is None


def test_plan_create_and_replace():
    m = manifest()
    assert steps.plan_import(m, "t", exists=False, found=None).action == "create"
    assert steps.plan_import(m, "t", exists=True, found=None, replace=True).action == "replace"


@pytest.mark.parametrize("found", [None, {}, {"source_id": "other", "source_platform": "kvm"}])
def test_plan_refuses_a_target_of_another_origin(found, reliability):
    reliability(
        "engine",
        "import onto a same-named target not made from this source (no, empty or other provenance)",
        "InputError \"'web01' already exists\" with the fix 'replace=true'",
        "refused before anything is written",
    )
    with pytest.raises(InputError) as err:
        steps.plan_import(manifest(), "web01", exists=True, found=found)
    assert "'web01' already exists" in str(err.value) and "replace=true" in str(err.value)


def test_plan_nothing_to_do_when_target_holds_the_bundle():
    m = manifest()
    plan = steps.plan_import(m, "t", exists=True, found=steps.provenance(m))
    assert plan.action == "none" and not plan.changes


def test_plan_record_when_only_the_sync_moved():
    old = manifest(syncs=1)
    new = manifest(syncs=2)
    plan = steps.plan_import(new, "t", exists=True, found=steps.provenance(old))
    assert plan.action == "record" and plan.disks == []


def test_plan_deltas_for_changed_disks_of_the_same_chain():
    old = manifest(syncs=1)
    delta = {"index": 2, "path": "deltas/disk1.2"}
    new = manifest(digests=(A, C), syncs=2, deltas={"disk1": [delta]})
    plan = steps.plan_import(new, "t", exists=True, found=steps.provenance(old))
    assert plan.action == "deltas" and plan.disks == ["disk1"] and plan.deltas == {"disk1": [delta]}


def test_plan_reapplies_deltas_after_a_run_that_died():
    old = manifest(syncs=1)
    delta = {"index": 2, "path": "deltas/disk1.2"}
    new = manifest(digests=(A, C), syncs=2, deltas={"disk1": [delta]})
    first = steps.plan_import(new, "t", exists=True, found=steps.provenance(old))
    half = steps.mark_updating(first)
    assert half["state"] == "incomplete" and half["disks"] == {"disk0": A}
    plan = steps.plan_import(new, "t", exists=True, found=half)
    assert plan.action == "deltas" and plan.disks == ["disk1"] and plan.deltas == {"disk1": [delta]}


def test_plan_rewrites_every_disk_of_an_unknown_half_made_target():
    half = dict(steps.provenance(manifest()), state="incomplete", disks={})
    plan = steps.plan_import(manifest(), "t", exists=True, found=half)
    assert plan.action == "rewrite" and plan.disks == ["disk0", "disk1"]


def test_plan_rewrites_when_the_chain_changed():
    old = manifest(chain="c1")
    new = manifest(digests=(C, B), chain="c2")
    plan = steps.plan_import(new, "t", exists=True, found=steps.provenance(old))
    assert plan.action == "rewrite" and plan.disks == ["disk0"]


def test_plan_refuses_to_go_back_in_a_chain(reliability):
    reliability(
        "engine",
        "import of an older bundle than the target holds (going back in a sync chain)",
        "InputError '... newer than the bundle's sync 1'",
        "refused before anything is written",
    )
    new = manifest(digests=(A, C), syncs=3)
    with pytest.raises(InputError) as err:
        steps.plan_import(manifest(syncs=1), "t", exists=True, found=steps.provenance(new))
    assert "newer than the bundle's sync 1" in str(err.value)


def test_compare_disk_names_capacity_and_first_block():
    bs = 1024 * 1024
    want = DigestList(bs, digests=ZERO_DIGEST + b"\x01" * 32 + b"\x02" * 32)
    got = DigestList(bs, digests=ZERO_DIGEST + b"\x01" * 32 + b"\x03" * 32)
    assert steps.compare_disk("disk0", "vol", want, want, 3 * bs, 3 * bs) == []
    (msg,) = steps.compare_disk("disk0", "vol", want, got, 3 * bs, 3 * bs)
    assert "differs from the bundle in 1 of 3 blocks, first at byte %d" % (2 * bs) in msg
    (msg,) = steps.compare_disk("disk0", "vol", want, want, 3 * bs, 3 * bs + 1024)
    assert "holds %d bytes, the bundle %d" % (3 * bs + 1024, 3 * bs) in msg


def test_compare_spec_ignores_macs_the_bundle_leaves_open():
    spec = {"cpu": {"sockets": 1, "cores": 2, "threads": 1}, "memory_mib": 256, "nics": [{"mac": None}]}
    target = dict(spec, nics=[{"mac": "00:50:56:00:00:01"}])
    assert steps.compare_spec(target, spec)[1] == []
    fixed = dict(spec, nics=[{"mac": "52:54:00:00:00:01"}])
    (msg,) = steps.compare_spec(target, fixed)[1]
    assert msg == "nic_macs: target ['00:50:56:00:00:01'], bundle ['52:54:00:00:00:01']"
