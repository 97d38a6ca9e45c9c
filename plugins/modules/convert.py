#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: convert
short_description: Turn a bundle into one ready for a target platform
version_added: 0.1.0
description:
  - Reads the bundle in O(src) (written by an export module) and writes a bundle in O(dest) whose
    disks are in the target platform's format and whose spec is translated for that platform.
  - Disk formats are converted by C(qemu-img). A disk already in the wanted format is referenced
    in place (its absolute path is recorded) and not copied.
  - Block digests are format-independent. They are carried over from the input bundle, or, when it
    has none, computed while C(qemu-img) converts, by a second reader of the same source.
  - The network and storage maps are applied to the spec; a disk bus, controller or NIC model the
    target lacks becomes the target's default, and every such change is returned in RV(changes).
  - When the C(engine/descriptors) module_utils can, a libvirt domain XML (O(target_platform=kvm)) or a VMX
    (O(target_platform=vsphere)) is written into O(dest) too.
  - The output manifest says C(complete) only when everything is in place. A re-run on an output made
    from the same input with the same options changes nothing and reports C(changed=false).
  - After an incremental export (the input gained deltas in the same sync chain, nothing else changed)
    the disks are not converted again; the output takes the new deltas (by absolute path, they stay in
    the input bundle), digests, checkpoints and sync history, for the import to apply.
author:
  - vmigrate.v2v contributors (@vmigrate)
requirements:
  - qemu-img and qemu-nbd (Debian package qemu-utils) on the conversion host
  - with O(guest_conversion=auto) or V(inspect), libguestfs's Python binding (Debian package
    python3-guestfs) on the conversion host
  - the Python binding of libnbd (Debian package python3-libnbd) when digests must be computed from
    a non-raw disk
options:
  src:
    description: The input bundle directory.
    type: path
    required: true
  dest:
    description:
      - The output bundle directory. It is created when absent; it must be empty or a bundle written by
        this module.
    type: path
    required: true
  target_platform:
    description: The platform the output is for.
    type: str
    required: true
    choices: [kvm, vsphere, hyperv]
  disk_format:
    description:
      - Format of the output disks. Default by target, C(qcow2) for kvm, C(vmdk) for vsphere, C(vhdx)
        for hyperv.
    type: str
    choices: [raw, qcow2, vmdk, vhdx, vpc]
  disk_subformat:
    description:
      - The vmdk variant. Default C(monolithicFlat) for vsphere (a descriptor and a raw extent, which is
        what an upload to a datastore needs), C(monolithicSparse) otherwise.
    type: str
    choices: [monolithicSparse, monolithicFlat, streamOptimized]
  network_map:
    description:
      - Source network name to target network, port group or bridge. A value is a name, or a mapping
        C({name, type}) where type C(bridge) makes a libvirt bridge interface.
    type: dict
    default: {}
  storage_map:
    description: Source pool, datastore or directory to target pool, datastore or directory.
    type: dict
    default: {}
  block_size:
    description: Block size of digests computed here (digests carried from the input keep theirs).
    type: int
    default: 1048576
  force:
    description: Convert again even when the output is up to date.
    type: bool
    default: false
  guest_conversion:
    description:
      - What is done about the guest inside the disks, so that it boots on the target.
      - V(auto) inspects it with libguestfs. Toward kvm the guest is then converted after the import by
        M(vmigrate.v2v.kvm_guest_convert) (virt-v2v-in-place); a guest it cannot convert (Windows without
        O(virtio_win), a Linux distribution virt-v2v does not support) is refused here, before any disk is
        converted. Toward vsphere and hyperv the disk buses and NIC models become ones the guest has drivers
        for (its initramfs for the boot disk), each change in RV(changes) with its reason; a guest that
        cannot boot on the target is refused here.
      - V(inspect) inspects and chooses hardware the guest drives on every target, kvm included, and never
        converts it.
      - V(skip) does neither (the hardware is the translated spec's; nothing is read inside the guest).
      - A guest whose disks hold no operating system libguestfs recognises is left as it is, with a warning
        in RV(guest).
      - Falls back to the environment variable E(VMIGRATE_GUEST_CONVERSION).
    type: str
    choices: [auto, inspect, skip]
    default: auto
  virtio_win:
    description:
      - The virtio-win drivers (ISO or unpacked directory) for a Windows guest converted toward kvm, passed to
        virt-v2v as E(VIRTIO_WIN). Falls back to the environment variable E(VIRTIO_WIN).
    type: path
  planned:
    description:
      - Check mode only. What a checked export would have written (its RV(vmigrate.v2v.kvm_export#module:planned)),
        read instead of the bundle in O(src), which a checked export does not write. The result says what
        would be converted (RV(disks), RV(plan), RV(would)) and returns RV(planned) for the import.
    type: dict
attributes:
  check_mode:
    support: full
    description: Reports the plan (disks, formats, actions, spec changes) and writes nothing.
  diff_mode:
    support: full
    description: Shows the spec before and after translation.
notes:
  - Digests computed in flight read the source a second time; the page cache normally serves that read.
seealso:
  - module: vmigrate.v2v.descriptor_info
"""

EXAMPLES = r"""
- name: Prepare an exported KVM guest for vSphere
  vmigrate.v2v.convert:
    src: /srv/v2v/web01/export
    dest: /srv/v2v/web01/vsphere
    target_platform: vsphere
    network_map:
      default: VM Network
    storage_map:
      /var/lib/libvirt/images: datastore1

- name: Prepare a vSphere export for KVM, as qcow2 (the default), showing the spec changes
  vmigrate.v2v.convert:
    src: /srv/v2v/db01/export
    dest: /srv/v2v/db01/kvm
    target_platform: kvm
    network_map:
      VM Network: {name: br0, type: bridge}
  diff: true
  register: converted

- name: Show what changed in the spec
  ansible.builtin.debug:
    var: converted.changes
"""

RETURN = r"""
dest:
  description: The output bundle directory.
  returned: always
  type: str
guest:
  description:
    - What was found inside the guest and decided. C(mode); C(inspection) (C(os) linux, windows or
      unknown, C(distro), C(product), C(version), C(osinfo), C(kernels), C(boot_drivers) the drivers in every
      kernel's initramfs or built in, C(drivers) those it can load once booted); C(changes) the hardware
      changed for it (also in RV(changes)); C(warnings); C(action) V(convert) (virt-v2v-in-place after the
      import, toward kvm) or V(none), with its C(reason).
  returned: always
  type: dict
disks:
  description: One entry per disk of the output bundle (in check mode, what would be written).
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: Disk id., type: str}
    path: {description: "Absolute path of the disk image (for a monolithicFlat vmdk, the descriptor).", type: str}
    format: {description: Image format., type: str}
    subformat: {description: vmdk variant or null., type: str}
    capacity: {description: "Size the guest sees, in bytes.", type: int}
    bytes: {description: Bytes the image occupies on disk., type: int}
    action:
      description: C(convert), C(reference) (already in the target format; not copied) or C(refresh) (deltas carried).
      type: str
    digests_sha256: {description: SHA-256 of the disk's digest list (its fingerprint)., type: str}
spec:
  description: The translated spec, as stored in the output manifest.
  returned: always
  type: dict
changes:
  description: Every change made to the spec, each C({field, from, to, reason}).
  returned: always
  type: list
  elements: dict
deltas:
  description: Deltas the output gained from an incremental sync, each C({disk, index, bytes}).
  returned: when only deltas were carried over
  type: list
  elements: dict
plan:
  description: What is (or in check mode would be) done per disk.
  returned: when changed
  type: list
  elements: dict
descriptors:
  description: Descriptor files written into the output bundle, relative to it (e.g. C({libvirt_xml domain.xml})).
  returned: always
  type: dict
progress:
  description: Progress summaries of the conversions (bytes, seconds, rate, summary text).
  returned: always
  type: list
  elements: dict
planned:
  description:
    - In check mode, what the output bundle would hold - source, spec (translated), target_platform, sync and
      per disk id, action, path, format, subformat, capacity, allocated, digests_sha256 (null when not known yet)
      and deltas. Give it to the import's O(vmigrate.v2v.kvm_import#module:planned) in check mode.
  returned: in check mode, when changed
  type: dict
would:
  description: In check mode with O(planned), what would be done per disk, in one line.
  returned: with O(planned)
  type: str
fingerprint:
  description: Fingerprint of the output bundle (used as the bundle digest in provenance).
  returned: when changed and not in check mode
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._args import guest_options  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils._lock import bundle_lock  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.convert import Converter  # noqa: E402

ARGUMENT_SPEC = dict(
    src=dict(type="path", required=True),
    dest=dict(type="path", required=True),
    target_platform=dict(type="str", required=True, choices=["kvm", "vsphere", "hyperv"]),
    disk_format=dict(type="str", choices=["raw", "qcow2", "vmdk", "vhdx", "vpc"]),
    disk_subformat=dict(type="str", choices=["monolithicSparse", "monolithicFlat", "streamOptimized"]),
    network_map=dict(type="dict", default={}),
    storage_map=dict(type="dict", default={}),
    block_size=dict(type="int", default=1048576),
    force=dict(type="bool", default=False),
    planned=dict(type="dict"),
    **guest_options(),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        with bundle_lock(module.params["dest"], "convert of %s" % module.params["src"], module.check_mode):
            result = Converter(module.params).run(check_mode=module.check_mode, planned=module.params["planned"])
    except Exception as exc:  # noqa: BLE001 - one failure shape for every error
        fail_from_exception(module, exc)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
