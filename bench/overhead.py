"""Helpers of bench/e2e.py's rows e8 (Ansible overhead per VM) and e9 (a wave of migrations).

- import_breakdown: `python -X importtime` output -> seconds by who owns the code
  (Ansible's module_utils, this collection, the libraries it binds, the rest).
- task_overheads: the bench_results callback's stamps -> each task's wall time outside
  the module's own ``seconds``.
- RssSampler: samples the memory of the processes under the bench (its children) from
  /proc while a playbook runs; module_trees splits a sample into module process trees
  (an AnsiballZ process and its children: qemu-img, qemu-nbd, ...) and the rest (the
  ansible-playbook controller and its workers).

Pure functions are unit-tested (tests/unit/bench/test_e2e_overhead.py); nothing here
asserts a time.
"""

from __future__ import annotations

import os
import re
import threading

# import time:   self [us] | cumulative | imported package   (nesting: 2 spaces per level)
_IMPORT = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")

# Third-party libraries the collection binds (the rest of site-packages is counted as "other").
BOUND = {
    "libvirt": "libvirt",
    "libvirtmod": "libvirt",
    "libvirt_qemu": "libvirt",
    "libvirtmod_qemu": "libvirt",
    "nbd": "libnbd",
    "libnbdmod": "libnbd",
    "blake3": "blake3",
    "pyVmomi": "pyvmomi",
    "pyVim": "pyvmomi",
    "vmware": "pyvmomi",
}


def import_owner(name):
    """Who owns the imported module ``name``: collection, ansible, a bound library, or other."""
    if name.startswith("ansible_collections."):
        return "collection"
    top = name.split(".", 1)[0]
    if top == "ansible":
        return "ansible"
    return BOUND.get(top, "other")


def import_breakdown(text):
    """{owner: seconds} summed over the imports' own (self) times, plus "total": the sum of
    the top-level imports' cumulative times. A module's self time includes compiling its
    source, which AnsiballZ pays on every run (its zip holds no bytecode)."""
    out = {"total": 0.0}
    for line in text.splitlines():
        m = _IMPORT.match(line)
        if not m:
            continue
        self_us, cum_us, indent, name = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        owner = import_owner(name)
        out[owner] = out.get(owner, 0.0) + self_us / 1e6
        if not indent:
            out["total"] += cum_us / 1e6
    return out


def task_overheads(results, tasks):
    """[(task, wall s, module's own s, outside s)] for ``tasks`` (names) of one host's results.

    wall = from the runner starting the task to its result (the callback's stamps);
    outside = wall - the module's ``seconds``: the worker, AnsiballZ, the interpreter,
    imports, the connection to the hypervisor and argument checks."""
    rows = []
    for name in tasks:
        r = results[name]
        wall = r["_bench_task_end"] - r["_bench_task_start"]
        own = r.get("seconds") or 0.0
        rows.append((name, wall, own, wall - own))
    return rows


# " 25259 1796075843.36296: ANSIBALLZ: Creating module"  (ANSIBLE_DEBUG=1: pid, wall clock, message)
_DEBUG = re.compile(r"^\s*\d+ (\d+\.\d+): (.*)$")
_LOCK = re.compile(r"ANSIBALLZ: Lock acquired: .*/ansiballz_cache/(?:.*\.)?([^./]+)-ZIP_\w+-")
_EXEC = re.compile(r"_low_level_execute_command\(\): executing: /bin/sh -c '\S+ \S*/AnsiballZ_(\w+)\.py")
_CLEANUP = "_low_level_execute_command(): executing: /bin/sh -c 'rm -f -r "


def debug_timeline(text):
    """{module: {"build": s, "process": s}} from one host's ansible-playbook ANSIBLE_DEBUG output.

    build: AnsiballZ packing the module with the module_utils it imports ("Creating module"
    to "Done creating module"; once per module per playbook run, later tasks use the cache).
    process: from the shell starting the module's python to the controller removing the
    task's temporary directory (the module process, start to exit). With several tasks of
    one module, the sums."""
    out, building, running = {}, None, None
    for line in text.splitlines():
        m = _DEBUG.match(line)
        if not m:
            continue
        stamp, msg = float(m.group(1)), m.group(2)
        lock = _LOCK.search(msg)
        if lock:
            building = [lock.group(1), None]
        elif msg == "ANSIBALLZ: Creating module" and building:
            building[1] = stamp
        elif msg == "ANSIBALLZ: Done creating module" and building and building[1] is not None:
            entry = out.setdefault(building[0], {"build": 0.0, "process": 0.0})
            entry["build"] += stamp - building[1]
            building = None
        elif _EXEC.search(msg):
            running = (_EXEC.search(msg).group(1), stamp)
        elif msg.startswith(_CLEANUP) and running:
            entry = out.setdefault(running[0], {"build": 0.0, "process": 0.0})
            entry["process"] += stamp - running[1]
            running = None
    return out


# -- memory --


def module_trees(procs):
    """Split one sample of processes into module trees and the rest.

    ``procs``: {pid: (ppid, cmdline, kib)}. A module tree is the topmost process whose
    command line names an AnsiballZ_* file (with connection local, the ``/bin/sh -c``
    that starts the module's python) plus every process under it. Returns ({root pid:
    kib of its tree}, kib of every other process)."""
    roots = {pid for pid, (_, cmd, _) in procs.items() if "AnsiballZ_" in cmd}
    trees, rest = {}, 0
    for pid, (_, _, kib) in procs.items():
        root, seen, p = None, set(), pid
        while p in procs and p not in seen:  # walk up, keeping the topmost module process
            seen.add(p)
            if p in roots:
                root = p
            p = procs[p][0]
        if root is None:
            rest += kib
        else:
            trees[root] = trees.get(root, 0) + kib
    return trees, rest


def _read_procs(ancestor):
    """{pid: (ppid, cmdline, Pss KiB)} of every live process under ``ancestor``."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open("/proc/%d/stat" % pid, "rb") as fh:
                stat = fh.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            table[pid] = [ppid, cmd, None]
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    # keep the descendants of ``ancestor``
    keep, changed = {ancestor}, True
    while changed:
        changed = False
        for pid, (ppid, _, _) in table.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    procs = {}
    for pid in keep - {ancestor}:
        if pid not in table:
            continue
        kib = _pss_kib(pid)
        if kib is not None:
            procs[pid] = (table[pid][0], table[pid][1], kib)
    return procs


def _pss_kib(pid):
    """Proportional set size (shared pages split between their users), so sums add up."""
    try:
        with open("/proc/%d/smaps_rollup" % pid, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class RssSampler:
    """Samples, every ``interval`` s, the processes under this one; keeps the peaks.

    peak_modules: the most memory all module trees held at once (KiB);
    peak_tree: the most one module tree held (KiB);
    peak_rest: the most the other processes (ansible-playbook and its workers) held;
    peak_count: the most module trees alive at once."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak_modules = self.peak_tree = self.peak_rest = self.peak_count = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            self.add(_read_procs(me))
            self._stop.wait(self.interval)

    def add(self, procs):
        trees, rest = module_trees(procs)
        self.samples += 1
        self.peak_modules = max(self.peak_modules, sum(trees.values()))
        self.peak_tree = max([self.peak_tree] + list(trees.values()))
        self.peak_rest = max(self.peak_rest, rest)
        self.peak_count = max(self.peak_count, len(trees))

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self

    def figures(self):
        return {
            "peak_modules_kib": self.peak_modules,
            "peak_tree_kib": self.peak_tree,
            "peak_rest_kib": self.peak_rest,
            "peak_count": self.peak_count,
            "samples": self.samples,
        }
