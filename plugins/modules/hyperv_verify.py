#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hyperv_verify
short_description: Check a Hyper-V VM against the bundle it was imported from
version_added: 0.2.0
description:
  - Disk digests - reads the target's VHDX files through the share and compares their block digests with
    the ones the export recorded. The target must be off for this.
  - Spec - processors, memory, firmware (generation), disk and adapter counts, static MACs.
  - Boot check (O(boot_check=true)) - starts the VM (it stays running) and waits up to O(boot_timeout)
    seconds for its Heartbeat integration service to report OK. When the VM's Heartbeat service is off,
    only the power state is checked, and C(method) in RV(boot) says so. Not run in check mode.
  - Fails when anything differs, listing every mismatch.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.hyperv
  - vmigrate.v2v.hyperv_share
  - vmigrate.v2v.verify
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reads only; the boot check, which starts the VM, is skipped.
  diff_mode:
    support: none
    details: Its one change is the verified fingerprint in the target's Notes.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Verify the migrated VM and boot it
  vmigrate.v2v.hyperv_verify:
    hostname: hv01.example.com
    username: EXAMPLE\migrator
    password: "{{ hyperv_password }}"
    bundle: /srv/v2v/web01/hyperv
    share: /mnt/hv01
    share_windows: C:\VMs
    boot_check: true
"""

RETURN = r"""
ok:
  description: True when everything compared equal.
  returned: success
  type: bool
digests:
  description: V(compared), V(not compared), or V(verified earlier, before the target was started).
  returned: always
  type: str
disks:
  description: Per disk - id, where (the VHDX as Hyper-V names it), capacity, blocks, mismatched, equal.
  returned: always
  type: list
  elements: dict
spec:
  description: Per field - target, bundle, equal.
  returned: always
  type: dict
boot:
  description: Boot check result - ok, method (V(heartbeat) or V(power_state)), heartbeat, power_state, reason.
  returned: always
  type: dict
mismatches:
  description: Every difference found.
  returned: always
  type: list
  elements: str
summary:
  description: One readable line.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import verify_options, verify_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import share_args  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_hyperv_connection.argument_spec(**verify_options(**share_args())),
        supports_check_mode=True,
    )
    verify_step(module, HyperVPlatform)


if __name__ == "__main__":
    main()
