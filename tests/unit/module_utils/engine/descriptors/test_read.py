"""Telling descriptor formats apart, and refusing what is none of them."""

import pytest
from descriptor_samples import ESXI7_VMX

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read


def test_detect_format(tmp_path, esxi_dir, libvirt_dir, reliability):
    reliability(
        "readers",
        "a descriptor that is none of the formats (other XML, binary junk) or does not exist",
        "InputError 'neither an OVF Envelope nor a libvirt <domain>'; 'is not a VMX, OVF, OVA or libvirt "
        "domain XML'; 'does not exist'",
        "nothing read",
    )
    assert _read.detect_format(str(esxi_dir / "web01.vmx")) == "vmx"
    renamed = tmp_path / "noext"
    renamed.write_text(ESXI7_VMX)
    assert _read.detect_format(str(renamed)) == "vmx"
    assert _read.detect_format(str(libvirt_dir / "db01.xml")) == "libvirt"
    other = tmp_path / "pom.xml"
    other.write_text("<project/>")
    with pytest.raises(InputError, match="neither an OVF Envelope nor a libvirt <domain>"):
        _read.read_descriptor(str(other))
    with pytest.raises(InputError, match="does not exist"):
        _read.read_descriptor(str(tmp_path / "nope.vmx"))
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01binary")
    with pytest.raises(InputError, match="is not a VMX, OVF, OVA or libvirt domain XML"):
        _read.read_descriptor(str(junk))
