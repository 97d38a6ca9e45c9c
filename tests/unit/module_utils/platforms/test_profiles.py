"""Unit tests of the per-platform profiles: name rules, vSphere's escaping, exact capacities."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.profiles import PROFILES, check_target, escape_name

MIB = 1024 * 1024


def test_vsphere_escapes_like_vcenter():
    assert escape_name("vsphere", "lab-b/slash") == "lab-b%2fslash"
    assert escape_name("vsphere", "50%") == "50%25"
    assert escape_name("vsphere", "a\\b") == "a%5cb"
    # '%' is escaped first-class, so an escape sequence typed by the user stays literal.
    assert escape_name("vsphere", "a%2fb") == "a%252fb"
    assert escape_name("vsphere", "web01") == "web01"
    assert escape_name("kvm", "a%b") == "a%b"


@pytest.mark.parametrize("platform", sorted(PROFILES))
def test_empty_names_are_refused(platform):
    for name in ("", "  ", None):
        with pytest.raises(InputError, match="is empty") as err:
            check_target(platform, name, [])
        assert "Fix: give a name" in err.value.message


def test_kvm_refuses_a_slash_up_front():
    with pytest.raises(InputError) as err:
        check_target("kvm", "lab/web", [])
    msg = err.value.message
    assert "the VM name 'lab/web' contains '/'" in msg and "libvirt domain name (libvirt refuses it)" in msg, msg
    assert "Fix: give another name (option name), e.g. 'lab-web'" in msg, msg
    check_target("kvm", "x" * 200 + "%\\", [])  # no length rule, no other forbidden character


def test_vsphere_name_length():
    check_target("vsphere", "a/" * 40, [])  # 80 characters, as given (escaping makes it longer)
    with pytest.raises(InputError) as err:
        check_target("vsphere", "v" * 81, [])
    assert "is 81 characters long; a vSphere VM name has at most 80 (vSphere refuses a longer one)" in str(err.value)
    assert "Fix: give a shorter name" in str(err.value)


@pytest.mark.parametrize("platform", sorted(PROFILES))
def test_capacity_must_be_a_multiple_of_the_platforms_granularity(platform):
    assert PROFILES[platform]["capacity_multiple"] == 512
    check_target(platform, "web", [{"id": "disk0", "capacity": 300 * MIB + 512}, {"id": "disk1", "capacity": 0}])
    with pytest.raises(InputError) as err:
        check_target(platform, "web", [{"id": "disk0", "capacity": MIB}, {"id": "disk1", "capacity": 300 * MIB + 100}])
    msg = str(err.value)
    assert "disk disk1 has a capacity of 314572900 bytes, not a multiple of 512" in msg, msg
    assert "Fix: grow the source disk to 314573312 bytes" in msg, msg


@pytest.mark.parametrize("fmt", ["qcow2", "raw", "vmdk", "vhdx"])
def test_the_formats_hold_a_512_multiple_exactly(tmp_path, fmt):
    """The fact in PROFILES, checked with qemu-img: 300 MiB + 512 bytes stays that size."""
    path = str(tmp_path / ("d." + fmt))
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, str(300 * MIB + 512)], check=True)
    info = subprocess.run(["qemu-img", "info", "--output=json", path], check=True, capture_output=True, text=True)
    assert '"virtual-size": 314573312' in info.stdout, info.stdout


@pytest.mark.parametrize("platform", sorted(PROFILES))
def test_directory_references_and_control_characters_are_refused(platform):
    for name in (".", ".."):
        with pytest.raises(InputError, match="is a directory reference") as err:
            check_target(platform, name, [])
        assert "in a plan, the VM's target_name" in err.value.message
    for ch in ("\n", "\t", "\x00", "\x1b", "\x7f"):
        with pytest.raises(InputError, match="contains the control character") as err:
            check_target(platform, "web%s01" % ch, [])
        assert "Fix: give another name (option name), e.g. 'web 01'" in err.value.message
    # Everything else is a name like any other: quotes, shell and PowerShell metacharacters, unicode.
    check_target(platform, "-web ü名前🚀 '\"`$;&|()$(x)`n<>*?[]..", [])


def test_length_rules_of_hyperv_and_kvm():
    check_target("hyperv", "h" * 100, [])
    with pytest.raises(InputError, match="is 101 characters long; a Hyper-V VM name has at most 100"):
        check_target("hyperv", "h" * 101, [])
    # libvirt names files after the domain (<name>.xml, <name>-disk0.qcow2): bytes count.
    check_target("kvm", "k" * 240, [])
    check_target("kvm", "名" * 80, [])  # 240 bytes
    with pytest.raises(InputError, match="is 243 bytes long in UTF-8; a libvirt domain name has at most 240") as err:
        check_target("kvm", "名" * 81, [])
    assert "Fix: give a shorter name" in err.value.message
