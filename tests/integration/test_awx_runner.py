"""playbooks/migrate.yml through ansible-runner, the engine AWX/AAP runs jobs with
(docs/awx.md): a private data dir, the repository as the project, a plan file as the
inventory. What AWX shows comes from runner's job events, so the test reads them: per-VM
host status on the export/import/verify tasks, the per-host counts of the stats event,
a failed host next to an ok one; and the lab's state: the targets' disks equal the
sources' (`qemu-img compare`), a second run changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import ansible_runner
import pytest
from conftest import guest_env
from plan_lab import SourceDomains, target_of, write_plan  # tests/integration/plan_lab.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSIBLE_PLAYBOOK = os.path.join(ROOT, ".venv", "bin", "ansible-playbook")
# The tasks of the migrate role (roles/migrate/tasks/steps.yml) a job's host rows show.
STEP_TASKS = ("Export from the source", "Import into the target", "Verify ")


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-awx")
    yield domains
    domains.cleanup()


def run_job(tmp_path, plan_path, playbook, limit=None, extravars=None):
    """One job as AWX would start it: ansible_runner.run with a fresh private data dir,
    the project (this checkout, whose ansible.cfg the job uses) and the plan as inventory."""
    pdd = tmp_path / ("runner-%s" % uuid.uuid4().hex[:6])
    pdd.mkdir()
    return ansible_runner.run(
        private_data_dir=str(pdd),
        project_dir=ROOT,
        playbook=os.path.join(ROOT, "playbooks", playbook),
        inventory=plan_path,
        envvars={
            "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg"),
            # where the job finds the collection (in AWX: the EE or the project's collections)
            "ANSIBLE_COLLECTIONS_PATH": os.path.join(ROOT, ".collections"),
            "PATH": os.path.dirname(ANSIBLE_PLAYBOOK) + os.pathsep + os.environ.get("PATH", ""),
            **guest_env(),  # the tiny guest's data path: no guest inspection (conftest.guest_env)
        },
        limit=limit,
        extravars=extravars,
        forks=5,
        quiet=True,
        timeout=1200,
    )


def host_events(runner, event):
    """{host: [task name, ...]} of the job events of one kind (runner_on_ok, ...)."""
    out: dict = {}
    for ev in runner.events:
        if ev.get("event") == event:
            data = ev["event_data"]
            out.setdefault(data["host"], []).append(data.get("task", ""))
    return out


def stats(runner):
    (ev,) = [e for e in runner.events if e.get("event") == "playbook_on_stats"]
    return ev["event_data"]


def output(runner):
    return runner.stdout.read()[-6000:]


def target_disk(libvirt_conn, name):
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import domain_disks

    (disk,) = domain_disks(libvirt_conn.lookupByName(name).XMLDesc(0))
    return disk["path"], disk["format"]


def same_disk(src, dst, dst_fmt):
    cmd = ["qemu-img", "compare", "-q", "-f", "qcow2", "-F", dst_fmt, src, dst]
    return subprocess.run(cmd, check=False).returncode == 0


def test_migrate_through_runner_reports_each_vm_and_a_rerun_changes_nothing(
    lab, libvirt_conn, sources, tmp_path, reliability
):
    reliability(
        "plan",
        "a cutover window given as a string (as an AWX survey answers) to cutover.yml",
        "the host fails: 'The cutover window is a mapping or null'",
        "no cutover.json; the next wave never starts",
    )
    vms = [sources.make("one"), sources.make("two")]
    hosts = [target_of(name) for name, _disk in vms]
    plan = write_plan(lab, tmp_path, [[vms[0][0]], [vms[1][0]]])  # waves w0 and w1

    # One wave, as a workflow node limited to it would run it.
    wave0 = run_job(tmp_path, plan, "migrate.yml", limit="wave_w0")
    assert wave0.status == "successful" and wave0.rc == 0, output(wave0)
    assert set(stats(wave0)["ok"]) == {hosts[0]}, stats(wave0)
    assert not [d for d in libvirt_conn.listAllDomains(0) if d.name() == hosts[1]]

    first = run_job(tmp_path, plan, "migrate.yml")
    assert first.status == "successful" and first.rc == 0, output(first)
    ok = host_events(first, "runner_on_ok")
    for host in hosts:
        for task in STEP_TASKS:
            assert any(t.startswith(task) for t in ok.get(host, [])), (host, task, ok.get(host))
    counts = stats(first)
    assert counts["changed"].get(hosts[0], 0) == 0 < counts["changed"].get(hosts[1], 0), counts  # w0 was done
    for host in hosts:
        assert counts["ok"].get(host, 0) > 0, counts
        assert not counts["failures"].get(host) and not counts["dark"].get(host), counts
    assert first.stats["changed"] == counts["changed"]  # runner's own summary says the same

    for (_name, disk), host in zip(vms, hosts, strict=True):
        dst, fmt = target_disk(libvirt_conn, host)
        assert same_disk(disk, dst, fmt), (disk, dst)

    again = run_job(tmp_path, plan, "migrate.yml")
    assert again.status == "successful", output(again)
    counts = stats(again)
    assert set(hosts) <= set(counts["ok"]), counts
    assert all(n == 0 for n in counts["changed"].values()), counts["changed"]
    assert not host_events(again, "runner_on_failed")

    # A survey answers with strings: a cutover window given as one is refused, not ignored.
    cut = run_job(tmp_path, plan, "cutover.yml", extravars={"cutover_window": "start=00:00, end=00:01"})
    assert cut.status == "failed", output(cut)
    failed = host_events(cut, "runner_on_failed")
    # wave w0's only VM failed, so Ansible ends the play: wave w1 never starts
    assert failed == {hosts[0]: ["The cutover window is a mapping or null"]}, failed
    assert not [e for e in cut.events if e.get("event_data", {}).get("host") == hosts[1]]
    assert not list((tmp_path / "work").glob("*/*/cutover.json"))


def test_a_vm_missing_on_the_source_fails_its_host_and_not_its_sibling(
    lab, libvirt_conn, sources, tmp_path, reliability
):
    reliability(
        "plan",
        "a plan VM the source does not have (validate_sources: false, run through ansible-runner)",
        "only that host fails, at 'Export from the source', naming the VM",
        "its sibling in the wave migrates and verifies, disks equal",
    )
    good, good_disk = sources.make("good")
    ghost = "lab-awx-ghost-%s" % sources.tag  # no such domain
    plan = write_plan(lab, tmp_path, [[good, ghost]], max_failed=1)
    # The plan plugin refuses a VM the source lacks before anything runs; without source
    # validation the VM reaches the job and fails there, as one the source lost would.
    with open(plan, encoding="utf-8") as fh:
        text = fh.read()
    with open(plan, "w", encoding="utf-8") as fh:
        fh.write(text.replace("version: 1\n", "version: 1\nvalidate_sources: false\n"))

    job = run_job(tmp_path, plan, "migrate.yml")
    assert job.status == "failed" and job.rc != 0, output(job)
    failed = host_events(job, "runner_on_failed")
    assert target_of(ghost) in failed and target_of(good) not in failed, failed
    ghost_export = [
        ev["event_data"]["res"]
        for ev in job.events
        if ev.get("event") == "runner_on_failed"
        and ev["event_data"]["host"] == target_of(ghost)
        and ev["event_data"].get("task", "").startswith("Export from the source")
    ]
    assert ghost_export and ghost in ghost_export[0].get("msg", ""), ghost_export
    ok = host_events(job, "runner_on_ok")
    assert any(t.startswith("Verify ") for t in ok.get(target_of(good), [])), ok.get(target_of(good))
    counts = stats(job)
    assert counts["failures"].get(target_of(ghost)) == 1 and not counts["failures"].get(target_of(good)), counts
    dst, fmt = target_disk(libvirt_conn, target_of(good))
    assert same_disk(good_disk, dst, fmt)
