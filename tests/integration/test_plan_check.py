"""migrate.yml --check on a whole plan (issue 11): KVM -> KVM and KVM -> vSphere.

A checked export writes nothing, so it returns what it would write (`planned`), the
checked convert reads that and returns what it would write, and the checked import says
what it would make. Asserted on the world: no bundle file, no target domain in libvirt,
no target VM in vcsim; the playbook's output names per VM the disks (size, format) and
the target it would create. Then a target name taken by a VM from elsewhere: the check
run reports the collision the real run would refuse, and still changes nothing.
"""

from __future__ import annotations

import os
import re

import pytest
from plan_lab import MIB, SourceDomains, target_of, vsphere_endpoint  # tests/integration/plan_lab.py
from pyVmomi import vim

PW_ENV = "VMIGRATE_PLAN_CHECK_PASSWORD"


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-chk")
    yield domains
    domains.cleanup()


def plan(lab, tmp_path, to_kvm, to_vc):
    vc = lab["vcsim"]
    source_dir = lab["pool_paths"][lab["pools"]["source"]]
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', mode: full}" % (tmp_path / "work"),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], lab["pools"]["target"]),
        *vsphere_endpoint(vc, PW_ENV),
        "storage_map: {'%s': %s}" % (source_dir, lab["pools"]["target"]),
        "waves:",
        "  - name: to-vc",
        "    source: lab-kvm",
        "    target: lab-vc",
        "    max_failed: 1",
        "    storage_map: {'%s': %s}" % (source_dir, vc["datastore"]),
        "    vms: [{name: %s, target_name: %s}]" % (to_vc, target_of(to_vc)),
        "  - name: to-kvm",
        "    source: lab-kvm",
        "    target: lab-kvm",
        "    max_failed: 1",
        "    vms: [{name: %s, target_name: %s}]" % (to_kvm, target_of(to_kvm)),
    ]
    path = tmp_path / "check.v2v.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def vcsim_vm_names(si):
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {vm.name for vm in view.view}
    finally:
        view.Destroy()


def checked(lab, run_playbook, path):
    env = {PW_ENV: lab["vcsim"]["password"], "ANSIBLE_INVENTORY": path}
    env.update({k: "" for k in os.environ if k.startswith("VMWARE_")})
    from plan_lab import PLAYBOOKS

    return run_playbook(os.path.join(PLAYBOOKS, "migrate.yml"), check=True, env=env, timeout=1200)


def files_under(path):
    return [os.path.join(d, f) for d, _dirs, files in os.walk(path) for f in files]


def test_check_mode_says_what_every_step_would_do_and_makes_nothing(
    lab, libvirt_conn, vsphere_si, sources, run_playbook, tmp_path, reliability
):
    reliability(
        "plan",
        "a target name taken by a VM not made from this source (migrate.yml --check)",
        "that host fails: \"VM '<target>' already exists on the target and was not made from kvm VM <vm>\"; "
        "the other VM still says what it would create",
        "nothing made: no file under the work dir, no target domain or vCenter VM",
    )
    to_kvm, _ = sources.make("kk", mib=4)  # 16 MiB disks
    to_vc, _ = sources.make("kv", mib=4)
    path = plan(lab, tmp_path, to_kvm, to_vc)

    run = checked(lab, run_playbook, path)
    out = run.stdout
    assert run.returncode == 0, out[-6000:] + run.stderr[-2000:]
    # Nothing made: no bundle (no file at all under the work dir), no target anywhere.
    assert files_under(tmp_path / "work") == []
    assert not [d.name() for d in libvirt_conn.listAllDomains(0) if d.name().startswith("lab-chk-t-" + sources.tag)]
    # (vcsim is shared: other tests' VMs come and go; none of ours may appear)
    assert not [n for n in vcsim_vm_names(vsphere_si) if sources.tag in n]
    # Per VM, what convert and import would do, from what the export would have written.
    kvm_line = next(line for line in out.splitlines() if "%s: would export" % to_kvm in line)
    assert "import (create %s on kvm: 1 disk(s) disk0 %s qcow2" % (target_of(to_kvm), "16.0 MiB") in kvm_line
    # The KVM source is referenced in place as qcow2: a qcow2 target needs no conversion.
    assert "convert (reference disk0 (%d bytes, qcow2 -> qcow2)" % (16 * MIB) in kvm_line, kvm_line
    vc_line = next(line for line in out.splitlines() if "%s: would export" % to_vc in line)
    assert "convert (convert disk0 (%d bytes, qcow2 -> vmdk monolithicFlat)" % (16 * MIB) in vc_line, vc_line
    assert "import (create %s on vsphere: 1 disk(s) disk0 16.0 MiB monolithicFlat" % target_of(to_vc) in vc_line
    assert run.changed > 0  # check mode reports the changes it would make
    summary = out[out.index("VMIGRATE SUMMARY") :]  # the closing table says it too
    assert "would create %s on vsphere" % target_of(to_vc) in summary, summary
    # The checked export names the disks with capacity and the source's allocated bytes.
    assert re.search(r"cold full sync of %s" % re.escape(to_kvm), out), out[-4000:]

    # A target name taken by a VM that did not come from this source: refused, as a real
    # run would, and reported (the KVM wave is the last: a wave whose every VM fails ends
    # the play); the other VM still says what it would do.
    taken, _ = sources.make(target_of(to_kvm), disk=False)
    run = checked(lab, run_playbook, path)
    out = run.stdout
    assert run.recap[target_of(to_kvm)]["failed"] == 1, out[-6000:]
    assert "VM %r already exists on the target and was not made from kvm VM %s" % (taken, to_kvm) in out, out[-6000:]
    assert "create %s on vsphere" % target_of(to_vc) in out
    assert files_under(tmp_path / "work") == []
    assert not [n for n in vcsim_vm_names(vsphere_si) if sources.tag in n]
    assert [d.name() for d in libvirt_conn.listAllDomains(0) if d.name().startswith("lab-chk-t-" + sources.tag)] == [
        taken
    ]
