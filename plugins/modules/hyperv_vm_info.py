#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hyperv_vm_info
short_description: Describe Hyper-V VMs as vmigrate specs
version_added: 0.1.0
description:
  - Describes the VMs of a Hyper-V host over WinRM, by name or all of them, each as a neutral
    spec plus Hyper-V's facts (state, generation, memory, firmware and secure boot template,
    disks with their controller slot and VHD/VHDX facts, network adapters with switch, MAC and
    VLAN, checkpoints, integration services).
  - Generation 1 is described as bios firmware, generation 2 as uefi with its secure boot setting.
  - Changes nothing. Safe to point at a production host to check the connection options.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.hyperv
  - ansible.builtin.action_common_attributes
options:
  vms:
    description:
      - VM names to describe, compared as Hyper-V compares them (case-insensitively, exactly,
        no wildcards). Empty describes every VM of the host.
      - A name that matches no VM fails, listing the VMs the host has.
    type: list
    elements: str
    default: []
    aliases: [name]
  share:
    description:
      - Ignored (this module reads no disk); accepted so one connection dictionary serves every
        step of M(vmigrate.v2v.step).
    type: path
  share_windows:
    description:
      - Ignored, like O(share).
    type: str
attributes:
  check_mode:
    support: full
    details: Reads only.
  diff_mode:
    support: N/A
  platform:
    platforms: posix
requirements:
  - pywinrm
"""

EXAMPLES = r"""
- name: Describe one VM of a Hyper-V host
  vmigrate.v2v.hyperv_vm_info:
    hostname: hv01.example.com
    username: EXAMPLE\migrate
    password: "{{ hyperv_password }}"
    ca_path: /etc/pki/example-ca.pem
    vms: [web01]
  register: info

- name: Show its disks
  ansible.builtin.debug:
    var: info.vms[0].disks
"""

RETURN = r"""
vms:
  description: One entry per VM (two VMs may share a name on Hyper-V; both are returned).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: VM name.
      type: str
    id:
      description: The VM's id (VMId), lower case.
      type: str
    uuid:
      description: The same id, under the name the other platforms' vm_info modules use.
      type: str
    provenance:
      description: The provenance an import of this collection wrote into the VM's Notes, or null.
      type: dict
    state:
      description: Hyper-V's state, e.g. Off, Running, Saved, Paused.
      type: str
    generation:
      description: 1 (BIOS) or 2 (UEFI).
      type: int
    processor_count:
      description: Virtual processors.
      type: int
    memory:
      description: Bytes at startup, whether dynamic memory is on, and its minimum and maximum.
      type: dict
    firmware:
      description: type (bios or uefi), secure_boot and secure_boot_template (generation 2).
      type: dict
    disks:
      description: >-
        Hard disks in controller order: controller_type (IDE or SCSI), controller_number,
        controller_location, path (as the host sees it), format (vhdx or vpc), vhd_type
        (Fixed, Dynamic or Differencing), capacity, file_size, parent_path.
      type: list
      elements: dict
    differencing:
      description: Whether a disk is a differencing disk (a checkpoint's AVHDX or a child VHD).
      type: bool
    nics:
      description: >-
        Network adapters with name, mac (null while a dynamic MAC is unassigned), dynamic_mac,
        switch, vlan_mode, vlan_id.
      type: list
      elements: dict
    checkpoints:
      description: Checkpoints (name, id, type).
      type: list
      elements: dict
    integration_services:
      description: Integration services with enabled and status (e.g. OK, No Contact).
      type: list
      elements: dict
    notes:
      description: The VM's Notes.
      type: str
    spec:
      description: The neutral spec (see the collection's docs/spec.md).
      type: dict
missing:
  description:
    - On failure only, V(true) when a VM named in O(vms) does not exist (no VM of that name on the host).
    - Roles test this instead of the message's words. Other failures (login, TLS, an ambiguous
      name) do not set it.
  returned: failure, when a VM in O(vms) does not exist
  type: bool
  sample: true
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import warn_insecure  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _hyperv_inventory  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import share_args  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_hyperv_connection.argument_spec(
            vms=dict(type="list", elements="str", default=[], aliases=["name"]), **share_args(required=False)
        ),
        supports_check_mode=True,
    )
    if not _hyperv_connection.HAS_WINRM:
        module.fail_json(msg=missing_required_lib("pywinrm"), exception=str(_hyperv_connection.WINRM_IMPORT_ERROR))
    warn_insecure(module, _hyperv_connection.tls_warning(module.params))
    try:
        conn = _hyperv_connection.HyperVConnection(module.params)
        vms = [_hyperv_inventory.vm_facts(raw) for raw in _hyperv_inventory.read_vms(conn, module.params["vms"])]
    except Exception as exc:
        fail_from_exception(module, exc)
    module.exit_json(changed=False, vms=vms)


if __name__ == "__main__":
    main()
