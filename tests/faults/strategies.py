"""Hypothesis strategies for neutral specs (engine/spec.py, schema 1) and plans (docs/plan.md)."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

# Text a descriptor can carry: printable ASCII, tabs and newlines, and non-ASCII letters
# and separators (U+2028, NEL) that line-based formats must not split on. XML cannot hold
# other C0 controls, and XML parsers turn \r into \n, so those stay out of round trips.
CARRIED_CHARS = string.ascii_letters + string.digits + string.punctuation + " \t\néßЖ中\u2028\x85\U0001f600"
NAME_CHARS = string.ascii_letters + string.digits + "-_. éЖ中"


def names(chars=NAME_CHARS, max_size=24):
    """A name without surrounding whitespace (readers strip names, as hypervisors do)."""
    return st.text(chars, min_size=1, max_size=max_size).map(str.strip).filter(bool)


def texts(max_size=60):
    return st.text(CARRIED_CHARS, min_size=1, max_size=max_size)


uuids = st.uuids().map(str)
macs = st.lists(st.integers(0, 255), min_size=6, max_size=6).map(lambda b: ":".join("%02x" % x for x in b))
disk_ids = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=12)


@st.composite
def disks(draw, n_max=4):
    ids = draw(st.lists(disk_ids, max_size=n_max, unique=True))
    out = []
    for disk_id in ids:
        bus = draw(st.sampled_from(_spec.BUSES))
        out.append(
            _spec.new_disk(
                id=disk_id,
                bus=bus,
                controller=draw(st.sampled_from(_spec.CONTROLLERS)) if bus == "scsi" else None,
                capacity=draw(st.none() | st.integers(0, 1 << 44)),
                format=draw(st.none() | st.sampled_from(_spec.FORMATS)),
                source=draw(
                    st.just({})
                    | st.builds(lambda p: {"path": "/var/lib/libvirt/images/" + p}, names(string.ascii_letters))
                    | st.builds(lambda d: {"path": "/vmfs/volumes/%s/vm/vm.vmdk" % d}, names(string.ascii_letters))
                    | st.builds(lambda p: {"pool": p, "volume": "v"}, names(string.ascii_letters))
                ),
                storage=draw(st.none() | names()),
                boot_order=draw(st.none() | st.integers(1, 8)),
            )
        )
    return out


@st.composite
def nics(draw, n_max=3):
    return [
        _spec.new_nic(
            mac=draw(st.none() | macs),
            network=draw(st.none() | names()),
            network_type=draw(st.none() | st.sampled_from(_spec.NETWORK_TYPES)),
            model=draw(st.sampled_from(_spec.NIC_MODELS)),
        )
        for _step in range(draw(st.integers(0, n_max)))
    ]


@st.composite
def removables(draw, n_max=3):
    return [
        _spec.new_removable(
            type=draw(st.sampled_from(_spec.REMOVABLE_TYPES)),
            bus=draw(st.sampled_from(_spec.REMOVABLE_BUSES)),
            path=draw(st.none() | names().map(lambda p: "/isos/" + p)),
        )
        for _step in range(draw(st.integers(0, n_max)))
    ]


@st.composite
def specs(draw, guest_ids=None):
    """A spec that validate() accepts: every field drawn within schema 1 (guest ids from ``guest_ids``)."""
    if guest_ids is None:
        guest_ids = st.none() | st.sampled_from(sorted(_spec.GUEST_OS)) | names()
    fw_type = draw(st.sampled_from(_spec.FIRMWARES))
    guest_id = draw(guest_ids)
    return _spec.new_spec(
        name=draw(names()),
        uuid=draw(st.none() | uuids),
        firmware={"type": fw_type, "secure_boot": fw_type == "uefi" and draw(st.booleans())},
        cpu={k: draw(st.integers(1, 8)) for k in ("sockets", "cores", "threads")},
        memory_mib=draw(st.integers(1, 1 << 22)),
        disks=draw(disks()),
        nics=draw(nics()),
        removable=draw(removables()),
        guest_os={
            "family": draw(st.sampled_from(_spec.OS_FAMILIES)),
            "id": guest_id,
            "osinfo": draw(st.none() | st.sampled_from([u for _f, u in _spec.GUEST_OS.values() if u])),
            "description": draw(st.none() | texts()),
        },
        annotations={"description": draw(st.none() | texts()), "title": draw(st.none() | texts())},
        origin={"platform": draw(st.none() | st.sampled_from(_spec.ORIGINS)), "ref": None},
    )


# Values that break types: what a hand-edited YAML or JSON file can hold.
junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(["", "{{ x }}", "22:00", "25:99", "kvm", "vsphere", "full", "warm", "web01"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(), inner, max_size=3),
    max_leaves=6,
)
