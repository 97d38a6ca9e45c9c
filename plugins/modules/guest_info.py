#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: guest_info
short_description: Inspect the guest in disk images and say whether it can boot on a target platform
version_added: 0.3.0
description:
  - Reads the guest in O(disks) with libguestfs, read-only (its OS, kernels, the drivers in each initramfs and on
    disk), and decides as M(vmigrate.v2v.convert) would with the same O(guest_conversion) - whether the guest is
    converted toward kvm, or which disk buses and NIC models it gets - without writing anything.
  - A guest that cannot boot on O(target_platform) (no driver for any disk bus it offers, Windows toward kvm
    without O(virtio_win)) is reported in RV(problems) and RV(ok) is false; the module does not fail for it.
  - The preflight role runs it on a KVM source's disk files before anything is exported.
author:
  - vmigrate.v2v contributors (@vmigrate)
requirements:
  - libguestfs's Python binding (Debian package python3-guestfs) on the conversion host, which must see the disks
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  disks:
    description:
      - The guest's disk images, boot disk first - each with C(path) and C(format) (raw, qcow2, vmdk, vhdx, vpc).
    type: list
    elements: dict
    required: true
  spec:
    description:
      - The source's neutral spec (a vm_info module's C(spec)), translated here for the target to check its hardware.
    type: dict
  source_platform:
    description: Where the guest comes from (a guest from kvm is not converted toward kvm).
    type: str
    choices: [kvm, vsphere, hyperv]
  target_platform:
    description: Where it is going.
    type: str
    required: true
    choices: [kvm, vsphere, hyperv]
  guest_conversion:
    description:
      - As M(vmigrate.v2v.convert)'s option; V(skip) inspects nothing. Falls back to E(VMIGRATE_GUEST_CONVERSION).
    type: str
    choices: [auto, inspect, skip]
    default: auto
  virtio_win:
    description: As M(vmigrate.v2v.convert)'s option. Falls back to E(VIRTIO_WIN).
    type: path
attributes:
  check_mode:
    support: full
    details: Changes nothing in any mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Can web01's guest boot on vSphere?
  vmigrate.v2v.guest_info:
    disks: [{path: /var/lib/libvirt/images/web01.qcow2, format: qcow2}]
    source_platform: kvm
    target_platform: vsphere
  register: guest

- name: Stop here when it cannot
  ansible.builtin.assert:
    that: guest.ok
    fail_msg: "{{ guest.problems | join('; ') }}"
"""

RETURN = r"""
ok:
  description: False when the guest cannot boot on the target (see RV(problems)).
  returned: success
  type: bool
problems:
  description: Why the guest cannot boot on the target, each with its fix.
  returned: success
  type: list
  elements: str
guest:
  description:
    - As M(vmigrate.v2v.convert)'s RV(vmigrate.v2v.convert#module:guest) - C(inspection), C(action) (V(convert),
      V(none), or V(refused)), C(reason), C(changes) (the hardware it would change, with reasons), C(warnings), and
      C(spec) (the spec translated for the target, with those changes).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._args import guest_options  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import guest as _guest  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            disks=dict(type="list", elements="dict", required=True),
            spec=dict(type="dict"),
            source_platform=dict(type="str", choices=["kvm", "vsphere", "hyperv"]),
            target_platform=dict(type="str", required=True, choices=["kvm", "vsphere", "hyperv"]),
            **guest_options(),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        disks = [(d["path"], d.get("format") or "raw") for d in p["disks"]]
        record = _guest.check(
            disks, p["spec"], p["source_platform"], p["target_platform"], p["guest_conversion"], p["virtio_win"]
        )
    except Exception as exc:  # noqa: BLE001 - one failure shape for every error
        fail_from_exception(module, exc)
    module.exit_json(changed=False, ok=not record["problems"], problems=record["problems"], guest=record)


if __name__ == "__main__":
    main()
