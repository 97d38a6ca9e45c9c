"""Round trips spec -> descriptor -> spec through each writer and reader (engine/descriptors/).

Each format carries a subset of the spec; ``carried_*`` below states that subset (the
writers' and readers' docstrings and docs/spec.md), and the property is that it comes
back equal for any spec apply_maps made for the format's platform.
"""

from __future__ import annotations

import os
import string

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import names, specs

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _read
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx

# VMX and OVF name the guest by guestId (a free-form id would come back in VMX's own
# spelling), libvirt by osinfo URL: ids from the table round-trip.
KNOWN_GUESTS = st.none() | st.sampled_from(sorted(_spec.GUEST_OS))
EXT = {"vmdk": ".vmdk", "qcow2": ".qcow2", "vpc": ".vhd", "raw": ".img", "vhdx": ".vhdx", None: ".vmdk"}


def _common(spec):
    return {k: spec[k] for k in ("name", "uuid", "firmware", "memory_mib")}


def _vmware_cpu(spec):
    # VMX/OVF hold vCPUs and cores per socket: threads fold into cores
    cpu = spec["cpu"]
    return {"sockets": cpu["sockets"], "cores": cpu["cores"] * cpu["threads"], "threads": 1}


def carried_libvirt(spec):
    out = _common(spec)
    out["cpu"] = spec["cpu"]
    out["disks"] = [
        {
            "bus": d["bus"],
            "controller": "virtio-scsi" if d["bus"] == "scsi" else None,
            "format": d["format"] or "raw",
            "source": {"path": "/images/%s" % d["id"]},
            "boot_order": d["boot_order"],
        }
        for d in spec["disks"]
    ]
    out["nics"] = []
    for n in spec["nics"]:
        ntype = n["network_type"] or (None if n["network"] else "user")
        out["nics"].append(
            {
                "mac": n["mac"],
                "network": None if ntype == "user" else n["network"],
                "network_type": ntype,
                "model": n["model"],
            }
        )
    out["removable"] = spec["removable"]
    out["osinfo"] = spec["guest_os"]["osinfo"] or _spec.osinfo_for(spec["guest_os"]["id"])
    title = spec["annotations"]["title"]
    out["title"] = " ".join(title.splitlines()) if title else None
    out["description"] = spec["annotations"]["description"]
    return out


def read_libvirt(spec):
    out = _common(spec)
    out["cpu"] = spec["cpu"]
    out["disks"] = [{k: d[k] for k in ("bus", "controller", "format", "source", "boot_order")} for d in spec["disks"]]
    out["nics"] = [{k: n[k] for k in ("mac", "network", "network_type", "model")} for n in spec["nics"]]
    out["removable"] = spec["removable"]
    out["osinfo"] = spec["guest_os"]["osinfo"]
    out["title"] = spec["annotations"]["title"]
    out["description"] = spec["annotations"]["description"]
    return out


@given(specs(guest_ids=KNOWN_GUESTS))
def test_libvirt_round_trip(spec):
    spec = _spec.apply_maps(spec, "kvm")[0]
    files = {d["id"]: {"path": "/images/%s" % d["id"], "format": d["format"]} for d in spec["disks"]}
    xml = _libvirt.libvirt_xml_from_spec(spec, files, provenance={"source": spec["name"], "n": [1, {"a": None}]})
    back = _libvirt.spec_from_libvirt_xml(xml, "generated XML")
    assert read_libvirt(back) == carried_libvirt(spec)
    _spec.validate(back)
    assert _libvirt.read_provenance(xml) == {"source": spec["name"], "n": [1, {"a": None}]}


def carried_vmware(spec, fmt):
    out = _common(spec)
    out["cpu"] = _vmware_cpu(spec)
    out["nics"] = [{k: n[k] for k in ("mac", "network", "model")} for n in spec["nics"]]
    out["guest_id"] = spec["guest_os"]["id"]
    out["description"] = spec["annotations"]["description"]
    if fmt == "vmx":
        boot = min((d for d in spec["disks"] if d["boot_order"]), key=lambda d: d["boot_order"], default=None)
        out["disks"] = [
            {"bus": d["bus"], "controller": d["controller"], "path": d["id"] + ".vmdk", "boot": d is boot}
            for d in spec["disks"]
        ]
        # cd-roms in spec order (on sata or ide), then floppies; a floppy keeps its image
        cds = [
            {"type": "cdrom", "bus": r["bus"] if r["bus"] in ("sata", "ide") else "sata", "path": r["path"]}
            for r in spec["removable"]
            if r["type"] == "cdrom"
        ]
        out["removable"] = cds + [r for r in spec["removable"] if r["type"] == "floppy"]
    else:
        out["disks"] = [
            {
                "bus": d["bus"],
                "controller": d["controller"],
                "capacity": d["capacity"],
                # the descriptor states vmdk (streamOptimized), qcow2, or VHD by its file name
                "format": d["format"] if d["format"] in ("qcow2", "vpc") else "vmdk",
                "path": d["id"] + EXT[d["format"]],
            }
            for d in spec["disks"]
        ]
        out["removable"] = [
            {"type": r["type"], "bus": "fdc" if r["type"] == "floppy" else r["bus"], "path": None}
            for r in spec["removable"]
        ]
        out["title"] = spec["annotations"]["title"]
        out["guest_description"] = spec["guest_os"]["description"]
    return out


def read_vmware(spec, fmt):
    out = _common(spec)
    out["cpu"] = spec["cpu"]
    out["nics"] = [{k: n[k] for k in ("mac", "network", "model")} for n in spec["nics"]]
    out["guest_id"] = spec["guest_os"]["id"]
    out["description"] = spec["annotations"]["description"]
    if fmt == "vmx":
        out["disks"] = [
            {"bus": d["bus"], "controller": d["controller"], "path": d["source"]["path"], "boot": d["boot_order"] == 1}
            for d in spec["disks"]
        ]
    else:
        out["disks"] = [
            {k: d[k] for k in ("bus", "controller", "capacity", "format")} | {"path": d["source"]["path"]}
            for d in spec["disks"]
        ]
        out["title"] = spec["annotations"]["title"]
        out["guest_description"] = spec["guest_os"]["description"]
    out["removable"] = spec["removable"]
    return out


def _vmware_spec(spec):
    spec = _spec.apply_maps(spec, "vsphere")[0]
    for d in spec["disks"]:
        if d["capacity"] is None:
            d["capacity"] = 1 << 30
    return spec


@given(specs(guest_ids=KNOWN_GUESTS))
def test_vmx_round_trip(spec):
    spec = _vmware_spec(spec)
    try:
        text = _vmx.vmx_from_spec(spec, {d["id"]: d["id"] + ".vmdk" for d in spec["disks"]})
    except InputError as exc:
        assert "too many" in exc.problem or "IDE devices" in exc.problem
        return
    back = _vmx.spec_from_vmx(text, None, "generated VMX")
    assert read_vmware(back, "vmx") == carried_vmware(spec, "vmx")
    _spec.validate(back)


@given(specs(guest_ids=KNOWN_GUESTS))
def test_ovf_round_trip(spec):
    spec = _vmware_spec(spec)
    files = {d["id"]: d["id"] + EXT[d["format"]] for d in spec["disks"]}
    try:
        text = _ovf.ovf_from_spec(spec, files)
    except InputError as exc:
        assert "too many" in exc.problem or "IDE devices" in exc.problem
        return
    back = _ovf.spec_from_ovf(text, None, "generated OVF")
    assert read_vmware(back, "ovf") == carried_vmware(spec, "ovf")
    _spec.validate(back)


@given(specs(guest_ids=KNOWN_GUESTS), st.lists(st.binary(min_size=1, max_size=64), min_size=4, max_size=4))
@settings(max_examples=40)
def test_ova_round_trip(tmp_path_factory, spec, contents):
    """write_ova then read_ova, in place and extracted: the OVF's fields and the disk bytes come back."""
    spec = _vmware_spec(spec)
    spec["disks"] = spec["disks"][:4]
    tmp = tmp_path_factory.mktemp("ova")
    files = {}
    for d, data in zip(spec["disks"], contents, strict=False):
        path = tmp / (d["id"] + EXT[d["format"]])
        path.write_bytes(data)
        files[d["id"]] = str(path)
    try:
        text = _ovf.ovf_from_spec(spec, files)
    except InputError as exc:
        assert "too many" in exc.problem or "IDE devices" in exc.problem
        return
    ova = tmp / "out" / "vm.ova"
    ova.parent.mkdir()
    _ovf.write_ova(str(ova), text, list(files.values()))
    want = carried_vmware(spec, "ovf")
    back, missing = _read.read_descriptor(str(ova))
    assert missing == [] and back["origin"] == {"platform": "ova", "ref": str(ova)}
    for d in back["disks"]:
        d["source"] = {"path": d["source"]["member"]}
    assert read_vmware(back, "ovf") == want
    dest = tmp / "x"
    back, missing = _ovf.read_ova(str(ova), str(dest))
    assert missing == []
    for d, (_id, src) in zip(back["disks"], files.items(), strict=True):
        assert d["source"]["path"] == str(dest / os.path.basename(src))
        with open(src, "rb") as a, open(d["source"]["path"], "rb") as b:
            assert a.read() == b.read()
        d["source"] = {"path": os.path.basename(d["source"]["path"])}
    assert read_vmware(back, "ovf") == want
    assert sorted(os.listdir(dest)) == sorted(["vm.ovf"] + [os.path.basename(f) for f in files.values()])


# Names as a VMX carries them: any character, escaped (|XX) by the writer.
@given(st.text(string.printable + "\x00\x01\x7f\x85\u2028\u2029éЖ", min_size=1, max_size=30))
def test_vmx_carries_any_display_name_and_annotation(text):
    spec = _spec.new_spec(name=text, annotations={"description": text})
    back = _vmx.spec_from_vmx(_vmx.vmx_from_spec(spec, {}), None, "generated VMX")
    assert back["name"] == text and back["annotations"]["description"] == text


def test_names_strategy_has_no_surrounding_space():
    @given(names())
    def check(name):
        assert name == name.strip() and name

    check()
