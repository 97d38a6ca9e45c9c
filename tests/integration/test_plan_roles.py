"""playbooks/preflight.yml and playbooks/rollback.yml on a plan, KVM -> KVM.

Preflight: one good shut-off source and one whose target name is already taken by an
unrelated domain. The good one is OK, the other FAILED naming the collision; no domain
changed state and the target pool holds the same volumes; preflight.json says so.
Rollback: a source migrated (full mode), its target started; rollback.yml powers the
target off and the source on (libvirt's state), and a second run changes nothing.
"""

from __future__ import annotations

import json

import libvirt
import pytest
from plan_lab import SourceDomains, play, target_of, write_plan  # tests/integration/plan_lab.py


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-prerb")
    yield domains
    domains.cleanup()


def world(libvirt_conn, lab):
    """What preflight must not change: our domains' states, our volumes in the target pool
    (others share the lab: only lab-prerb-* are ours)."""
    domains = {d.name(): d.state(0)[0] for d in libvirt_conn.listAllDomains(0) if d.name().startswith("lab-prerb-")}
    pool = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"])
    pool.refresh(0)
    return domains, sorted(v.name() for v in pool.listAllVolumes(0) if v.name().startswith("lab-prerb-"))


def test_preflight_finds_a_name_collision_and_changes_nothing(
    lab, libvirt_conn, sources, run_playbook, tmp_path, reliability
):
    reliability(
        "plan",
        "a target name already taken by an unrelated domain (preflight.yml)",
        "'preflight <vm>: FAILED - name collision: a VM named <target> already exists'; preflight.json failed "
        "with that problem; the other VM 'OK'",
        "nothing started, stopped or made (domains and volumes unchanged, the export only in check mode); "
        "a re-run changes nothing",
    )
    good, _ = sources.make("good")
    taken, _ = sources.make("taken")
    sources.make(target_of(taken), disk=False)  # an unrelated domain of the target's name
    path = write_plan(lab, tmp_path, [[good, taken]])
    before = world(libvirt_conn, lab)

    run = play(run_playbook, path, "preflight.yml")
    assert run.returncode != 0, run.stdout[-5000:]
    assert run.recap[target_of(good)]["failed"] == 0, run.recap
    assert run.recap[target_of(taken)]["failed"] == 1, run.recap
    assert "preflight %s: OK" % good in run.stdout, run.stdout[-5000:]
    collision = "preflight %s: FAILED - name collision: a VM named %s already exists" % (taken, target_of(taken))
    assert collision in run.stdout, run.stdout[-5000:]
    assert world(libvirt_conn, lab) == before  # no domain started, stopped, made; no volume made
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(target_of(good))

    work = tmp_path / "work" / "w0"
    ok = json.loads((work / target_of(good) / "preflight.json").read_text())
    assert ok["status"] == "ok" and ok["problems"] == [] and ok["export_would"].startswith("cold full"), ok
    bad = json.loads((work / target_of(taken) / "preflight.json").read_text())
    assert bad["status"] == "failed" and len(bad["problems"]) == 1 and "name collision" in bad["problems"][0], bad
    assert not (work / target_of(good) / "export").exists()  # the export ran in check mode only

    again = play(run_playbook, path, "preflight.yml")
    assert again.recap[target_of(taken)]["failed"] == 1 and again.changed == 0, again.stdout[-5000:]
    assert world(libvirt_conn, lab) == before


def test_rollback_stops_the_target_and_starts_the_source(lab, libvirt_conn, sources, run_playbook, tmp_path):
    name, _ = sources.make("rb")
    path = write_plan(lab, tmp_path, [[name]])
    migrated = play(run_playbook, path, "migrate.yml")
    assert migrated.returncode == 0, migrated.stdout[-5000:]
    target = libvirt_conn.lookupByName(target_of(name))
    target.create()  # as if a cutover had started it
    source = libvirt_conn.lookupByName(name)
    assert target.isActive() and not source.isActive()

    run = play(run_playbook, path, "rollback.yml")
    assert run.returncode == 0, run.stdout[-5000:]
    assert not libvirt_conn.lookupByName(target_of(name)).isActive()  # off, and still defined
    assert libvirt_conn.lookupByName(name).isActive()
    record = json.loads((tmp_path / "work" / "w0" / target_of(name) / "rollback.json").read_text())
    assert record["status"] == "rolled-back" and record["target_ours"], record
    assert record["target_power"] == "poweroff" and record["source_power"] == "start", record

    again = play(run_playbook, path, "rollback.yml")
    assert again.returncode == 0 and again.changed == 0, again.stdout[-5000:]
    assert not libvirt_conn.lookupByName(target_of(name)).isActive()
    assert libvirt_conn.lookupByName(name).isActive()


def test_rollback_without_a_target_starts_the_source(lab, libvirt_conn, sources, run_playbook, tmp_path):
    """No target at all (the migration never imported): the target's vm_info fails with
    missing: true, which the role takes as "no target", not as a target it cannot ask."""
    name, _ = sources.make("nt")
    path = write_plan(lab, tmp_path, [[name]])
    run = play(run_playbook, path, "rollback.yml")
    assert run.returncode == 0, run.stdout[-5000:]  # "The target could not be asked" was skipped
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(target_of(name))
    assert libvirt_conn.lookupByName(name).isActive()
    record = json.loads((tmp_path / "work" / "w0" / target_of(name) / "rollback.json").read_text())
    assert record["status"] == "rolled-back" and not record["target_ours"], record
