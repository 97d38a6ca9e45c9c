"""meta/awx/credential_types/*.yml: AWX custom credential types for the platforms.

Each file is what AWX takes (name, kind, inputs, injectors); every environment variable
it injects is one the platform's modules read as a fallback, as their doc fragment says
(E(NAME) in plugins/doc_fragments/<platform>.py); passwords are secret; the injector
templates render, with only the required inputs given, to values the modules accept.
"""

from __future__ import annotations

import os
import re

import jinja2
import pytest
import yaml
from jinja2 import meta as jinja_meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TYPES_DIR = os.path.join(ROOT, "meta", "awx", "credential_types")
FRAGMENTS_DIR = os.path.join(ROOT, "plugins", "doc_fragments")
PLATFORMS = ("kvm", "vsphere", "hyperv")


def load(platform):
    with open(os.path.join(TYPES_DIR, platform + ".yml"), encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def fragment_env_vars(platform):
    """The environment variables the doc fragment says its modules read: E(NAME)."""
    with open(os.path.join(FRAGMENTS_DIR, platform + ".py"), encoding="utf-8") as fh:
        return set(re.findall(r"E\(([A-Z][A-Z0-9_]*)\)", fh.read()))


def render(template, inputs):
    """As AWX renders an injector: a sandboxed Jinja environment over the inputs given
    (missing optional strings are undefined, missing booleans False) plus `tower`."""
    env = ImmutableSandboxedEnvironment(undefined=jinja2.Undefined)
    return env.from_string(template).render(tower={"filename": {"ca": "/runner/env/tmpca"}}, **inputs)


def test_there_is_one_type_per_platform_and_no_other():
    assert sorted(os.listdir(TYPES_DIR)) == sorted(p + ".yml" for p in PLATFORMS)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_shape_is_what_awx_takes(platform):
    ct = load(platform)
    assert set(ct) == {"name", "description", "kind", "inputs", "injectors"}, set(ct)
    assert ct["kind"] == "cloud"  # custom types may only be cloud or net
    fields = ct["inputs"]["fields"]
    ids = [f["id"] for f in fields]
    assert len(ids) == len(set(ids))
    for field in fields:
        assert set(field) <= {"id", "label", "type", "secret", "multiline", "help_text", "choices", "format"}, field
        assert field["type"] in ("string", "boolean") and field["label"], field
    assert set(ct["inputs"]["required"]) <= set(ids)
    assert set(ct["injectors"]) <= {"env", "extra_vars", "file"}
    # every template uses declared inputs only (and AWX's `tower` namespace)
    parser = jinja2.Environment()
    for kind in ct["injectors"].values():
        for template in kind.values():
            used = jinja_meta.find_undeclared_variables(parser.parse(template))
            assert used <= set(ids) | {"tower"}, (template, used)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_injected_env_vars_are_read_by_the_modules(platform):
    env = load(platform)["injectors"]["env"]
    read = fragment_env_vars(platform)
    assert read, "no E(NAME) in plugins/doc_fragments/%s.py" % platform
    assert set(env) <= read, "not read by the %s modules: %s" % (platform, sorted(set(env) - read))
    # and no variable AWX reserves
    assert not [k for k in env if k.startswith("ANSIBLE_")]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_secrets_are_secret(platform):
    for field in load(platform)["inputs"]["fields"]:
        if re.search(r"pass|secret|token|key", field["id"]):
            assert field.get("secret") is True, field
        else:
            assert not field.get("secret"), field


def test_vsphere_env_values_are_usable_with_only_the_required_inputs():
    from ansible.module_utils.parsing.convert_bool import boolean

    ct = load("vsphere")
    minimal = {"hostname": "vc.example.com", "username": "me", "password": "pw", "skip_cert_validation": False}
    env = {k: render(v, minimal) for k, v in ct["injectors"]["env"].items()}
    assert env["VMWARE_PORT"] == "443"
    assert boolean(env["VMWARE_VALIDATE_CERTS"]) is True
    assert env["VMIGRATE_CA_PATH"] == "" and env["VMWARE_DATACENTER"] == ""  # empty: the modules' defaults
    pem = "-----BEGIN CERTIFICATE-----\n"
    full = dict(minimal, port="8443", datacenter="DC1", ca_pem=pem, skip_cert_validation=True)
    env = {k: render(v, full) for k, v in ct["injectors"]["env"].items()}
    assert env["VMWARE_PORT"] == "8443" and env["VMWARE_DATACENTER"] == "DC1"
    assert boolean(env["VMWARE_VALIDATE_CERTS"]) is False
    assert env["VMIGRATE_CA_PATH"] == "/runner/env/tmpca"
    assert render(ct["injectors"]["file"]["template.ca"], full).startswith("-----BEGIN CERTIFICATE-----")


def test_kvm_injects_the_uri_and_login_as_extra_vars():
    ct = load("kvm")
    assert render(ct["injectors"]["env"]["LIBVIRT_DEFAULT_URI"], {"uri": "qemu+ssh://kvm1/system"}) == (
        "qemu+ssh://kvm1/system"
    )
    extra = {k: render(v, {"uri": "qemu:///system"}) for k, v in ct["injectors"]["extra_vars"].items()}
    assert extra == {"vmigrate_kvm_username": "", "vmigrate_kvm_password": ""}
