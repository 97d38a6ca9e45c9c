#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hyperv_power
short_description: Start, shut down or power off a Hyper-V VM
version_added: 0.2.0
description:
  - V(shutdown) asks the guest to shut down through the Shutdown integration service (C(Stop-VM -Force),
    which returns when the guest is off). A VM whose Shutdown service is off cannot be asked; O(on_timeout)
    then decides, and RV(reason) says so.
  - V(off) turns the VM off hard (C(Stop-VM -TurnOff)); V(running) starts it (C(Start-VM)).
  - The VM is found by O(vm) - its name or Id.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.hyperv
  - vmigrate.v2v.power
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
    details: Says what would be done; sends nothing that changes the VM.
  diff_mode:
    support: full
    details: Shows the power state before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Shut the source down for the cutover, hard after 10 minutes
  vmigrate.v2v.hyperv_power:
    hostname: hv01.example.com
    username: EXAMPLE\migrator
    password: "{{ hyperv_password }}"
    vm: web01
    state: shutdown
    shutdown_timeout: 600
    on_timeout: poweroff
"""

RETURN = r"""
state_before:
  description: The VM's power state before the run - V(off), V(running), or Hyper-V's word for another state.
  returned: always
  type: str
state_after:
  description: The power state after the run, read back from Hyper-V.
  returned: always
  type: str
method:
  description: How the state was reached - V(none), V(start), V(guest), V(poweroff) or V(forced).
  returned: always
  type: str
reason:
  description: Why nothing was done, or why the VM was powered off hard; null otherwise.
  returned: always
  type: str
summary:
  description: One readable line about what was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import power_options, power_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import share_args  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_hyperv_connection.argument_spec(**power_options(**share_args(required=False))),
        supports_check_mode=True,
    )
    power_step(module, HyperVPlatform)


if __name__ == "__main__":
    main()
