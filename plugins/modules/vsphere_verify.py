#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vsphere_verify
short_description: Check a vSphere VM against the bundle it was made from
version_added: 0.1.0
description:
  - Reads each target disk's flat extent back from the datastore over HTTPS, computes
    its block digests and compares them with the bundle's manifest; checks CPU count,
    memory, firmware, disk count and capacity, NIC count and MACs.
  - With O(power_on=true) powers the VM on and waits until it is poweredOn. When the
    guest has VMware Tools, it also waits for a green Tools heartbeat; without Tools
    (as in the lab's simulator) only the power state is checked, and the result says so.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.vsphere
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode the VM is not powered on; digests and spec are still checked.
  diff_mode:
    support: none
  platform:
    platforms: posix
options:
  bundle:
    description: Directory of the bundle the VM was imported from.
    type: path
    required: true
  vm:
    description: Target VM (name, folder path, moid or instance UUID). Defaults to the spec's name.
    type: str
  digests:
    description: Read the disks back and compare digests (costs one read of every disk).
    type: bool
    default: true
  power_on:
    description: Power the VM on and check it runs.
    type: bool
    default: false
  boot_timeout:
    description: Seconds to wait for poweredOn (and the Tools heartbeat).
    type: int
    default: 300
requirements:
  - pyvmomi
"""

EXAMPLES = r"""
- name: Verify the imported VM and start it
  vmigrate.v2v.vsphere_verify:
    hostname: vcenter.example.com
    username: migrate@vsphere.local
    password: "{{ vcenter_password }}"
    bundle: /var/lib/vmigrate/web01
    power_on: true
"""

RETURN = r"""
disks:
  description: Per disk, the file read, the number of blocks and how many differed.
  returned: when digests were compared
  type: list
  elements: dict
bytes_read:
  description: Bytes read back from the datastore.
  returned: always
  type: int
power_state:
  description: The VM's power state after the check.
  returned: when power_on is true
  type: str
boot_check:
  description: What the power-on check relied on (heartbeat, or power state only).
  returned: when power_on is true
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import platform as _vsphere  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_vsphere.argument_spec(
            bundle=dict(type="path", required=True),
            vm=dict(type="str"),
            digests=dict(type="bool", default=True),
            power_on=dict(type="bool", default=False),
            boot_timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    if not _vsphere.HAS_PYVMOMI:
        module.fail_json(msg=missing_required_lib("pyvmomi"), exception=str(_vsphere.PYVMOMI_IMPORT_ERROR))
    params = module.params
    try:
        bundle = Bundle.load(params["bundle"])
        options = {
            "digests": params["digests"],
            "power_on": params["power_on"] and not module.check_mode,
            "boot_timeout": params["boot_timeout"],
        }
        with _vsphere.VspherePlatform(params) as platform:
            result = platform.verify(bundle, params["vm"] or bundle.manifest["spec"]["name"], options)
    except Exception as exc:
        fail_from_exception(module, exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
