"""bench/overhead.py: the parsers and the memory split behind rows e8 and e9 (no timing asserted)."""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import e2e  # noqa: E402
import overhead  # noqa: E402
import pytest  # noqa: E402

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:      1000 |       3000 | site
import time:      2000 |       2000 |   certifi
import time:       500 |        500 |     ansible.module_utils.six
import time:      4000 |      10000 | ansible.module_utils.basic
import time:      5000 |       5500 |   ansible_collections.vmigrate.v2v.plugins.module_utils._runner
import time:       300 |        300 |     libvirtmod
import time:       200 |        200 |     nbd
Traceback lines and other noise are ignored
import time:       100 |        100 | pyVmomi._typeinfo_vim
"""


def test_import_breakdown_by_owner():
    got = overhead.import_breakdown(IMPORTTIME)
    assert got["ansible"] == pytest.approx(4.5e-3)
    assert got["collection"] == pytest.approx(5e-3)
    assert got["libvirt"] == pytest.approx(3e-4)
    assert got["libnbd"] == pytest.approx(2e-4)
    assert got["pyvmomi"] == pytest.approx(1e-4)
    assert got["other"] == pytest.approx(3e-3)  # site and certifi (self times)
    # total: the top-level imports' cumulative times only (nested ones are inside them)
    assert abs(got["total"] - (3000 + 10000 + 100) / 1e6) < 1e-12


def test_import_owner():
    assert overhead.import_owner("ansible_collections.vmigrate.v2v.plugins.modules.kvm_export") == "collection"
    assert overhead.import_owner("ansible") == "ansible"
    assert overhead.import_owner("ansible_foo") == "other"
    assert overhead.import_owner("pyVim.connect") == "pyvmomi"
    assert overhead.import_owner("json") == "other"


def test_task_overheads():
    results = {
        "export": {"seconds": 1.0, "_bench_task_start": 100.0, "_bench_task_end": 101.5},
        "convert": {"seconds": None, "_bench_task_start": 101.5, "_bench_task_end": 101.75},
    }
    assert overhead.task_overheads(results, ["export", "convert"]) == [
        ("export", 1.5, 1.0, 0.5),
        ("convert", 0.25, 0.0, 0.25),
    ]


def test_module_trees_split_modules_from_the_controller():
    procs = {
        10: (1, "python ansible-playbook play.yml", 60000),  # controller
        11: (10, "python ansible-playbook play.yml", 20000),  # its worker
        12: (11, "/bin/sh -c python /tmp/x/AnsiballZ_kvm_export.py", 500),
        13: (12, "python /tmp/x/AnsiballZ_kvm_export.py", 40000),
        14: (13, "qemu-nbd --read-only src.qcow2", 9000),
        15: (14, "qemu-img convert", 7000),  # grandchild of the module
        21: (10, "python /tmp/y/AnsiballZ_convert.py", 30000),
    }
    trees, rest = overhead.module_trees(procs)
    # the shell that starts the module's python belongs to the module's tree
    assert trees == {12: 56500, 21: 30000}
    assert rest == 80000  # controller and worker


def test_module_trees_survive_a_parent_loop():
    # pid reuse can make /proc read at different instants look like a cycle: no hang
    trees, rest = overhead.module_trees({5: (6, "a", 1), 6: (5, "b", 2)})
    assert trees == {} and rest == 3


def test_rss_sampler_keeps_peaks():
    s = overhead.RssSampler()
    s.add({1: (0, "ansible-playbook", 100), 2: (1, "AnsiballZ_x.py", 300), 3: (1, "AnsiballZ_y.py", 200)})
    s.add({1: (0, "ansible-playbook", 150), 2: (1, "AnsiballZ_x.py", 400)})
    assert s.figures() == {
        "peak_modules_kib": 500,
        "peak_tree_kib": 400,
        "peak_rest_kib": 150,
        "peak_count": 2,
        "samples": 2,
    }


def test_rss_sampler_reads_this_process_children():
    # a real sample from /proc: a child process shows up with some memory
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        procs = overhead._read_procs(os.getpid())
        assert child.pid in procs
        ppid, cmd, kib = procs[child.pid]
        assert ppid == os.getpid() and "time.sleep" in cmd and kib > 0
    finally:
        child.kill()
        child.wait()


def test_wave_inventory(tmp_path):
    path = tmp_path / "inv.yml"
    e2e.wave_inventory(str(path), {"wave-0": {"src": "a", "dst": "b", "work": "/w/0"}})
    doc = json.loads(path.read_text())
    host = doc["all"]["children"]["wave"]["hosts"]["wave-0"]
    assert host["ansible_connection"] == "local"
    assert host["src"] == "a" and host["dst"] == "b" and host["work"] == "/w/0"


def test_knob_times_interleaves_the_variants_and_takes_medians():
    class FakeBench:
        last_cpu = 0.0

        def __init__(self):
            self.calls = []

        def run_kvm_migration(self, src, env=None):
            self.calls.append(dict(env))
            n = len(self.calls)
            self.last_cpu = float(n)
            return float(n), {t: {"seconds": 0.5} for t in e2e.STEPS}

    bench = FakeBench()
    got = e2e.knob_times(bench, object(), repeat=3)
    k = len(e2e.KNOBS)
    # one run of every variant, then the next round: not all runs of one variant in a row
    assert bench.calls[:k] == list(e2e.KNOBS.values()) and len(bench.calls) == 3 * k
    first = next(iter(e2e.KNOBS))
    assert got[first] == (1.0 + k, 2.0, 1.0 + k)  # runs 1, 1+k, 1+2k: median 1+k; own 4 x 0.5


DEBUG = """\
 100 1000.000: in run() - task 1
 101 1000.010: _low_level_execute_command(): executing: /bin/sh -c 'echo ~root && sleep 0'
 101 1000.020: ANSIBALLZ: Acquiring lock
 101 1000.021: ANSIBALLZ: Lock acquired: /root/.ansible/tmp/ansible-local-1x/ansiballz_cache/ansible_collections.vmigrate.v2v.plugins.modules.kvm_export-ZIP_DEFLATED-none.lock
 101 1000.022: ANSIBALLZ: Creating module
 101 1000.100: some other debug line
 101 1000.272: ANSIBALLZ: Done creating module
 101 1000.300: _low_level_execute_command(): executing: /bin/sh -c '/usr/bin/python3 /root/.ansible/tmp/ansible-tmp-1/AnsiballZ_kvm_export.py && sleep 0'
 101 1000.500: _low_level_execute_command(): executing: /bin/sh -c 'rm -f -r /root/.ansible/tmp/ansible-tmp-1/ > /dev/null 2>&1 && sleep 0'
 102 1001.000: ANSIBALLZ: using cached module: /root/.ansible/tmp/ansible-local-1x/ansiballz_cache/ansible_collections.vmigrate.v2v.plugins.modules.kvm_export-ZIP_DEFLATED-none
 102 1001.100: _low_level_execute_command(): executing: /bin/sh -c '/usr/bin/python3 /root/.ansible/tmp/ansible-tmp-2/AnsiballZ_kvm_export.py && sleep 0'
 102 1001.250: _low_level_execute_command(): executing: /bin/sh -c 'rm -f -r /root/.ansible/tmp/ansible-tmp-2/ > /dev/null 2>&1 && sleep 0'
 103 1002.000: ANSIBALLZ: Lock acquired: /x/ansiballz_cache/ansible.modules.ping-ZIP_STORED-none.lock
 103 1002.001: ANSIBALLZ: Creating module
 103 1002.101: ANSIBALLZ: Done creating module
"""  # noqa: E501 - debug lines as Ansible writes them


def test_debug_timeline_build_once_process_per_task():
    got = overhead.debug_timeline(DEBUG)
    assert set(got) == {"kvm_export", "ping"}
    assert got["kvm_export"]["build"] == pytest.approx(0.25)
    assert got["kvm_export"]["process"] == pytest.approx(0.2 + 0.15)  # two tasks, the second from the cache
    assert got["ping"] == {"build": pytest.approx(0.1), "process": 0.0}
