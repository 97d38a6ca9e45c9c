"""Fixtures for tests that run against the lab (`tests/lab/lab up`).

- `lab`: the facts in tests/lab/state/lab.json (see tests/lab/lab, write_facts).
- `libvirt_conn`: a libvirt connection to the lab's URI.
- `vsphere_si`: a pyvmomi ServiceInstance on vcsim over TLS verified by the lab CA.
- `vsphere_env`: the VMWARE_* environment a module's env fallbacks read.
- `run_playbook(path_or_yaml_text, extra_vars, check=False)` -> CompletedProcess with
  .recap and .changed, and `recap(output)` -> {host: {"ok": n, "changed": n, ...}}:
  fixtures returning the functions (a test file cannot reliably `import conftest`, as
  tests/conftest.py has the same module name).
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Another facts file (same format) points the tests at other endpoints, e.g. a real vCenter.
FACTS = os.environ.get("VMIGRATE_LAB_FACTS") or os.path.join(ROOT, "tests", "lab", "state", "lab.json")
ANSIBLE_PLAYBOOK = os.path.join(ROOT, ".venv", "bin", "ansible-playbook")
ANSIBLE_CONFIG = os.path.join(ROOT, "ansible.cfg")


def load_lab() -> dict:
    """The lab facts; fails the test (not skips: a missing lab is a broken setup)."""
    if not os.path.exists(FACTS):
        pytest.fail(f"the lab is not up: {FACTS} is missing; run tests/lab/lab up", pytrace=False)
    with open(FACTS, encoding="utf-8") as f:
        return json.load(f)


def guest_env() -> dict:
    """libguestfs's settings on this host (lab facts), and VMIGRATE_GUEST_CONVERSION=skip:
    the tiny guest's tests are about the data; the guest conversion tests
    (test_guest_conversion.py) set auto or inspect in their arguments."""
    env = {"VMIGRATE_GUEST_CONVERSION": "skip"}
    if os.path.exists(FACTS):
        with open(FACTS, encoding="utf-8") as f:
            env.update(json.load(f).get("guestfs_env") or {})
    return env


def lab_ssl_context(lab: dict) -> ssl.SSLContext:
    """A client context that verifies the server against the lab CA (and host name)."""
    return ssl.create_default_context(cafile=lab["vcsim"]["ca_path"])


@pytest.fixture(scope="session")
def lab() -> dict:
    return load_lab()


@pytest.fixture(scope="session")
def libvirt_conn(lab):
    import libvirt

    try:
        conn = libvirt.open(lab["libvirt_uri"])
    except libvirt.libvirtError as e:
        pytest.fail(f"libvirtd does not answer on {lab['libvirt_uri']} ({e}); run tests/lab/lab up", pytrace=False)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def vsphere_si(lab):
    from pyVim.connect import Disconnect, SmartConnect

    vc = lab["vcsim"]
    try:
        si = SmartConnect(
            host=vc["hostname"],
            port=vc["port"],
            user=vc["username"],
            pwd=vc["password"],
            sslContext=lab_ssl_context(lab),
        )
    except (OSError, ssl.SSLError) as e:
        pytest.fail(f"vcsim does not answer at {vc['url']} ({e}); run tests/lab/lab up", pytrace=False)
    yield si
    Disconnect(si)


@pytest.fixture(scope="session")
def vsphere_env(lab) -> dict:
    vc = lab["vcsim"]
    return {
        "VMWARE_HOST": vc["hostname"],
        "VMWARE_PORT": str(vc["port"]),
        "VMWARE_USER": vc["username"],
        "VMWARE_PASSWORD": vc["password"],
        "VMWARE_VALIDATE_CERTS": "true",
        "VMIGRATE_CA_PATH": vc["ca_path"],
        "LIBVIRT_DEFAULT_URI": lab["libvirt_uri"],
    }


_RECAP_LINE = re.compile(r"^(\S+)\s*:\s*((?:\w+=\d+\s*)+)$")


def parse_recap(output: str) -> dict:
    """PLAY RECAP of ansible-playbook's output as {host: {"ok": n, "changed": n, ...}}."""
    hosts: dict = {}
    in_recap = False
    for line in output.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
            continue
        if not in_recap:
            continue
        m = _RECAP_LINE.match(line.strip())
        if m:
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        elif line.strip():
            in_recap = False
    return hosts


def run_ansible_playbook(
    path_or_yaml_text: str,
    extra_vars: dict | None = None,
    check: bool = False,
    env: dict | None = None,
    timeout: int = 1800,
) -> subprocess.CompletedProcess:
    """Run ansible-playbook from the repo root with the repo's ansible.cfg.

    path_or_yaml_text is a playbook file, or the playbook's YAML text. extra_vars go
    through a JSON file (types and secrets survive; nothing on the command line).
    The result carries .recap (see parse_recap()) and .changed (sum of changed= over hosts);
    it does not raise on failure: assert on .returncode.
    """
    with tempfile.TemporaryDirectory(prefix="vmigrate-play-") as tmp:
        playbook = path_or_yaml_text
        if "\n" in path_or_yaml_text or not os.path.exists(path_or_yaml_text):
            playbook = os.path.join(tmp, "playbook.yml")
            with open(playbook, "w", encoding="utf-8") as f:
                f.write(path_or_yaml_text)
        cmd = [ANSIBLE_PLAYBOOK, playbook]
        if extra_vars:
            vars_file = os.path.join(tmp, "extra_vars.json")
            with open(vars_file, "w", encoding="utf-8") as f:
                json.dump(extra_vars, f)
            cmd += ["-e", "@" + vars_file]
        if check:
            cmd.append("--check")
        run_env = dict(os.environ, ANSIBLE_CONFIG=ANSIBLE_CONFIG, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        run_env.update(guest_env())
        run_env.update(env or {})
        proc = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=timeout)
    proc.recap = parse_recap(proc.stdout)
    proc.changed = sum(h.get("changed", 0) for h in proc.recap.values())
    return proc


@pytest.fixture(scope="session")
def run_playbook():
    return run_ansible_playbook


@pytest.fixture(scope="session")
def recap():
    return parse_recap


def module_play(module: str, args: dict, out: str) -> str:
    """A one-task playbook whose registered result is written as JSON to ``out``."""
    return (
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - vmigrate.v2v.%s: %s\n      register: r\n      ignore_errors: true\n"
        "    - ansible.builtin.copy: {content: '{{ r | to_json }}', dest: '%s'}\n"
        "      check_mode: false\n      changed_when: false\n"
    ) % (module, json.dumps(args, ensure_ascii=False), out)  # YAML reads \ud83d escapes as lone surrogates


@pytest.fixture
def run_module(tmp_path):
    """Run one module through ansible-playbook; return its result, plus `_recap_changed`.

    VMWARE_*/VMIGRATE_CA* from the caller's shell are blanked: the test's arguments
    decide (``env`` adds variables back).
    """

    def run(module, args, check=False, env=None, timeout=1800):
        out = tmp_path / ("result-%s.json" % os.urandom(6).hex())
        clean = {k: "" for k in os.environ if k.startswith(("VMWARE_", "VMIGRATE_CA"))}
        clean.update(env or {})
        proc = run_ansible_playbook(module_play(module, args, str(out)), check=check, env=clean, timeout=timeout)
        assert out.exists(), proc.stdout + proc.stderr
        result = json.loads(out.read_text())
        result["_recap_changed"] = proc.changed
        return result

    return run
