"""playbooks/preflight.yml and playbooks/rollback.yml on a plan, KVM -> KVM.

Preflight: one good shut-off source and one whose target name is already taken by an
unrelated domain. The good one is OK, the other FAILED naming the collision; no domain
changed state and the target pool holds the same volumes; preflight.json says so.
Rollback: a source migrated (full mode), its target started; rollback.yml powers the
target off and the source on (libvirt's state), and a second run changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import libvirt
import pytest

MIB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(ROOT, "playbooks")


@pytest.fixture
def sources(lab, libvirt_conn):
    """make(name) defines a shut-off domain lab-prerb-<name>-<tag> with a small qcow2 disk
    of random data; every domain and volume carrying the tag is removed afterwards."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    tag = uuid.uuid4().hex[:6]
    src_dir = lab["pool_paths"][lab["pools"]["source"]]

    def make(name, mib=4, disk=True):
        name = name if name.startswith("lab-prerb-") else "lab-prerb-%s-%s" % (name, tag)
        disks, files = [], {}
        if disk:
            path = os.path.join(src_dir, name + ".qcow2")
            raw = path + ".raw"
            with open(raw, "wb") as fh:
                fh.truncate(4 * mib * MIB)
                fh.write(os.urandom(mib * MIB // 2))
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path], check=True)
            os.unlink(raw)
            disks = [_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=4 * mib * MIB)]
            files = {"disk0": {"path": path, "format": "qcow2"}}
        spec = _spec.new_spec(name=name, memory_mib=64, disks=disks, nics=[])
        xml = _libvirt_xml.libvirt_xml_from_spec(spec, files, domain_type=lab["domain_type"])
        libvirt_conn.defineXML(xml.replace(' mode="host-passthrough"', ""))
        return name

    make.tag = tag
    yield make
    for dom in libvirt_conn.listAllDomains(0):
        if dom.name().startswith("lab-prerb-") and tag in dom.name():
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    for pool_name in (lab["pools"]["source"], lab["pools"]["target"]):
        pool = libvirt_conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if tag in vol.name():
                vol.delete(0)


def target_of(name):
    # lab-prerb-<what>-<tag> -> lab-prerb-t-<tag>-<what>
    _lab, _prerb, what, tag = name.split("-", 3)
    return "lab-prerb-t-%s-%s" % (tag, what)


def plan(lab, tmp_path, names):
    """One wave, KVM -> KVM, full mode; targets lab-prerb-t-<tag>-<what>."""
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', mode: full}" % (tmp_path / "work"),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], lab["pools"]["target"]),
        "storage_map: {'%s': %s}" % (lab["pool_paths"][lab["pools"]["source"]], lab["pools"]["target"]),
        "waves:",
        "  - {name: w0, source: lab-kvm, target: lab-kvm, concurrency: 2, max_failed: 0, vms: [%s]}"
        % ", ".join("{name: %s, target_name: %s}" % (n, target_of(n)) for n in names),
    ]
    path = tmp_path / ("plan-%s.v2v.yml" % uuid.uuid4().hex[:4])
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def play(run_playbook, plan_path, name):
    return run_playbook(os.path.join(PLAYBOOKS, name), env={"ANSIBLE_INVENTORY": plan_path}, timeout=1200)


def world(libvirt_conn, lab):
    """What preflight must not change: our domains' states, our volumes in the target pool
    (others share the lab: only lab-prerb-* are ours)."""
    domains = {d.name(): d.state(0)[0] for d in libvirt_conn.listAllDomains(0) if d.name().startswith("lab-prerb-")}
    pool = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"])
    pool.refresh(0)
    return domains, sorted(v.name() for v in pool.listAllVolumes(0) if v.name().startswith("lab-prerb-"))


def test_preflight_finds_a_name_collision_and_changes_nothing(lab, libvirt_conn, sources, run_playbook, tmp_path):
    good = sources("good")
    taken = sources("taken")
    sources(target_of(taken), disk=False)  # an unrelated domain of the target's name
    path = plan(lab, tmp_path, [good, taken])
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
    name = sources("rb")
    path = plan(lab, tmp_path, [name])
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
