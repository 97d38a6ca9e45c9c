"""Killing ansible-playbook mid-copy, then re-running playbooks/migrate.yml, KVM -> KVM.

A source domain whose 2 GiB qcow2 disk holds 512 MiB of random data, so the copy takes
a few seconds. migrate.yml runs on a plan; when the progress file the modules write
(VMIGRATE_PROGRESS_FILE) shows the copy under way, the whole process group of
ansible-playbook (its workers and the module) gets SIGKILL: no handler, no cleanup.
Then:
- the target does not look complete: no domain, or one whose provenance says
  incomplete; the bundle being written says incomplete;
- a re-run of the same playbook finishes, `qemu-img compare` says the source's and the
  target's disks are identical, the source has no checkpoint of ours left beyond the
  one the chain continues from and no backup job;
- a third run changes nothing.

`full`: the source is off; the kill hits the import's copy into the target volume.
`warm`: the source runs; the kill hits the export's read through a libvirt backup job
(NBD), which then outlives the killed module in libvirtd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from conftest import guest_env
from plan_lab import PLAYBOOKS, SourceDomains, target_of, write_plan  # tests/integration/plan_lab.py

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import (
    domain_disks,
    read_provenance,
)

ROOT = os.path.dirname(PLAYBOOKS)


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-kill")
    yield domains
    domains.cleanup()


def start_playbook(plan_path, progress, log):
    """migrate.yml in its own process group (so one killpg reaches every worker)."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_INVENTORY=plan_path,
        ANSIBLE_NOCOLOR="1",
        VMIGRATE_PROGRESS_FILE=str(progress),
        **guest_env(),  # the tiny guest's data path: no guest inspection
    )
    cmd = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), os.path.join(PLAYBOOKS, "migrate.yml")]
    out = open(log, "w")  # noqa: SIM115 - closed by the caller through proc.log
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = out
    return proc


def descendants(pid):
    """Every process under ``pid`` (from /proc's parent links)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(pid):
    """SIGKILL ansible-playbook and every process under it, group by group: frozen first
    (SIGSTOP), so none finishes its copy between the kills."""
    procs = [pid] + descendants(pid)
    groups = set()
    for p in procs:
        try:
            groups.add(os.getpgid(p))
        except ProcessLookupError:
            pass
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass


def last_event(progress, label):
    """The newest progress event of a copy labelled ``label ...``, or None."""
    try:
        lines = progress.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # a line being written
        if ev.get("label", "").startswith(label):
            return ev
    return None


def run_to_end(plan_path, progress, log):
    proc = start_playbook(plan_path, progress, log)
    rc = proc.wait(timeout=1200)
    proc.log.close()
    text = open(log).read()
    recap = [line for line in text.splitlines() if " : ok=" in line]
    changed = sum(int(line.split("changed=")[1].split()[0]) for line in recap)
    return rc, changed, text


def disk_of(conn, name):
    (disk,) = domain_disks(conn.lookupByName(name).XMLDesc(0))
    return disk["path"], disk["format"]


def our_checkpoints(dom):
    return [c.getName() for c in dom.listAllCheckpoints(0) if c.getName().startswith("vmigrate-")]


@pytest.mark.parametrize(("mode", "label"), [("full", "import "), ("warm", "copy ")])
def test_killed_mid_copy_a_rerun_completes_with_equal_disks(lab, libvirt_conn, sources, tmp_path, mode, label):
    name, src_disk = sources.make(mode, mib=512, piece_mib=448)  # 2 GiB disk, 1.75 GiB of random data
    if mode == "warm":
        libvirt_conn.lookupByName(name).create()  # no OS: it runs and writes nothing
    target = target_of(name)
    path = write_plan(lab, tmp_path, [[name]], mode=mode)
    progress = tmp_path / "progress.jsonl"

    proc = start_playbook(path, progress, tmp_path / "run1.log")
    deadline = time.monotonic() + 600
    while (last_event(progress, label) or {}).get("event") != "progress":
        assert proc.poll() is None, (
            "the playbook ended before the copy was seen: " + (tmp_path / "run1.log").read_text()
        )
        assert time.monotonic() < deadline, "no %s progress within 600 s" % label
        time.sleep(0.005)
    kill_tree(proc.pid)
    proc.wait(timeout=60)
    proc.log.close()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(2)  # anything left running would write on meanwhile
    seen = last_event(progress, label)
    assert seen["event"] == "progress" and seen["bytes"] < seen["total_bytes"], seen  # killed mid-copy

    # Not left looking complete: no target domain, or one marked incomplete.
    dom = next((d for d in libvirt_conn.listAllDomains(0) if d.name() == target), None)
    if dom is not None:
        prov = read_provenance(dom) or {}
        assert prov.get("state") == "incomplete", prov
    if mode == "warm":
        # What the re-run has to cope with: the backup job outlived the killed module.
        assert libvirt_conn.lookupByName(name).jobInfo()[0] != 0, "no backup job left by the killed export"
    work = tmp_path / "work" / "w0" / target
    being_written = "convert" if mode == "full" else "export"
    if mode == "warm":
        manifest = json.loads((work / being_written / "manifest.json").read_text())
        assert manifest["state"] == "incomplete", manifest["state"]

    rc, _changed, text = run_to_end(path, tmp_path / "progress2.jsonl", tmp_path / "run2.log")
    assert rc == 0, text[-8000:]
    dst, fmt = disk_of(libvirt_conn, target)
    compare = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", fmt, src_disk, dst], capture_output=True, text=True
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr
    source = libvirt_conn.lookupByName(name)
    chain = json.loads((work / "export" / "manifest.json").read_text())
    keep = (chain["sync"][-1].get("checkpoint") or {}).get("id") if mode == "warm" else None
    assert [c for c in our_checkpoints(source) if c != keep] == [], our_checkpoints(source)
    if source.isActive():
        assert source.jobInfo()[0] == 0, source.jobInfo()  # VIR_DOMAIN_JOB_NONE: no backup job left
    status = json.loads((work / "status.json").read_text())
    assert status["status"] == "migrated" and status["steps"]["verify"]["ok"], status

    rc, changed, text = run_to_end(path, tmp_path / "progress3.jsonl", tmp_path / "run3.log")
    assert rc == 0 and changed == 0, text[-8000:]
