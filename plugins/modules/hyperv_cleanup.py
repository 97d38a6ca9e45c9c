#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hyperv_cleanup
short_description: Remove what migrations left on a source Hyper-V VM
version_added: 0.2.0
description:
  - Removes what exports made on the VM and left - a temporary checkpoint C(vmigrate-sync-*) that an export
    killed before its own clean-up left (removing it merges its differencing disks back). Other checkpoints are
    the user's and stay. RCT reference points stay too - they hold no data and change nothing in the VM.
  - Never removes the VM or its disks. The rollback role runs it so that the source is as it was before the
    migration.
  - What is ours, the removal and the result are the engine's (engine/rollback.py), the same on every platform.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.hyperv
  - vmigrate.v2v.cleanup
  - ansible.builtin.action_common_attributes
options:
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
    details: Lists what would be removed (RV(removed)); removes nothing.
  diff_mode:
    support: full
    details: Shows what is left before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Remove what the migration left on the source (rollback)
  vmigrate.v2v.hyperv_cleanup:
    hostname: hv01.example.com
    username: "{{ hyperv_user }}"
    password: "{{ hyperv_password }}"
    vm: web01
    bundle: /var/lib/vmigrate/web01/export
  register: cleaned
"""

RETURN = r"""
removed:
  description: What was removed (in check mode, what would be) - each with C(kind) and C(name).
  returned: always
  type: list
  elements: dict
  sample: [{"kind": "checkpoint", "name": "vmigrate-sync-0a1b2c3d4e5f"}]
name:
  description: The VM's name.
  returned: always
  type: str
seconds:
  description: Duration of the run.
  returned: always
  type: float
summary:
  description: One readable line about what was removed.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import cleanup_options, cleanup_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import share_args  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_hyperv_connection.argument_spec(**cleanup_options(**share_args(required=False))),
        supports_check_mode=True,
    )
    cleanup_step(module, HyperVPlatform)


if __name__ == "__main__":
    main()
