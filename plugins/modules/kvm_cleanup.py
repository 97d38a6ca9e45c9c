#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_cleanup
short_description: Remove what migrations left on a source libvirt domain
version_added: 0.2.0
description:
  - Removes the libvirt checkpoints (and their dirty bitmaps) that exports made - those the bundle records and
    those named C(vmigrate-<first 8 characters of the domain UUID>-<time>) - and a pull-mode backup job an export
    left running when it was killed (its NBD socket is in a C(vmigrate-backup-) directory). Other checkpoints are
    the user's and stay.
  - Never removes the VM or its disks. The rollback role runs it so that the source is as it was before the
    migration; a later warm sync of the VM then starts from block digests (the whole disk read once) instead of a
    change tracker, and says so.
  - What is ours, the removal and the result are the engine's (engine/rollback.py), the same on every platform.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - vmigrate.v2v.cleanup
  - ansible.builtin.action_common_attributes
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
  vmigrate.v2v.kvm_cleanup:
    uri: qemu:///system
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
  sample: [{"kind": "checkpoint", "name": "vmigrate-0a1b2c3d-1764550000"}]
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
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import argument_spec  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(argument_spec=argument_spec(**cleanup_options()), supports_check_mode=True)
    cleanup_step(module, KvmPlatform)


if __name__ == "__main__":
    main()
