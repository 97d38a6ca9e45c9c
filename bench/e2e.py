"""(e) End to end on the lab: the rows of issue 10's table, each beside its floor in one run.

A KVM source domain (the lab's domain type, no OS, 1 vCPU) with one qcow2 disk of
--e2e-capacity-gib holding --e2e-data-mib of random data in 8 pieces, made with
qemu-img in the lab's source pool. The modules run through ansible-playbook (the
collection as a user runs it); their results are collected by
bench/callback_plugins/bench_results.py, so no extra task runs inside the timed playbook.

 1  cold KVM -> KVM (export, convert, import, verify without boot) as one playbook vs
    durable `qemu-img convert -t none` + `qemu-img compare`; the modules' own seconds
 2  source bytes read by that migration (strace of every process under the playbook)
 3  cold KVM -> vSphere (vcsim): bytes uploaded and read back vs allocated data
 4  warm full copy of the running domain (backup job, NBD pull) vs nbdcopy and
    qemu-img convert reading an NBD export of the same domain
 5  incremental after 2,560 scattered 4 KiB guest writes vs the dirty bitmap
 6  final sync at cutover: 3 MiB of guest writes, the domain shut off, the last export
 7  scaling of row 1 with data and capacity

Everything made is named bench-e-<tag>-... and removed at the end. Nothing is asserted.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET

import overhead
from common import GiB, MiB, fill_random, say, settle, timed

try:
    import libvirt
    import libvirt_qemu
except ImportError:  # only part (e) needs them: run() says so
    libvirt = libvirt_qemu = None

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTS = os.environ.get("VMIGRATE_LAB_FACTS") or os.path.join(ROOT, "tests", "lab", "state", "lab.json")
ANSIBLE_PLAYBOOK = os.path.join(ROOT, ".venv", "bin", "ansible-playbook")
PIECES = 8
WRITE = 4096  # one scattered guest write


def add_arguments(ap):
    ap.add_argument("--e2e-capacity-gib", type=int, default=4, help="(e) capacity of the source disk (default 4)")
    ap.add_argument("--e2e-data-mib", type=int, default=1024, help="(e) random data in it, 8 pieces (default 1024)")
    ap.add_argument("--e2e-writes", type=int, default=2560, help="(e5) scattered 4 KiB guest writes (default 2560)")
    ap.add_argument("--e2e-final-mib", type=int, default=3, help="(e6) MiB written before cutover (default 3)")
    ap.add_argument("--e2e-scale-data-mib", type=int, default=256, help="(e7) the second data size of the scaling grid")
    ap.add_argument(
        "--e2e-scale-capacity-gib", type=int, default=16, help="(e7) the second capacity of the scaling grid"
    )
    ap.add_argument(
        "--e2e-rows",
        default="",
        help="(e) rows to run, e.g. 8,9 (default all; any of 1-7 runs 1-7: they build on each other)",
    )
    ap.add_argument("--e2e-wave-vms", type=int, default=8, help="(e8, e9) VMs in the wave (default 8)")
    ap.add_argument("--e2e-wave-data-mib", type=int, default=64, help="(e8, e9) random data per VM (default 64)")
    ap.add_argument("--e2e-wave-capacity-gib", type=int, default=1, help="(e8, e9) capacity per VM (default 1)")
    ap.add_argument(
        "--e2e-wave-concurrency", default="1,2,4", help="(e9) concurrency levels, forks of one playbook (default 1,2,4)"
    )


def mib(n):
    return n / MiB


class Source:
    """A source domain and its disk: ``pieces`` [(offset, length)] hold the random data."""

    def __init__(self, name, path, capacity, pieces, allocated):
        self.name, self.path, self.capacity = name, path, capacity
        self.pieces, self.allocated = pieces, allocated

    @property
    def label(self):
        return "%d MiB in %d GiB" % (self.allocated // MiB, self.capacity // GiB)


class Bench:
    """The lab, the work directory and what this run made (removed by cleanup())."""

    def __init__(self, args, workdir):
        with open(FACTS, encoding="utf-8") as fh:
            self.lab = json.load(fh)
        self.args = args
        self.dir = os.path.join(workdir, "e")
        os.makedirs(self.dir)
        self.tag = "bench-e-" + uuid.uuid4().hex[:6]
        self.uri = self.lab["libvirt_uri"]
        libvirt.registerErrorHandler(lambda *_: None, None)  # lookups of what is gone are expected
        self.conn = libvirt.open(self.uri)
        self.domain_type = os.environ.get("VMIGRATE_KVM_DOMAIN_TYPE") or self.lab["domain_type"]
        self.src_dir = self.lab["pool_paths"][self.lab["pools"]["source"]]
        self.target_pool = self.lab["pools"]["target"]
        self.domains, self.files, self.vsphere_vms = [], [], []
        self.seq = 0
        self.last_cpu = 0.0  # CPU seconds of the last playbook's processes (play)
        self.last_output = ""  # its stdout and stderr

    # -- sources and clean-up --

    def make_source(self, data, capacity, suffix=""):
        """A defined, shut-off domain with a qcow2 disk of ``capacity`` holding ``data`` random bytes."""
        name = "%s-src-%dm-%dg%s" % (self.tag, data // MiB, capacity // GiB, suffix)
        path = os.path.join(self.src_dir, name + ".qcow2")
        step, piece = capacity // PIECES, data // PIECES
        lead = min(MiB, step - piece)  # sector 0 stays zero: SeaBIOS finds no boot sector and waits
        pieces = [(i * step + lead, piece) for i in range(PIECES)]
        raw = os.path.join(self.dir, name + ".raw")
        fill_random(raw, capacity, pieces)
        self.files.append(path)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path], check=True)
        os.unlink(raw)
        xml = (
            "<domain type='%s'><name>%s</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
            "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
            "<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            "<source file='%s'/><target dev='vda' bus='virtio'/></disk></devices></domain>"
        ) % (self.domain_type, name, path)
        self.domains.append(name)
        self.conn.defineXML(xml)
        return Source(name, path, capacity, pieces, allocated_bytes(path))

    def drop_domain(self, name, volumes=True):
        """Destroy and undefine ``name`` (checkpoints too); with ``volumes``, delete its disks."""
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        paths = [d.get("file") for d in ET.fromstring(dom.XMLDesc(0)).iterfind("devices/disk/source")]
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        for path in paths if volumes else []:
            remove_volume(self.conn, path)

    def drop_vsphere_vm(self, name):
        from pyVim.task import WaitForTask
        from pyVmomi import vim

        with self.vsphere() as si:
            content = si.RetrieveContent()
            view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
            vms = [vm for vm in view.view if vm.name == name]
            view.Destroy()
            for vm in vms:
                if vm.runtime.powerState == "poweredOn":
                    WaitForTask(vm.PowerOffVM_Task())
                WaitForTask(vm.Destroy_Task())
        # vcsim keeps uploaded files it does not know as the VM's: remove the VM's folder.
        shutil.rmtree(os.path.join(self.lab["vcsim"]["datastore_dir"], name), ignore_errors=True)

    @contextlib.contextmanager
    def vsphere(self):
        import ssl

        from pyVim.connect import Disconnect, SmartConnect

        vc = self.lab["vcsim"]
        si = SmartConnect(
            host=vc["hostname"],
            port=vc["port"],
            user=vc["username"],
            pwd=vc["password"],
            sslContext=ssl.create_default_context(cafile=vc["ca_path"]),
        )
        try:
            yield si
        finally:
            Disconnect(si)

    def cleanup(self):
        """Remove everything this run made; what cannot be removed is said, not raised."""
        actions = [(self.drop_vsphere_vm, n) for n in self.vsphere_vms]
        actions += [(lambda n: self.drop_domain(n, volumes=False), n) for n in self.domains]
        actions += [(lambda p: remove_volume(self.conn, p), p) for p in self.files]
        for action, what in actions:
            try:
                action(what)
            except Exception as exc:  # keep cleaning the rest
                say("     clean-up: could not remove %s: %s (remove it by hand)" % (what, exc))
        self.conn.close()

    # -- playbooks --

    def play(self, tasks, strace_to=None, hosts="localhost", inventory=None, env=None, sample_rss=False):
        """Run ``tasks`` as one playbook; return (whole process seconds, {task name: result}).

        ``inventory`` (a path) and ``hosts`` run it on other hosts (results keyed
        ``host/task`` then), ``env`` adds variables (e.g. ANSIBLE_FORKS), ``sample_rss``
        samples the memory of the processes under ansible-playbook (result key
        ``_bench_rss``, see rss_sampler).
        """
        self.seq += 1
        path = os.path.join(self.dir, "play-%d.yml" % self.seq)
        out = os.path.join(self.dir, "results-%d.json" % self.seq)
        doc = [{"hosts": hosts, "connection": "local", "gather_facts": False, "tasks": tasks}]
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)  # JSON is YAML
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
            ANSIBLE_CALLBACK_PLUGINS=os.path.join(ROOT, "bench", "callback_plugins"),
            ANSIBLE_CALLBACKS_ENABLED="vmigrate.v2v.migration_summary,bench_results",
            ANSIBLE_NOCOLOR="1",
            VMIGRATE_BENCH_RESULTS=out,
            # The disks hold random data, no guest: the data path is measured, as in the
            # tiny-guest tests (an inspection would find no OS and add ~20 s per convert).
            VMIGRATE_GUEST_CONVERSION="skip",
            **(env or {}),
        )
        cmd = [ANSIBLE_PLAYBOOK, path] + (["-i", inventory] if inventory else [])
        if strace_to:
            cmd = strace_cmd(strace_to) + cmd
        self.play_started = time.time()  # wall clock, to compare with the callback's stamps
        cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        with rss_sampler(enabled=sample_rss) as rss:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        # CPU seconds of every process under the playbook (they are all waited for): on a
        # shared machine, less swayed by others' load than the wall time.
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu = (done.ru_utime + done.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
        self.last_output = proc.stdout + proc.stderr
        results = {}
        if os.path.exists(out):
            with open(out, encoding="utf-8") as fh:
                results = json.load(fh)
            os.unlink(out)
        os.unlink(path)
        if sample_rss:
            results["_bench_rss"] = rss
        if proc.returncode != 0:
            raise RuntimeError("playbook failed (rc %d):\n%s" % (proc.returncode, (proc.stdout + proc.stderr)[-4000:]))
        return seconds, results

    def kvm_task(self, task, module, **args):
        return {"name": task, "vmigrate.v2v." + module: dict(args, uri=self.uri)}

    def vsphere_task(self, task, module, **args):
        vc = self.lab["vcsim"]
        conn = {k: vc[k] for k in ("hostname", "port", "username", "password", "ca_path", "datacenter")}
        return {"name": task, "vmigrate.v2v." + module: dict(args, validate_certs=True, **conn)}

    def export_task(self, src, bundle, mode):
        return self.kvm_task("export", "kvm_export", vm=src.name, bundle=bundle, mode=mode)

    def kvm_migration(self, src, work, dst):
        """Cold KVM -> KVM: the four steps of playbooks/kvm_to_kvm.yml, without the boot check."""
        return [
            self.export_task(src, work + "/export", "cold"),
            {
                "name": "convert",
                "vmigrate.v2v.convert": {"src": work + "/export", "dest": work + "/kvm", "target_platform": "kvm"},
            },
            self.kvm_task(
                "import",
                "kvm_import",
                bundle=work + "/kvm",
                name=dst,
                pool=self.target_pool,
                domain_type=self.domain_type,
                cpu_mode="default",
            ),
            self.kvm_task("verify", "kvm_verify", bundle=work + "/kvm", vm=dst, boot_check=False),
        ]

    def run_kvm_migration(self, src, strace_to=None, **play_args):
        """One cold KVM -> KVM migration of ``src``; its target and bundles are removed afterwards."""
        work = os.path.join(self.dir, "kvm")
        dst = "%s-dst" % self.tag
        if dst not in self.domains:
            self.domains.append(dst)
        settle()
        try:
            return self.play(self.kvm_migration(src, work, dst), strace_to=strace_to, **play_args)
        finally:
            self.drop_domain(dst)
            shutil.rmtree(work, ignore_errors=True)

    def floor_convert_compare(self, src):
        """Durable qemu-img convert of the source disk + qemu-img compare, whole processes."""
        out = os.path.join(self.dir, "floor.qcow2")
        settle()
        convert = ["qemu-img", "convert", "-t", "none", "-f", "qcow2", "-O", "qcow2", src.path, out]
        compare = ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src.path, out]
        seconds = timed(lambda: (sh(convert), sh(compare)))
        os.unlink(out)
        return seconds


# -- helpers --


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, **kw)


def allocated_bytes(path):
    """Guest bytes the image holds data for (qemu-img map): what a copy must read."""
    out = subprocess.run(
        ["qemu-img", "map", "-U", "--output=json", path], check=True, capture_output=True, text=True
    ).stdout
    return sum(e["length"] for e in json.loads(out) if e.get("data"))


def remove_volume(conn, path):
    """Delete a disk file, through libvirt when it is a volume of a pool (so the pool forgets it)."""
    if not path:
        return
    try:
        conn.storageVolLookupByPath(path).delete(0)
    except libvirt.libvirtError:
        pass
    if os.path.exists(path):
        os.unlink(path)


@contextlib.contextmanager
def rss_sampler(enabled):
    """Samples the memory of this process's children while the block runs (bench/overhead.py)."""
    if not enabled:
        yield None
        return
    figures = {}
    sampler = overhead.RssSampler().start()
    try:
        yield figures
    finally:
        figures.update(sampler.stop().figures())


def strace_cmd(out):
    # -f: child processes and threads; -Y: each line names the program; -y: file
    # descriptors with their paths; -s 0: no data.
    return [
        "strace", "-f", "-qq", "-Y", "-y", "-s", "0", "--seccomp-bpf",
        "-e", "trace=read,pread64,readv,preadv,preadv2",
        "-o", out,
    ]  # fmt: skip


# 123<qemu-img> pread64(9</path>, ""..., 65536, 0) = 65536
# 123<qemu-img> pread64(9</path>,  <unfinished ...>   and later   123<qemu-img> <... pread64 resumed>...) = 65536
_CALL = re.compile(r"^(\d+)<([^>]*)> \w+\(\d+<([^>]*)>,(.*)$")
_RESUMED = re.compile(r"^(\d+)<[^>]*> <\.\.\. \w+ resumed>.*\) = (\d+)$")
_RESULT = re.compile(r"\) = (\d+)$")


def bytes_read_from(trace, path):
    """{program: bytes it read from ``path``}, summed over the traced read calls."""
    totals, pending = {}, {}
    with open(trace, errors="replace") as fh:
        for line in fh:
            line = line.rstrip("\n")
            m = _CALL.match(line)
            if m:
                pid, prog, fd_path, rest = m.groups()
                done = _RESULT.search(rest)
                if done and fd_path == path:
                    totals[prog] = totals.get(prog, 0) + int(done.group(1))
                elif rest.endswith("<unfinished ...>"):
                    pending[pid] = (prog, fd_path)
                continue
            m = _RESUMED.match(line)
            if m and m.group(1) in pending:
                prog, fd_path = pending.pop(m.group(1))
                if fd_path == path:
                    totals[prog] = totals.get(prog, 0) + int(m.group(2))
    return totals


def median(xs):
    return statistics.median(xs)


def step_seconds(runs):
    """{step: median seconds} over the runs' results."""
    return {s: median([r[s]["seconds"] for r in runs]) for s in runs[0]}


# -- the running domain --


def start(bench, src):
    dom = bench.conn.lookupByName(src.name)
    dom.create()
    return dom


def monitor(dom, command, hmp=False):
    flags = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP if hmp else 0
    return libvirt_qemu.qemuMonitorCommand(dom, command, flags)


def qom_backend(dom):
    """QOM path of the disk's virtio backend (where qemu-io writes as the guest does)."""
    alias = ET.fromstring(dom.XMLDesc(0)).find("devices/disk/alias").get("name")
    return "/machine/peripheral/%s/virtio-backend" % alias


def guest_writes(dom, src, offsets, pattern):
    """4 KiB writes through the guest's block backend, so dirty bitmaps see them.

    libvirt (like virsh) reports success even when qemu-io fails, and QEMU 7.2 prints
    qemu-io's report in the domain's log, not the reply: so a reply is an error unless it
    is the report, and the data is read back from the image afterwards.
    """
    backend = qom_backend(dom)
    for off in offsets:
        reply = monitor(dom, 'qemu-io -d %s "write -P 0x%x %d %d"' % (backend, pattern, off, WRITE), hmp=True)
        if reply.strip() and "wrote %d/%d bytes" % (WRITE, WRITE) not in reply:
            raise RuntimeError("guest write at %d on %s failed: %s" % (off, dom.name(), reply.strip()))
    # Read back (shared, read-only: QEMU holds the image): every block holds the pattern.
    cmd = ["qemu-io", "-U", "-r", "-f", "qcow2", src.path]
    for off in offsets:
        cmd += ["-c", "read -P 0x%x %d %d" % (pattern, off, WRITE)]
    out = sh(cmd).stdout.decode()
    bad = out.count("Pattern verification failed")
    if bad or out.count("read %d/%d bytes" % (WRITE, WRITE)) != len(offsets):
        raise RuntimeError("%d of %d guest writes on %s did not land in %s" % (bad, len(offsets), dom.name(), src.path))


def scattered(src, count, seed):
    """``count`` distinct 4 KiB-aligned offsets inside the data pieces (repeatable)."""
    slots = [(off + i * WRITE) for off, length in src.pieces for i in range(length // WRITE)]
    return sorted(random.Random(seed).sample(slots, count))


def dirty_bytes(dom, bitmap):
    """(dirty bytes, granularity) of the named dirty bitmap, from QEMU."""
    nodes = json.loads(monitor(dom, '{"execute": "query-named-block-nodes"}'))["return"]
    for node in nodes:
        for bm in node.get("dirty-bitmaps") or []:
            if bm.get("name") == bitmap:
                return bm["count"], bm["granularity"]
    raise RuntimeError("no dirty bitmap %s on domain %s" % (bitmap, dom.name()))


@contextlib.contextmanager
def backup_export(dom, target="vda"):
    """An NBD export of the running domain's disk: our own pull-mode backup job (virsh)."""
    sockdir = tempfile.mkdtemp(prefix="bench-e-backup-")
    # QEMU creates the socket, as its own user (see platforms/kvm BackupJob).
    with open("/run/libvirt/qemu/%s.pid" % dom.name()) as fh:
        st = os.stat("/proc/%d" % int(fh.read().strip()))
    os.chown(sockdir, st.st_uid, st.st_gid)
    sock = os.path.join(sockdir, "nbd.sock")
    xml = os.path.join(sockdir, "backup.xml")
    with open(xml, "w") as fh:
        fh.write(
            "<domainbackup mode='pull'><server transport='unix' socket='%s'/><disks>"
            "<disk name='%s' backup='yes' type='file'><scratch file='%s/%s.scratch'/></disk>"
            "</disks></domainbackup>" % (sock, target, sockdir, target)
        )
    virsh = ["virsh", "-q", "-c", dom.connect().getURI()]
    subprocess.run(virsh + ["backup-begin", dom.name(), xml], check=True, capture_output=True)
    try:
        yield "nbd+unix:///%s?socket=%s" % (target, sock)
    finally:
        subprocess.run(virsh + ["domjobabort", dom.name()], check=False, capture_output=True)
        shutil.rmtree(sockdir, ignore_errors=True)


# -- the rows --


def row_cold_kvm(bench, src, repeat, quiet=False):
    """(1) cold KVM -> KVM migration vs durable qemu-img convert + compare, medians."""
    plays, floors, runs = [], [], []
    for _ in range(repeat):
        seconds, results = bench.run_kvm_migration(src)
        plays.append(seconds)
        runs.append(results)
        floors.append(bench.floor_convert_compare(src))
    row = {"play": median(plays), "floor": median(floors), "steps": step_seconds(runs), "runs": runs}
    if quiet:
        return row
    say(
        "(e1) cold KVM -> KVM, one playbook: export, convert, import, verify (no boot); %s; median of %d"
        % (src.label, repeat)
    )
    say(
        "     vmigrate %.1f s | floor: qemu-img convert -t none + qemu-img compare %.1f s | %.2fx (goal <= 1.15x)"
        % (row["play"], row["floor"], row["play"] / row["floor"])
    )
    steps = row["steps"]
    own = sum(steps.values())
    say(
        "     modules' own seconds: %s = %.1f s; the rest, Ansible and module start-up: %.1f s (goal <= 3 s)"
        % (" + ".join("%s %.1f" % (s, t) for s, t in steps.items()), own, row["play"] - own)
    )
    return row


def row_source_reads(bench, src):
    """(2) bytes of the source file read by one cold migration, counted by strace."""
    if not shutil.which("strace"):
        say("(e2) source bytes read: not measured, strace is not installed (apt-get install strace)")
        return
    trace = os.path.join(bench.dir, "strace.txt")
    _, results = bench.run_kvm_migration(src, strace_to=trace)
    by_program = bytes_read_from(trace, src.path)
    os.unlink(trace)
    traced = sum(by_program.values())
    say("(e2) source bytes read by one cold KVM -> KVM migration; allocated data %.0f MiB" % mib(src.allocated))
    say(
        "     strace, read calls on the source file by every process under ansible-playbook: "
        "%.0f MiB = %.2fx allocated (goal 1x)" % (mib(traced), traced / src.allocated)
    )
    say("     by program: %s" % ", ".join("%s %.0f MiB" % (p, mib(n)) for p, n in sorted(by_program.items())))
    say(
        "     the steps' own bytes_read (what each reports, from the source or elsewhere): %s"
        % ", ".join("%s %.0f MiB" % (s, mib(r["bytes_read"])) for s, r in results.items())
    )


def row_vsphere(bench, src, kvm_play):
    """(3) cold KVM -> vSphere (vcsim): bytes uploaded and read back vs allocated, time vs row 1.

    Returns the run (vm, results, and vcsim's own byte counts) for row 3b, which reads it."""
    work = os.path.join(bench.dir, "vsphere")
    vm = "%s-vs" % bench.tag
    bench.vsphere_vms.append(vm)
    tasks = [
        bench.export_task(src, work + "/export", "cold"),
        {
            "name": "convert",
            "vmigrate.v2v.convert": {"src": work + "/export", "dest": work + "/vsphere", "target_platform": "vsphere"},
        },
        bench.vsphere_task(
            "import", "vsphere_import", bundle=work + "/vsphere", name=vm, datastore=bench.lab["vcsim"]["datastore"]
        ),
        bench.vsphere_task("verify", "vsphere_verify", bundle=work + "/vsphere", vm=vm, boot_check=False),
    ]
    settle()
    try:
        seconds, results = bench.play(tasks)
        counts = vcsim_counts(bench)
    finally:
        bench.drop_vsphere_vm(vm)
        shutil.rmtree(work, ignore_errors=True)
    up, back = results["import"]["bytes_written"], results["verify"]["bytes_read"]
    say("(e3) cold KVM -> vSphere (vcsim), one playbook: export, convert, import, verify (no boot); once")
    say(
        "     uploaded %.0f MiB = %.2fx allocated, read back %.0f MiB = %.2fx (goal <= 1.1x each; capacity %.0f MiB)"
        % (mib(up), up / src.allocated, mib(back), back / src.allocated, mib(src.capacity))
    )
    say(
        "     %.1f s whole process = %.2fx cold KVM -> KVM; modules' own seconds: %s"
        % (seconds, seconds / kvm_play, ", ".join("%s %.1f" % (s, r["seconds"]) for s, r in results.items()))
    )
    return {"vm": vm, "results": results, "counts": counts}


def vcsim_counts(bench):
    """What the lab vcsim itself counted (tests/lab/vcsim/nfc.go), or None when it does not."""
    import ssl
    import urllib.request

    vc = bench.lab["vcsim"]
    url = "https://%s:%d/lab/nfc-stats" % (vc["hostname"], vc["port"])
    try:
        with urllib.request.urlopen(url, context=ssl.create_default_context(cafile=vc["ca_path"]), timeout=30) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def row_vsphere_data(src, run):
    """(3b) KVM -> vSphere costs data, not capacity: bytes sent by the import and read back
    by verify vs the allocated data, as the module counts them and as vcsim saw them (from
    row 3's migration, ``run``)."""
    vm, results, counts = run["vm"], run["results"], run["counts"]
    imp, ver = results["import"], results["verify"]
    sent, back = imp.get("bytes_sent", imp["bytes_written"]), ver["bytes_read"]
    say("(e3b) KVM -> vSphere (vcsim): what the transfer costs, vs %.0f MiB allocated" % mib(src.allocated))
    say(
        "     import sent %.0f MiB = %.2fx allocated (%s); verify read back %.0f MiB = %.2fx (%s); goal <= 1.1x each"
        % (
            mib(sent),
            sent / src.allocated,
            "/".join(sorted({t.get("format", "?") for t in imp.get("transfer", [])})),
            mib(back),
            back / src.allocated,
            "; ".join(sorted({d.get("allocation", "whole capacity") for d in ver.get("disks", [])})),
        )
    )
    if counts is not None:
        disk = "%s/%s" % (vm, vm)
        got = sum(u["bytes_received"] for u in counts["uploads"] if u["file"].endswith("] " + disk + ".vmdk"))
        served = sum(n for f, n in counts["folder_reads"].items() if f.endswith("] " + disk + "-flat.vmdk"))
        say("     as vcsim counted them: received %.0f MiB, served %.0f MiB" % (mib(got), mib(served)))
    say(
        "     before (flat PUT of the whole extent, verify reading every byte): %.0f MiB each way = %.2fx"
        % (mib(src.capacity), src.capacity / src.allocated)
    )
    return {"sent": sent, "read_back": back, "vcsim": counts is not None}


def row_warm_full(bench, src, dom, bundle):
    """(4) warm full copy through the backup job vs nbdcopy / qemu-img reading an NBD export."""
    floors = {}
    with backup_export(dom) as uri:
        raw, qcow = os.path.join(bench.dir, "nbd.raw"), os.path.join(bench.dir, "nbd.qcow2")
        settle()
        floors["nbdcopy --flush (raw file)"] = timed(lambda: sh(["nbdcopy", "--flush", uri, raw]))
        settle()
        convert = ["qemu-img", "convert", "-t", "none", "-f", "raw", "-O", "qcow2", uri, qcow]
        floors["qemu-img convert -t none -O qcow2"] = timed(lambda: sh(convert))
        for p in (raw, qcow):
            os.unlink(p)
    settle()
    seconds, results = bench.play([bench.export_task(src, bundle, "warm")])
    exp = results["export"]
    say("(e4) warm full copy of the running domain (libvirt backup job, NBD pull); %s" % src.label)
    say(
        "     kvm_export (%s) %.1f s, %.0f MiB read at %.0f MiB/s (playbook %.1f s)"
        % (exp["kind"], exp["seconds"], mib(exp["bytes_read"]), mib(exp["bytes_read"]) / exp["seconds"], seconds)
    )
    for label, t in floors.items():
        say(
            "     floor, same domain, own backup job: %-36s %.1f s: kvm_export at %.2fx its rate (goal >= 0.8x)"
            % (label, t, t / exp["seconds"])
        )
    return exp


def row_incremental(bench, src, dom, bundle, full):
    """(5) incremental after scattered guest writes vs the dirty bitmap's count."""
    n = bench.args.e2e_writes
    guest_writes(dom, src, scattered(src, n, seed=4), 0x5A)
    dirty, gran = dirty_bytes(dom, full["checkpoint"]["id"])
    settle()
    seconds, results = bench.play([bench.export_task(src, bundle, "incremental")])
    inc = results["export"]
    moved = max(inc["bytes_read"], inc["bytes_written"])
    say(
        "(e5) incremental after %.1f MiB changed in %d scattered 4 KiB guest writes (%.1f%% of the data)"
        % (mib(n * WRITE), n, 100.0 * n * WRITE / src.allocated)
    )
    say("     dirty bitmap since the full copy: %.1f MiB at %d KiB granularity" % (mib(dirty), gran // 1024))
    say(
        "     kvm_export (%s): read %.1f MiB, wrote %.1f MiB = %.2fx the dirty bytes (goal <= 1.1x)"
        % (inc["kind"], mib(inc["bytes_read"]), mib(inc["bytes_written"]), moved / dirty)
    )
    say(
        "     %.1f s = %.2fx the warm full copy's %.1f s (goal <= 0.05x; playbook %.1f s)"
        % (inc["seconds"], inc["seconds"] / full["seconds"], full["seconds"], seconds)
    )
    return inc


class WarmVsphere:
    """(5b) the warm bundle of rows 4-5 imported into vSphere: first the full copy, then
    the incremental; what the second import sends vs what changed."""

    def __init__(self, bench, bundle):
        self.bench, self.bundle = bench, bundle
        self.vm = "%s-vs-warm" % bench.tag
        self.out = bundle + "-vsphere"
        bench.vsphere_vms.append(self.vm)

    def tasks(self):
        b = self.bench
        return [
            {
                "name": "convert",
                "vmigrate.v2v.convert": {"src": self.bundle, "dest": self.out, "target_platform": "vsphere"},
            },
            b.vsphere_task(
                "import", "vsphere_import", bundle=self.out, name=self.vm, datastore=b.lab["vcsim"]["datastore"]
            ),
            b.vsphere_task("verify", "vsphere_verify", bundle=self.out, vm=self.vm, boot_check=False),
        ]

    def first(self):
        settle()
        self.first_seconds, self.first_results = self.bench.play(self.tasks())

    def incremental(self, src, inc):
        settle()
        seconds, results = self.bench.play(self.tasks())
        imp, first = results["import"], self.first_results["import"]
        moved = max(inc["bytes_read"], inc["bytes_written"])
        say("(e5b) the same warm VM into vSphere (vcsim): the full copy imported, then e5's incremental")
        say(
            "     first import (%s): sent %.0f MiB = %.2fx allocated, %.1f s; playbook (convert, import, verify) %.1f s"
            % (
                first["action"],
                mib(first["bytes_sent"]),
                first["bytes_sent"] / src.allocated,
                first["seconds"],
                self.first_seconds,
            )
        )
        say(
            "     incremental: convert wrote %.1f MiB into the bundle's vmdk; import (%s) sent %.0f MiB = %.1fx the"
            " %.1f MiB the export moved (%.2fx the capacity), %.1f s; verify %s"
            % (
                mib(results["convert"]["bytes_written"]),
                imp["action"],
                mib(imp["bytes_sent"]),
                imp["bytes_sent"] / moved,
                mib(moved),
                imp["bytes_sent"] / src.capacity,
                imp["seconds"],
                "equal" if all(d["equal"] for d in results["verify"]["disks"]) else "DIFFERS",
            )
        )
        say(
            "     (no vSphere API writes part of a disk: each changed disk goes again as a streamOptimized"
            " upload of its data into a new file, swapped in; only VDDK's NBD transport writes ranges)"
        )


def row_final_sync(bench, src, dom, bundle, last, kvm_play):
    """(6) guest writes, shut off, the final export: bytes read vs changed, time vs row 1."""
    n = bench.args.e2e_final_mib * MiB // WRITE
    guest_writes(dom, src, scattered(src, n, seed=6), 0xA5)
    dirty, _ = dirty_bytes(dom, last["checkpoint"]["id"])
    # Pulled out like a plug: the writes went to clusters already allocated, so the file
    # holds them without any metadata QEMU would have flushed at a clean shutdown.
    dom.destroy()
    settle()
    seconds, results = bench.play([bench.export_task(src, bundle, "incremental")])
    fin = results["export"]
    say(
        "(e6) final sync at cutover: %.0f MiB in %d scattered 4 KiB guest writes, then the domain shut off (destroyed)"
        % (mib(n * WRITE), n)
    )
    say("     (the dirty bitmap counted %.1f MiB, at its granularity, before the shut-off)" % mib(dirty))
    say(
        "     kvm_export (%s, source off): read %.1f MiB = %.1fx the changed bytes, wrote %.1f MiB"
        % (fin["kind"], mib(fin["bytes_read"]), fin["bytes_read"] / (n * WRITE), mib(fin["bytes_written"]))
    )
    say(
        "     module %.1f s = %.2fx, playbook %.1f s = %.2fx the cold KVM -> KVM migration's %.1f s (goal <= 0.1x)"
        % (fin["seconds"], fin["seconds"] / kvm_play, seconds, seconds / kvm_play, kvm_play)
    )


def row_scaling(bench, main_src, main_row, repeat):
    """(7) row 1 at two data sizes and two capacities, as ratios."""
    a = bench.args
    datas = sorted({a.e2e_scale_data_mib * MiB, main_src.allocated})
    caps = sorted({a.e2e_scale_capacity_gib * GiB, main_src.capacity})
    grid = {}
    for data in datas:
        for cap in caps:
            if (data, cap) == (main_src.allocated, main_src.capacity):
                grid[data, cap] = main_row
                continue
            src = bench.make_source(data, cap)
            grid[data, cap] = row_cold_kvm(bench, src, repeat, quiet=True)
            bench.drop_domain(src.name)
    say("(e7) cost of row 1 with data and capacity: whole process s (floor s), median of %d" % repeat)
    say("     %-10s" % "data" + "".join("%24s" % ("%d GiB capacity" % (c // GiB)) for c in caps))
    for data in datas:
        cells = ["%.1f (%.1f)" % (grid[data, c]["play"], grid[data, c]["floor"]) for c in caps]
        say("     %-10s" % ("%d MiB" % (data // MiB)) + "".join("%24s" % x for x in cells))
    if len(datas) == 2:
        for c in caps:
            lo, hi = grid[datas[0], c], grid[datas[1], c]
            say(
                "     %dx the data at %d GiB: vmigrate %.2fx, floor %.2fx"
                % (datas[1] // datas[0], c // GiB, hi["play"] / lo["play"], hi["floor"] / lo["floor"])
            )
    if len(caps) == 2:
        for d in datas:
            lo, hi = grid[d, caps[0]], grid[d, caps[1]]
            say(
                "     %dx the capacity with %d MiB: vmigrate %.2fx, floor %.2fx (goal: ~1x, cost follows data)"
                % (caps[1] // caps[0], d // MiB, hi["play"] / lo["play"], hi["floor"] / lo["floor"])
            )


STEPS = ("export", "convert", "import", "verify")


def module_import_times(bench, src, repeat):
    """{module: (process s, import breakdown)}: one module process as AnsiballZ starts it.

    A migration runs once with ANSIBLE_KEEP_REMOTE_FILES; each kept AnsiballZ file is
    exploded (its own `explode` debug command) and its module imported in a fresh
    interpreter without bytecode caching, as from AnsiballZ's zip (which holds sources
    only, so they are compiled on every run): `python -c 'import <loader>, <module>'`,
    whole process (median), and once more under -X importtime for the shares."""
    keep = os.path.join(bench.dir, "keep")
    bench.run_kvm_migration(src, env={"ANSIBLE_KEEP_REMOTE_FILES": "1", "ANSIBLE_REMOTE_TMP": keep})
    python = os.path.join(os.path.dirname(ANSIBLE_PLAYBOOK), "python3")
    out = {}
    for dirpath, _, files in os.walk(keep):
        for f in files:
            m = re.match(r"AnsiballZ_(\w+)\.py$", f)
            if not m:
                continue
            sh([python, os.path.join(dirpath, f), "explode"])
            lib = os.path.join(dirpath, "debug_dir")
            fqn = "ansible_collections.vmigrate.v2v.plugins.modules." + m.group(1)
            code = "from ansible.module_utils._internal._ansiballz import _loader; import " + fqn
            env = dict(os.environ, PYTHONPATH=lib, PYTHONDONTWRITEBYTECODE="1")
            argv = [python, "-c", code]
            wall = median([timed(lambda a=argv, d=lib, e=env: sh(a, cwd=d, env=e)) for _ in range(repeat)])
            err = subprocess.run([python, "-X", "importtime", "-c", code], cwd=lib, env=env, check=True,
                                 capture_output=True, text=True).stderr  # fmt: skip
            out[m.group(1)] = (wall, overhead.import_breakdown(err))
    shutil.rmtree(keep, ignore_errors=True)
    return out


def connect_times(bench, repeat):
    """(libvirt open + close, vSphere login + logout on vcsim), medians, in this process."""
    lv = median([timed(lambda: libvirt.open(bench.uri).close()) for _ in range(repeat)])

    def login():
        with bench.vsphere():
            pass

    try:
        vs = median([timed(login) for _ in range(repeat)])
    except Exception:  # noqa: BLE001 - vcsim down: say so, the row goes on
        vs = None
    return lv, vs


def row_overhead(bench, repeat):
    """(8) Ansible overhead per VM of a cold KVM -> KVM migration, broken down."""
    a = bench.args
    src = bench.make_source(a.e2e_wave_data_mib * MiB, a.e2e_wave_capacity_gib * GiB, "-ovh")
    empty = []
    for _ in range(repeat):
        settle()
        empty.append(bench.play([])[0])
    plays, owns, cpus, before, after, tasks = [], [], [], [], [], {t: [] for t in STEPS}
    for _ in range(repeat):
        seconds, results = bench.run_kvm_migration(src)
        started = bench.play_started
        plays.append(seconds)
        cpus.append(bench.last_cpu)
        owns.append(sum(results[t]["seconds"] for t in STEPS))
        before.append(min(r["_bench_task_start"] for r in results.values()) - started)
        after.append(started + seconds - max(r["_bench_task_end"] for r in results.values()))
        for row in overhead.task_overheads(results, STEPS):
            tasks[row[0]].append(row[1:])
    knobs = knob_times(bench, src, repeat)
    # One more run, and a playbook of ansible.builtin.ping (Ansible's own share), with
    # ANSIBLE_DEBUG's timestamps: the AnsiballZ build and the module process of each task.
    bench.run_kvm_migration(src, env={"ANSIBLE_DEBUG": "1"})
    timeline = overhead.debug_timeline(bench.last_output)
    bench.play([{"name": "ping", "ansible.builtin.ping": {}}], env={"ANSIBLE_DEBUG": "1"})
    timeline.update(overhead.debug_timeline(bench.last_output))
    imports = module_import_times(bench, src, repeat)
    python = os.path.join(os.path.dirname(ANSIBLE_PLAYBOOK), "python3")
    interp = median([timed(lambda: sh([python, "-c", "pass"])) for _ in range(5)])
    lv, vs = connect_times(bench, 5)
    bench.drop_domain(src.name)
    play, own = median(plays), median(owns)
    say(
        "(e8) Ansible overhead per VM: cold KVM -> KVM (export, convert, import, verify; no boot), %s; median of %d"
        % (src.label, repeat)
    )
    say(
        "     whole playbook %.2f s, modules' own seconds %.2f s: overhead %.2f s per VM (goal <= 3 s);"
        " CPU seconds of all its processes %.2f s" % (play, own, play - own, median(cpus))
    )
    say(
        "     empty playbook (same ansible.cfg and callbacks, no task): %.2f s; in the migration, %.2f s before"
        " the first task starts and %.2f s after the last ends" % (median(empty), median(before), median(after))
    )
    say("     per task: wall (runner start to result) = module's own seconds + outside them")
    for t in STEPS:
        wall, mod, out = (median([x[i] for x in tasks[t]]) for i in range(3))
        say("       %-8s %.2f s = %.2f + %.2f s" % (t, wall, mod, out))
    say(
        "     with ANSIBLE_DEBUG=1 (one run; its logging slows the controller): AnsiballZ build (first use of a"
        " module in a run) / module process (start to exit)"
    )
    for name in ("kvm_export", "convert", "kvm_import", "kvm_verify", "ping"):
        t = timeline.get(name)
        if t:
            note = " (ansible.builtin.ping: Ansible's own share)" if name == "ping" else ""
            say("       %-14s build %.3f s, process %.3f s%s" % (name, t["build"], t["process"], note))
    say(
        "     one module process as AnsiballZ runs it (sources compiled each time): interpreter alone %.3f s;"
        " start + imports, whole process:" % interp
    )
    for name in sorted(imports):
        wall, shares = imports[name]
        parts = ", ".join(
            "%s %.3f" % (k, shares[k])
            for k in ("ansible", "collection", "libvirt", "libnbd", "blake3", "pyvmomi", "other")
            if shares.get(k)
        )
        say("       %-14s %.3f s (imports %.3f s by owner: %s)" % (name, wall, shares["total"], parts))
    say(
        "     connection set-up, per task (each module is its own process): libvirt open+close %.3f s;"
        " vSphere login+logout (vcsim) %s" % (lv, "%.3f s" % vs if vs is not None else "not measured (vcsim down)")
    )
    say(
        "     settings a user can make (ansible.cfg or environment), the same migration: whole playbook - own"
        " seconds = overhead; CPU seconds of all its processes"
    )
    for label, (p, o, c) in knobs.items():
        say("       %-40s %.2f - %.2f = %.2f s; CPU %.2f s" % (label, p, o, p - o, c))
    return {"play": play, "own": own, "empty": median(empty), "imports": imports}


# Settings that change Ansible's work per task on a local conversion host (bench/README.md, e8).
KNOBS = {
    "as in the repository's ansible.cfg": {},
    "module_compression = ZIP_DEFLATED": {"ANSIBLE_MODULE_COMPRESSION": "ZIP_DEFLATED"},
    "module_compression = ZIP_STORED": {"ANSIBLE_MODULE_COMPRESSION": "ZIP_STORED"},
    "pipelining = true": {"ANSIBLE_PIPELINING": "1"},
    "both (ZIP_STORED, pipelining)": {"ANSIBLE_MODULE_COMPRESSION": "ZIP_STORED", "ANSIBLE_PIPELINING": "1"},
}


def knob_times(bench, src, repeat):
    """{label: (median whole playbook s, median own s, median CPU s)}; the variants
    interleaved, so a change in the machine's load falls on all of them alike."""
    runs = {k: [] for k in KNOBS}
    for _ in range(repeat):
        for label, env in KNOBS.items():
            seconds, results = bench.run_kvm_migration(src, env=env)
            runs[label].append((seconds, sum(results[t]["seconds"] for t in STEPS), bench.last_cpu))
    return {k: tuple(median([r[i] for r in v]) for i in range(3)) for k, v in runs.items()}


def wave_inventory(path, hosts):
    """An inventory of local hosts, each with its own vars (``hosts``: {name: vars})."""
    common = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    doc = {"all": {"children": {"wave": {"hosts": {h: dict(common, **v) for h, v in hosts.items()}}}}}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)  # JSON is YAML


def row_wave(bench):
    """(9) a wave: N cold KVM -> KVM migrations as N hosts of one playbook, at concurrency 1, 2, 4."""
    a = bench.args
    levels = [int(x) for x in a.e2e_wave_concurrency.split(",") if x.strip()]
    srcs = [
        bench.make_source(a.e2e_wave_data_mib * MiB, a.e2e_wave_capacity_gib * GiB, "-w%d" % i)
        for i in range(a.e2e_wave_vms)
    ]
    hosts = {}
    for i, src in enumerate(srcs):
        dst = "%s-wdst%d" % (bench.tag, i)
        bench.domains.append(dst)
        hosts["wave-%d" % i] = {"src": src.name, "dst": dst, "work": os.path.join(bench.dir, "wave-%d" % i)}
    inv = os.path.join(bench.dir, "wave-inventory.yml")
    wave_inventory(inv, hosts)
    tasks = bench.kvm_migration(Source("{{ src }}", None, 0, [], 0), "{{ work }}", "{{ dst }}")
    say(
        "(e9) wave: %d cold KVM -> KVM migrations (export, convert, import, verify; no boot) of %s each,"
        " one playbook, %d hosts (connection local), forks = concurrency; once" % (len(srcs), srcs[0].label, len(srcs))
    )
    say(
        "     memory: proportional set size (PSS) of the module processes and their children (qemu-img,"
        " qemu-nbd), sampled every 50 ms"
    )
    say("     %-11s %8s %8s %13s %13s %22s %13s %14s" % (
        "concurrency", "total s", "per VM s", "own s per VM", "CPU s per VM", "peak, all modules MiB", "per copy MiB",
        "controller MiB",
    ))  # fmt: skip
    for c in levels:
        settle()
        try:
            seconds, results = bench.play(
                tasks, hosts="wave", inventory=inv, env={"ANSIBLE_FORKS": str(c)}, sample_rss=True
            )
        finally:
            for h in hosts.values():
                bench.drop_domain(h["dst"])
                shutil.rmtree(h["work"], ignore_errors=True)
        mem = results.pop("_bench_rss")
        own = sum(r.get("seconds") or 0 for r in results.values()) / len(srcs)
        per_copy = max(mem["peak_modules_kib"] / max(1, min(c, mem["peak_count"])), mem["peak_tree_kib"])
        say(
            "     %-11d %8.1f %8.2f %13.2f %13.2f %22.0f %13.0f %14.0f"
            % (
                c,
                seconds,
                seconds / len(srcs),
                own,
                bench.last_cpu / len(srcs),
                mem["peak_modules_kib"] / 1024,
                per_copy / 1024,
                mem["peak_rest_kib"] / 1024,
            )
        )
    say("     (goal <= 256 MiB per concurrent disk copy; per copy = the larger of the peak over the concurrency"
        " and the largest single module tree)")  # fmt: skip
    for src in srcs:
        bench.drop_domain(src.name)


def run(args, workdir):
    if libvirt is None:
        raise SystemExit("part (e) needs libvirt-python (libvirt, libvirt_qemu); run it from the project's .venv")
    if not os.path.exists(FACTS):
        raise SystemExit("part (e) needs the lab: %s is missing (tests/lab/lab up)" % FACTS)
    bench = Bench(args, workdir)
    say("(e) end to end on the lab (%s, domain type %s), names %s-*" % (bench.uri, bench.domain_type, bench.tag))
    rows = {int(x) for x in args.e2e_rows.split(",") if x.strip()} or set(range(1, 10))
    try:
        if rows & set(range(1, 8)):
            src = bench.make_source(args.e2e_data_mib * MiB, args.e2e_capacity_gib * GiB)
            cold = row_cold_kvm(bench, src, args.repeat)
            row_source_reads(bench, src)
            row_vsphere_data(src, row_vsphere(bench, src, cold["play"]))
            bundle = os.path.join(bench.dir, "warm")
            dom = start(bench, src)
            full = row_warm_full(bench, src, dom, bundle)
            warm_vs = WarmVsphere(bench, bundle)
            warm_vs.first()
            inc = row_incremental(bench, src, dom, bundle, full)
            warm_vs.incremental(src, inc)
            row_final_sync(bench, src, dom, bundle, inc, cold["play"])
            bench.drop_domain(src.name)
            row_scaling(bench, src, cold, args.repeat)
        if 8 in rows:
            row_overhead(bench, args.repeat)
        if 9 in rows:
            row_wave(bench)
    finally:
        bench.cleanup()
