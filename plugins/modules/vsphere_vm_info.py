#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vsphere_vm_info
short_description: Describe vSphere VMs as vmigrate specs
version_added: 0.1.0
description:
  - Finds VMs by name, inventory folder path, managed object id or instance UUID, and
    returns each as a neutral spec plus its vSphere facts (hardware version, firmware,
    disks with backing files and change tracking state, NICs with networks and MACs,
    snapshots, vmigrate provenance).
  - Changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.vsphere
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: N/A
  platform:
    platforms: posix
options:
  vms:
    description:
      - VMs to describe; each a name, a folder path (C(DC0/vm/web/web01) or C(web/web01)),
        a moid (C(vm-42)) or an instance UUID. Empty lists every VM of the datacenter
        (names only, without specs).
    type: list
    elements: str
    default: []
requirements:
  - pyvmomi
"""

EXAMPLES = r"""
- name: Describe one VM
  vmigrate.v2v.vsphere_vm_info:
    hostname: vcenter.example.com
    username: migrate@vsphere.local
    password: "{{ vcenter_password }}"
    vms: [web01]
  register: info

- name: Show its disks and their change tracking
  ansible.builtin.debug:
    msg: "{{ info.vms[0].disks }} cbt={{ info.vms[0].cbt_enabled }}"
"""

RETURN = r"""
vms:
  description: One entry per VM asked for (or per VM in the datacenter when none were).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name.
      type: str
    moid:
      description: Managed object id.
      type: str
    instance_uuid:
      description: vCenter instance UUID.
      type: str
    power_state:
      description: poweredOn, poweredOff or suspended.
      type: str
    hardware_version:
      description: Virtual hardware version, e.g. vmx-19.
      type: str
    firmware:
      description: bios or efi.
      type: str
    cbt_enabled:
      description: Whether changed block tracking is enabled (config.changeTrackingEnabled).
      type: bool
    disks:
      description: Virtual disks with key, backing file, datastore, capacity, controller and changeId.
      type: list
      elements: dict
    nics:
      description: NICs with MAC, network or port group name and model.
      type: list
      elements: dict
    snapshots:
      description: Snapshots (name, moid, id, created).
      type: list
      elements: dict
    provenance:
      description: The vmigrate provenance in extraConfig when this VM is a migration target, else null.
      type: dict
    spec:
      description: The neutral spec (see the collection's docs/architecture.md).
      type: dict
missing:
  description:
    - On failure only, V(true) when a VM named in O(vms) does not exist (no VM of that name, moid,
      UUID or path in the datacenter).
    - Roles test this instead of the message's words. Other failures (login, TLS, an ambiguous
      name) do not set it.
  returned: failure, when a VM in O(vms) does not exist
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import warn_insecure  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import connection as _vsphere_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.inventory import vm_facts  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.platform import VspherePlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_vsphere_connection.argument_spec(vms=dict(type="list", elements="str", default=[])),
        supports_check_mode=True,
    )
    if not _vsphere_connection.HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=str(_vsphere_connection.PYVMOMI_IMPORT_ERROR))
    warn_insecure(module, _vsphere_connection.tls_warning(module.params))
    try:
        with VspherePlatform(module.params) as platform:
            if module.params["vms"]:
                vms = [vm_facts(platform.find_vm(ref)) for ref in module.params["vms"]]
            else:
                vms = platform.list_vms()
    except Exception as exc:
        fail_from_exception(module, exc)
    module.exit_json(changed=False, vms=vms)


if __name__ == "__main__":
    main()
