"""Properties of the spec validator and apply_maps (engine/spec.py) on generated specs.

Valid specs validate and translate for every target; what apply_maps makes for KVM or
vSphere is a spec the writers of that platform accept. Specs with a field replaced by
junk fail, if at all, with an InputError naming a field, never another exception.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import junk, names, specs

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx

# The refusals a valid, translated spec may still meet in the VMware writers: hardware
# limits of one controller, which apply_maps does not redistribute.
VMWARE_LIMITS = ("too many", "more than 4 IDE devices")


@st.composite
def maps(draw, spec):
    """network_map/storage_map covering some of the spec's networks and storage."""
    nets = sorted({n["network"] for n in spec["nics"] if n["network"]})
    stores = sorted({d["storage"] or _spec.storage_of(d["source"]) for d in spec["disks"]} - {None})
    network_map = {
        n: draw(names() | st.fixed_dictionaries({"name": names(), "type": st.sampled_from([None, "bridge", "direct"])}))
        for n in nets
        if draw(st.booleans())
    }
    storage_map = {s: draw(names()) for s in stores if draw(st.booleans())}
    return draw(st.none() | st.just(network_map)), draw(st.none() | st.just(storage_map))


@given(st.data())
def test_valid_specs_validate_and_translate_for_every_target(data):
    spec = data.draw(specs())
    assert _spec.validate(spec) is spec
    before = copy.deepcopy(spec)
    network_map, storage_map = data.draw(maps(spec))
    strict = data.draw(st.booleans())
    for target in _spec.PLATFORMS:
        try:
            new, changes = _spec.apply_maps(spec, target, network_map, storage_map, strict=strict)
        except InputError as exc:
            # strict with a partial map is the one refusal a valid spec can meet
            assert strict and "is not in" in exc.problem, exc.message
            continue
        assert spec == before  # the input is not modified
        _spec.validate(new)
        for change in changes:
            assert set(change) == {"field", "from", "to", "reason"} and change["reason"]
        sup = _spec.SUPPORT[target]
        assert all(d["bus"] in sup["buses"] for d in new["disks"])
        assert all(n["model"] in sup["nic_models"] for n in new["nics"])
        if target == "kvm":
            files = {d["id"]: {"path": "/images/%s" % d["id"], "format": d["format"]} for d in new["disks"]}
            _libvirt.libvirt_xml_from_spec(new, files)
        elif target == "vsphere":
            assert new["guest_os"]["id"]
            for d in new["disks"]:
                d["capacity"] = d["capacity"] if d["capacity"] is not None else 1 << 30
            files = {d["id"]: "%s.vmdk" % d["id"] for d in new["disks"]}
            try:
                _vmx.vmx_from_spec(new, files)
                _ovf.ovf_from_spec(new, files)
            except InputError as exc:
                assert any(word in exc.problem for word in VMWARE_LIMITS), exc.message


def _paths(value, prefix=()):
    """Every key path in a spec, to pick one to spoil."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


@given(st.data())
@settings(max_examples=300)
def test_spoiled_specs_fail_with_an_input_error_naming_the_field(reliability, data):
    reliability(
        "readers",
        "fuzz: specs with one field replaced by junk (hypothesis, derandomized)",
        "never a traceback: an InputError 'spec field <path> ...' with a fix, or (a field validation leaves "
        "open) a spec every target's translation takes or refuses with an InputError",
        "nothing written (validation only)",
    )
    spec = data.draw(specs())
    paths = [p for p in _paths(spec) if p]
    path = data.draw(st.sampled_from(paths))
    value = data.draw(junk)
    parent = spec
    for key in path[:-1]:
        parent = parent[key]
    assume(parent[path[-1]] != value)
    parent[path[-1]] = value
    try:
        _spec.validate(spec)
    except InputError as exc:
        assert exc.problem.startswith("spec field ") and exc.details.get("field"), exc.message
        assert exc.fix
        return
    # accepted (a field validate does not constrain): translating must not crash either
    for target in _spec.PLATFORMS:
        try:
            _spec.apply_maps(spec, target, {}, {}, strict=False)
        except InputError:
            pass


@pytest.mark.parametrize("value", [5, ["x"], {"a": 1}, True])
def test_disk_source_location_must_be_text(value):
    """storage_of reads source.path/dev/pool/datastore: validate refuses other types there."""
    spec = _spec.new_spec(name="vm", disks=[{"id": "d0", "source": {"path": value}}])
    with pytest.raises(InputError, match=r"spec field disks\[0\]\.source\.path"):
        _spec.validate(spec)
