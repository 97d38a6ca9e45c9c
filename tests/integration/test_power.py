"""kvm_power and vsphere_power against the lab: the state libvirt and vcsim report after
each run is what is asserted (virDomainGetState, vm.runtime.powerState read through pyvmomi).

KVM: a persistent domain `lab-power-*` boots a qcow2 copy of the lab guest image. The
lab guest acts on the ACPI power button once it has booted (test_lab_kvm.py), so a
shutdown after its ready marker completes; a press while it is still booting is not
acted on within a short timeout, which is the timeout path. A domain without <acpi/>
cannot be asked at all.

vSphere: vcsim's VMs have no VMware Tools, so a shutdown cannot ask the guest and
on_timeout decides at once (ShutdownGuest itself is unit-tested, test_power_primitives.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim
from test_vsphere_import import conn_vars, destroy, find_vm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab", "guest"))
import guestlog  # noqa: E402

DOMAIN_XML = """
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features>{acpi}<apic/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'><log file='{serial}' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def libvirt_state(dom):
    """libvirt's own word for the domain's state."""
    import libvirt

    return {libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff"}.get(
        dom.state()[0], str(dom.state()[0])
    )


@pytest.fixture
def domain(lab, libvirt_conn, tmp_path, request):
    """A persistent, shut-off domain lab-power-*; ``request.param`` False leaves out <acpi/>."""
    acpi = getattr(request, "param", True)
    name = "lab-power-%s" % uuid.uuid4().hex[:8]
    disk = os.path.join(lab["pool_paths"][lab["pools"]["source"]], name + ".qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", lab["guest_image"], disk], check=True)
    serial = str(tmp_path / "serial.log")
    xml = DOMAIN_XML.format(
        type=lab["domain_type"], name=name, disk=disk, serial=serial, acpi="<acpi/>" if acpi else ""
    )
    dom = libvirt_conn.defineXML(xml)
    dom.serial = serial
    yield dom
    if dom.isActive():
        dom.destroy()
    dom.undefine()
    os.unlink(disk)


def kvm(lab, dom, **args):
    return dict(uri=lab["libvirt_uri"], vm=dom.name(), **args)


def wait_ready(lab, dom):
    timeout = 60 if lab["domain_type"] == "kvm" else 240
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.path.exists(dom.serial) and guestlog.READY_MARKER in open(dom.serial, errors="replace").read():
            return
        time.sleep(1)
    pytest.fail("the guest printed no ready marker within %d s" % timeout)


def test_kvm_power_start_shutdown_off_idempotent_and_check_mode(lab, domain, run_module):
    # Already off: nothing to do, whatever is asked.
    for state in ("off", "shutdown"):
        res = run_module("kvm_power", kvm(lab, domain, state=state))
        assert not res.get("failed") and not res["changed"] and res["method"] == "none", res
    # Check mode says it would start it, and does not.
    res = run_module("kvm_power", kvm(lab, domain, state="running"), check=True)
    assert res["changed"] and res["method"] == "start" and res["state_after"] == "running", res
    assert libvirt_state(domain) == "shutoff"

    res = run_module("kvm_power", kvm(lab, domain, state="running"))
    assert res["changed"] and res["method"] == "start" and res["state_before"] == "off", res
    assert libvirt_state(domain) == "running"
    again = run_module("kvm_power", kvm(lab, domain, state="running"))
    assert not again["changed"] and again["_recap_changed"] == 0, again

    # Pressed while the guest still boots: not off within 2 s; the domain is left running.
    res = run_module("kvm_power", kvm(lab, domain, state="shutdown", shutdown_timeout=2))
    assert res.get("failed") and res["method"] == "acpi" and res["seconds"] == 2, res
    assert "VM %s is still running" % domain.name() in res["msg"] and "within 2 s" in res["msg"], res
    assert "on_timeout=poweroff" in res["msg"]
    assert libvirt_state(domain) == "running"
    # Hard power off, then again: nothing to do.
    res = run_module("kvm_power", kvm(lab, domain, state="off"))
    assert res["changed"] and res["method"] == "poweroff" and res["state_after"] == "off", res
    assert libvirt_state(domain) == "shutoff"
    assert not run_module("kvm_power", kvm(lab, domain, state="off"))["changed"]

    # Booted: the guest acts on the ACPI button and the domain shuts off by itself.
    run_module("kvm_power", kvm(lab, domain, state="running"))
    wait_ready(lab, domain)
    res = run_module("kvm_power", kvm(lab, domain, state="shutdown"), check=True)
    assert res["changed"] and res["method"] == "acpi" and res["state_after"] == "off", res
    time.sleep(2)
    assert libvirt_state(domain) == "running"  # check mode pressed nothing
    res = run_module("kvm_power", kvm(lab, domain, state="shutdown", shutdown_timeout=120))
    assert res["changed"] and res["method"] == "acpi" and res["state_after"] == "off", res
    assert libvirt_state(domain) == "shutoff"
    assert guestlog.POWEROFF_MARKER in open(domain.serial, errors="replace").read()  # the guest's own shutdown
    assert not run_module("kvm_power", kvm(lab, domain, state="shutdown"))["changed"]


def test_kvm_power_forced_after_a_timeout(lab, domain, run_module):
    run_module("kvm_power", kvm(lab, domain, state="running"))
    res = run_module("kvm_power", kvm(lab, domain, state="shutdown", shutdown_timeout=2, on_timeout="poweroff"))
    assert res["changed"] and res["method"] == "forced" and res["state_after"] == "off", res
    assert "did not shut down within 2 s" in res["reason"]
    assert libvirt_state(domain) == "shutoff"


@pytest.mark.parametrize("domain", [False], indirect=True)
def test_kvm_shutdown_without_acpi_follows_on_timeout(lab, domain, run_module):
    run_module("kvm_power", kvm(lab, domain, state="running"))
    res = run_module("kvm_power", kvm(lab, domain, state="shutdown"))
    assert res.get("failed") and "cannot be asked to shut down" in res["msg"] and "<acpi/>" in res["msg"], res
    assert libvirt_state(domain) == "running"
    res = run_module("kvm_power", kvm(lab, domain, state="shutdown", on_timeout="poweroff"))
    assert res["method"] == "forced" and "cannot be asked" in res["reason"], res
    assert libvirt_state(domain) == "shutoff"


# --- vSphere (vcsim) ----------------------------------------------------------------------


@pytest.fixture
def vcsim_vm(lab, vsphere_si):
    """A powered-off VM lab-power-* made with CreateVM_Task (no disks: only power matters)."""
    name = "lab-power-%s" % uuid.uuid4().hex[:8]
    content = vsphere_si.RetrieveContent()
    dc = next(e for e in content.rootFolder.childEntity if e.name == lab["vcsim"]["datacenter"])
    host_parent = dc.hostFolder.childEntity[0]
    config = vim.vm.ConfigSpec(
        name=name,
        memoryMB=64,
        numCPUs=1,
        guestId="otherGuest64",
        files=vim.vm.FileInfo(vmPathName="[%s]" % lab["vcsim"]["datastore"]),
    )
    WaitForTask(dc.vmFolder.CreateVM_Task(config=config, pool=host_parent.resourcePool))
    yield name
    destroy(vsphere_si, name)


def power_state(si, name):
    return str(find_vm(si, name).runtime.powerState)


def test_vsphere_power(lab, vsphere_si, vcsim_vm, run_module):
    def run(check=False, env=None, **args):
        return run_module("vsphere_power", conn_vars(lab, vm=vcsim_vm, **args), check=check, env=env)

    assert not run(state="off")["changed"]
    res = run(state="running", check=True)
    assert res["changed"] and res["method"] == "start", res
    assert power_state(vsphere_si, vcsim_vm) == "poweredOff"
    res = run(state="running", env={"ANSIBLE_DIFF_ALWAYS": "1"})  # --diff
    assert res["changed"] and res["method"] == "start" and res["state_after"] == "running", res
    assert res["diff"] == {"before": {"power_state": "off"}, "after": {"power_state": "running"}}, res
    assert power_state(vsphere_si, vcsim_vm) == "poweredOn"
    again = run(state="running")
    assert not again["changed"] and again["_recap_changed"] == 0 and "diff" not in again, again

    # No VMware Tools in vcsim's guests: the guest cannot be asked; on_timeout decides at once.
    res = run(state="shutdown")
    assert res.get("failed") and "cannot be asked to shut down (VMware Tools running in the guest)" in res["msg"], res
    assert power_state(vsphere_si, vcsim_vm) == "poweredOn"
    res = run(state="shutdown", on_timeout="poweroff", check=True)
    assert res["changed"] and res["method"] == "forced", res
    assert power_state(vsphere_si, vcsim_vm) == "poweredOn"
    res = run(state="shutdown", on_timeout="poweroff")
    assert res["changed"] and res["method"] == "forced" and "cannot be asked" in res["reason"], res
    assert power_state(vsphere_si, vcsim_vm) == "poweredOff"
    assert not run(state="shutdown")["changed"]

    run(state="running")
    res = run(state="off", check=True)
    assert res["changed"] and power_state(vsphere_si, vcsim_vm) == "poweredOn"
    res = run(state="off")
    assert res["changed"] and res["method"] == "poweroff" and res["state_after"] == "off", res
    assert power_state(vsphere_si, vcsim_vm) == "poweredOff"
    assert not run(state="off")["changed"]
