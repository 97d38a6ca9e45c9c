#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_verify
short_description: Check a libvirt domain against the bundle it was imported from
version_added: 0.1.0
description:
  - Disk digests - reads only the target's disks and compares their block digests with the ones the
    export recorded (taken from the source). The target must be shut off for this.
  - Spec - CPUs, memory, firmware, disk count and capacities, NIC MAC addresses.
  - Boot check (O(boot_check=true)) - boots a transient twin of the target whose disks are qcow2
    overlays on the target's (so the target's disks stay unchanged and its power state is never
    touched), waits for O(boot_marker) on the serial console for up to O(boot_timeout) seconds, then
    destroys the twin and removes the overlays. The comparison itself is the engine's, the same on
    every platform.
  - Fails when anything differs, listing every mismatch.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - vmigrate.v2v.verify
  - ansible.builtin.action_common_attributes
options:
  boot_marker:
    description:
      - Text the guest prints on its serial console when it is up.
      - Without it, 10 s of running counts as booted.
    type: str
attributes:
  check_mode:
    support: full
    details: Reads only (the boot check runs in check mode too, since it changes nothing).
  diff_mode:
    support: none
    details: Its one change is the verified fingerprint in the target's provenance.
  platform:
    platforms: posix
notes:
  - The boot check reads the twin's serial log on this host, so it needs a local URI.
"""

EXAMPLES = r"""
- name: Verify the migrated domain, booting it
  vmigrate.v2v.kvm_verify:
    bundle: /srv/v2v/web01/kvm
    vm: web01-migrated
    boot_check: true
    boot_marker: "login:"
  register: verified
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
disks:
  description:
    - Per disk - id, where (the target's file), capacity, blocks, mismatched (blocks that differ),
      first_differing_offsets, expected_sha256, actual_sha256, bytes_read, equal.
  returned: always
  type: list
  elements: dict
spec:
  description: Per field - target, bundle, equal.
  returned: always
  type: dict
boot:
  description: Boot check result - ok, seconds, marker, console_tail (null when not asked).
  returned: always
  type: dict
mismatches:
  description: Every difference found.
  returned: always
  type: list
  elements: str
bytes_read:
  description: Bytes read back from the target's disks.
  returned: always
  type: int
summary:
  description: One readable line.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import verify_options, verify_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import connection as _kvm_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_kvm_connection.argument_spec(**verify_options(boot_marker=dict(type="str"))),
        supports_check_mode=True,
    )
    verify_step(module, KvmPlatform)


if __name__ == "__main__":
    main()
