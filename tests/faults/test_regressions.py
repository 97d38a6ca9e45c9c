"""The bugs the property and fuzz runs found, one plain case each, so a regression fails
here by name (the generated runs find them again, but less directly)."""

from __future__ import annotations

import copy
import time

import pytest
from documents import RICH

from ansible_collections.vmigrate.v2v.plugins.module_utils import plan as _plan
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx


def ovf_text():
    spec = _spec.apply_maps(RICH, "vsphere")[0]
    return _ovf.ovf_from_spec(spec, {d["id"]: d["id"] + ".vmdk" for d in spec["disks"]})


@pytest.mark.parametrize("units", ["byte * 2^99999999", "byte * " + "9" * 5000, "byte * 0", "byte * 2^61"])
def test_ovf_allocation_units_are_bounded(units, reliability):
    reliability(
        "readers",
        "OVF allocation units out of bounds (2^99999999, 5000 digits, 0, 2^61)",
        "InputError '<OVF>: unknown allocation units ...'",
        "refused in < 1 s",
    )
    text = ovf_text().replace('capacityAllocationUnits="byte * 2^20"', 'capacityAllocationUnits="%s"' % units, 1)
    start = time.monotonic()
    with pytest.raises(InputError, match=r"generated OVF: unknown allocation units"):
        _ovf.spec_from_ovf(text, None, "generated OVF")
    assert time.monotonic() - start < 1


def test_ovf_capacity_of_5000_digits_is_an_input_error(reliability):
    reliability(
        "readers",
        "OVF disk capacity of 5000 digits",
        "InputError \"Disk capacity is '999...', not a whole number\" (the value cut to 40 digits)",
        "refused",
    )
    text = ovf_text().replace('ovf:capacity="64"', 'ovf:capacity="%s"' % ("9" * 5000), 1)
    with pytest.raises(InputError, match=r"Disk capacity is '9{40}\.\.\.', not a whole number"):
        _ovf.spec_from_ovf(text, None, "generated OVF")


def test_ovf_os_id_with_superscript_digits():
    text = ovf_text().replace('vmw:osType="debian11_64Guest"', "").replace('ovf:id="96"', 'ovf:id="²"')
    assert _ovf.spec_from_ovf(text, None, "generated OVF")["guest_os"]["family"] == "other"


@pytest.mark.parametrize(
    "key,value,field",
    [("numvcpus", "0", "numvcpus"), ("memSize", "-1", "memsize"), ("memSize", "0", "memsize")],
)
def test_vmx_counts_below_one_are_refused(key, value, field, reliability):
    reliability(
        "readers",
        "VMX counts below one (numvcpus 0, memSize 0 or -1)",
        "InputError '<VMX>: <field> is <value>, less than 1'",
        "refused",
    )
    spec = _spec.apply_maps(RICH, "vsphere")[0]
    text = _vmx.vmx_from_spec(spec, {d["id"]: d["id"] + ".vmdk" for d in spec["disks"]})
    text = "\n".join('%s = "%s"' % (key, value) if line.startswith(key + " ") else line for line in text.split("\n"))
    with pytest.raises(InputError, match=r"generated VMX: %s is %s, less than 1" % (field, value)):
        _vmx.spec_from_vmx(text, None, "generated VMX")


def test_vmx_keeps_unicode_separators_in_values():
    spec = _spec.new_spec(name="a\u2028b\x85c", annotations={"description": "x\u2029y"})
    back = _vmx.spec_from_vmx(_vmx.vmx_from_spec(spec, {}), None, "generated VMX")
    assert back["name"] == "a\u2028b\x85c" and back["annotations"]["description"] == "x\u2029y"


def test_vmx_cdrom_on_nvme_reads_as_sata():
    text = 'displayName = "vm"\nnvme0.present = "TRUE"\nnvme0:1.present = "TRUE"\nnvme0:1.deviceType = "cdrom-image"\n'
    text += 'nvme0:1.fileName = "/isos/x.iso"\n'
    assert _vmx.spec_from_vmx(text, None)["removable"] == [{"type": "cdrom", "bus": "sata", "path": "/isos/x.iso"}]


def domain(devices="", vcpu="2", memory='<memory unit="KiB">1048576</memory>'):
    return "<domain><name>vm</name>%s<vcpu>%s</vcpu><devices>%s</devices></domain>" % (memory, vcpu, devices)


@pytest.mark.parametrize(
    "xml,message",
    [
        (domain(vcpu="0"), "vcpu is 0, less than 1"),
        (domain(memory='<memory unit="KiB">512</memory>'), "<memory> is under 1 MiB"),
        (domain('<disk><target dev="vda"/><boot order="0"/></disk>'), "boot order is 0, less than 1"),
        (domain('<disk><target dev="sda" bus="usb"/></disk>'), "disk sda is on bus 'usb', which cannot be migrated"),
        ('<domain><name>vm</name><cpu><topology sockets="0"/></cpu></domain>', "sockets is 0, less than 1"),
    ],
)
def test_libvirt_values_no_spec_can_hold_are_refused(xml, message, reliability):
    reliability(
        "readers",
        "libvirt XML values no spec can hold (vcpu 0, memory under 1 MiB, boot order 0, a disk on usb, 0 sockets)",
        "InputError 'domain XML of vm: ...' naming the value (e.g. 'vcpu is 0, less than 1')",
        "refused",
    )
    with pytest.raises(InputError) as err:
        _libvirt.spec_from_libvirt_xml(xml, "domain XML of vm")
    assert err.value.problem.startswith("domain XML of vm: ") and message in err.value.problem


def test_libvirt_removable_on_usb_and_empty_network():
    xml = domain(
        '<disk device="cdrom"><target dev="sdb" bus="usb"/></disk>'
        '<disk device="floppy"><target dev="fda" bus="usb"/></disk>'
        '<interface type="network"><source network=""/></interface>'
    )
    spec = _libvirt.spec_from_libvirt_xml(xml)
    assert [(r["type"], r["bus"]) for r in spec["removable"]] == [("cdrom", "sata"), ("floppy", "fdc")]
    assert spec["nics"][0]["network"] is None


def test_long_leading_comment_does_not_hide_the_root(tmp_path):
    path = tmp_path / "vm.xml"
    path.write_text("<!-- %s -->\n%s" % ("x" * 10000, domain()))
    assert _read.read_descriptor(str(path))[0]["name"] == "vm"


def test_spec_floppy_on_another_bus_moves_to_the_floppy_controller():
    spec = _spec.new_spec(name="vm", firmware={"type": "uefi"}, removable=[{"type": "floppy", "bus": "ide"}])
    new, changes = _spec.apply_maps(spec, "kvm")
    assert new["removable"][0]["bus"] == "fdc" and changes[0]["field"] == "removable[0].bus"
    assert '<target dev="fda" bus="fdc" />' in _libvirt.libvirt_xml_from_spec(new, {})


PLAN = {
    "endpoints": {"a": {"platform": "kvm"}},
    "waves": [{"name": "w", "source": "a", "target": "a", "vms": ["vm1"]}],
}


@pytest.mark.parametrize(
    "edit,path",
    [
        (lambda p: p["waves"][0].update(source=["a"]), "waves[0].source"),
        (lambda p: p["endpoints"]["a"].update(placement=["pool"]), "endpoints.a.placement"),
        (lambda p: p["endpoints"].update({1: {"platform": "kvm"}}), "endpoints[1]"),
        (lambda p: p.update({"": 1}), "['']"),
        (lambda p: p["waves"][0].update({None: 1}), "waves[0][None]"),
    ],
)
def test_plan_problems_instead_of_tracebacks(edit, path, reliability):
    reliability(
        "plan",
        "plan keys and values found by fuzzing: a list for a name, a non-string or empty key, a None key",
        "InputError naming the key path (e.g. 'waves[0].source', 'endpoints[1]'), not a traceback",
        "refused as the plan loads: nothing run",
    )
    data = copy.deepcopy(PLAN)
    edit(data)
    with pytest.raises(InputError) as err:
        _plan.expand(_plan.parse(data, source="p.yml"))
    assert path in err.value.problem, err.value.message


def test_empty_values_read_as_absent():
    """An empty attribute or element means no value: the spec holds null, not '' (which it refuses)."""
    xml = (
        '<domain><name>vm</name><metadata><libosinfo:libosinfo xmlns:libosinfo="%s"><libosinfo:os id=""/>'
        '</libosinfo:libosinfo></metadata><devices><disk><source file=""/><target dev="vda"/></disk></devices></domain>'
        % _libvirt.LIBOSINFO_NS
    )
    spec = _libvirt.spec_from_libvirt_xml(xml)
    assert spec["disks"][0]["source"] == {"path": None} and spec["guest_os"]["osinfo"] is None
    text = ovf_text().replace("<Description>Debian GNU/Linux 11 (64-bit)</Description>", "<Description />")
    text = text.replace('ovf:href="disk0.vmdk"', 'ovf:href=""')
    spec = _ovf.spec_from_ovf(text, None, "generated OVF")
    assert spec["guest_os"]["description"] is None and spec["disks"][0]["source"] == {}
    vmx = 'displayName = "vm"\nethernet0.present = "TRUE"\nethernet0.connectionType = ""\n'
    assert _vmx.spec_from_vmx(vmx, None)["nics"][0]["network"] is None
