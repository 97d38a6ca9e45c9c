#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_guest_convert
short_description: Convert the guest of an imported libvirt domain so it boots on KVM (virt-v2v-in-place)
version_added: 0.3.0
description:
  - Runs C(virt-v2v-in-place) on the disks of the domain imported from O(bundle), when the convert step decided
    so (its RV(vmigrate.v2v.convert#module:guest) C(action) is V(convert) - a Linux or Windows guest from vSphere
    or Hyper-V, inspected with O(vmigrate.v2v.convert#module:guest_conversion=auto)). virt-v2v adds the virtio
    drivers, rebuilds the initramfs, fixes the boot loader where it can and removes the source platform's tools.
  - Only once the data is final. When the bundle's last sync read a running source (a warm migration before its
    cutover), nothing is done and the result says the conversion waits for the cutover, since the next sync would
    write over a converted guest.
  - First the domain's disks are compared with the bundle's digests (the data arrived intact, as the verify step
    does); then they are converted, then read again. The domain's provenance records both (C(guest_converted));
    M(vmigrate.v2v.kvm_verify) later compares the disks with their digests after the conversion, and a later
    import writes every disk again (a delta from the source does not apply to a converted guest).
  - A run that dies mid-conversion leaves the domain marked incomplete, so the next import writes the disks again.
  - A re-run on a converted domain changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
requirements:
  - virt-v2v-in-place (Debian package virt-v2v, 2.x) and a working libguestfs appliance on the conversion host,
    which must see the domain's disk files (a local libvirt, or the same paths)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - ansible.builtin.action_common_attributes
options:
  bundle:
    description: The bundle the domain was imported from (written by M(vmigrate.v2v.convert) for kvm).
    type: path
    required: true
  vm:
    description: The domain's name (default the bundle's VM name); the import's O(vmigrate.v2v.kvm_import#module:name).
    type: str
    aliases: [name]
  final:
    description:
      - The bundle holds the source's final data although its last sync read the source running - the source was
        stopped since and a cold export found nothing new (the cutover role sets it). The conversion then runs.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Says whether the guest would be converted and why; reads nothing inside it.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Convert the guest imported from vSphere so it boots on virtio
  vmigrate.v2v.kvm_guest_convert:
    uri: qemu:///system
    bundle: /var/lib/vmigrate/web01/convert
    vm: web01
  register: guest

- name: What virt-v2v said
  ansible.builtin.debug:
    var: guest.conversion.warnings
"""

RETURN = r"""
action:
  description: V(convert) when the guest was (or in check mode would be) converted, V(none) otherwise.
  returned: always
  type: str
reason:
  description: Why (the convert step's decision, or why nothing is done now).
  returned: always
  type: str
deferred:
  description:
    - True when the guest is to be converted but not yet, because the bundle's last sync read a running source
      (the conversion runs at the cutover). The migrate role then skips the verify's boot check.
  returned: always
  type: bool
conversion:
  description:
    - What virt-v2v-in-place did - C(version), C(seconds), its C(messages), C(warnings) and C(info) lines (its
      machine-readable output), C(fingerprint) (the bundle's content the disks equalled before), C(disks) (each
      disk's digest after), C(verified_before), C(at). Null when nothing was converted.
  returned: always
  type: dict
disks:
  description: Per disk - id, where, before_sha256, after_sha256, blocks_changed, bytes_changed.
  returned: always
  type: list
  elements: dict
name:
  description: The domain's name.
  returned: always
  type: str
summary:
  description: One readable line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import guest_convert_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import argument_spec  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            bundle=dict(type="path", required=True),
            vm=dict(type="str", aliases=["name"]),
            final=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    guest_convert_step(module, KvmPlatform)


if __name__ == "__main__":
    main()
