# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Talking to a Hyper-V host: PowerShell over WinRM (pywinrm), JSON back.

Every operation is one script from ``SCRIPTS``: fixed text, plus one JSON document of
parameters. The parameters never become code: ``build_script`` puts them in a single
PowerShell string literal that the script reads with ConvertFrom-Json, so VM names with
quotes, ``$``, backticks or any unicode reach the cmdlets unchanged. The script answers
with one JSON line: ``{"ok": true, "result": ...}``, or, from its catch block,
``{"ok": false, "message", "category", "id", ...}`` carrying the cmdlet's own error,
which ``run`` turns into InputError or PlatformError naming the VM and the fix.
"""

from __future__ import annotations

import base64
import json

from ansible_collections.vmigrate.v2v.plugins.module_utils import _retry
from ansible_collections.vmigrate.v2v.plugins.module_utils._args import with_env_fallback
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, MissingLibraryError, PlatformError

try:
    import requests
    import winrm
    from winrm.exceptions import (
        InvalidCredentialsError,
        WinRMError,
        WinRMOperationTimeoutError,
        WinRMTransportError,
        WSManFaultError,
    )

    HAS_WINRM = True
    WINRM_IMPORT_ERROR = None
except ImportError as exc:
    winrm = requests = None
    HAS_WINRM = False
    WINRM_IMPORT_ERROR = exc

TRANSPORTS = ("ntlm", "kerberos", "credssp", "basic")
# cmd.exe, through which WinRM starts powershell, refuses longer command lines.
COMMAND_LINE_MAX = 8191

CONNECTION_ARGS = dict(
    hostname=dict(type="str", required=True, fallback=("env_fallback", ["VMIGRATE_HYPERV_HOST"])),
    port=dict(type="int", fallback=("env_fallback", ["VMIGRATE_HYPERV_PORT"])),
    username=dict(type="str", required=True, aliases=["user"], fallback=("env_fallback", ["VMIGRATE_HYPERV_USERNAME"])),
    password=dict(
        type="str",
        required=True,
        no_log=True,
        aliases=["pass", "pwd"],
        fallback=("env_fallback", ["VMIGRATE_HYPERV_PASSWORD"]),
    ),
    transport=dict(
        type="str", default="ntlm", choices=list(TRANSPORTS), fallback=("env_fallback", ["VMIGRATE_HYPERV_TRANSPORT"])
    ),
    scheme=dict(
        type="str", default="https", choices=["https", "http"], fallback=("env_fallback", ["VMIGRATE_HYPERV_SCHEME"])
    ),
    validate_certs=dict(type="bool", default=True, fallback=("env_fallback", ["VMIGRATE_HYPERV_VALIDATE_CERTS"])),
    ca_path=dict(type="path", fallback=("env_fallback", ["VMIGRATE_HYPERV_CA_PATH", "VMIGRATE_CA_PATH"])),
    message_encryption=dict(
        type="str",
        default="auto",
        choices=["auto", "always", "never"],
        fallback=("env_fallback", ["VMIGRATE_HYPERV_MESSAGE_ENCRYPTION"]),
    ),
    operation_timeout=dict(type="int", default=120),
)


def argument_spec(**extra):
    """The connection options (doc fragment vmigrate.v2v.hyperv) plus the module's own."""
    return with_env_fallback(CONNECTION_ARGS, extra)


def require_winrm():
    if not HAS_WINRM:
        raise MissingLibraryError(
            "the Python library pywinrm is not installed on the conversion host (%s)" % WINRM_IMPORT_ERROR,
            "pip install pywinrm (it brings requests-ntlm and pyspnego; pywinrm[kerberos] or pywinrm[credssp] "
            "for those transports)",
        )


# ---------------------------------------------------------------- scripts

# What every script starts with. UTF-8 output because the WinRM shell's code page (437)
# cannot carry most non-ASCII names; Stop makes every cmdlet error terminating, so the
# catch block sees it.
PROLOGUE = """$ErrorActionPreference = 'Stop'
[Console]::OutputEncoding = [System.Text.Encoding]::UTF8
$p = '%s' | ConvertFrom-Json
try {
"""
# The structured error: the cmdlet's message, its ErrorCategory as a name ([string]: a
# bare enum would serialize as a number), the fully qualified error id, the target.
EPILOGUE = """
} catch {
    [pscustomobject]@{ ok = $false; message = $_.Exception.Message; category = [string]$_.CategoryInfo.Category
        reason = [string]$_.CategoryInfo.Reason; id = [string]$_.FullyQualifiedErrorId; target = [string]$_.TargetObject
    } | ConvertTo-Json -Compress
}
"""

# Each body ends by writing one object: [pscustomobject]@{ ok = $true; result = ... }.
SCRIPTS = {
    # VMs by exact name (Where-Object, because Get-VM -Name takes wildcards: a VM called
    # 'web[1]' would otherwise not find itself) or every VM; then each VM's parts.
    "vm_info": """
    if ($p.Id) {
        $vms = @(Get-VM -Id $p.Id)
    } elseif ($p.Names.Count -gt 0) {
        $vms = @(Get-VM | Where-Object -Property Name -In -Value $p.Names)
    } else {
        $vms = @(Get-VM)
    }
    $out = @(foreach ($vm in $vms) {
        $drives = @(Get-VMHardDiskDrive -VM $vm)
        $vhds = @()
        if ($drives.Count -gt 0) { $vhds = @(Get-VHD -Path $drives.Path) }
        $fw = $null
        if ($vm.Generation -eq 2) { $fw = Get-VMFirmware -VM $vm }
        $mem = Get-VMMemory -VM $vm
        [pscustomobject]@{
            Name = $vm.Name; Id = [string]$vm.Id; State = [string]$vm.State; Generation = $vm.Generation
            ProcessorCount = $vm.ProcessorCount; Notes = $vm.Notes
            MemoryStartup = $mem.Startup; DynamicMemoryEnabled = $mem.DynamicMemoryEnabled
            MemoryMinimum = $mem.Minimum; MemoryMaximum = $mem.Maximum
            SecureBoot = [string]$fw.SecureBoot; SecureBootTemplate = $fw.SecureBootTemplate
            Drives = @(foreach ($d in $drives) { [pscustomobject]@{
                ControllerType = [string]$d.ControllerType; ControllerNumber = $d.ControllerNumber
                ControllerLocation = $d.ControllerLocation; Path = $d.Path } })
            Vhds = @(foreach ($v in $vhds) { [pscustomobject]@{
                Path = $v.Path; VhdFormat = [string]$v.VhdFormat; VhdType = [string]$v.VhdType
                Size = $v.Size; FileSize = $v.FileSize; ParentPath = $v.ParentPath } })
            Nics = @(foreach ($n in @(Get-VMNetworkAdapter -VM $vm)) { [pscustomobject]@{
                Name = $n.Name; MacAddress = $n.MacAddress; DynamicMacAddressEnabled = $n.DynamicMacAddressEnabled
                SwitchName = $n.SwitchName; VlanMode = [string]$n.VlanSetting.OperationMode
                AccessVlanId = $n.VlanSetting.AccessVlanId } })
            Checkpoints = @(foreach ($c in @(Get-VMSnapshot -VM $vm)) { [pscustomobject]@{
                Name = $c.Name; Id = [string]$c.Id; SnapshotType = [string]$c.SnapshotType } })
            IntegrationServices = @(foreach ($s in @(Get-VMIntegrationService -VM $vm)) { [pscustomobject]@{
                Name = $s.Name; Enabled = $s.Enabled; Status = $s.PrimaryStatusDescription } })
        }
    })
    [pscustomobject]@{ ok = $true; result = $out } | ConvertTo-Json -Depth 6 -Compress
""",
    # The import's first step: the VM, and at once its Notes saying it is incomplete, so
    # nothing made here ever looks finished (see platforms/hyperv/target.py).
    # A VM of this name with these Notes is this very call's, sent again after the answer was
    # lost (the import found no VM of the name before): it is used, not made twice.
    "new_vm": """
    $made = @(Get-VM | Where-Object -Property Name -EQ -Value $p.Name |
        Where-Object -Property Notes -EQ -Value $p.Notes)
    if ($made.Count -eq 0) {
        $vm = New-VM -Name $p.Name -Generation $p.Generation -MemoryStartupBytes $p.Memory -NoVHD
        Set-VM -VM $vm -Notes $p.Notes
    } else { foreach ($m in $made) { $vm = $m } }
    [pscustomobject]@{ ok = $true; result = [string]$vm.Id } | ConvertTo-Json -Compress
""",
    # Everything else of a new VM: processors, memory, firmware, disks, network adapters.
    # New-VM's own adapter is removed and each of the spec's is added, so they keep its order.
    "configure_vm": """
    $vm = Get-VM -Id $p.Id
    Set-VM -VM $vm -ProcessorCount $p.ProcessorCount -StaticMemory
    if ($p.Generation -eq 2) {
        Set-VMFirmware -VM $vm -EnableSecureBoot $p.SecureBoot -SecureBootTemplate $p.SecureBootTemplate
    }
    # Disks: T(ype), N(umber), L(ocation) of the controller slot, P(ath), short to fit a line.
    foreach ($d in $p.Disks) {
        Add-VMHardDiskDrive -VM $vm -ControllerType $d.T -ControllerNumber $d.N -ControllerLocation $d.L -Path $d.P
    }
    Remove-VMNetworkAdapter -VM $vm -Name 'Network Adapter'
    foreach ($n in $p.Nics) {
        $a = Add-VMNetworkAdapter -VM $vm -Name $n.Name -Passthru
        if ($n.Switch) { Connect-VMNetworkAdapter -VMNetworkAdapter $a -SwitchName $n.Switch }
        if ($n.Mac) { Set-VMNetworkAdapter -VMNetworkAdapter $a -StaticMacAddress $n.Mac }
    }
    [pscustomobject]@{ ok = $true; result = $null } | ConvertTo-Json -Compress
""",
    "vm_state": """
    [pscustomobject]@{ ok = $true; result = [string](Get-VM -Id $p.Id).State } | ConvertTo-Json -Compress
""",
    "set_notes": """
    Set-VM -VM (Get-VM -Id $p.Id) -Notes $p.Notes
    [pscustomobject]@{ ok = $true; result = $null } | ConvertTo-Json -Compress
""",
    # Remove-VM turns a running VM off first; the VHDX files stay (the caller removes them).
    # No VM of this Id: this call, sent again after its answer was lost, already removed it.
    "remove_vm": """
    foreach ($vm in @(Get-VM | Where-Object -Property Id -EQ -Value $p.Id)) { Remove-VM -VM $vm -Force }
    [pscustomobject]@{ ok = $true; result = $null } | ConvertTo-Json -Compress
""",
    "start_vm": """
    Start-VM -VM (Get-VM -Id $p.Id)
    [pscustomobject]@{ ok = $true; result = $null } | ConvertTo-Json -Compress
""",
    # A guest shutdown through the Shutdown integration service, or (TurnOff) pulling the plug.
    "stop_vm": """
    $vm = Get-VM -Id $p.Id
    if ($p.TurnOff) { Stop-VM -VM $vm -TurnOff -Force } else { Stop-VM -VM $vm -Force }
    [pscustomobject]@{ ok = $true; result = $null } | ConvertTo-Json -Compress
""",
    # The boot check's sign of life: the Heartbeat integration service's status.
    "heartbeat": """
    $vm = Get-VM -Id $p.Id
    $s = Get-VMIntegrationService -VM $vm -Name 'Heartbeat'
    [pscustomobject]@{ ok = $true; result = [pscustomobject]@{ State = [string]$vm.State
        Present = [bool]$s; Enabled = $s.Enabled; Status = $s.PrimaryStatusDescription } } | ConvertTo-Json -Compress
""",
    # Warm export: a temporary checkpoint, so each disk's parent stays as it is while the
    # VM writes into the checkpoint's differencing disk; the answer names both files. One
    # of this (unique) name already there was made by this call, sent again after its
    # answer was lost: a second would make the first one's child the parent read.
    "checkpoint_begin": """
    $vm = Get-VM -Id $p.Id
    if (@(Get-VMCheckpoint -VM $vm -Name $p.Checkpoint).Count -eq 0) {
        Checkpoint-VM -VM $vm -SnapshotName $p.Checkpoint
    }
    $drives = @(Get-VMHardDiskDrive -VM $vm)
    $vhds = @()
    if ($drives.Count -gt 0) { $vhds = @(Get-VHD -Path $drives.Path) }
    $out = @(foreach ($v in $vhds) { [pscustomobject]@{ Path = $v.Path; ParentPath = $v.ParentPath } })
    [pscustomobject]@{ ok = $true; result = $out } | ConvertTo-Json -Depth 4 -Compress
""",
    # Removing it merges the differencing disks back (also after a failed export).
    "checkpoint_end": """
    $vm = Get-VM -Id $p.Id
    $c = @(Get-VMCheckpoint -VM $vm -Name $p.Checkpoint)
    if ($c.Count -gt 0) { Remove-VMCheckpoint -VM $vm -Name $p.Checkpoint }
    [pscustomobject]@{ ok = $true; result = $c.Count } | ConvertTo-Json -Compress
""",
    # An RCT reference point (ReferencePointType 1): one change tracking id per disk.
    # Hyper-V gives a reference point no name: one of this VM's that is not in Known (the
    # ones it had just before) was made by this very call, sent again after its answer was
    # lost, and is used rather than made twice (Found says so).
    "reference_point": """
    $ns = 'root\\virtualization\\v2'
    $mine = @(Get-CimInstance -Namespace $ns -ClassName 'Msvm_VirtualSystemReferencePoint' |
        Where-Object -Property VirtualSystemIdentifier -EQ -Value $p.Id)
    $new = @(foreach ($r in $mine) {
        $known = $false
        foreach ($k in $p.Known) { if ($r.InstanceID -eq $k) { $known = $true } }
        if (-not $known) { $r }
    })
    $found = $new.Count -eq 1
    if ($found) {
        foreach ($r in $new) { $rp = $r }
        $rv = 0
        $job = ''
    } else {
        $cs = Get-CimInstance -Namespace $ns -ClassName 'Msvm_ComputerSystem' |
            Where-Object -Property Name -EQ -Value $p.Id
        $svc = Get-CimInstance -Namespace $ns -ClassName 'Msvm_VirtualSystemReferencePointService'
        $r = Invoke-CimMethod -InputObject $svc -MethodName 'CreateReferencePoint' -Arguments @{
            AffectedSystem = $cs; ReferencePointSettings = ''; ReferencePointType = 1 }
        $rp = $r.ResultingReferencePoint
        $rv = [int]$r.ReturnValue
        $job = [string]$r.Job.InstanceID
    }
    [pscustomobject]@{ ok = $true; result = [pscustomobject]@{ ReturnValue = $rv; Found = $found
        Id = $rp.InstanceID; Rct = @($rp.ResilientChangeTrackingIdentifiers); Job = $job }
    } | ConvertTo-Json -Depth 4 -Compress
""",
    # The Ids of a VM's reference points (its own and any other tool's).
    "vm_reference_points": """
    $mine = @(Get-CimInstance -Namespace 'root\\virtualization\\v2' -ClassName 'Msvm_VirtualSystemReferencePoint' |
        Where-Object -Property VirtualSystemIdentifier -EQ -Value $p.Id)
    $out = @(foreach ($r in $mine) { [string]$r.InstanceID })
    [pscustomobject]@{ ok = $true; result = $out } | ConvertTo-Json -Compress
""",
    # A CIM method that answered 4096 runs as a job: its state (7 Completed; 8, 9, 10 failed).
    "cim_job": """
    $all = @(Get-CimInstance -Namespace 'root\\virtualization\\v2' -ClassName 'Msvm_ConcreteJob')
    $job = $all | Where-Object -Property InstanceID -EQ -Value $p.Job
    [pscustomobject]@{ ok = $true; result = [pscustomobject]@{ Found = [bool]$job; JobState = [int]$job.JobState
        ErrorCode = [int]$job.ErrorCode; ErrorDescription = [string]$job.ErrorDescription } } | ConvertTo-Json -Compress
""",
    # The reference point a completed CreateReferencePoint job made (CIM_AffectedJobElement).
    "job_reference_point": """
    $ns = 'root\\virtualization\\v2'
    $all = @(Get-CimInstance -Namespace $ns -ClassName 'Msvm_ConcreteJob')
    $job = $all | Where-Object -Property InstanceID -EQ -Value $p.Job
    $rp = Get-CimAssociatedInstance -InputObject $job -ResultClassName 'Msvm_VirtualSystemReferencePoint'
    [pscustomobject]@{ ok = $true; result = [pscustomobject]@{ Id = $rp.InstanceID
        Rct = @($rp.ResilientChangeTrackingIdentifiers) } } | ConvertTo-Json -Depth 4 -Compress
""",
    "destroy_reference_point": """
    $ns = 'root\\virtualization\\v2'
    $all = @(Get-CimInstance -Namespace $ns -ClassName 'Msvm_VirtualSystemReferencePoint')
    $rp = $all | Where-Object -Property InstanceID -EQ -Value $p.Id
    $rv = $null
    if ($rp) {
        $svc = Get-CimInstance -Namespace $ns -ClassName 'Msvm_VirtualSystemReferencePointService'
        $r = Invoke-CimMethod -InputObject $svc -MethodName 'DestroyReferencePoint' -Arguments @{
            AffectedReferencePoint = $rp }
        $rv = [int]$r.ReturnValue
    }
    [pscustomobject]@{ ok = $true; result = $rv } | ConvertTo-Json -Compress
""",
    # The byte ranges of a disk changed since an RCT id (GetVirtualDiskChanges).
    "rct_changes": """
    $svc = Get-CimInstance -Namespace 'root\\virtualization\\v2' -ClassName 'Msvm_ImageManagementService'
    $r = Invoke-CimMethod -InputObject $svc -MethodName 'GetVirtualDiskChanges' -Arguments @{ Path = $p.Path
        LimitId = $p.LimitId; TargetSnapshotId = ''; ByteOffset = $p.Offset; ByteLength = $p.Length }
    [pscustomobject]@{ ok = $true; result = [pscustomobject]@{ ReturnValue = [int]$r.ReturnValue
        Processed = $r.ProcessedByteLength; Offsets = @($r.ChangedByteOffsets); Lengths = @($r.ChangedByteLengths) }
    } | ConvertTo-Json -Depth 4 -Compress
""",
    # Just the names, for error messages that say what exists.
    "vm_names": """
    $names = @(foreach ($vm in @(Get-VM)) { $vm.Name })
    [pscustomobject]@{ ok = $true; result = $names } | ConvertTo-Json -Compress
""",
}


def ps_literal(params):
    """The parameters as the inside of a PowerShell single-quoted string.

    json.dumps with ensure_ascii leaves only printable ASCII: newlines and every non-ASCII
    character become \\n / \\uXXXX escapes, which ConvertFrom-Json turns back. That also
    matters for safety: PowerShell ends a single-quoted string at the typographic quotes
    U+2018-U+201B too, and those are escaped like any non-ASCII character. The one ASCII
    quote left, ', is doubled, the only escape a single-quoted string has; $ and ` mean
    nothing inside one.
    """
    return json.dumps(params, ensure_ascii=True, sort_keys=True).replace("'", "''")


def build_script(body, params):
    """Fixed text around one literal: the only place a parameter value appears.

    Indentation is dropped (PowerShell does not need it and the encoded command line must
    stay under cmd.exe's 8191 characters); the literal holds no line breaks, so it is
    never touched by that."""
    text = PROLOGUE % ps_literal(params) + body + EPILOGUE
    return "\n".join(line.strip() for line in text.splitlines() if line.strip()) + "\n"


def encoded_command(script):
    """The command line pywinrm's run_ps sends, to check its length before sending."""
    return "powershell -encodedcommand " + base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def parse_output(stdout, stderr, status, what, host):
    """The script's one JSON document, or PlatformError saying what came back instead."""
    text = stdout.decode("utf-8", errors="replace").lstrip("\ufeff")  # a UTF-8 console may start with a BOM
    lines = [line for line in text.splitlines() if line.strip()]
    err = stderr.decode("utf-8", errors="replace").strip()
    if len(lines) == 1:
        try:
            doc = json.loads(lines[0])
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "ok" in doc:
            return doc
    raise PlatformError(
        "PowerShell on %s did not answer %s with one JSON document (exit code %s): %s%s"
        % (host, what, status, (text.strip()[:500] or "no output"), ("; stderr: %s" % err[:1000]) if err else ""),
        "check that the Hyper-V PowerShell module is installed on %s (Get-Command Get-VM) and that the user may "
        "use it (member of Hyper-V Administrators)" % host,
    )


# Scripts that do something different when sent twice: not sent again when the connection
# fails, since the host may have run them before the answer was lost (the caller's cleanup
# then removes what they made). Every other script reads, or checks before it changes.
NOT_RETRIED = ("configure_vm",)

# Hyper-V categories that mean the request named something wrong, not that the host failed.
INPUT_CATEGORIES = ("ObjectNotFound", "InvalidArgument")


def script_error(doc, what, host, vm=None, fix=None):
    """InputError or PlatformError from the catch block's structured error."""
    category = doc.get("category") or "NotSpecified"
    target = "VM '%s'" % vm if vm else "the host"
    problem = "Hyper-V on %s failed %s for %s: %s (category %s, error id %s)" % (
        host,
        what,
        target,
        (doc.get("message") or "no message").strip(),
        category,
        doc.get("id") or "none",
    )
    details = dict(hyperv_category=category, hyperv_error_id=doc.get("id"), hyperv_message=doc.get("message"))
    if category in INPUT_CATEGORIES:
        default_fix = "check the name%s: Get-VM on %s lists the VMs this user can see" % (
            " '%s'" % vm if vm else "",
            host,
        )
        return InputError(problem, fix or default_fix, **details)
    if category == "PermissionDenied":
        default_fix = "the user needs to be a member of Hyper-V Administrators (or Administrators) on %s" % host
    elif category in ("InvalidOperation", "ResourceBusy"):
        default_fix = "the state of %s does not allow this now; read Hyper-V's message above" % target
    else:
        default_fix = "read Hyper-V's message above; run the same cmdlet on %s to see more" % host
    return PlatformError(problem, fix or default_fix, **details)


def _transient(exc):
    # A refused or reset connection may be WinRM restarting; a TLS failure never heals.
    if HAS_WINRM and isinstance(exc, requests.exceptions.SSLError):
        return False
    return HAS_WINRM and isinstance(exc, (requests.exceptions.ConnectionError, WinRMOperationTimeoutError))


def tls_warning(params):
    """The warning a module returns when certificate checks are off, else None. One text
    per host, with no secret in it: Ansible shows an identical warning once per run."""
    if params.get("validate_certs", True) or (params.get("scheme") or "https") != "https":
        return None  # over http there is no certificate to check (doc fragment vmigrate.v2v.hyperv)
    return (
        "TLS certificate verification is off for the Hyper-V host %s (validate_certs=false): anyone on "
        "the network path can pose as the host and read the password and the disk data sent to it. "
        "Fix: set validate_certs=true and give ca_path (the PEM CA that signed the WinRM listener's "
        "certificate)" % params.get("hostname")
    )


class HyperVConnection:
    """A pywinrm session to one Hyper-V host; ``run`` is the only way scripts are sent."""

    def __init__(self, params):
        require_winrm()
        self.host = params["hostname"]
        self.scheme = params.get("scheme") or "https"
        self.port = int(params.get("port") or (5986 if self.scheme == "https" else 5985))
        self.username = params["username"]
        self.transport = params.get("transport") or "ntlm"
        self.endpoint = "%s://%s:%d/wsman" % (self.scheme, self.host, self.port)
        validate = params.get("validate_certs", True)
        ca_path = params.get("ca_path") or None
        if self.transport == "basic" and self.scheme == "http":
            raise InputError(
                "transport basic over http would send the password of %s to %s unencrypted"
                % (self.username, self.host),
                "use scheme https (WinRM's HTTPS listener, port 5986) or transport ntlm, which encrypts "
                "messages over http",
            )
        encryption = params.get("message_encryption") or "auto"
        op_timeout = int(params.get("operation_timeout") or 120)
        self.read_timeout = op_timeout + 10
        self.session = winrm.Session(
            self.endpoint,
            auth=(self.username, params["password"]),
            transport=self.transport,
            server_cert_validation="validate" if validate else "ignore",
            # None: the system store; never the REQUESTS_CA_BUNDLE guess pywinrm makes by default.
            ca_trust_path=ca_path,
            message_encryption=encryption,
            operation_timeout_sec=op_timeout,
            read_timeout_sec=self.read_timeout,
            proxy=None,
        )
        self._retrying_send = _retry.retry(
            _transient,
            lambda script, what: "sending %s to %s" % (what, self.endpoint),
            "check that %s is up and WinRM listens on port %d (winrm enumerate winrm/config/listener)"
            % (self.host, self.port),
        )(self._send)

    def _send(self, script, what):
        return self.session.run_ps(script)

    def run(self, script_name, params, vm=None, what=None, fix=None):
        """Run ``SCRIPTS[script_name]`` with ``params``; return its ``result``."""
        what = what or script_name.replace("_", " ")
        script = build_script(SCRIPTS[script_name], params)
        if len(encoded_command(script)) > COMMAND_LINE_MAX:
            # A bug in the collection, not the user's: say so plainly.
            raise PlatformError(
                "the %s script with these parameters is %d characters encoded, over the %d cmd.exe accepts"
                % (script_name, len(encoded_command(script)), COMMAND_LINE_MAX),
                "report this to the collection's maintainers; pass fewer VMs per call meanwhile",
            )
        response = self._call(script, what, retry=script_name not in NOT_RETRIED)
        doc = parse_output(response.std_out, response.std_err, response.status_code, what, self.host)
        if not doc.get("ok"):
            raise script_error(doc, what, self.host, vm=vm, fix=fix)
        return doc.get("result")

    def _call(self, script, what, retry=True):
        try:
            if retry:
                return self._retrying_send(script, what)
            return self._send(script, what)
        except InvalidCredentialsError as exc:
            raise PlatformError(
                "WinRM at %s refused the credentials of %s (HTTP 401, transport %s)"
                % (self.endpoint, self.username, self.transport),
                "check username and password (a local account as 'user' or 'HOST\\user', a domain one as "
                "'DOMAIN\\user' or 'user@domain'), and that the %s auth is enabled in winrm/config/service/auth"
                % self.transport,
            ) from exc
        except requests.exceptions.SSLError as exc:
            raise PlatformError(
                "TLS verification of %s:%d failed: %s" % (self.host, self.port, _ssl_reason(exc)),
                "give ca_path (the PEM CA that signed the WinRM listener's certificate) and connect by the name the "
                "certificate carries; validate_certs=false disables verification and is unsafe",
            ) from exc
        except WSManFaultError as exc:
            raise PlatformError(
                "WinRM at %s answered %s with a fault: %s (code %s)"
                % (self.endpoint, what, exc.reason, exc.wsman_fault_code),
                "read WinRM's message above",
            ) from exc
        except WinRMTransportError as exc:
            hint = "read the status above"
            if exc.code == 500 and self.scheme == "http":
                hint = (
                    "the host refuses unencrypted messages over http (AllowUnencrypted=false, as it should): "
                    "use message_encryption auto with transport ntlm/kerberos/credssp, or scheme https"
                )
            raise PlatformError("WinRM at %s answered %s with HTTP %s" % (self.endpoint, what, exc.code), hint) from exc
        except (requests.exceptions.ConnectionError, WinRMOperationTimeoutError) as exc:
            if retry:
                raise  # not reached: _retrying_send turned it into PlatformError
            raise PlatformError(
                "the connection to WinRM at %s failed while %s (not sent again: Hyper-V may have done part of it "
                "before the answer was lost): %s" % (self.endpoint, what, exc),
                "check that %s is up and WinRM answers, then run the step again: it removes what this run made "
                "and starts that part again" % self.host,
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            # A host that accepts and never answers (hung WinRM service, a stuck proxy): the
            # request ends after operation_timeout + 10 s instead of waiting forever.
            raise PlatformError(
                "WinRM at %s did not answer in %d s (operation_timeout + 10) while %s"
                % (self.endpoint, self.read_timeout, what),
                "check that %s is up and its WinRM service answers (Test-WSMan %s); a host that is only slow needs a "
                "larger operation_timeout. Running the step again removes what this run made and starts that part again"
                % (self.host, self.host),
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise PlatformError(
                "cannot reach WinRM at %s: %s" % (self.endpoint, exc),
                "check hostname, port and scheme (HTTPS listener 5986, HTTP 5985) and that WinRM runs on %s"
                % self.host,
            ) from exc
        except WinRMError as exc:
            fix = "check the connection options"
            if "not installed" in str(exc):
                # pywinrm builds the transport lazily: a missing extra shows up on the first call.
                fix = "pip install pywinrm[%s] on the conversion host, or use transport ntlm" % self.transport
            raise PlatformError("WinRM at %s: %s" % (self.endpoint, exc), fix) from exc


def _ssl_reason(exc):
    # requests nests the ssl error two or three levels down; its text names the cause.
    text = str(exc)
    marker = "certificate verify failed:"
    if marker in text:
        return text[text.index(marker) :].split(" (_ssl", maxsplit=1)[0].rstrip("')")
    return text
