#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_vm_info
short_description: Describe libvirt domains as neutral specs
version_added: 0.1.0
description:
  - Lists the domains of a libvirt host, or describes one by O(name) or O(uuid).
  - Each domain comes back with its neutral spec (firmware, CPUs, memory, disks, NICs), its power
    state, its disks with capacity and allocation (C(virDomainGetBlockInfo)), its checkpoints and
    the provenance a vmigrate import recorded in its metadata.
  - Changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - ansible.builtin.action_common_attributes
options:
  vms:
    description: Domains to describe, each a name or a UUID. Empty describes every domain.
    type: list
    elements: str
    default: []
    aliases: [name, uuid]
attributes:
  check_mode:
    support: full
    details: Reads only.
  diff_mode:
    support: N/A
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Describe every domain of the local libvirt
  vmigrate.v2v.kvm_vm_info:
  register: kvm

- name: Describe one domain
  vmigrate.v2v.kvm_vm_info:
    uri: qemu:///system
    vms: [web01]
  register: web01

- name: Show its disks
  ansible.builtin.debug:
    var: web01.vms[0].disks
"""

RETURN = r"""
vms:
  description: One entry per domain.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Domain name., type: str}
    uuid: {description: Domain UUID., type: str}
    state: {description: 'Power state: running, shutoff, paused, ...', type: str}
    persistent: {description: Whether the domain is defined (not transient)., type: bool}
    spec: {description: The neutral spec (see docs/spec.md)., type: dict}
    disks:
      description: Disks with target, path, format, capacity, allocation and physical size in bytes.
      type: list
      elements: dict
    checkpoints: {description: Names of the domain's libvirt checkpoints., type: list, elements: str}
    provenance: {description: 'Provenance recorded by kvm_import, or null.', type: dict}
missing:
  description:
    - On failure only, V(true) when a VM named in O(vms) does not exist (no such domain name or UUID).
    - Roles test this instead of the message's words. Other failures (login, TLS, an ambiguous
      name) do not set it.
  returned: failure, when a VM in O(vms) does not exist
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import run_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import connection as _kvm_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_kvm_connection.argument_spec(
            vms=dict(type="list", elements="str", default=[], aliases=["name", "uuid"])
        ),
        supports_check_mode=True,
    )

    def describe(platform):
        if module.params["vms"]:
            return {"changed": False, "vms": [platform.info(platform.find_vm(ref)) for ref in module.params["vms"]]}
        return {"changed": False, "vms": platform.info_all()}

    run_step(module, KvmPlatform, describe)


if __name__ == "__main__":
    main()
