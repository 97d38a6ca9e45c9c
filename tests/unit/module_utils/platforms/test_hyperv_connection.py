"""platforms/hyperv/connection.py without a network: the script convention (values as one
JSON literal, never code), run through the lab's PowerShell interpreter; output parsing;
the structured error's mapping to our errors."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _conn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv import powershell as ps  # noqa: E402
from hyperv.host import HyperVHost  # noqa: E402

ECHO = "[pscustomobject]@{ ok = $true; result = $p } | ConvertTo-Json -Depth 5 -Compress"

NASTY = [
    "it's",
    "''",
    "'; Remove-VM -Name * -Force; '",
    "$env:COMPUTERNAME $(Get-Process) ${x}",
    "back`tick`n`0",
    "tab\tnew\nline\r\nend",
    "\u00fcnic\u00f6de \u6f22\u5b57 \U0001f600",
    "typographic \u2018quotes\u2019 \u201a\u201b close strings in PowerShell",
    '"double" and \\ backslash \\\\',
    "",
]


def run_script(script):
    stdout, stderr, code = ps.Interpreter(ps.GENERIC_CMDLETS).run(script)
    return _conn.parse_output(stdout, stderr, code, "test", "h")


@pytest.mark.parametrize("name", NASTY)
def test_values_round_trip_through_powershell(name):
    params = {"Name": name, "Names": [name, name + "2"], "Nested": {"Path": "C:\\VMs\\" + name}}
    doc = run_script(_conn.build_script(ECHO, params))
    assert doc == {"ok": True, "result": params}


def test_the_literal_is_the_only_variable_text():
    a = _conn.build_script(_conn.SCRIPTS["vm_info"], {"Names": ["a"]})
    b = _conn.build_script(_conn.SCRIPTS["vm_info"], {"Names": NASTY})
    # Everything but the $p = '...' line is the same, whatever the values.
    strip = re.compile(r"^\$p = '.*' \| ConvertFrom-Json$", re.M)
    assert strip.sub("", a) == strip.sub("", b)
    literal = re.search(r"^\$p = '(.*)' \| ConvertFrom-Json$", b, re.M).group(1)
    assert literal.isascii() and "\n" not in literal
    assert re.sub("''", "", literal).count("'") == 0  # every quote doubled: the literal cannot end early


def test_scripts_fit_the_command_line():
    for name, body in _conn.SCRIPTS.items():
        script = _conn.build_script(body, {"Names": ["a-vm-name-of-forty-characters-0123456789"] * 10})
        assert len(_conn.encoded_command(script)) <= _conn.COMMAND_LINE_MAX, name


def test_vm_info_script_runs_on_the_host_model(tmp_path):
    host = HyperVHost.init(str(tmp_path / "state"), str(tmp_path / "share"))
    host.new_vm("a'b $c", generation=2, disks=[{"size": 4 << 20}], nics=[{"switch": "lab", "mac": "00155D000002"}])
    host.new_vm("other", generation=1, disks=[{"size": 4 << 20}])
    stdout, stderr, code = host.run_powershell(_conn.build_script(_conn.SCRIPTS["vm_info"], {"Names": ["A'B $C"]}))
    doc = _conn.parse_output(stdout, stderr, code, "vm info", "h")
    assert doc["ok"] and [vm["Name"] for vm in doc["result"]] == ["a'b $c"]  # names compare case-insensitively
    vm = doc["result"][0]
    assert vm["State"] == "Off" and vm["Generation"] == 2 and vm["SecureBoot"] == "On"
    assert vm["Drives"] == [
        {"ControllerType": "SCSI", "ControllerNumber": 0, "ControllerLocation": 0, "Path": "C:\\VMs\\a'b $c-disk0.vhdx"}
    ]
    assert vm["Vhds"][0]["Size"] == 4 << 20 and vm["Vhds"][0]["VhdFormat"] == "VHDX"
    stdout, stderr, code = host.run_powershell(_conn.build_script(_conn.SCRIPTS["vm_info"], {"Names": []}))
    assert sorted(vm["Name"] for vm in _conn.parse_output(stdout, stderr, code, "x", "h")["result"]) == [
        "a'b $c",
        "other",
    ]


def test_cmdlet_errors_come_back_structured(tmp_path):
    host = HyperVHost.init(str(tmp_path / "state"), str(tmp_path / "share"))
    host.new_vm("gone-disk", disks=[{"size": 4 << 20}])
    os.unlink(os.path.join(str(tmp_path / "share"), "gone-disk-disk0.vhdx"))
    stdout, stderr, code = host.run_powershell(_conn.build_script(_conn.SCRIPTS["vm_info"], {"Names": ["gone-disk"]}))
    doc = _conn.parse_output(stdout, stderr, code, "vm info", "h")
    assert doc["ok"] is False and doc["category"] == "ObjectNotFound"
    assert doc["message"] == "'C:\\VMs\\gone-disk-disk0.vhdx' is not an existing virtual hard disk file."
    assert doc["id"] == "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD"
    exc = _conn.script_error(doc, "reading the VM", "hv1", vm="gone-disk")
    assert isinstance(exc, InputError)
    assert "VM 'gone-disk'" in exc.message and "is not an existing virtual hard disk file" in exc.message
    assert exc.details["hyperv_category"] == "ObjectNotFound"


def test_error_categories_map_to_our_errors():
    doc = {"ok": False, "message": "You do not have the required permission", "category": "PermissionDenied", "id": "x"}
    exc = _conn.script_error(doc, "reading", "hv1", vm="web01")
    assert isinstance(exc, PlatformError) and "Hyper-V Administrators" in exc.fix and "web01" in exc.message
    doc = {
        "ok": False,
        "message": "The operation cannot be performed while the VM is in its current state.",
        "category": "InvalidOperation",
    }
    assert "state of VM 'web01'" in _conn.script_error(doc, "x", "hv1", vm="web01").fix


def test_output_parsing():
    body = json.dumps({"ok": True, "result": ["\u00fc"]}, ensure_ascii=False).encode("utf-8")
    assert _conn.parse_output(b"\xef\xbb\xbf" + body + b"\r\n", b"", 0, "x", "h")["result"] == ["\u00fc"]
    with pytest.raises(PlatformError, match="did not answer reading with one JSON document.*stderr: boom"):
        _conn.parse_output(b"", b"boom", 1, "reading", "h")
    with pytest.raises(PlatformError, match="one JSON document"):
        _conn.parse_output(body + b"\r\n" + body, b"", 0, "x", "h")


def test_basic_over_http_is_refused_before_connecting():
    params = dict(hostname="hv1", username="u", password="p", transport="basic", scheme="http")
    with pytest.raises(InputError, match="unencrypted"):
        _conn.HyperVConnection(params)


def test_argument_spec_env_fallbacks():
    spec = _conn.argument_spec()
    assert spec["password"]["no_log"] is True
    assert spec["validate_certs"]["default"] is True and spec["transport"]["default"] == "ntlm"
    envs = {name: opts["fallback"][1] for name, opts in spec.items() if "fallback" in opts}
    assert envs["hostname"] == ["VMIGRATE_HYPERV_HOST"] and envs["ca_path"][0] == "VMIGRATE_HYPERV_CA_PATH"
    assert all(v[0].startswith("VMIGRATE_HYPERV_") for v in envs.values())


# Parameters of the cmdlets the scripts may use, as Microsoft documents them for Windows
# Server's Hyper-V module and Windows PowerShell 5.1 (learn.microsoft.com, module
# Hyper-V and Microsoft.PowerShell.Utility/Core). Common parameters (-ErrorAction, ...)
# are left out on purpose: the scripts rely on $ErrorActionPreference instead.
_REMOTE = {"ComputerName", "Credential", "CimSession"}
DOCUMENTED = {
    "Get-VM": {"Name", "Id", "ClusterObject"} | _REMOTE,
    "Get-VMHardDiskDrive": {
        "VMName",
        "VM",
        "VMSnapshot",
        "VMDriveController",
        "ControllerType",
        "ControllerNumber",
        "ControllerLocation",
    }
    | _REMOTE,  # fmt: skip
    "Get-VHD": {"Path", "DiskNumber", "VMId"} | _REMOTE,
    "Get-VMNetworkAdapter": {"VMName", "VM", "VMSnapshot", "Name", "All", "ManagementOS", "SwitchName", "IsLegacy"}
    | _REMOTE,
    "Get-VMFirmware": {"VMName", "VM", "VMSnapshot"} | _REMOTE,
    "Get-VMMemory": {"VMName", "VM", "VMSnapshot"} | _REMOTE,
    "Get-VMProcessor": {"VMName", "VM", "VMSnapshot"} | _REMOTE,
    "Get-VMSnapshot": {"VMName", "VM", "Name", "Id", "SnapshotType", "ParentOf", "ChildOf"} | _REMOTE,
    "Get-VMCheckpoint": {"VMName", "VM", "Name", "Id", "SnapshotType", "ParentOf", "ChildOf"} | _REMOTE,
    "Get-VMIntegrationService": {"VMName", "VM", "VMSnapshot", "Name"} | _REMOTE,
    # The cmdlets that change the host (hyperv_import, hyperv_power, verify's boot check).
    "New-VM": {
        "Name",
        "MemoryStartupBytes",
        "BootDevice",
        "SwitchName",
        "NewVHDPath",
        "NewVHDSizeBytes",
        "NoVHD",
        "VHDPath",
        "Path",
        "Generation",
        "Version",
        "Prerelease",
        "Experimental",
        "Force",
        "AsJob",
        "GuestStateIsolationType",
    }
    | _REMOTE,
    "Set-VM": {
        "Name",
        "VM",
        "GuestControlledCacheTypes",
        "LowMemoryMappedIoSpace",
        "HighMemoryMappedIoSpace",
        "ProcessorCount",
        "DynamicMemory",
        "StaticMemory",
        "MemoryMinimumBytes",
        "MemoryMaximumBytes",
        "MemoryStartupBytes",
        "AutomaticStartAction",
        "AutomaticStopAction",
        "AutomaticStartDelay",
        "AutomaticCriticalErrorAction",
        "AutomaticCriticalErrorActionTimeout",
        "LockOnDisconnect",
        "Notes",
        "NewVMName",
        "SnapshotFileLocation",
        "SmartPagingFilePath",
        "CheckpointType",
        "EnhancedSessionTransportType",
        "AllowUnverifiedPaths",
        "Passthru",
    }
    | _REMOTE,
    "Set-VMFirmware": {
        "VMName",
        "VM",
        "VMFirmware",
        "BootOrder",
        "FirstBootDevice",
        "EnableSecureBoot",
        "SecureBootTemplate",
        "SecureBootTemplateId",
        "PreferredNetworkBootProtocol",
        "ConsoleMode",
        "PauseAfterBootFailure",
        "Passthru",
    }
    | _REMOTE,
    "Add-VMHardDiskDrive": {
        "VMName",
        "VM",
        "VMDriveController",
        "ControllerType",
        "ControllerNumber",
        "ControllerLocation",
        "Path",
        "DiskNumber",
        "ResourcePoolName",
        "SupportPersistentReservations",
        "AllowUnverifiedPaths",
        "MaximumIOPS",
        "MinimumIOPS",
        "QoSPolicyID",
        "QoSPolicy",
        "OverrideCacheAttributes",
        "Passthru",
    }
    | _REMOTE,
    "Add-VMNetworkAdapter": {
        "VMName",
        "VM",
        "ManagementOS",
        "SwitchName",
        "IsLegacy",
        "Name",
        "DynamicMacAddress",
        "StaticMacAddress",
        "Passthru",
        "ResourcePoolName",
        "DeviceNaming",
    }
    | _REMOTE,
    "Connect-VMNetworkAdapter": {
        "VMName",
        "Name",
        "SwitchName",
        "VMNetworkAdapter",
        "UseAutomaticConnection",
        "ResourcePoolName",
        "Passthru",
    }
    | _REMOTE,
    "Set-VMNetworkAdapter": {
        "VMName",
        "VM",
        "Name",
        "VMNetworkAdapter",
        "ManagementOS",
        "DynamicMacAddress",
        "StaticMacAddress",
        "MacAddressSpoofing",
        "DhcpGuard",
        "RouterGuard",
        "PortMirroring",
        "IeeePriorityTag",
        "VmqWeight",
        "Passthru",
    }
    | _REMOTE,
    "Remove-VMNetworkAdapter": {"VMName", "VM", "Name", "VMNetworkAdapter", "ManagementOS", "SwitchName", "Passthru"}
    | _REMOTE,
    "Remove-VM": {"Name", "VM", "Force", "AsJob", "Passthru"} | _REMOTE,
    "Start-VM": {"Name", "VM", "AsJob", "Passthru"} | _REMOTE,
    "Stop-VM": {"Name", "VM", "Save", "TurnOff", "Force", "AsJob", "Passthru"} | _REMOTE,
    "Checkpoint-VM": {"Name", "VM", "SnapshotName", "AsJob", "Passthru"} | _REMOTE,
    "Remove-VMCheckpoint": {"VMName", "VM", "VMSnapshot", "Name", "IncludeAllChildSnapshots", "AsJob", "Passthru"}
    | _REMOTE,
    "Remove-VMSnapshot": {"VMName", "VM", "VMSnapshot", "Name", "IncludeAllChildSnapshots", "AsJob", "Passthru"}
    | _REMOTE,
    # CIM (module CimCmdlets), for the reference points of warm export.
    "Get-CimInstance": {
        "ClassName",
        "Namespace",
        "Filter",
        "Query",
        "QueryDialect",
        "KeyOnly",
        "Shallow",
        "OperationTimeoutSec",
        "ResourceUri",
        "InputObject",
        "CimSession",
        "ComputerName",
    },
    "Invoke-CimMethod": {
        "ClassName",
        "CimClass",
        "InputObject",
        "Query",
        "QueryDialect",
        "ResourceUri",
        "Namespace",
        "MethodName",
        "Arguments",
        "CimSession",
        "ComputerName",
        "OperationTimeoutSec",
    },
    "Get-CimAssociatedInstance": {
        "InputObject",
        "Association",
        "ResultClassName",
        "Namespace",
        "OperationTimeoutSec",
        "ResourceUri",
        "KeyOnly",
        "CimSession",
        "ComputerName",
    },
    "ConvertTo-Json": {"InputObject", "Depth", "Compress"},
    "ConvertFrom-Json": {"InputObject"},
    "Select-Object": {
        "InputObject",
        "Property",
        "ExcludeProperty",
        "ExpandProperty",
        "Unique",
        "Last",
        "First",
        "Skip",
        "SkipLast",
        "Wait",
        "Index",
    },  # fmt: skip
    "Where-Object": {
        "InputObject",
        "FilterScript",
        "Property",
        "Value",
        "EQ",
        "CEQ",
        "NE",
        "CNE",
        "GT",
        "CGT",
        "LT",
        "CLT",
        "GE",
        "CGE",
        "LE",
        "CLE",
        "Like",
        "CLike",
        "NotLike",
        "CNotLike",
        "Match",
        "CMatch",
        "NotMatch",
        "CNotMatch",
        "Contains",
        "CContains",
        "NotContains",
        "CNotContains",
        "In",
        "CIn",
        "NotIn",
        "CNotIn",
        "Is",
        "IsNot",
    },  # fmt: skip
}


def _commands(node):
    """(cmdlet, [parameter names]) for every cmdlet call in a parsed script."""
    if isinstance(node, tuple) and node and node[0] == "command":
        yield node[1], [name for name, _value in node[2]]
    if isinstance(node, (tuple, list)):
        for child in node:
            yield from _commands(child)


@pytest.mark.parametrize("name", sorted(_conn.SCRIPTS))
def test_scripts_use_only_documented_cmdlets_and_parameters(name):
    program = ps.Parser(_conn.build_script(_conn.SCRIPTS[name], {"Names": ["x"]})).script()
    used = list(_commands(program))
    assert used, name
    for cmdlet, params in used:
        assert cmdlet in DOCUMENTED, "%s uses %s, which is not in the documented table" % (name, cmdlet)
        assert set(params) <= DOCUMENTED[cmdlet], "%s: %s -%s" % (
            name,
            cmdlet,
            sorted(set(params) - DOCUMENTED[cmdlet]),
        )


def test_the_simulator_accepts_only_documented_parameters(tmp_path):
    host = HyperVHost(str(tmp_path))
    cmdlets = dict(ps.GENERIC_CMDLETS, **host.cmdlets())
    for name, cmdlet in cmdlets.items():
        assert set(cmdlet.params) <= DOCUMENTED[name], (name, sorted(set(cmdlet.params) - DOCUMENTED[name]))


def _closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_host_and_missing_transport_library(reliability):
    reliability(
        "hyperv",
        "unreachable WinRM endpoint (a closed port)",
        "PlatformError 'sending vm names to http://127.0.0.1:N/wsman failed 3 times'",
        "nothing run (three attempts, then the error)",
    )
    base = dict(hostname="127.0.0.1", port=_closed_port(), username="u", password="p", scheme="http")
    with pytest.raises(
        PlatformError, match="sending vm names to http://127.0.0.1:%d/wsman failed 3 times" % base["port"]
    ):
        _conn.HyperVConnection(dict(base, transport="ntlm")).run("vm_names", {})
    # Without pykerberos pywinrm says so on the first call, and the fix names the extra.
    if importlib.util.find_spec("kerberos") is not None:
        return
    with pytest.raises(PlatformError) as err:
        _conn.HyperVConnection(dict(base, transport="kerberos")).run("vm_names", {})
    assert "pywinrm[kerberos]" in err.value.fix
