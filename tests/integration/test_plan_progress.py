"""Live progress from a conversion host that is not the controller's implicit localhost.

The plan's conversion host is `conv-test`, an inventory host of its own (connection
local - this machine runs no SSH server - with its own interpreter path, remote tmp
and async directory, so every step really goes through that host's connection and
settings). VMIGRATE_PROGRESS_FILE of the controller points nowhere: a progress line can
only come from the step's wait loop reading <work dir>/progress.jsonl on conv-test.

One KVM -> vSphere VM with 512 MiB of random data (a 2 GiB disk), so its copies last
several poll intervals: the output shows progress lines of the VM while a step ran
(percent increasing within one task), the summary table comes at the end, the target
VM exists in vcsim and verified, and no job or progress file is left on the host.
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest
from plan_lab import PLAYBOOKS, SourceDomains, target_of, vsphere_endpoint  # tests/integration/plan_lab.py
from pyVim.task import WaitForTask
from test_vsphere_import import find_vm

PW_ENV = "VMIGRATE_PLAN_PROGRESS_PASSWORD"
LINE = re.compile(r"^  \[progress\] (\S+): (.+?): ([0-9.]+)% (.+) of (.+) at (.+)/s, ETA (\d+ s|\?)$")


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-prog")
    yield domains
    domains.cleanup()


@pytest.fixture
def vc_targets(vsphere_si):
    names = []
    yield names
    for name in names:
        vm = find_vm(vsphere_si, name)
        if vm is not None:
            WaitForTask(vm.Destroy_Task())


def write_files(lab, tmp_path, vm):
    vc = lab["vcsim"]
    source_dir = lab["pool_paths"][lab["pools"]["source"]]
    plan = tmp_path / "progress.v2v.yml"
    plan.write_text(
        "\n".join(
            [
                "plugin: vmigrate.v2v.plan",
                "version: 1",
                "defaults: {work_dir: '%s', conversion_host: conv-test, mode: full}" % (tmp_path / "work"),
                "endpoints:",
                "  lab-kvm: {platform: kvm, uri: '%s'}" % lab["libvirt_uri"],
                *vsphere_endpoint(vc, PW_ENV),
                "storage_map: {'%s': %s}" % (source_dir, vc["datastore"]),
                "waves:",
                "  - name: w0",
                "    source: lab-kvm",
                "    target: lab-vc",
                "    vms: [{name: %s, target_name: %s}]" % (vm, target_of(vm)),
                "",
            ]
        )
    )
    conv = tmp_path / "conv.yml"
    conv.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "conv-test": {
                            "ansible_connection": "local",
                            # The venv interpreter by another path than the controller's
                            "ansible_python_interpreter": os.path.join(sys.prefix, "bin", "python3"),
                            "ansible_remote_tmp": str(tmp_path / "conv-tmp"),
                            "ansible_async_dir": str(tmp_path / "conv-async"),
                        }
                    }
                }
            }
        )
    )
    return str(plan), str(conv)


def test_progress_shows_while_steps_run_on_the_conversion_host(
    lab, sources, vsphere_si, vc_targets, run_playbook, tmp_path
):
    vm, _ = sources.make("big", mib=512)
    vc_targets.append(target_of(vm))
    plan, conv = write_files(lab, tmp_path, vm)
    env = {
        "ANSIBLE_INVENTORY": "%s,%s" % (plan, conv),
        PW_ENV: lab["vcsim"]["password"],
        "VMIGRATE_PROGRESS_FILE": str(tmp_path / "no-such-dir" / "progress.jsonl"),
    }
    env.update({k: "" for k in os.environ if k.startswith("VMWARE_")})
    run = run_playbook(
        os.path.join(PLAYBOOKS, "migrate.yml"), extra_vars={"migrate_progress_interval": 0.5}, env=env, timeout=1800
    )
    out = run.stdout
    assert run.returncode == 0, out[-6000:] + run.stderr[-3000:]
    host = target_of(vm)

    # Progress lines, per task block: the step's lines are printed while its task runs.
    blocks, task = {}, None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line
        m = LINE.match(line)
        if m:
            assert m.group(1) == host, line
            blocks.setdefault(task, []).append((m.group(2), float(m.group(3)), m.group(7)))
    assert blocks, out[-6000:]
    steps = [t for t in blocks if re.search(r"(Export|Convert|Import|Verify)", t)]
    assert steps == list(blocks), blocks.keys()
    # At least one step showed its copy moving: the same label, percent increasing.
    moving = [
        (t, label)
        for t, lines in blocks.items()
        for label in {x[0] for x in lines}
        if len([p for lab_, p, _eta in lines if lab_ == label]) >= 2
        and [p for lab_, p, _eta in lines if lab_ == label] == sorted({p for lab_, p, _eta in lines if lab_ == label})
    ]
    assert moving, blocks
    assert any(eta.endswith(" s") for lines in blocks.values() for *_x, eta in lines), blocks

    # The summary table comes at the end, one row per step, named by its module.
    summary = out[out.index("VMIGRATE SUMMARY") :]
    assert out.rindex("[progress]") < out.index("VMIGRATE SUMMARY")
    for module in ("kvm_export", "convert", "vsphere_import", "vsphere_verify"):
        assert re.search(r"^%s\s+%s\s+changed=" % (re.escape(host), module), summary, re.M), summary

    # The world: the target is there and verified; conv-test's own settings were used
    # (its async directory), and the step left no job or progress file behind.
    assert find_vm(vsphere_si, host) is not None
    status = json.loads((tmp_path / "work" / "w0" / host / "status.json").read_text())
    assert status["status"] == "migrated" and status["steps"]["verify"]["ok"], status
    assert (tmp_path / "conv-async").is_dir() and os.listdir(tmp_path / "conv-async") == []
    assert not (tmp_path / "work" / "w0" / host / "progress.jsonl").exists()
