# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What each platform can hold, as data: the facts the engine translates and checks with.

Its own module (not platforms/base.py, beside the interface) so the engine can read it
without importing the interface, which imports the engine.
"""

from __future__ import annotations

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError

# Facts about each target platform, as data; check_target() applies them before an
# import writes anything.
# - capacity_multiple: the byte granularity a disk's capacity can have there. A size
#   that is not a multiple would be rounded up by the format (the guest would see a
#   bigger disk) or refused half-way, so it is refused up front.
# - name: what a VM name may be. ``forbidden`` characters are refused; ``escaped``
#   characters are written the way the platform writes them in its own names and
#   datastore paths (vCenter stores the VM called ``a/b`` as ``a%2fb``, in its
#   inventory and as its datastore folder).
PROFILES = {
    "kvm": {
        "buses": ("virtio", "scsi", "sata", "ide"),
        "controllers": ("virtio-scsi",),
        "nic_models": ("virtio", "e1000", "e1000e", "rtl8139"),
        "default_bus": "virtio",
        "default_controller": None,
        "default_nic": "virtio",
        # What convert writes for it: the disk format (and vmdk subformat if asked for
        # vmdk) and the descriptor beside the disks.
        "disk_format": "qcow2",
        "vmdk_subformat": "monolithicSparse",
        "descriptor": "libvirt_xml",
        # qcow2 and raw volumes hold any multiple of 512 bytes (qemu's sector).
        "capacity_multiple": 512,
        # libvirt refuses a '/' in a domain name: it names files (/etc/libvirt/qemu/<name>.xml,
        # and the import's volumes <name>-<disk>.<format>), so the name also has to leave room
        # for those suffixes in a file name's 255 bytes.
        "name": {
            "max_length": None,
            "max_bytes": 240,
            "forbidden": "/",
            "escaped": {},
            "what": "a libvirt domain name",
            "by": "libvirt",
        },
    },
    "vsphere": {
        "buses": ("scsi", "sata", "ide", "nvme"),
        "controllers": ("pvscsi", "lsilogic", "lsisas1068", "buslogic"),
        "nic_models": ("vmxnet3", "e1000", "e1000e"),
        "default_bus": "scsi",
        "default_controller": "pvscsi",
        "default_nic": "vmxnet3",
        # vSphere imports a monolithicFlat vmdk: a descriptor plus a raw extent it can upload.
        "disk_format": "vmdk",
        "vmdk_subformat": "monolithicFlat",
        "descriptor": "vmx",
        # A VMDK descriptor counts its extent in 512-byte sectors.
        "capacity_multiple": 512,
        "name": {
            "max_length": 80,
            "forbidden": "",
            "escaped": {"%": "%25", "/": "%2f", "\\": "%5c"},
            "what": "a vSphere VM name",  # 80 characters as given, before escaping
            "by": "vSphere",
        },
    },
    "hyperv": {
        # Generation 2 (uefi) has only the synthetic SCSI controller; generation 1 (bios)
        # must boot from IDE (engine/spec.apply_maps).
        "buses": ("scsi", "ide"),
        "controllers": (),
        "nic_models": ("hyperv",),
        "default_bus": "scsi",
        "default_controller": None,
        "default_nic": "hyperv",
        "disk_format": "vhdx",
        "vmdk_subformat": "monolithicSparse",
        "descriptor": None,  # no descriptor file: the import builds the VM from the spec
        # VHDX holds multiples of its logical sector (512); VHD (vpc) rounds a size up
        # to its CHS geometry, so only VHDX keeps an exact capacity.
        "capacity_multiple": 512,
        # Hyper-V Manager takes at most 100 characters (its own VHDX files are named after the
        # VM too); the import's file names replace what Windows refuses (share.safe_file_name).
        "name": {"max_length": 100, "forbidden": "", "escaped": {}, "what": "a Hyper-V VM name", "by": "Hyper-V"},
    },
}


def escape_name(platform, name):
    """``name`` as the platform writes it (vSphere: '%' -> %25, '/' -> %2f, '\\' -> %5c)."""
    escaped = PROFILES[platform]["name"]["escaped"]
    return "".join(escaped.get(ch, ch) for ch in name)


def check_target(platform, name, disks):
    """Refuse, before anything is written, a VM name or disk capacity ``platform`` cannot hold.

    ``disks`` are manifest disk records ({"id", "capacity"}). Raises InputError naming
    the name or the disk, and the fix.
    """
    profile = PROFILES[platform]
    rule = profile["name"]
    if not isinstance(name, str) or not name.strip():
        raise InputError(
            "the VM name %r is empty: %s needs at least one character" % (name, rule["what"]),
            "give a name (option name, or the spec's name)",
        )
    if name in (".", ".."):
        # Every platform makes paths from the name (a datastore folder, libvirt's files).
        raise InputError(
            "the VM name %r is a directory reference: %s would make paths from it" % (name, rule["what"]),
            "give a name with other characters (option name; in a plan, the VM's target_name)",
        )
    bad = sorted({ch for ch in name if ch in rule["forbidden"]})
    if bad:
        raise InputError(
            "the VM name %r contains %s, which is not allowed in %s (%s refuses it)"
            % (name, " ".join(repr(c) for c in bad), rule["what"], rule["by"]),
            "give another name (option name), e.g. %r; in a plan, the VM's target_name"
            % "".join("-" if ch in bad else ch for ch in name),
        )
    # Control characters (newline, tab, escape ...): libvirt's XML cannot hold most of them,
    # and in any inventory, log or file name they hide what the name is.
    bad = sorted({ch for ch in name if ord(ch) < 32 or ord(ch) == 127})
    if bad:
        raise InputError(
            "the VM name %r contains the control character%s %s, which %s cannot hold"
            % (name, "s" if len(bad) > 1 else "", " ".join(repr(c) for c in bad), rule["what"]),
            "give another name (option name), e.g. %r; in a plan, the VM's target_name"
            % "".join(" " if ch in bad else ch for ch in name),
        )
    if rule["max_length"] and len(name) > rule["max_length"]:
        raise InputError(
            "the VM name %r is %d characters long; %s has at most %d (%s refuses a longer one)"
            % (name, len(name), rule["what"], rule["max_length"], rule["by"]),
            "give a shorter name (option name; in a plan, the VM's target_name)",
        )
    size = len(name.encode("utf-8"))
    if rule.get("max_bytes") and size > rule["max_bytes"]:
        raise InputError(
            "the VM name %r is %d bytes long in UTF-8; %s has at most %d (%s names files after it, and a "
            "file name has at most 255 bytes)" % (name, size, rule["what"], rule["max_bytes"], rule["by"]),
            "give a shorter name (option name; in a plan, the VM's target_name)",
        )
    multiple = profile["capacity_multiple"]
    for disk in disks:
        capacity = int(disk.get("capacity") or 0)
        if capacity % multiple:
            raise InputError(
                "disk %s has a capacity of %d bytes, not a multiple of %d: %s disks cannot hold that size "
                "exactly (the guest would see a bigger disk)" % (disk.get("id"), capacity, multiple, platform),
                "grow the source disk to %d bytes (qemu-img resize, or in the source hypervisor) and export again"
                % (-(-capacity // multiple) * multiple),
            )
