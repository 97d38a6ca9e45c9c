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
    destroys the twin and removes the overlays.
  - Fails when anything differs, listing every mismatch.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
options:
  bundle:
    description: The bundle the target was imported from.
    type: path
    required: true
  name:
    description: Name (or UUID) of the target domain.
    type: str
    required: true
  digests:
    description: Compare disk digests.
    type: bool
    default: true
  spec:
    description: Compare spec fields.
    type: bool
    default: true
  boot_check:
    description: Boot a twin of the target and wait for O(boot_marker).
    type: bool
    default: false
  boot_marker:
    description:
      - Text the guest prints on its serial console when it is up.
      - Without it, 10 s of running counts as booted.
    type: str
  boot_timeout:
    description: Seconds to wait for O(boot_marker).
    type: int
    default: 120
attributes:
  check_mode:
    support: full
    description: Reads only (the boot check runs in check mode too, since it changes nothing).
notes:
  - The boot check reads the twin's serial log on this host, so it needs a local URI.
"""

EXAMPLES = r"""
- name: Verify the migrated domain, booting it
  vmigrate.v2v.kvm_verify:
    bundle: /srv/v2v/web01/kvm
    name: web01-migrated
    boot_check: true
    boot_marker: "login:"
  register: verified
"""

RETURN = r"""
ok:
  description: True when everything compared equal.
  returned: success
  type: bool
disks:
  description: Per disk - id, target, path, expected_sha256, actual_sha256, bytes_read, equal.
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
summary:
  description: One readable line.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import platform as _kvm  # noqa: E402

OPTIONS = ("digests", "spec", "boot_check", "boot_marker", "boot_timeout")


def main():
    module = AnsibleModule(
        argument_spec=_kvm.argument_spec(
            bundle=dict(type="path", required=True),
            name=dict(type="str", required=True),
            digests=dict(type="bool", default=True),
            spec=dict(type="bool", default=True),
            boot_check=dict(type="bool", default=False),
            boot_marker=dict(type="str"),
            boot_timeout=dict(type="int", default=120),
        ),
        supports_check_mode=True,
    )
    if not _kvm.HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=str(_kvm.LIBVIRT_IMPORT_ERROR))
    p = module.params
    try:
        with _kvm.KvmPlatform(p) as platform:
            result = platform.verify(p["bundle"], p["name"], {k: p[k] for k in OPTIONS})
    except Exception as exc:  # noqa: BLE001 - one failure shape for every error
        fail_from_exception(module, exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
