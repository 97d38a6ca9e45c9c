"""The lab guest boots under the lab's libvirtd and its data file tells what it did.

A transient domain (domain type from the lab facts: kvm, or qemu for TCG) boots a qcow2
copy of tests/lab/state/guest.raw with its serial console logged to a file. The guest
must print VMIGRATE-GUEST-READY and ticks there, and after power-off the data file read
from the disk by tests/lab/guest/guestlog.py (qemu-img + debugfs) must hold the boot
line and the ticks: after an ACPI shutdown (plus a "shutdown" line) and after a hard
power-off, and a second boot of the same disk must count as boot 2. It also boots from
SATA and virtio-scsi, buses a migration may pick.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab", "guest"))
import guestlog  # noqa: E402

DOMAIN_XML = """
<domain type='{type}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='{dev}' bus='{bus}'/>
    </disk>
    {controller}
    <serial type='pty'><log file='{serial}' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console>
  </devices>
</domain>
"""


def boot_timeout(lab):
    return 60 if lab["domain_type"] == "kvm" else 180


@pytest.fixture
def guest_disk(lab):
    """A qcow2 copy of the lab guest image in the lab's source pool (qemu can read it there)."""
    image = lab.get("guest_image")
    if not image or not os.path.isfile(image):
        pytest.fail("the lab has no guest image (%r): run tests/lab/lab up" % image, pytrace=False)
    pool_dir = lab["pool_paths"][lab["pools"]["source"]]
    disk = os.path.join(pool_dir, "vmigrate-labtest-%s.qcow2" % uuid.uuid4().hex[:8])
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", image, disk], check=True)
    yield disk
    os.unlink(disk)


class Guest:
    """One transient domain booting the disk; its serial console goes to a file."""

    def __init__(self, conn, lab, disk, serial, bus="virtio"):
        self.serial = serial
        self.timeout = boot_timeout(lab)
        name = "vmigrate-labtest-%s" % uuid.uuid4().hex[:8]
        dev = "vda" if bus == "virtio" else "sda"
        controller = "<controller type='scsi' model='virtio-scsi'/>" if bus == "scsi" else ""
        xml = DOMAIN_XML.format(
            type=lab["domain_type"], name=name, disk=disk, serial=serial, bus=bus, dev=dev, controller=controller
        )
        self.conn = conn
        self.dom = conn.createXML(xml, 0)
        self.uuid = self.dom.UUIDString()

    def console(self):
        try:
            with open(self.serial, errors="replace") as f:
                return f.read().replace("\r", "")
        except FileNotFoundError:
            return ""

    def wait_console(self, text, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text in self.console():
                return time.monotonic()
            time.sleep(0.5)
        tail = self.console()[-2000:]
        pytest.fail("%r not on the serial console within %ss; console tail:\n%s" % (text, timeout, tail))

    def gone(self):
        # A transient domain disappears when it stops.
        return self.uuid not in {d.UUIDString() for d in self.conn.listAllDomains()}

    def destroy(self):
        if not self.gone():
            self.dom.destroy()


def test_guest_boots_ticks_and_shuts_down_on_acpi(lab, libvirt_conn, guest_disk, tmp_path):
    t0 = time.monotonic()
    guest = Guest(libvirt_conn, lab, guest_disk, str(tmp_path / "serial1.log"))
    try:
        ready = guest.wait_console(guestlog.READY_MARKER + " boot=1", guest.timeout)
        print("domain type %s: marker %.1f s after define" % (lab["domain_type"], ready - t0))
        guest.wait_console("tick 1 2\n", 30)
        guest.dom.shutdown()  # the ACPI power button
        guest.wait_console(guestlog.POWEROFF_MARKER + " boot=1", 60)
        end = time.monotonic() + 30
        while not guest.gone() and time.monotonic() < end:
            time.sleep(0.5)
        assert guest.gone(), "the guest did not power off after its poweroff marker"
    finally:
        guest.destroy()

    log = guestlog.parse(guestlog.read_log(guest_disk))
    assert [b for b, _ in log["boots"]] == [1]
    seqs = [seq for b, seq in log["ticks"] if b == 1]
    assert len(seqs) >= 2 and seqs == list(range(1, len(seqs) + 1)), seqs
    assert [b for b, _ in log["shutdowns"]] == [1]


def test_guest_log_survives_hard_power_off_and_counts_boots(lab, libvirt_conn, guest_disk, tmp_path):
    for boot in (1, 2):
        guest = Guest(libvirt_conn, lab, guest_disk, str(tmp_path / ("serial%d.log" % boot)))
        try:
            guest.wait_console("%s boot=%d" % (guestlog.READY_MARKER, boot), guest.timeout)
            guest.wait_console("tick %d 2\n" % boot, 30)
        finally:
            guest.destroy()  # pulls the plug: no shutdown line, the ticks must still be there
        text = guestlog.read_log(guest_disk)
        log = guestlog.parse(text)
        assert [b for b, _ in log["boots"]] == list(range(1, boot + 1)), text
        ticks = [seq for b, seq in log["ticks"] if b == boot]
        assert ticks[:2] == [1, 2], text
        assert log["shutdowns"] == [], text
        # The console showed ticks only after they were synced: each one it showed is on disk.
        shown = [line for line in guest.console().splitlines() if line.startswith("tick %d " % boot)]
        assert len(ticks) >= len(shown), (shown, text)


@pytest.mark.parametrize("bus", ["sata", "scsi"])
def test_guest_boots_on_other_buses(lab, libvirt_conn, guest_disk, tmp_path, bus):
    # A migration may put the disk on SATA or virtio-scsi: the guest's initramfs has
    # those drivers, so it must boot and write there too.
    guest = Guest(libvirt_conn, lab, guest_disk, str(tmp_path / "serial.log"), bus=bus)
    try:
        guest.wait_console(guestlog.READY_MARKER + " boot=1 dev=/dev/sda2", guest.timeout)
    finally:
        guest.destroy()
    assert [b for b, _ in guestlog.parse(guestlog.read_log(guest_disk))["boots"]] == [1]
