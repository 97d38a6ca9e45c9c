"""SIGKILL of ansible-playbook at the moments that matter, through the plan playbooks, KVM -> KVM.

The moments are observed from the lab, never guessed with a sleep: the progress file the
modules write (VMIGRATE_PROGRESS_FILE) or the source domain's power state. Then the whole
process tree of ansible-playbook is frozen and killed (test_plan_kill.kill_tree), and the
tests check the real state: the source's disk unchanged (qemu-img compare with a copy made
before), no backup job or stray checkpoint of ours on it, the target not looking complete
(no domain, provenance state incomplete, or never started), and a plain re-run of the same
playbook finishing the job with disks equal by qemu-img compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import pytest
from plan_lab import PLAYBOOKS, SourceDomains, target_of, write_plan  # tests/integration/plan_lab.py
from test_plan_kill import descendants, disk_of, kill_tree, our_checkpoints  # the way test_plan_kill kills
from test_plan_migrate import guest_write

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import read_provenance

ROOT = os.path.dirname(PLAYBOOKS)
MIB = 1024 * 1024
# The tiny guest's tests are about the data: no guest conversion (as guest_env() in the
# integration conftest); a plan without the option is refused since the guest conversion
# merge (the role's argument spec rejects its null default).
COLD = {"guest_conversion": "skip"}
WARM = dict(COLD, shutdown_timeout=2, on_shutdown_timeout="poweroff")  # the no-OS source ignores ACPI


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-fx")
    yield domains
    domains.cleanup()


def start(plan, playbook, progress, log, env=None):
    """``playbook`` on the plan in its own session (so kill_tree reaches every worker)."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_INVENTORY=plan,
        ANSIBLE_NOCOLOR="1",
        VMIGRATE_PROGRESS_FILE=str(progress),
        **(env or {}),
    )
    cmd = [os.path.join(ROOT, ".venv", "bin", "ansible-playbook"), os.path.join(PLAYBOOKS, playbook)]
    out = open(log, "w")  # noqa: SIM115 - closed once the process ended
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log, proc.log_path = out, log
    return proc


def run(plan, playbook, tmp_path, tag):
    """Run ``playbook`` to its end: (rc, changed, output)."""
    proc = start(plan, playbook, tmp_path / ("progress-%s.jsonl" % tag), tmp_path / ("%s.log" % tag))
    rc = proc.wait(timeout=1200)
    proc.log.close()
    text = open(proc.log_path).read()
    changed = sum(int(line.split("changed=")[1].split()[0]) for line in text.splitlines() if " : ok=" in line)
    return rc, changed, text


def kill_when(proc, moment, what, timeout=600):
    """Poll ``moment()`` every 5 ms; when it holds, SIGKILL the playbook's whole tree."""
    deadline = time.monotonic() + timeout
    while not moment():
        assert proc.poll() is None, "the playbook ended before %s: %s" % (what, open(proc.log_path).read()[-6000:])
        assert time.monotonic() < deadline, "no %s within %d s" % (what, timeout)
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGSTOP)  # its own group first, at once: the moment is often a few ms long
    kill_tree(proc.pid)  # then every group under it (found through /proc, which takes longer)
    proc.wait(timeout=60)
    proc.log.close()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(1)  # anything left running would write on meanwhile


def events(progress):
    try:
        lines = progress.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out


def snapshot(src_disk, tmp_path):
    """A copy of the source disk as it is now (read with -U: it may be open in its QEMU)."""
    copy = str(tmp_path / "source-before.qcow2")
    subprocess.run(["qemu-img", "convert", "-U", "-q", "-f", "qcow2", "-O", "qcow2", src_disk, copy], check=True)
    return copy


def same(a, a_fmt, b, b_fmt):
    cmd = ["qemu-img", "compare", "-U", "-f", a_fmt, "-F", b_fmt, a, b]
    res = subprocess.run(cmd, capture_output=True, text=True)
    return res.returncode == 0, res.stdout + res.stderr


def target_domain(conn, name):
    return next((d for d in conn.listAllDomains(0) if d.name() == name), None)


def source_clean(conn, name, work):
    """No backup job on the source, no checkpoint of ours beyond the one the chain continues
    from (its newest libvirt checkpoint: an un-killed run keeps it too, cleanup_checkpoints
    is opt-in)."""
    source = conn.lookupByName(name)
    if source.isActive():
        assert source.jobInfo()[0] == 0, source.jobInfo()  # VIR_DOMAIN_JOB_NONE
    chain = json.loads((work / "export" / "manifest.json").read_text())
    kept = [s["checkpoint"]["id"] for s in chain["sync"] if (s.get("checkpoint") or {}).get("kind") == "libvirt"]
    keep = kept[-1] if kept else None
    assert [c for c in our_checkpoints(source) if c != keep] == [], our_checkpoints(source)


def test_kill_while_a_sync_applies_its_delta(lab, libvirt_conn, sources, tmp_path, reliability):
    reliability(
        "kill",
        "ansible-playbook SIGKILLed while sync.yml applies a delta to the target",
        "the run dies; re-running sync.yml finishes the round",
        "target shut off, provenance state incomplete; source unchanged, no backup job or stray checkpoint; "
        "the re-run leaves disks equal by qemu-img compare",
    )
    name, src_disk = sources.make("inc", mib=32)  # a 128 MiB disk
    src = libvirt_conn.lookupByName(name)
    src.create()  # no OS: it runs and writes nothing by itself
    target = target_of(name)
    plan = write_plan(lab, tmp_path, [[name]], mode="warm", options=WARM)
    work = tmp_path / "work" / "w0" / target
    rc, _, text = run(plan, "migrate.yml", tmp_path, "migrate")
    assert rc == 0, text[-6000:]

    guest_write(src, 8 * MIB, 96 * MIB, 0x5A)  # a delta of 3 pieces of 32 MiB
    before = snapshot(src_disk, tmp_path)
    progress = tmp_path / "progress-sync1.jsonl"
    proc = start(plan, "sync.yml", progress, tmp_path / "sync1.log")

    def applying():
        return any(
            e["event"] == "progress" and e["label"].startswith("apply delta") and target in e["label"]
            for e in events(progress)
        )

    kill_when(proc, applying, "the delta being applied to the target")
    seen = [e for e in events(progress) if e["label"].startswith("apply delta") and target in e["label"]]
    assert seen[-1]["event"] == "progress" and seen[-1]["bytes"] < seen[-1]["total_bytes"], seen  # mid-apply

    dom = libvirt_conn.lookupByName(target)
    assert not dom.isActive()
    assert (read_provenance(dom) or {}).get("state") == "incomplete", read_provenance(dom)
    ok, out = same(before, "qcow2", src_disk, "qcow2")
    assert ok, "the source changed: " + out
    sync = work / "sync.json"
    assert not sync.exists() or json.loads(sync.read_text())["status"] != "synced"

    rc, _, text = run(plan, "sync.yml", tmp_path, "sync2")
    assert rc == 0, text[-6000:]
    assert json.loads(sync.read_text())["status"] == "synced"
    dst, fmt = disk_of(libvirt_conn, target)
    ok, out = same(src_disk, "qcow2", dst, fmt)
    assert ok, out
    assert (read_provenance(libvirt_conn.lookupByName(target)) or {}).get("state") == "complete"
    ok, out = same(before, "qcow2", src_disk, "qcow2")
    assert ok, "the source changed: " + out
    source_clean(libvirt_conn, name, work)


def test_kill_between_source_stop_and_target_start(lab, libvirt_conn, sources, tmp_path, reliability):
    reliability(
        "kill",
        "ansible-playbook SIGKILLed during cutover.yml after the source stopped, before the target started",
        "the run dies with both VMs off; re-running cutover.yml finishes the cutover",
        "source off and unchanged, target never started; the re-run leaves the target running, the source off, "
        "disks equal by qemu-img compare",
    )
    name, src_disk = sources.make("cut", mib=16)
    src = libvirt_conn.lookupByName(name)
    src.create()
    target = target_of(name)
    plan = write_plan(lab, tmp_path, [[name]], mode="warm", options=WARM)
    work = tmp_path / "work" / "w0" / target
    rc, _, text = run(plan, "migrate.yml", tmp_path, "migrate")
    assert rc == 0, text[-6000:]
    guest_write(src, 9 * MIB, 4096, 0x33)  # a change the cutover's final sync carries
    before = snapshot(src_disk, tmp_path)

    proc = start(plan, "cutover.yml", tmp_path / "progress-cut1.jsonl", tmp_path / "cut1.log")
    kill_when(proc, lambda: not src.isActive(), "the source shut off")
    assert not src.isActive()
    dom = libvirt_conn.lookupByName(target)
    assert not dom.isActive(), "the target was started"
    assert read_provenance(dom)["state"] in ("complete", "incomplete"), read_provenance(dom)
    cutover = work / "cutover.json"
    assert not cutover.exists() or json.loads(cutover.read_text())["status"] != "cut-over"
    ok, out = same(before, "qcow2", src_disk, "qcow2")
    assert ok, "the source changed: " + out

    rc, _, text = run(plan, "cutover.yml", tmp_path, "cut2")
    assert rc == 0, text[-6000:]
    assert not src.isActive()
    assert libvirt_conn.lookupByName(target).isActive()
    assert json.loads(cutover.read_text())["status"] == "cut-over"
    dst, fmt = disk_of(libvirt_conn, target)
    ok, out = same(src_disk, "qcow2", dst, fmt)
    assert ok, out
    ok, out = same(before, "qcow2", src_disk, "qcow2")
    assert ok, "the source changed: " + out
    source_clean(libvirt_conn, name, work)


# The moment libvirt has defined the domain and the import has not gone on yet is a few
# milliseconds long: the test holds it open. This sitecustomize (on the playbook's
# PYTHONPATH, so the module's Python loads it) wraps virConnect.defineXML: once libvirt
# defined the domain named in HOLD_NAME, it writes HOLD_MARK and sleeps, so the kill
# lands there every time. No code of the collection is changed for it.
HOLD_AFTER_DEFINE = """
import os
if os.environ.get("HOLD_MARK"):
    import time
    import libvirt
    _define = libvirt.virConnect.defineXML
    def defineXML(self, xml, *args):
        dom = _define(self, xml, *args)
        if "<name>%s</name>" % os.environ["HOLD_NAME"] in xml:
            with open(os.environ["HOLD_MARK"], "w") as fh:
                fh.write(dom.name())
            time.sleep(600)
        return dom
    libvirt.virConnect.defineXML = defineXML
"""


def test_kill_while_the_import_defines_the_domain(lab, libvirt_conn, sources, tmp_path, reliability):
    reliability(
        "kill",
        "ansible-playbook SIGKILLed while the import defines the target domain (volumes written)",
        "the run dies; re-running migrate.yml completes it",
        "target domain defined, shut off, provenance state incomplete; source unchanged (sha256); the re-run "
        "leaves one volume per disk (none orphaned) and disks equal by qemu-img compare",
    )
    name, src_disk = sources.make("def", mib=32)
    target = target_of(name)
    plan = write_plan(lab, tmp_path, [[name]], options=COLD)
    work = tmp_path / "work" / "w0" / target
    digest = hashlib.sha256(open(src_disk, "rb").read()).hexdigest()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD_AFTER_DEFINE)
    mark = tmp_path / "defined"
    env = {"PYTHONPATH": str(hook), "HOLD_MARK": str(mark), "HOLD_NAME": target}
    proc = start(plan, "migrate.yml", tmp_path / "progress-m1.jsonl", tmp_path / "m1.log", env=env)
    kill_when(proc, mark.exists, "the target domain defined")

    dom = libvirt_conn.lookupByName(target)  # libvirt defined it; the import did not go on
    assert not dom.isActive()
    assert (read_provenance(dom) or {}).get("state") == "incomplete", read_provenance(dom)
    status = work / "status.json"
    assert not status.exists() or json.loads(status.read_text())["status"] != "migrated"
    assert hashlib.sha256(open(src_disk, "rb").read()).hexdigest() == digest

    rc, _, text = run(plan, "migrate.yml", tmp_path, "m2")
    assert rc == 0, text[-6000:]
    dst, fmt = disk_of(libvirt_conn, target)
    ok, out = same(src_disk, "qcow2", dst, fmt)
    assert ok, out
    assert read_provenance(libvirt_conn.lookupByName(target))["state"] == "complete"
    status = json.loads(status.read_text())
    assert status["status"] == "migrated" and status["steps"]["verify"]["ok"], status
    pool = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"])
    pool.refresh(0)
    assert sorted(v.name() for v in pool.listAllVolumes(0) if target in v.name()) == [os.path.basename(dst)]
    assert hashlib.sha256(open(src_disk, "rb").read()).hexdigest() == digest


ADMIN = ["virt-admin", "-c", "libvirtd:///system"]


def libvirt_clients():
    """The processes connected to libvirtd (virt-admin client-list): {client id: pid}."""
    out = subprocess.run([*ADMIN, "client-list", "libvirtd"], capture_output=True, text=True, timeout=30).stdout
    clients = {}
    for line in out.splitlines()[2:]:
        if not line.split():
            continue
        cid = line.split()[0]
        info = subprocess.run([*ADMIN, "client-info", "libvirtd", cid], capture_output=True, text=True, timeout=30)
        pid = [x.split(":", 1)[1].strip() for x in info.stdout.splitlines() if x.startswith("unix_process_id")]
        clients[cid] = int(pid[0]) if pid else None
    return clients


def restart_libvirtd(uri):
    """Stop libvirtd (SIGTERM, as a service manager does) and start it again as `lab up`
    does; returns once it answers on ``uri``."""
    pids = subprocess.run(["pidof", "libvirtd"], capture_output=True, text=True).stdout.split()
    for pid in pids:
        os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while subprocess.run(["pidof", "libvirtd"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "libvirtd did not stop within 60 s"
        time.sleep(0.1)
    subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
    while subprocess.run(["virsh", "-c", uri, "uri"], capture_output=True, timeout=30).returncode != 0:
        assert time.monotonic() < deadline + 60, "libvirtd does not answer on %s after its restart" % uri
        time.sleep(0.2)


# client-disconnect: libvirtd drops only the import's connection, which is safe while other
# test sessions share the lab's libvirtd (a helper's run, an engineer's). restart: the real
# thing, safe in the sequential `make faults` (the session's own connection is reopened).
@pytest.mark.parametrize("how", ["client-disconnect", "restart"])
def test_libvirt_connection_dropped_mid_copy(lab, libvirt_conn, sources, tmp_path, reliability, how):
    """A libvirtd restart while the import copies: its connection is gone."""
    if how == "restart":
        reliability(
            "kill",
            "libvirtd restarted (SIGTERM, started again) while the import copies a disk",
            "the import fails: 'cannot import X into pool(s) P: ... the connection to <uri> was lost', names the "
            "volume left, no traceback",
            "no target domain; the re-run (after libvirtd is back) makes the volume left again (its journal) and "
            "completes with one volume per disk and disks equal by qemu-img compare; source unchanged (sha256)",
        )
    else:
        reliability(
            "kill",
            "libvirtd drops the import's connection mid-copy (virt-admin client-disconnect)",
            "the import fails: 'cannot import X into pool(s) P: ... the connection to <uri> was lost', names the "
            "volume left, no traceback",
            "no target domain; the volume left is made again by the re-run (its journal), which completes with "
            "one volume per disk and disks equal by qemu-img compare; source unchanged (sha256)",
        )
    name, src_disk = sources.make("lvd", mib=64, piece_mib=48)  # a 256 MiB disk, 192 MiB of data: the copy lasts
    target = target_of(name)
    plan = write_plan(lab, tmp_path, [[name]], options=COLD)
    work = tmp_path / "work" / "w0" / target
    digest = hashlib.sha256(open(src_disk, "rb").read()).hexdigest()

    def copier():
        """The import's qemu-img writing the target volume, or None."""
        for pid in descendants(proc.pid):
            try:
                with open("/proc/%d/cmdline" % pid, "rb") as fh:
                    argv = fh.read().decode(errors="replace").split("\0")
            except OSError:
                continue
            if "convert" in argv and any(a.endswith("%s-disk0.qcow2" % target) for a in argv):
                return pid
        return None

    proc = start(plan, "migrate.yml", tmp_path / "progress-r1.jsonl", tmp_path / "r1.log")
    deadline = time.monotonic() + 600
    while (copy := copier()) is None:
        assert proc.poll() is None, open(proc.log_path).read()[-6000:]
        assert time.monotonic() < deadline, "no import copy within 600 s"
        time.sleep(0.005)
    os.kill(copy, signal.SIGSTOP)  # held mid-copy while libvirtd drops the import's connection
    try:
        if how == "restart":
            restart_libvirtd(lab["libvirt_uri"])
            libvirt_conn.reopen()
        else:
            tree = {proc.pid, *descendants(proc.pid)}
            ours = [cid for cid, pid in libvirt_clients().items() if pid in tree]
            assert ours, "the import holds no libvirt connection (clients: %s)" % libvirt_clients()
            for cid in ours:
                cmd = [*ADMIN, "client-disconnect", "libvirtd", cid]
                subprocess.run(cmd, check=True, capture_output=True, timeout=30)
    finally:
        os.kill(copy, signal.SIGCONT)
    rc = proc.wait(timeout=600)
    proc.log.close()
    text = open(proc.log_path).read()
    assert rc != 0, text[-6000:]
    assert "Traceback" not in text, text[-6000:]
    said = [line for line in text.splitlines() if "cannot import %s into pool(s)" % target in line]
    assert said and "connection to %s was lost" % lab["libvirt_uri"] in said[0], text[-6000:]
    assert "makes the volume(s) left behind again: %s-disk0.qcow2" % target in said[0], said[0]
    assert target_domain(libvirt_conn, target) is None
    status = json.loads((work / "status.json").read_text())
    assert status["status"] == "failed", status
    assert hashlib.sha256(open(src_disk, "rb").read()).hexdigest() == digest

    rc, _, text = run(plan, "migrate.yml", tmp_path, "r2")
    assert rc == 0, text[-6000:]
    dst, fmt = disk_of(libvirt_conn, target)
    ok, out = same(src_disk, "qcow2", dst, fmt)
    assert ok, out
    pool = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"])
    pool.refresh(0)
    assert sorted(v.name() for v in pool.listAllVolumes(0) if target in v.name()) == [os.path.basename(dst)]
    assert hashlib.sha256(open(src_disk, "rb").read()).hexdigest() == digest
