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
  - Where the VM has changed block tracking on (as vsphere_import makes it), only the
    areas C(QueryChangedDiskAreas) with changeId C(*) reports allocated are read; the rest
    counts as zeros. Otherwise the whole capacity is read; each disk's C(allocation) in
    RV(disks) says which.
  - The boot check (O(boot_check=true), alias O(power_on)) powers the VM on and waits until it is
    poweredOn. When the guest has VMware Tools, it also waits for a green Tools heartbeat; without
    Tools (as in the lab's simulator) only the power state is checked, and the result says so.
  - The comparison itself is the engine's, the same on every platform.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.vsphere
  - vmigrate.v2v.verify
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: In check mode the VM is not powered on; digests and spec are still checked.
  diff_mode:
    support: none
    details: Changes nothing but the power state of a boot check.
  platform:
    platforms: posix
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
    boot_check: true
"""

RETURN = r"""
digests:
  description:
    - V(compared) (each disk read back), V(not compared) (O(digests=false)), or V(verified earlier, before the
      target was started) - a running target is not read again when its provenance records that a verify found
      its disks equal to this bundle's (a first verify records that, which is its only change to the target).
  returned: always
  type: str
ok:
  description: True when everything compared equal.
  returned: success
  type: bool
mismatches:
  description: Every difference found.
  returned: always
  type: list
  elements: str
spec:
  description: Per field - target, bundle, equal.
  returned: always
  type: dict
summary:
  description: One readable line.
  returned: success
  type: str
boot:
  description: The boot check - ok, reason, power_state, tools_status, heartbeat (null when not asked).
  returned: always
  type: dict
disks:
  description: Per disk - id, where (the datastore file), capacity, blocks, mismatched, bytes_read, equal, and
    allocation (how the allocated areas were known - changed block tracking - or why the whole capacity was read).
  returned: when digests were compared
  type: list
  elements: dict
bytes_read:
  description: Bytes read back from the datastore (only the allocated areas where changed block tracking says
    which).
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import verify_options, verify_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import connection as _vsphere_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.platform import VspherePlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_vsphere_connection.argument_spec(**verify_options()), supports_check_mode=True
    )
    verify_step(module, VspherePlatform)


if __name__ == "__main__":
    main()
