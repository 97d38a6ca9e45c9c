"""No secret anywhere, Hyper-V (issue 14, security): test_no_secrets.py's check (a -vvv plan
migration, the Ansible log on, then its report) with Hyper-V as the target (KVM -> Hyper-V)
and as the source (Hyper-V -> KVM), on this module's own Hyper-V simulator. Its password,
the password's base64 and the base64 of user:password (what HTTP Basic would send; NTLM
sends neither) must appear in none of: the playbooks' output, the Ansible log, any file
under the plans' work directories and report directories, and the argument lists of the
processes that ran meanwhile. A run with a wrong password (Basic over HTTPS, so the
password is on the wire) fails, and its -vvv output and log hold neither password.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest
from plan_lab import PLAYBOOKS, SourceDomains, target_of
from test_hyperv_migrate import (
    SWITCH,
    make_hyperv_source,
    remove_hyperv_vm,
    share_files,
    vms,
)
from test_kvm_migrate import undefine, volumes
from test_no_secrets import ArgvSampler

PASSWORD_ENV = "LAB_HV_PASSWORD"


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-fhs")
    yield domains
    domains.cleanup()


def secrets_of(username, password):
    return {
        "password": password.encode(),
        "base64(password)": base64.b64encode(password.encode()),
        "base64(user:password)": base64.b64encode(("%s:%s" % (username, password)).encode()),
    }


def hv_endpoint(conn):
    """The plan's lines of endpoint lab-hv: the password from the environment, never in the plan."""
    lines = ["  lab-hv:", "    platform: hyperv", "    password: \"{{ lookup('env', '%s') }}\"" % PASSWORD_ENV]
    keys = ("hostname", "port", "username", "ca_path", "share", "share_windows")
    lines += ["    %s: %s" % (k, json.dumps(conn[k])) for k in keys]
    return lines


def write_plan(lab, hv, path, work, source, target, vm, target_name, storage_map, network_map=None):
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', options: {guest_conversion: skip}}" % work,
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s'}" % lab["libvirt_uri"],
        *hv_endpoint(hv["conn"]),
        "storage_map: {%s}" % ", ".join("'%s': '%s'" % kv for kv in storage_map.items()),
    ]
    if network_map:
        lines.append("network_map: {%s}" % ", ".join("'%s': '%s'" % kv for kv in network_map.items()))
    lines += [
        "waves:",
        "  - {name: w0, source: %s, target: %s, vms: [{name: %s, target_name: %s}]}"
        % (source, target, vm, target_name),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def leaks_in(places, secrets):
    return [(where, what) for where, data in places for what, secret in secrets.items() if secret in data]


def test_no_hyperv_secret_in_output_logs_files_or_argv(
    lab, hv, libvirt_conn, sources, run_playbook, reliability, tmp_path
):
    reliability("hyperv", "secrets: the Hyper-V password in a -vvv plan migration (Hyper-V target and source)",
                "neither the password nor base64 of it or of user:password in output, ansible log, work/bundle/"
                "report/progress files, sampled process argv", "migrations complete")  # fmt: skip
    conn = hv["conn"]
    password = conn["password"]
    secrets = secrets_of(conn["username"], password)
    log = tmp_path / "ansible.log"
    env = {PASSWORD_ENV: password, "ANSIBLE_VERBOSITY": "3", "ANSIBLE_LOG_PATH": str(log)}
    pool = lab["pools"]["target"]
    # KVM -> Hyper-V
    name, _disk = sources.make("to", mib=4)
    to_hv = target_of(name)
    plan_to = write_plan(lab, hv, tmp_path / "to" / "to-hv.v2v.yml", tmp_path / "work-to", "lab-kvm", "lab-hv",
                         name, to_hv, {lab["pool_paths"][lab["pools"]["source"]]: "share"})  # fmt: skip
    # Hyper-V -> KVM
    hv_src = "lab-fhs-from-" + sources.tag
    vhdx = make_hyperv_source(lab, hv, hv_src)
    to_kvm = "lab-fhs-t-%s-from" % sources.tag
    plan_from = write_plan(lab, hv, tmp_path / "from" / "from-hv.v2v.yml", tmp_path / "work-from", "lab-hv",
                           "lab-kvm", hv_src, to_kvm, {conn["share_windows"]: pool},
                           {SWITCH: lab["network"]})  # fmt: skip
    try:
        outputs = []
        with ArgvSampler() as argv:
            for plan in (plan_to, plan_from):
                for playbook in ("migrate.yml", "report.yml"):
                    proc = run_playbook(os.path.join(PLAYBOOKS, playbook), env=dict(env, ANSIBLE_INVENTORY=str(plan)),
                                        timeout=1200)  # fmt: skip
                    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
                    outputs.append(("%s %s output" % (plan.name, playbook), (proc.stdout + proc.stderr).encode()))
        # The migrations really ran, with the password: the target disks equal the sources.
        target_vhdx = os.path.join(hv["share"], "%s-disk0.vhdx" % to_hv)
        assert len(vms(hv, to_hv)) == 1
        cmp = subprocess.run(["qemu-img", "compare", "-F", "qcow2", target_vhdx, _disk], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        dom = libvirt_conn.lookupByName(to_kvm)
        path = ET.fromstring(dom.XMLDesc(0)).find("./devices/disk/source").get("file")
        cmp = subprocess.run(["qemu-img", "compare", "-F", "vhdx", path, vhdx], capture_output=True)
        assert cmp.returncode == 0, cmp.stdout
        logged = log.read_bytes()
        assert b"hyperv_import" in logged and b"hyperv_export" in logged  # -vvv logged the modules' runs
        places = outputs + [("ansible log", logged)]
        tops = [tmp_path / "work-to", tmp_path / "work-from", tmp_path / "to", tmp_path / "from"]
        files = [p for top in tops for p in top.rglob("*") if p.is_file()]
        assert sum(p.name == "report.html" for p in files) == 2, [str(p) for p in files]
        assert sum(p.name == "status.json" for p in files) == 2 and any(p.name == "manifest.json" for p in files)
        for path in files:
            places.append((str(path), path.read_bytes()))
        places += [("argv of a process", b" ".join(cmdline.split(b"\0"))) for cmdline in argv.seen]
        assert len(argv.seen) > 10  # the sampler saw the run's processes
        assert not leaks_in(places, secrets), leaks_in(places, secrets)
    finally:
        remove_hyperv_vm(hv, to_hv)
        remove_hyperv_vm(hv, hv_src)
        for f in share_files(hv):
            if sources.tag in f:
                os.unlink(os.path.join(hv["share"], f))
        try:
            dom = libvirt_conn.lookupByName(to_kvm)
            made = [s.get("file") for s in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk/source")]
        except Exception:  # noqa: BLE001 - not made
            made = []
        undefine(libvirt_conn, to_kvm)
        for v in volumes(libvirt_conn, pool, to_kvm):
            libvirt_conn.storagePoolLookupByName(pool).storageVolLookupByName(v).delete(0)
        for path in made:
            if path and to_kvm in path and os.path.exists(path):
                os.unlink(path)


def test_wrong_hyperv_password_not_in_error_output(lab, hv, run_playbook, reliability, tmp_path):
    reliability("hyperv", "secrets: a wrong Hyper-V password (Basic over HTTPS, and NTLM), -vvv",
                "fails: 'WinRM at <endpoint> refused the credentials of <user>' and the fix; neither the wrong "
                "nor the right password (nor base64 forms) in output or ansible log", "nothing made")  # fmt: skip
    conn = hv["conn"]
    wrong = "Wr0ng-" + os.urandom(8).hex()
    secrets = dict(
        {"wrong " + k: v for k, v in secrets_of(conn["username"], wrong).items()},
        **{"right " + k: v for k, v in secrets_of(conn["username"], conn["password"]).items()},
    )
    log = tmp_path / "ansible.log"
    args = "".join("        %s: %s\n" % (k, json.dumps(conn[k])) for k in ("hostname", "port", "username", "ca_path"))
    playbook = tmp_path / "wrong.yml"
    tasks = ""
    for transport in ("basic", "ntlm"):
        tasks += (
            "    - vmigrate.v2v.hyperv_vm_info:\n%s        password: \"{{ lookup('env', '%s') }}\"\n"
            "        transport: %s\n      register: r_%s\n      ignore_errors: true\n"
        ) % (args, PASSWORD_ENV, transport, transport)
    tasks += "    - ansible.builtin.assert: {that: [r_basic is failed, r_ntlm is failed]}\n"
    playbook.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n" + tasks)
    before = [vm["name"] for vm in vms(hv)]
    env = {PASSWORD_ENV: wrong, "ANSIBLE_VERBOSITY": "3", "ANSIBLE_LOG_PATH": str(log)}
    proc = run_playbook(str(playbook), env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]  # both failed, as the assert task checks
    assert out.count("refused the credentials of %s" % conn["username"]) >= 2, out[-5000:]
    assert "Traceback" not in out
    places = [("output", out.encode()), ("ansible log", log.read_bytes())]
    assert not leaks_in(places, secrets), leaks_in(places, secrets)
    assert [vm["name"] for vm in vms(hv)] == before
