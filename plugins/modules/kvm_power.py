#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_power
short_description: Start, shut down or power off a libvirt domain
version_added: 0.1.0
description:
  - V(shutdown) presses the domain's ACPI power button (C(virDomainShutdownFlags) with the ACPI flag) and waits
    for the domain to be shut off. A domain without the C(<acpi/>) feature cannot be asked, and a guest that ignores
    the button is only seen as the timeout; either way O(on_timeout) decides, and RV(reason) says which happened.
  - V(off) destroys the domain (a hard power off); V(running) starts it.
  - The domain is found by O(vm) - its name or UUID.
  - What to do for each state, the wait and O(on_timeout) are the engine's, the same on every platform (the cutover
    and rollback roles use this step through M(vmigrate.v2v.step)).
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - vmigrate.v2v.power
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Says what would be done (RV(method), RV(state_after)); sends nothing to the VM.
  diff_mode:
    support: full
    details: Shows the power state before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Shut the source down for the cutover, hard after 10 minutes
  vmigrate.v2v.kvm_power:
    uri: qemu:///system
    vm: web01
    state: shutdown
    shutdown_timeout: 600
    on_timeout: poweroff
  register: stopped

- name: Power the source back on (rollback)
  vmigrate.v2v.kvm_power:
    uri: qemu:///system
    vm: web01
    state: running
"""

RETURN = r"""
state_before:
  description: The VM's power state before the run - V(off), V(running), or the platform's word for another state.
  returned: always
  type: str
state_after:
  description: The power state after the run, read back from the hypervisor (in check mode, the state it would have).
  returned: always
  type: str
method:
  description:
    - How the state was reached - V(none) (already there), V(start), V(acpi) (the guest shut down when asked),
      V(poweroff) (O(state=off)), or V(forced) (powered off hard because the graceful shutdown did not finish in time
      or the guest could not be asked, with O(on_timeout=poweroff)).
  returned: always
  type: str
reason:
  description:
    - Why nothing was done, or why the VM was powered off hard; in check mode also that a VM marked rolled back
      would not be started; null otherwise.
  returned: always
  type: str
marked_rolled_back:
  description: Whether this run marked the VM rolled back (false when it already was).
  returned: with O(mark_rolled_back)
  type: bool
rolled_back:
  description: When the VM was marked rolled back (UTC, ISO 8601).
  returned: with O(mark_rolled_back)
  type: str
note:
  description: The note the VM now shows first in its description (libvirt title/description, vSphere annotation).
  returned: with O(mark_rolled_back)
  type: str
name:
  description: The VM's name.
  returned: always
  type: str
seconds:
  description: Duration of the run, including the wait for the guest.
  returned: always
  type: float
summary:
  description: One readable line about what was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import power_options, power_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import argument_spec  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(argument_spec=argument_spec(**power_options()), supports_check_mode=True)
    power_step(module, KvmPlatform)


if __name__ == "__main__":
    main()
