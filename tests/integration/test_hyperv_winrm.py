"""The lab's Hyper-V simulator driven by the real pywinrm, through the collection's client
(platforms/hyperv/connection.py): HTTP + NTLM with message encryption, HTTPS + Basic with
the lab CA verified, refused credentials, an untrusted certificate, and VM facts checked
against the model's state file and qemu-img.

The simulator runs as a child process on free loopback ports with its own state directory;
its HTTPS certificate is signed by the lab CA (tests/lab/state/pki, via the facts file).
Nothing of the shared lab is changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import winrm

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _conn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv import simulator  # noqa: E402
from hyperv.host import HyperVHost  # noqa: E402

USER = "vmigrate"


@pytest.fixture(scope="module")
def hv(lab, tmp_path_factory):
    """A running simulator, made by simulator.up() as `lab up` will make it, on free ports:
    {state, share, http_port, https_port, password, ca, log, host}."""
    base = tmp_path_factory.mktemp("hyperv")
    state, share = str(base / "state"), str(base / "share")
    ca = lab["vcsim"]["ca_path"]
    ca_key = os.path.join(os.path.dirname(ca), "ca.key")
    facts = simulator.up(state, share, ca, ca_key, simulator.free_port(), simulator.free_port())
    try:
        # A second up() keeps the running server: it is idempotent, as lab up must be.
        again = simulator.up(state, share, ca, ca_key, facts["http_port"], facts["https_port"])
        assert again["pid"] == facts["pid"]
        yield dict(
            state=state,
            share=share,
            http_port=facts["http_port"],
            https_port=facts["https_port"],
            password=facts["password"],
            ca=ca,
            log=os.path.join(state, "winrm.log"),
            host=HyperVHost(state),
        )
    finally:
        simulator.down(state)
        assert simulator.running_pid(state) is None


def params(hv, **over):
    p = dict(
        hostname="127.0.0.1",
        username=USER,
        password=hv["password"],
        transport="ntlm",
        scheme="http",
        port=hv["http_port"],
    )
    p.update(over)
    return p


def https(hv, **over):
    return params(hv, **dict(dict(scheme="https", port=hv["https_port"], ca_path=hv["ca"]), **over))


def log_lines(hv):
    with open(hv["log"], encoding="utf-8") as f:
        return f.read().splitlines()


def test_http_ntlm_with_message_encryption(hv):
    hv["host"].new_vm("lab-hv-ntlm", disks=[{"size": 8 << 20}])
    before = len(log_lines(hv))
    result = _conn.HyperVConnection(params(hv)).run("vm_info", {"Names": ["lab-hv-ntlm"]})
    assert [vm["Name"] for vm in result] == ["lab-hv-ntlm"]
    soap = [line for line in log_lines(hv)[before:] if " soap " in line]
    # Every SOAP body went NTLM-sealed (multipart/encrypted): create, command, receive, signal, delete.
    assert len(soap) == 5 and all("auth=ntlm body=ntlm-sealed status=200" in line for line in soap), soap


def test_http_ntlm_with_domain_qualified_user(hv):
    result = _conn.HyperVConnection(params(hv, username="HVLAB01\\" + USER)).run("vm_info", {"Names": []})
    assert isinstance(result, list)


def test_https_basic_with_the_lab_ca_verified(hv):
    hv["host"].new_vm("lab-hv-basic", generation=1, disks=[{"size": 8 << 20}])
    before = len(log_lines(hv))
    result = _conn.HyperVConnection(https(hv, transport="basic")).run("vm_info", {"Names": ["lab-hv-basic"]})
    assert result[0]["Generation"] == 1 and result[0]["Drives"][0]["ControllerType"] == "IDE"
    soap = [line for line in log_lines(hv)[before:] if " soap " in line]
    assert soap and all("auth=basic body=tls status=200" in line for line in soap), soap


def test_https_ntlm_with_channel_binding(hv):
    assert isinstance(_conn.HyperVConnection(https(hv)).run("vm_info", {"Names": []}), list)


def test_wrong_password_is_a_clear_error(hv, reliability):
    reliability(
        "hyperv",
        "wrong WinRM password (NTLM over HTTP, Basic over HTTPS)",
        "PlatformError 'refused the credentials of vmigrate (HTTP 401 ...' and the fix 'check username and password'",
        "nothing run on the host",
    )
    for p in (params(hv, password="wrong"), https(hv, transport="basic", password="wrong")):
        with pytest.raises(PlatformError, match=r"refused the credentials of vmigrate \(HTTP 401") as err:
            _conn.HyperVConnection(p).run("vm_info", {"Names": []})
        assert "check username and password" in err.value.fix


def test_untrusted_certificate_is_a_clear_error(hv, reliability):
    reliability(
        "hyperv",
        "untrusted WinRM certificate (the lab CA not given)",
        "'TLS verification of <host:port> failed: certificate verify failed' and a fix naming ca_path",
        "nothing sent",
    )
    # The system store does not hold the lab CA.
    with pytest.raises(
        PlatformError, match="TLS verification of 127.0.0.1:%d failed: certificate verify failed" % hv["https_port"]
    ) as err:
        _conn.HyperVConnection(https(hv, ca_path=None)).run("vm_info", {"Names": []})
    assert "ca_path" in err.value.fix


def test_unencrypted_http_is_refused_like_winrm(hv, reliability):
    reliability(
        "hyperv",
        "WinRM over HTTP without message encryption (message_encryption=never, or Basic on HTTP)",
        "the host's 'HTTP 500' with a fix naming AllowUnencrypted; Basic on HTTP refused by the module: 'unencrypted'",
        "nothing run on the host",
    )
    with pytest.raises(PlatformError, match="HTTP 500") as err:
        _conn.HyperVConnection(params(hv, message_encryption="never")).run("vm_info", {"Names": []})
    assert "AllowUnencrypted" in err.value.fix
    with pytest.raises(InputError, match="unencrypted"):
        _conn.HyperVConnection(params(hv, transport="basic"))
    # Basic on the HTTP listener is not offered at all (pywinrm sends it anyway: 401).
    session = winrm.Session(
        "http://127.0.0.1:%d/wsman" % hv["http_port"],
        auth=(USER, hv["password"]),
        transport="basic",
        proxy=None,
        ca_trust_path=None,
    )
    with pytest.raises(winrm.exceptions.InvalidCredentialsError):
        session.run_ps("1")


def test_only_encoded_powershell_runs(hv):
    session = winrm.Session(
        "http://127.0.0.1:%d/wsman" % hv["http_port"],
        auth=(USER, hv["password"]),
        transport="ntlm",
        message_encryption="auto",
        proxy=None,
        ca_trust_path=None,
    )
    r = session.run_cmd("ipconfig", ["/all"])
    assert r.status_code == 1 and b"is not recognized" in r.std_err
    r = session.run_ps('$x = "expandable"')
    assert r.status_code == 1 and b"double-quoted" in r.std_err


def test_get_vm_returns_the_models_vm_and_qemu_img_facts(hv):
    name = "lab-hv-fields '$x` \u00fc"
    hv["host"].new_vm(
        name,
        generation=2,
        cpus=4,
        memory_mib=2048,
        dynamic_memory=True,
        memory_min_mib=512,
        memory_max_mib=4096,
        secure_boot=False,
        disks=[{"size": 64 << 20}, {"size": 16 << 20, "type": "Fixed"}],
        nics=[{"switch": "lab", "mac": "00:15:5d:00:00:42", "vlan": 12}, {"switch": "lab", "mac": None}],
        notes="made by test_hyperv_winrm",
    )
    result = _conn.HyperVConnection(https(hv)).run("vm_info", {"Names": [name]})
    assert len(result) == 1
    vm = result[0]
    with open(os.path.join(hv["state"], "hyperv.json"), encoding="utf-8") as f:
        model = next(v for v in json.load(f)["vms"] if v["name"] == name)
    assert vm["Name"] == name and vm["Id"] == model["id"] and vm["State"] == "Off"
    assert (vm["Generation"], vm["ProcessorCount"]) == (2, 4)
    assert (vm["MemoryStartup"], vm["DynamicMemoryEnabled"], vm["MemoryMinimum"], vm["MemoryMaximum"]) == (
        2048 << 20,
        True,
        512 << 20,
        4096 << 20,
    )
    assert (vm["SecureBoot"], vm["Notes"]) == ("Off", "made by test_hyperv_winrm")
    assert [(d["ControllerType"], d["ControllerNumber"], d["ControllerLocation"]) for d in vm["Drives"]] == [
        ("SCSI", 0, 0),
        ("SCSI", 0, 1),
    ]
    for drive, vhd in zip(vm["Drives"], vm["Vhds"], strict=True):
        assert drive["Path"] == vhd["Path"]
        local = os.path.join(hv["share"], vhd["Path"].split("\\")[-1])
        info = json.loads(
            subprocess.run(["qemu-img", "info", "--output=json", local], check=True, capture_output=True).stdout
        )
        assert (vhd["VhdFormat"], vhd["Size"], vhd["FileSize"]) == (
            "VHDX",
            info["virtual-size"],
            os.path.getsize(local),
        )
    assert [v["VhdType"] for v in vm["Vhds"]] == ["Dynamic", "Fixed"]
    assert [
        (n["MacAddress"], n["DynamicMacAddressEnabled"], n["SwitchName"], n["AccessVlanId"]) for n in vm["Nics"]
    ] == [
        ("00155D000042", False, "lab", 12),
        ("000000000000", True, "lab", 0),
    ]
    assert {s["Name"] for s in vm["IntegrationServices"]} >= {"Heartbeat", "Shutdown"}


def test_a_missing_disk_file_comes_back_as_hyperv_reports_it(hv):
    hv["host"].new_vm("lab-hv-gone", disks=[{"size": 4 << 20}])
    os.unlink(os.path.join(hv["share"], "lab-hv-gone-disk0.vhdx"))
    with pytest.raises(InputError) as err:
        _conn.HyperVConnection(params(hv)).run(
            "vm_info", {"Names": ["lab-hv-gone"]}, vm="lab-hv-gone", what="describing the VM"
        )
    msg = err.value.message
    assert (
        "VM 'lab-hv-gone'" in msg
        and "'C:\\VMs\\lab-hv-gone-disk0.vhdx' is not an existing virtual hard disk file" in msg
    )
    assert err.value.details["hyperv_error_id"] == "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD"


def module_env(hv):
    # The connection comes from the environment fallbacks, as a playbook would set it.
    return {
        "VMIGRATE_HYPERV_HOST": "127.0.0.1",
        "VMIGRATE_HYPERV_PORT": str(hv["https_port"]),
        "VMIGRATE_HYPERV_USERNAME": USER,
        "VMIGRATE_HYPERV_PASSWORD": hv["password"],
        "VMIGRATE_HYPERV_CA_PATH": hv["ca"],
    }


def test_hyperv_vm_info_module_describes_and_changes_nothing(hv, run_module):
    name = "lab-hv-info"
    hv["host"].new_vm(
        name,
        generation=2,
        cpus=2,
        memory_mib=1536,
        disks=[{"size": 32 << 20}, {"size": 8 << 20}],
        nics=[{"switch": "lab", "mac": "00155D001122"}],
    )
    state_file = os.path.join(hv["state"], "hyperv.json")
    with open(state_file, "rb") as f:
        before = f.read()
    for check in (False, True):
        res = run_module("hyperv_vm_info", {"vms": [name]}, check=check, env=module_env(hv))
        assert not res.get("failed"), res.get("msg")
        assert res["changed"] is False and res["_recap_changed"] == 0
        (vm,) = res["vms"]
        spec = vm["spec"]
        assert (spec["name"], spec["firmware"], spec["memory_mib"]) == (
            name,
            {"type": "uefi", "secure_boot": True},
            1536,
        )
        assert spec["cpu"] == {"sockets": 1, "cores": 2, "threads": 1}
        for disk, size in zip(spec["disks"], (32 << 20, 8 << 20), strict=True):
            local = os.path.join(hv["share"], disk["source"]["path"].split("\\")[-1])
            info = json.loads(
                subprocess.run(["qemu-img", "info", "--output=json", local], check=True, capture_output=True).stdout
            )
            assert (
                disk["capacity"] == info["virtual-size"] == size and disk["format"] == "vhdx" and disk["bus"] == "scsi"
            )
        assert [n["mac"] for n in spec["nics"]] == ["00:15:5d:00:11:22"]
    with open(state_file, "rb") as f:
        assert f.read() == before


def test_hyperv_vm_info_module_unknown_vm(hv, run_module, reliability):
    reliability(
        "hyperv",
        "a VM the Hyper-V host does not have (hyperv_vm_info)",
        "\"VM 'lab-hv-nope' not found on Hyper-V host 127.0.0.1\", listing the VMs the host has",
        "fails (nothing to change)",
    )
    hv["host"].new_vm("lab-hv-listed")
    res = run_module("hyperv_vm_info", {"vms": ["lab-hv-nope"]}, env=module_env(hv))
    assert res["failed"] and "VM 'lab-hv-nope' not found on Hyper-V host 127.0.0.1" in res["msg"]
    assert "lab-hv-listed" in res["msg"]  # the fix lists the VMs the host has
