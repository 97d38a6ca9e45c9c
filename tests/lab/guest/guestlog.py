"""Read and check the lab guest's data file without the project's code.

The lab guest (tests/lab/guest/build) appends to /v2v-guest.log on its ext4 data
partition (labelled v2vdata, /data inside the guest):
  boot N UPTIME       once per boot, N counting from 1
  tick N SEQ          every 2 s while running, SEQ counting from 1 in each boot
  shutdown N UPTIME   when it powers off through the ACPI power button
and prints VMIGRATE-GUEST-READY on its serial console once "boot N" is on disk.

read_log() gets the file out of a disk image of any format qemu-img reads (raw, qcow2,
vmdk, vhdx, with backing chains) with qemu-img and debugfs only, so a test can prove
what the guest wrote reached a migration target independently of the code under test.
boot_check() boots an image under plain qemu (outside libvirt) and waits for the marker.

CLI:
  guestlog.py read IMAGE [-f FORMAT] [-U]     print the data file
  guestlog.py boot-check IMAGE [--accel kvm|tcg] [--timeout S] [--bus virtio|sata] [--memory MIB]
                                              exit 0 and print the seconds to the marker
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

LOG_PATH = "/v2v-guest.log"
READY_MARKER = "VMIGRATE-GUEST-READY"
POWEROFF_MARKER = "VMIGRATE-GUEST-POWEROFF"
LINUX_PARTITION = 0x83


class GuestLogError(Exception):
    pass


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode:
        raise GuestLogError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode, proc.stderr.decode().strip()))
    return proc


def image_format(image: str, force_share: bool = False) -> str:
    cmd = ["qemu-img", "info", "--output=json"] + (["-U"] if force_share else []) + [image]
    return json.loads(_run(cmd).stdout)["format"]


def data_partition_offset(raw: str) -> int:
    """Byte offset of the first Linux partition in the MBR of a raw image.

    Hand-parsed: an MBR is four 16-byte entries at byte 446 (type at +4, first LBA at +8),
    simpler and more independent than parsing a partitioning tool's output.
    """
    with open(raw, "rb") as f:
        mbr = f.read(512)
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        raise GuestLogError("%s has no MBR partition table: not a lab guest disk" % raw)
    for i in range(4):
        entry = mbr[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype, start = entry[4], struct.unpack("<I", entry[8:12])[0]
        if ptype == LINUX_PARTITION and start:
            return start * 512
    raise GuestLogError("%s has no Linux (0x83) partition: not a lab guest disk" % raw)


def read_log(image: str, fmt: str | None = None, force_share: bool = False, path: str = LOG_PATH) -> str:
    """The text of the guest's data file in IMAGE (raw, qcow2, vmdk, ...).

    force_share (qemu-img -U) reads an image a running VM holds open; the result may then
    lag what the guest has written. Raises GuestLogError when the file is missing.
    """
    fmt = fmt or image_format(image, force_share)
    with tempfile.TemporaryDirectory(prefix="guestlog-") as tmp:
        raw = image
        if fmt != "raw" or not os.path.isfile(image):
            raw = os.path.join(tmp, "disk.raw")
            _run(["qemu-img", "convert"] + (["-U"] if force_share else []) + ["-f", fmt, "-O", "raw", image, raw])
        offset = data_partition_offset(raw)
        # debugfs opens the filesystem at a byte offset inside the file ("FILE?offset=N").
        proc = _run(["debugfs", "-R", "cat " + path, "%s?offset=%d" % (raw, offset)])
    # debugfs exits 0 even when the file or filesystem is missing; anything on stderr
    # past its version banner is such an error.
    errors = [ln for ln in proc.stderr.decode().splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise GuestLogError("%s: cannot read %s from the data partition: %s" % (image, path, "; ".join(errors)))
    return proc.stdout.decode()


def parse(text: str) -> dict:
    """{"boots": [(n, uptime)], "ticks": [(boot, seq)], "shutdowns": [(n, uptime)]}."""
    out: dict = {"boots": [], "ticks": [], "shutdowns": []}
    for line in text.splitlines():
        m = re.fullmatch(r"(boot|tick|shutdown) (\d+) (\S+)", line.strip())
        if not m:
            continue
        kind, n, value = m.groups()
        if kind == "tick":
            out["ticks"].append((int(n), int(value)))
        else:
            out[kind + "s"].append((int(n), float(value)))
    return out


# How the disk is attached: virtio-blk (what a KVM target gets), or SATA on an AHCI
# controller (what a VMware- or Hyper-V-like guest's initramfs can drive).
DISK_BUSES = {
    "virtio": ["-drive", "file=%s,format=qcow2,if=virtio"],
    "sata": ["-device", "ahci,id=ahci0", "-drive", "file=%s,format=qcow2,if=none,id=disk0",
             "-device", "ide-hd,drive=disk0,bus=ahci0.0"],
}  # fmt: skip


def boot_check(
    image: str,
    accel: str = "kvm",
    timeout: float = 30.0,
    fmt: str | None = None,
    bus: str = "virtio",
    memory: int = 256,
    give_up_on: str | None = None,
) -> float:
    """Boot IMAGE under qemu on a throw-away overlay; seconds until the ready marker.

    bus is a key of DISK_BUSES; memory in MiB. give_up_on: a serial console text that
    proves the boot failed (e.g. the initramfs's "Dropping to a shell"): stop waiting then.

    Raises GuestLogError when the marker does not appear within timeout (e.g. a nested
    /dev/kvm that opens but cannot run a Linux guest).
    """
    fmt = fmt or image_format(image)
    with tempfile.TemporaryDirectory(prefix="guest-bootcheck-") as tmp:
        overlay, serial = os.path.join(tmp, "overlay.qcow2"), os.path.join(tmp, "serial.log")
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(image), "-F", fmt, overlay])
        cmd = ["qemu-system-x86_64", "-accel", accel, "-m", str(memory), "-display", "none", "-no-reboot"]
        cmd += ["-serial", "file:" + serial] + [a.replace("%s", overlay) for a in DISK_BUSES[bus]]
        start, gave_up = time.monotonic(), ""
        with open(os.path.join(tmp, "qemu.err"), "w+") as err:
            qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
            try:
                while time.monotonic() - start < timeout and qemu.poll() is None:
                    text = _read(serial)
                    if READY_MARKER in text:
                        return time.monotonic() - start
                    if give_up_on and give_up_on in text:
                        gave_up = "; it printed %r" % give_up_on
                        break
                    # A vCPU KVM cannot emulate pauses qemu for good: no use waiting on.
                    if "internal error" in _read(err.name):
                        break
                    time.sleep(0.2)
            finally:
                qemu.kill()
                qemu.wait()
            raise GuestLogError(
                "the guest did not print %s within %ss under accel=%s on a %s disk%s (qemu: %r; serial tail: %r)"
                % (READY_MARKER, timeout, accel, bus, gave_up, _read(err.name)[:300], _read(serial)[-300:])
            )


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rd = sub.add_parser("read", help="print the guest's data file from a disk image")
    rd.add_argument("image")
    rd.add_argument("-f", "--format", help="image format (default: qemu-img info)")
    rd.add_argument("-U", "--force-share", action="store_true", help="read an image a VM holds open")
    bc = sub.add_parser("boot-check", help="boot the image under qemu and wait for the marker")
    bc.add_argument("image")
    bc.add_argument("--accel", default="kvm", choices=["kvm", "tcg"])
    bc.add_argument("--timeout", type=float, default=30.0)
    bc.add_argument("--bus", default="virtio", choices=sorted(DISK_BUSES))
    bc.add_argument("--memory", type=int, default=256, help="MiB")
    args = ap.parse_args(argv)
    for tool in ["qemu-img", "debugfs"] + (["qemu-system-x86_64"] if args.cmd == "boot-check" else []):
        if not shutil.which(tool):
            print("guestlog: %s is missing (Debian: qemu-utils, e2fsprogs, qemu-system-x86)" % tool, file=sys.stderr)
            return 2
    try:
        if args.cmd == "read":
            sys.stdout.write(read_log(args.image, args.format, args.force_share))
        else:
            print("%.1f" % boot_check(args.image, args.accel, args.timeout, bus=args.bus, memory=args.memory))
    except GuestLogError as e:
        print("guestlog: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
