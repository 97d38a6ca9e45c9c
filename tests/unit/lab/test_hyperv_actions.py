"""The Hyper-V host model's mutating cmdlets (tests/lab/hyperv/actions.py): each changes the
state file as Hyper-V would change the host, and fails with Hyper-V's category and words."""

import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv import actions  # noqa: E402
from hyperv.host import HyperVHost  # noqa: E402

PRELUDE = "$ErrorActionPreference = 'Stop'\n[Console]::OutputEncoding = [System.Text.Encoding]::UTF8\n"


@pytest.fixture
def host(tmp_path):
    h = HyperVHost.init(str(tmp_path / "state"), str(tmp_path / "share"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(tmp_path / "share" / "a.vhdx"), "8M"], check=True)
    return h


def ok(host, body):
    stdout, stderr, code = host.run_powershell(PRELUDE + body)
    assert code == 0, stderr
    return json.loads(stdout) if stdout.strip() else None


def fails(host, body):
    stdout, stderr, code = host.run_powershell(PRELUDE + body)
    assert code == 1, stdout
    return stderr.decode("utf-8").replace("_x000D__x000A_", "\n")


def vm_state(host, name):
    return next(vm for vm in host.load()["vms"] if vm["name"] == name)


def make(host, name="n1"):
    return ok(
        host,
        "$vm = New-VM -Name '%s' -Generation 2 -MemoryStartupBytes 268435456 -NoVHD\n"
        "Set-VM -VM $vm -ProcessorCount 2 -StaticMemory -Notes 'n'\n"
        "Set-VMFirmware -VM $vm -EnableSecureBoot Off\n"
        "Add-VMHardDiskDrive -VM $vm -ControllerType SCSI -ControllerNumber 0 -ControllerLocation 0"
        " -Path 'C:\\VMs\\a.vhdx'\n"
        "Set-VMNetworkAdapter -VM $vm -Name 'Network Adapter' -StaticMacAddress '52-54-00-76-6D-02'\n"
        "Connect-VMNetworkAdapter -VMName '%s' -Name 'Network Adapter' -SwitchName 'lab'\n"
        "[string]$vm.Id | ConvertTo-Json" % (name, name),
    )


def test_new_vm_and_its_settings_land_in_the_state_file(host):
    vm_id = make(host)
    vm = vm_state(host, "n1")
    assert vm["id"] == vm_id and vm["generation"] == 2 and vm["cpus"] == 2 and vm["state"] == "Off"
    assert vm["memory_startup"] == 256 << 20 and not vm["dynamic_memory"] and vm["notes"] == "n"
    assert vm["secure_boot"] is False
    assert vm["drives"] == [
        {"controller_type": "SCSI", "controller_number": 0, "controller_location": 0, "path": "C:\\VMs\\a.vhdx"}
    ]
    assert [(n["name"], n["switch"], n["mac"]) for n in vm["nics"]] == [("Network Adapter", "lab", "525400766D02")]


def test_wrong_state_unknown_vm_and_taken_slot(host):
    make(host)
    ok(host, "Start-VM -Name 'n1'")
    assert vm_state(host, "n1")["state"] == "Running"
    err = fails(host, "Set-VM -Name 'n1' -ProcessorCount 4")
    assert actions.STATE_SENTENCE in err and "CategoryInfo          : InvalidOperation" in err
    ok(host, "Set-VM -Name 'n1' -Notes 'notes change while running'")
    ok(host, "Stop-VM -Name 'n1' -TurnOff")
    assert vm_state(host, "n1")["state"] == "Off" and vm_state(host, "n1")["cpus"] == 2
    err = fails(host, "Start-VM -Name 'gone'")
    assert "unable to find a virtual machine with name gone" in err and "InvalidArgument" in err
    err = fails(
        host,
        "Add-VMHardDiskDrive -VMName 'n1' -ControllerType SCSI -ControllerNumber 0 -ControllerLocation 0"
        " -Path 'C:\\VMs\\a.vhdx'",
    )
    assert "already in use" in err
    err = fails(host, "Add-VMHardDiskDrive -VMName 'n1' -ControllerType IDE -Path 'C:\\VMs\\a.vhdx'")
    assert "no IDE controller" in err
    err = fails(
        host, "Add-VMHardDiskDrive -VMName 'n1' -ControllerType SCSI -ControllerLocation 1 -Path 'C:\\VMs\\x.vhdx'"
    )
    assert "cannot find the file" in err and "ObjectNotFound" in err
    assert fails(host, "New-VM -Name 'm' -MemoryStartupBytes 1000000 -NoVHD") and not any(
        vm["name"] == "m" for vm in host.load()["vms"]
    )


def test_names_may_repeat_as_on_hyperv(host):
    make(host, "twin")
    ok(host, "New-VM -Name 'twin' -NoVHD | Select-Object -Property Name | ConvertTo-Json")
    assert [vm["name"] for vm in host.load()["vms"]] == ["twin", "twin"]


def test_guest_shutdown_needs_the_integration_service(host):
    make(host)
    ok(host, "Start-VM -Name 'n1'")
    with host._locked():
        st = host.load()
        st["vms"][0]["guest_services"] = False
        host.save(st)
    err = fails(host, "Stop-VM -Name 'n1' -Force")
    assert "Shutdown integration service" in err
    ok(host, "Stop-VM -Name 'n1' -TurnOff")
    ok(host, "Remove-VM -Name 'n1' -Force")
    assert host.load()["vms"] == [] and os.path.exists(host.local_path(host.load(), "C:\\VMs\\a.vhdx"))


def test_heartbeat_answers_after_start_when_the_guest_has_integration_services(host):
    make(host)
    query = "Get-VMIntegrationService -VMName 'n1' -Name 'Heartbeat' | Select-Object -Property PrimaryStatusDescription"
    ok(host, "Start-VM -Name 'n1'")
    assert ok(host, query + " | ConvertTo-Json")["PrimaryStatusDescription"] == "No Contact"
    time.sleep(actions.HEARTBEAT_AFTER + 0.1)
    assert ok(host, query + " | ConvertTo-Json")["PrimaryStatusDescription"] == "OK"


def test_checkpoint_makes_a_differencing_disk_and_removal_merges_it(host, tmp_path):
    make(host)
    base = str(tmp_path / "share" / "a.vhdx")
    ok(host, "Checkpoint-VM -Name 'n1' -SnapshotName 'c1'")
    vhd = ok(host, "$d = Get-VMHardDiskDrive -VMName 'n1'\n"
             "Get-VHD -Path $d.Path | Select-Object -Property Path, VhdType, ParentPath | ConvertTo-Json")  # fmt: skip
    assert vhd["Path"].endswith(".avhdx") and vhd["VhdType"] == 4 and vhd["ParentPath"] == "C:\\VMs\\a.vhdx"
    child = host.local_path(host.load(), vhd["Path"])
    # The guest writes into the differencing disk; removing the checkpoint merges that.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 4096 4096", child], check=True, capture_output=True)
    ok(host, "Remove-VMCheckpoint -VMName 'n1' -Name 'c1'")
    assert not os.path.exists(child) and vm_state(host, "n1")["drives"][0]["path"] == "C:\\VMs\\a.vhdx"
    read = subprocess.run(
        ["qemu-io", "-f", "vhdx", "-c", "read -P 0x5a 4096 4096", base], capture_output=True, text=True, check=False
    )
    assert read.returncode == 0 and "Pattern verification failed" not in read.stdout
