"""Fixtures for the descriptor tests: sample descriptors beside real disk images."""

import pytest
from descriptor_samples import ESXI7_VMX, LIBVIRT_XML, qemu_img


@pytest.fixture
def esxi_dir(tmp_path):
    (tmp_path / "web01.vmx").write_text(ESXI7_VMX)
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicSparse", str(tmp_path / "web01.vmdk"), "64M")
    qemu_img("create", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(tmp_path / "web01_1.vmdk"), "32M")
    # web01_2.vmdk is deliberately absent
    return tmp_path


@pytest.fixture
def libvirt_dir(tmp_path):
    qemu_img("create", "-f", "qcow2", str(tmp_path / "db01.qcow2"), "64M")
    qemu_img("create", "-f", "raw", str(tmp_path / "db01-wal.img"), "16M")
    (tmp_path / "db01.xml").write_text(LIBVIRT_XML.replace("@DIR@", str(tmp_path)))
    return tmp_path
