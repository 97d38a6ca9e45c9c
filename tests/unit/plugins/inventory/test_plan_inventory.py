"""The vmigrate.v2v.plan inventory plugin, through ansible-inventory (offline: validate_sources false)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from ansible_collections.vmigrate.v2v.plugins.inventory import plan as plugin

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
INVENTORY = os.path.join(ROOT, ".venv", "bin", "ansible-inventory")

PLAN = """\
plugin: vmigrate.v2v.plan
validate_sources: false
version: 1
defaults:
  conversion_hosts: [conv1, conv2]
endpoints:
  kvm1: {platform: kvm, uri: "qemu:///system"}
  vc:
    platform: vsphere
    hostname: vc.example.com
    username: me
    password: "{{ lookup('env', 'VMIGRATE_TEST_PW') }}"
    placement: {datastore: ds1, folder: migrated}
network_map: {default: VM Network}
storage_map: {default: ds1}
waves:
  - name: first
    source: kvm1
    target: vc
    concurrency: 2
    max_failed: 1
    vms:
      - web01
      - {name: db01, target_name: db01-new, mode: warm}
  - name: second.wave
    source: vc
    target: kvm1
    vms: [app01]
"""


def unwrap(value):
    """ansible-core 2.19 prints strings it did not load as {"__ansible_unsafe": s}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def ansible_inventory(path, *args):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("VMIGRATE_TEST_PW", None)
    return subprocess.run(
        [INVENTORY, "-i", str(path), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_list_hosts_groups_and_vars(tmp_path):
    path = tmp_path / "lab.v2v.yml"
    path.write_text(PLAN)
    proc = ansible_inventory(path, "--list")
    assert proc.returncode == 0, proc.stderr
    inv = unwrap(json.loads(proc.stdout))
    hostvars = inv["_meta"]["hostvars"]
    assert set(hostvars) == {"web01", "db01-new", "app01"}
    assert inv["v2v"]["hosts"] == ["web01", "db01-new", "app01"]  # wave order
    assert inv["wave_first"]["hosts"] == ["web01", "db01-new"]
    assert inv["wave_second_wave"]["hosts"] == ["app01"]
    assert inv["source_kvm"]["hosts"] == ["web01", "db01-new"] and inv["target_kvm"]["hosts"] == ["app01"]
    assert inv["mode_warm"]["hosts"] == ["db01-new"]
    db = hostvars["db01-new"]
    assert db["v2v_vm"] == "db01" and db["v2v_mode"] == "warm" and db["v2v_wave_index"] == 0
    assert db["v2v_conversion_host"] == "conv2" and hostvars["web01"]["v2v_conversion_host"] == "conv1"
    assert db["v2v_work_dir"] == "/var/lib/vmigrate/first/db01-new"
    assert db["v2v_target"] == {
        "endpoint": "vc",
        "platform": "vsphere",
        "connection": {
            "hostname": "vc.example.com",
            "username": "me",
            "password": "{{ lookup('env', 'VMIGRATE_TEST_PW') }}",
        },
        "placement": {"datastore": "ds1", "folder": "migrated"},
    }
    assert db["v2v_network_map"] == {"default": "VM Network"}
    assert db["v2v_waves"] == [
        {"name": "first", "index": 0, "group": "wave_first", "concurrency": 2, "max_failed": 1,
         "hosts": ["web01", "db01-new"]},
        {"name": "second.wave", "index": 1, "group": "wave_second_wave", "concurrency": 1, "max_failed": 0,
         "hosts": ["app01"]},
    ]  # fmt: skip


def test_password_templated_at_use_time(tmp_path):
    """The template stays a template in the inventory and resolves when a task uses it."""
    path = tmp_path / "lab.v2v.yml"
    path.write_text(PLAN)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), VMIGRATE_TEST_PW="s3cret")
    proc = subprocess.run(
        [os.path.join(ROOT, ".venv", "bin", "ansible"), "-i", str(path), "web01", "-c", "local", "-m",
         "ansible.builtin.debug", "-a", "msg={{ v2v_target.connection.password }}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '"msg": "s3cret"' in proc.stdout


def test_refused_plan_fails_the_run_with_file_line_key_and_fix(tmp_path, reliability):
    reliability(
        "plan",
        "plan with an unknown key, through ansible-inventory",
        "ansible-inventory fails: 'plan <file> line 17: waves[0].colour is not a known key' and 'Fix: use one "
        "of: name, source, target ...'",
        "no inventory: nothing runs",
    )
    path = tmp_path / "bad.v2v.yml"
    path.write_text(PLAN.replace("    target: vc\n", "    target: vc\n    colour: red\n"))
    proc = ansible_inventory(path, "--list")
    assert proc.returncode != 0
    assert "plan %s line 17: waves[0].colour is not a known key" % path in proc.stderr
    assert "Fix: use one of: name, source, target" in proc.stderr


def test_malformed_yaml_stops_the_run_naming_the_line(tmp_path, reliability):
    reliability(
        "plan",
        "plan that is not valid YAML (an unclosed flow mapping)",
        "ansible-inventory fails: 'YAML parsing failed: ...' with 'Origin: <file>:8:5' (file, line, column); no empty "
        "inventory behind a warning (unparsed_is_failed)",
        "no inventory: nothing runs",
    )
    path = tmp_path / "bad.v2v.yml"
    path.write_text(PLAN.replace('platform: kvm, uri: "qemu:///system"}', 'platform: kvm, uri: "qemu:///system"', 1))
    proc = ansible_inventory(path, "--list")
    assert proc.returncode != 0
    assert "YAML parsing failed" in proc.stderr, proc.stderr
    assert "Origin: %s:8:5" % path in proc.stderr, proc.stderr  # the line after the unclosed mapping


def test_file_name_rule(tmp_path):
    mod = plugin.InventoryModule()
    for name, ok in (("a.v2v.yml", True), ("a.v2v.yaml", True), ("plan.yml", True), ("prod-plan.yaml", True),
                     ("inventory.yml", False), ("a.v2v.json", False)):  # fmt: skip
        path = tmp_path / name
        path.write_text(PLAN)
        assert mod.verify_file(str(path)) is ok, name


@pytest.mark.parametrize(
    "connection,environ,params,why",
    [
        ({"uri": "qemu:///system"}, {}, {"uri": "qemu:///system"}, None),
        ({"password": "{{ lookup('env','PW') }}", "port": "{{ lookup(\"env\", \"PORT\") }}"},
         {"PW": "x", "PORT": "8989"}, {"password": "x", "port": 8989}, None),
        ({"password": "{{ lookup('env', 'PW') }}"}, {}, None, "password reads environment variable PW"),
        ({"password": "{{ vault_pw }}"}, {}, None, "password is a template other than"),
    ],
)  # fmt: skip
def test_resolve_connection(connection, environ, params, why):
    got, reason = plugin.resolve_connection(connection, environ)
    assert got == params
    assert (reason is None) if why is None else why in reason
    assert "x" != reason
