"""Certificate checks turned off: the module result carries one warning that names the
risk and the fix, never the password, and Ansible shows it once per run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import connection as _vsphere

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PASSWORD = "pw-Zq81-not-for-eyes"


def test_vsphere_warning_only_when_checks_are_off():
    assert _vsphere.tls_warning({"hostname": "vc1", "validate_certs": True}) is None
    # A pinned thumbprint is the check (doc fragment vmigrate.v2v.vsphere).
    assert _vsphere.tls_warning({"hostname": "vc1", "validate_certs": False, "thumbprint": "ab" * 32}) is None
    text = _vsphere.tls_warning({"hostname": "vc1", "validate_certs": False, "password": PASSWORD})
    assert "vc1" in text and "validate_certs=false" in text and "Fix: set validate_certs=true" in text
    assert "ca_path" in text and PASSWORD not in text


def test_hyperv_warning_only_when_checks_are_off():
    assert _hyperv.tls_warning({"hostname": "hv1", "validate_certs": True}) is None
    assert _hyperv.tls_warning({"hostname": "hv1", "validate_certs": False, "scheme": "http"}) is None
    text = _hyperv.tls_warning({"hostname": "hv1", "validate_certs": False, "password": PASSWORD})
    assert "hv1" in text and "Fix: set validate_certs=true" in text and PASSWORD not in text


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_play(tmp_path, tasks):
    """Run ``tasks`` (each registered as r<i>, errors ignored) in one playbook; return
    (the registered results, what ansible-playbook printed)."""
    out = tmp_path / "results.json"
    play_tasks = []
    for i, task in enumerate(tasks):
        play_tasks.append(dict(task, register="r%d" % i, ignore_errors=True))
    names = ", ".join("r%d" % i for i in range(len(tasks)))
    play_tasks.append({"ansible.builtin.copy": {"content": "{{ [%s] | to_json }}" % names, "dest": str(out)}})
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": play_tasks}]))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        "ansible_python_interpreter=%s" % sys.executable,
        str(playbook),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout + proc.stderr


def warning_texts(result):
    # ansible-core 2.19 keeps a result's warnings as strings or as {"msg": ...} summaries.
    return [w if isinstance(w, str) else w.get("msg", "") for w in result.get("warnings") or []]


@pytest.mark.parametrize("platform", ["vsphere", "hyperv"])
def test_modules_warn_once_per_result_and_ansible_once_per_run(tmp_path, platform, reliability):
    reliability(
        "security",
        "TLS verification turned off (validate_certs=false), %s, two tasks in one run" % platform,
        "one warning per result naming the host and 'Fix: set validate_certs=true'; Ansible prints "
        "'TLS certificate verification is off' once per run; the password in no result or output",
        "the tasks run on (here: fail, nothing listens)",
    )
    port = closed_port()  # nothing answers: the warning comes with the failure too
    conn = {"hostname": "127.0.0.1", "port": port, "username": "admin", "password": PASSWORD, "validate_certs": False}
    if platform == "vsphere":
        tasks = [
            {"vmigrate.v2v.vsphere_vm_info": dict(conn, vms=["web01"])},
            {"vmigrate.v2v.vsphere_power": dict(conn, vm="web01", state="off")},
        ]
    else:
        conn.update(operation_timeout=5)
        tasks = [
            {"vmigrate.v2v.hyperv_vm_info": dict(conn, vms=["web01"])},
            {"vmigrate.v2v.hyperv_power": dict(conn, vm="web01", state="off")},
        ]
    results, printed = run_play(tmp_path, tasks)
    expected = (_vsphere if platform == "vsphere" else _hyperv).tls_warning(conn)
    for result in results:
        assert result.get("failed"), result  # nothing listens on the port
        assert warning_texts(result).count(expected) == 1, result
        assert PASSWORD not in json.dumps(result)
    # Two tasks, one identical warning: Ansible shows it once.
    assert printed.count("TLS certificate verification is off") == 1, printed
    assert PASSWORD not in printed
