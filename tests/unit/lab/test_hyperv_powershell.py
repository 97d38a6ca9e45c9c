"""The lab's restricted PowerShell interpreter (tests/lab/hyperv/powershell.py) and its
Hyper-V host model: the subset it accepts behaves as Windows PowerShell 5.1 does, and
everything outside it is refused loudly, naming the construct."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv import powershell as ps  # noqa: E402
from hyperv.host import HyperVHost  # noqa: E402


def run(script, cmdlets=None):
    return ps.Interpreter(cmdlets or ps.GENERIC_CMDLETS).run(script)


def out_json(script, cmdlets=None):
    stdout, stderr, code = run(script, cmdlets)
    assert code == 0, stderr
    return json.loads(stdout.decode("utf-8"))


def err_text(stderr):
    assert stderr.startswith(b"#< CLIXML\r\n")
    return stderr.decode("utf-8")


# ---------------------------------------------------------------- accepted subset


def test_json_literal_round_trip_with_quotes_dollar_backtick_unicode():
    name = 'it\'s $env:x `n \u00fc\u6f22 \U0001f600 "q"'
    literal = json.dumps({"Name": name}, ensure_ascii=True).replace("'", "''")
    got = out_json(
        "$ErrorActionPreference = 'Stop'\n[Console]::OutputEncoding = [System.Text.Encoding]::UTF8\n"
        "$p = '%s' | ConvertFrom-Json\n[pscustomobject]@{ n = $p.Name } | ConvertTo-Json -Compress" % literal
    )
    assert got == {"n": name}


def test_output_is_code_page_437_unless_the_script_sets_utf8():
    script = "'%s' | ConvertTo-Json" % "\u00e9\u6f22"
    stdout = run(script)[0]
    assert stdout == '"\u00e9?"\r\n'.encode("cp437")  # what a Windows console without UTF-8 writes
    stdout = run("[Console]::OutputEncoding = [System.Text.Encoding]::UTF8\n" + script)[0]
    assert stdout.decode("utf-8") == '"\u00e9\u6f22"\r\n'


def test_typographic_quotes_end_a_single_quoted_string_as_in_powershell():
    # \u2019 closes the string, so the rest is parsed as code (and refused here).
    _stdout, stderr, code = run("$x = 'a\u2019; Get-Evil -Now 'b'")
    assert code == 1 and "Get-Evil" in err_text(stderr)
    utf8 = "[Console]::OutputEncoding = [System.Text.Encoding]::UTF8\n"
    assert out_json(utf8 + "'a\u2019\u2019b' | ConvertTo-Json") == "a\u2019b"


def test_foreach_if_hashtable_cast_and_member_enumeration():
    got = out_json(
        '$p = \'{"L":[{"n":"a","v":1},{"n":"b","v":3}]}\' | ConvertFrom-Json\n'
        "$big = @(foreach ($x in $p.L) { if ($x.v -gt 2) { $x.n } elseif ($x.v -eq 1) { 'one' } else { 'no' } })\n"
        "[pscustomobject]@{ names = $p.L.n; big = $big; count = $p.L.Count; s = [string]3; one = @('x')\n"
        "  empty = @(); flag = -not $false -and ($big.Count -ge 2) } | ConvertTo-Json -Depth 3 -Compress"
    )
    assert got == {
        "names": ["a", "b"],
        "big": ["one", "b"],
        "count": 2,
        "s": "3",
        "one": ["x"],
        "empty": [],
        "flag": True,
    }


def test_arrays_unroll_in_pipelines_like_powershell():
    # The 5.1 pitfalls the collection's scripts avoid by wrapping results in an object.
    assert run("@() | ConvertTo-Json")[0] == b""
    assert out_json("@('a') | ConvertTo-Json") == "a"
    assert out_json("ConvertTo-Json -InputObject @('a') -Compress") == ["a"]


def test_enums_serialize_as_numbers_and_cast_to_names():
    e = ps.PSEnum("T", "Running", 2)
    cmd = ps.Cmdlet("Get-Thing", {}, lambda args, inputs: [ps.PSObject(State=e)])
    cmdlets = dict(ps.GENERIC_CMDLETS, **{"Get-Thing": cmd})
    assert out_json("Get-Thing | ConvertTo-Json -Compress", cmdlets) == {"State": 2}
    assert out_json("$t = Get-Thing\n[string]$t.State | ConvertTo-Json", cmdlets) == "Running"


def test_depth_turns_deeper_objects_into_strings():
    got = out_json(
        "[pscustomobject]@{ a = [pscustomobject]@{ b = [pscustomobject]@{ c = 1 } } } | ConvertTo-Json -Compress"
    )
    assert got == {"a": {"b": "@{c=1}"}}  # the default -Depth is 2


def fail_boom(args, inputs):
    raise ps.PSRuntimeError("boom", "ObjectNotFound", "X,Y")


def test_try_catch_gives_the_error_record():
    host_cmd = ps.Cmdlet("Get-Fail", {}, fail_boom)
    cmdlets = dict(ps.GENERIC_CMDLETS, **{"Get-Fail": host_cmd})
    got = out_json(
        "$ErrorActionPreference = 'Stop'\ntry { Get-Fail } catch {\n"
        "[pscustomobject]@{ m = $_.Exception.Message; c = [string]$_.CategoryInfo.Category\n"
        "id = $_.FullyQualifiedErrorId }"
        " | ConvertTo-Json -Compress }",
        cmdlets,
    )
    assert got == {"m": "boom", "c": "ObjectNotFound", "id": "X,Y"}
    # Without Stop the error is not terminating: it goes to stderr, and the exit code is 1.
    stdout, stderr, code = run("try { Get-Fail } catch { 'caught' }", cmdlets)
    assert stdout == b"" and "boom" in err_text(stderr) and code == 1


def test_where_object_simplified_syntax():
    got = out_json(
        '$p = \'[{"Name":"A"},{"Name":"b"},{"Name":"c"}]\' | ConvertFrom-Json\n'
        "[pscustomobject]@{ eq = @($p | Where-Object -Property Name -EQ -Value 'a'); "
        "inn = @($p | Where-Object -Property Name -In -Value @('B', 'c')) } | ConvertTo-Json -Compress"
    )
    assert got == {"eq": [{"Name": "A"}], "inn": [{"Name": "b"}, {"Name": "c"}]}


# ---------------------------------------------------------------- refused constructs


@pytest.mark.parametrize(
    "script, construct",
    [
        ('$x = "a $y"', "double-quoted"),
        ("$x = 'a' + 'b'", "arithmetic"),
        ("Get-Foo -Name 'x'", "the cmdlet Get-Foo"),
        ("ConvertTo-Json 'x'", "positional argument"),
        ("'x' | ConvertTo-Json -Depht 3", "no parameter -Depht"),
        ("'x' | ConvertTo-Json -Compress 3", "is a switch and takes no value"),
        ("$x = 'a'.ToUpper()", "method calls"),
        ("Invoke-Expression -Command 'x'", "Invoke-Expression"),
        ("& 'x'", "call operator"),
        ("$x = 'a' `\n", "backtick"),
        ("function f { }", "keyword 'function'"),
        ("while ($true) { }", "keyword 'while'"),
        ("try { } finally { }", "try without catch"),
        ("try { } catch [System.Exception] { }", "typed catch"),
        ("$x = @'\nhere\n'@", "here-strings"),
        ("$x = [IO.File]::ReadAllText", "[IO.File]::ReadAllText"),
        ("$x = [IO.File]::ReadAllText('c:\\x')", "unexpected '('"),
        ("$x = [xml]'<a/>'", "cast [xml]"),
        ("'a' | ForEach-Object { $_ }", "ForEach-Object"),
        ("$ErrorActionPreference = 'SilentlyContinue'", "ErrorActionPreference"),
        ("$x = 1 -like 'a'", "operator -like"),
        ("$x = ${a b}", "variable form"),
        ("Get-VM -Name 'x'", "the cmdlet Get-VM"),  # generic cmdlets only: no host model here
    ],
)
def test_outside_the_subset_is_refused_naming_the_construct(script, construct):
    stdout, stderr, code = run(script)
    assert code == 1 and stdout == b""
    text = err_text(stderr)
    assert "ParserError" in text and construct in text


def test_objects_are_not_formatted_as_tables():
    cmd = ps.Cmdlet(
        "Get-Thing", {}, lambda args, inputs: [ps.PSObject("Microsoft.HyperV.PowerShell.VirtualMachine", Name="a")]
    )
    _stdout, stderr, code = run("Get-Thing", dict(ps.GENERIC_CMDLETS, **{"Get-Thing": cmd}))
    assert code == 1 and "pipe it into ConvertTo-Json" in err_text(stderr)


# ---------------------------------------------------------------- the Hyper-V host model


@pytest.fixture
def host(tmp_path):
    h = HyperVHost.init(str(tmp_path / "state"), str(tmp_path / "share"))
    h.new_vm(
        "g1",
        generation=1,
        cpus=2,
        memory_mib=512,
        disks=[{"size": 32 << 20}, {"size": 16 << 20, "controller": "SCSI"}],
        nics=[{"switch": "lab", "mac": None}],
    )
    h.new_vm(
        "web[1]",
        generation=2,
        disks=[{"size": 8 << 20, "type": "Fixed"}],
        nics=[{"switch": "lab", "mac": "00:15:5D:00:00:01", "vlan": 7}],
    )
    return h


def hv(host, body):
    stdout, stderr, code = host.run_powershell("$ErrorActionPreference = 'Stop'\n" + body)
    assert code == 0, stderr
    return json.loads(stdout)


def test_get_vm_unknown_name_is_hyperv_error(host):
    _stdout, stderr, code = host.run_powershell("$ErrorActionPreference = 'Stop'\nGet-VM -Name 'nope' | ConvertTo-Json")
    text = err_text(stderr)
    assert code == 1
    # Hyper-V's own words, category and error id (Windows Server 2016 and later).
    assert "A parameter is invalid. Hyper-V was unable to find a virtual machine with name nope." in text
    assert "CategoryInfo          : InvalidArgument" in text
    assert "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVMCommand" in text


def test_get_vm_name_takes_wildcards_like_hyperv(host):
    # 'web[1]' as a pattern matches 'web1', not itself; a pattern matching nothing is silent.
    assert host.run_powershell("@(Get-VM -Name 'web[1]') | ConvertTo-Json")[0] == b""
    got = hv(
        host, "ConvertTo-Json -InputObject @(Get-VM -Name 'G*' | Select-Object -Property Name, Generation) -Compress"
    )
    assert got == [{"Name": "g1", "Generation": 1}]


def test_disks_come_from_qemu_img(host):
    got = hv(
        host,
        "$d = @(Get-VMHardDiskDrive -VMName 'g1')\n"
        "$v = @(Get-VHD -Path $d.Path | Select-Object -Property Path, Size, VhdType)\n"
        "ConvertTo-Json -InputObject $v -Compress\n",
    )
    share = host.load()["share_local"]
    for disk in got:
        local = os.path.join(share, disk["Path"].split("\\")[-1])
        info = json.loads(
            subprocess.run(["qemu-img", "info", "--output=json", local], capture_output=True, check=True).stdout
        )
        assert info["format"] == "vhdx" and disk["Size"] == info["virtual-size"]
        assert disk["VhdType"] == 3  # Dynamic, as a number: no [string] cast
    drives = hv(
        host,
        "Get-VMHardDiskDrive -VMName 'g1' | Select-Object -Property ControllerNumber, ControllerLocation |"
        " ConvertTo-Json -Compress",
    )
    assert drives == [
        {"ControllerNumber": 0, "ControllerLocation": 0},
        {"ControllerNumber": 0, "ControllerLocation": 0},
    ]


def test_get_vhd_missing_file(host):
    _stdout, stderr, code = host.run_powershell(
        "$ErrorActionPreference = 'Stop'\nGet-VHD -Path 'C:\\VMs\\gone.vhdx' | ConvertTo-Json"
    )
    assert code == 1 and "is not an existing virtual hard disk file" in err_text(stderr)


def test_firmware_only_on_generation_2(host):
    # -VMName takes wildcards too: the exact VM is found with Where-Object and passed as -VM.
    assert (
        host.run_powershell("$ErrorActionPreference = 'Stop'\n@(Get-VMFirmware -VMName 'web[1]') | ConvertTo-Json")[0]
        == b""
    )
    got = hv(
        host,
        "$vm = Get-VM | Where-Object -Property Name -EQ -Value 'web[1]'\n$f = Get-VMFirmware -VM $vm\n"
        "[string]$f.SecureBoot | ConvertTo-Json",
    )
    assert got == "On"
    _stdout, stderr, code = host.run_powershell(
        "$ErrorActionPreference = 'Stop'\nGet-VMFirmware -VMName 'g1' | ConvertTo-Json"
    )
    assert code == 1 and "Generation 1" in err_text(stderr)


def test_network_adapters(host):
    got = hv(
        host,
        "$n = Get-VM | Where-Object -Property Name -EQ -Value 'web[1]' | Get-VMNetworkAdapter\n"
        "[pscustomobject]@{ mac = $n.MacAddress; dyn = $n.DynamicMacAddressEnabled\n"
        "vlan = $n.VlanSetting.AccessVlanId }"
        " | ConvertTo-Json -Compress",
    )
    assert got == {"mac": "00155D000001", "dyn": False, "vlan": 7}
