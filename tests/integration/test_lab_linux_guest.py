"""The lab's real Linux guest (tests/lab/guest/build-linux), as issue 13's tests need it:
its initramfs carries only SATA/AHCI (and other VMware/Hyper-V disk drivers), no virtio;
it boots to VMIGRATE-GUEST-READY on a SATA disk under TCG and does not on a virtio disk.

The image is built by `tests/lab/guest/build-linux tests/lab/state` (minutes, needs
Debian's mirror the first time); these tests skip at once when it is not there.
Everything is read from the image itself: qemu-img, debugfs, lsinitramfs, qemu.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_DIR = os.path.join(HERE, "..", "lab", "guest")
sys.path.insert(0, GUEST_DIR)
import guestlog  # noqa: E402

IMAGE = os.environ.get("VMIGRATE_LINUX_GUEST", os.path.join(HERE, "..", "lab", "state", "linux-guest.qcow2"))
ROOT_PARTITION_OFFSET = 1024 * 1024  # build-linux's one partition starts at 1 MiB

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.exists(IMAGE),
        reason="no lab Linux guest at %s: build it with tests/lab/guest/build-linux tests/lab/state" % IMAGE,
    ),
]


@pytest.fixture(scope="module")
def root_fs(tmp_path_factory):
    """The image as raw, and debugfs's FILE?offset= spec of its root filesystem."""
    raw = str(tmp_path_factory.mktemp("linux-guest") / "disk.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", IMAGE, raw], check=True)
    assert guestlog.data_partition_offset(raw) == ROOT_PARTITION_OFFSET
    return "%s?offset=%d" % (raw, ROOT_PARTITION_OFFSET)


def debugfs(fs, request):
    return subprocess.run(["debugfs", "-R", request, fs], check=True, capture_output=True, text=True).stdout


def test_initramfs_has_ahci_and_no_virtio(root_fs, tmp_path):
    if not shutil.which("lsinitramfs"):
        pytest.fail("lsinitramfs is missing: install Debian's initramfs-tools-core (tests/lab/lab deps)")
    versions = re.findall(r"\binitrd\.img-(\S+)", debugfs(root_fs, "ls -l /boot"))
    assert len(versions) == 1, versions
    initrd = str(tmp_path / "initrd.img")
    debugfs(root_fs, "dump /boot/initrd.img-%s %s" % (versions[0], initrd))
    listing = subprocess.run(["lsinitramfs", initrd], check=True, capture_output=True, text=True).stdout
    modules = {os.path.basename(p).split(".ko")[0] for p in listing.split() if ".ko" in p}
    assert {"ahci", "libahci", "sd_mod", "ext4", "vmw_pvscsi", "hv_storvsc"} <= modules, sorted(modules)
    assert not {m for m in modules if m.startswith("virtio")}, sorted(modules)
    # The kernel tree on disk has the virtio drivers, so a conversion can add them.
    blockdir = "/lib/modules/%s/kernel/drivers/block" % versions[0]
    assert "virtio_blk.ko" in debugfs(root_fs, "ls " + blockdir)


def test_boots_to_marker_on_sata_not_on_virtio():
    seconds = guestlog.boot_check(IMAGE, accel="tcg", timeout=600, bus="sata", memory=512)
    print("boot to marker on SATA under TCG: %.0f s" % seconds)
    # On virtio the initramfs finds no root disk: after its 30 s wait it drops to its shell.
    with pytest.raises(guestlog.GuestLogError, match="Dropping to a shell"):
        guestlog.boot_check(IMAGE, accel="tcg", timeout=600, bus="virtio", memory=512, give_up_on="Dropping to a shell")
