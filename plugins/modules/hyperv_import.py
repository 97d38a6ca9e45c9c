#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hyperv_import
short_description: Create a Hyper-V VM from a bundle, or bring it up to the bundle's last sync
version_added: 0.2.0
description:
  - Writes each disk as a VHDX file into the share (O(share), seen by Hyper-V as O(share_windows)), named
    C(<name>-<disk id>.vhdx) - dynamic by default, fixed with O(vhd_type=fixed) - with the bundle's deltas
    applied, then creates the VM with C(New-VM) - generation 2 for uefi specs, 1 for bios - and sets its
    processors, static memory, secure boot, drives (IDE for a generation 1 boot disk, SCSI otherwise) and
    network adapters (on the switch O(network_map) maps each network to, with the spec's static MACs).
  - The VM carries its provenance in its Notes (the last line) - source id, chain, sync, the disks'
    fingerprints - the same shape as on the other platforms. The Notes say C(state=incomplete) from
    C(New-VM) on until the end; a failure removes the VM and the files this run made.
  - A re-run with the same bundle changes nothing. A VM of the same name from the same source at an older
    sync of the same chain gets the newer deltas written into its VHDX files (it must be off).
  - A VM with the same name that did not come from this source is refused unless O(replace=true), which
    removes it (and its disk files in the share) first.
  - Secure boot is on only when the spec says so, with the template O(secure_boot_template) (default
    C(MicrosoftUEFICertificateAuthority) for Linux guests, C(MicrosoftWindows) for Windows).
  - Hyper-V needs memory in multiples of 2 MB; another amount is refused before anything is made.
  - "A VM name has at most 100 characters; C(.), C(..) and names with control characters are refused
    before anything is made. Any other character (unicode, quotes, C($), backticks) is kept: scripts read
    the name as data, never as code. In the VHDX file names, the characters Windows refuses and C([) C(])
    and the backtick become C(_)."
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.hyperv
  - vmigrate.v2v.hyperv_share
  - vmigrate.v2v.import_
  - ansible.builtin.action_common_attributes
options:
  vhd_type:
    description: Whether the VHDX files are dynamic (sparse) or fixed (fully allocated).
    type: str
    default: dynamic
    choices: [dynamic, fixed]
  secure_boot_template:
    description: Secure boot template for a generation 2 VM whose spec has secure boot on.
    type: str
    choices: [MicrosoftWindows, MicrosoftUEFICertificateAuthority, OpenSourceShieldedVM]
attributes:
  check_mode:
    support: full
    details: Says what would be made; writes nothing into the share and sends no changing cmdlet.
  diff_mode:
    support: full
    details: Shows the target's provenance before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Import a bundle converted for Hyper-V
  vmigrate.v2v.hyperv_import:
    hostname: hv01.example.com
    username: EXAMPLE\migrator
    password: "{{ hyperv_password }}"
    bundle: /srv/v2v/web01/hyperv
    share: /mnt/hv01
    share_windows: C:\VMs
    network_map:
      default: External
"""

RETURN = r"""
name:
  description: The target VM's name.
  returned: always
  type: str
action:
  description: What was done - V(create), V(replace), V(none), V(record), V(deltas) or V(rewrite).
  returned: always
  type: str
reason:
  description: Why that action.
  returned: always
  type: str
files:
  description: The VHDX files (as Hyper-V names them) a create wrote.
  returned: when a VM was created
  type: list
  elements: str
generation:
  description: The new VM's generation.
  returned: when a VM was created
  type: int
bytes_written:
  description: Bytes written into the share.
  returned: always
  type: int
deltas_applied:
  description: The deltas written into the target's disks.
  returned: when a VM was created or updated
  type: list
  elements: dict
provenance:
  description: The provenance the target carries in its Notes.
  returned: always
  type: dict
summary:
  description: One readable line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import import_options, import_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import share_args  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.target import SECURE_BOOT_TEMPLATES  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_hyperv_connection.argument_spec(
            **import_options(
                vhd_type=dict(type="str", default="dynamic", choices=["dynamic", "fixed"]),
                secure_boot_template=dict(type="str", choices=list(SECURE_BOOT_TEMPLATES)),
                **share_args(),
            )
        ),
        supports_check_mode=True,
    )
    import_step(module, HyperVPlatform)


if __name__ == "__main__":
    main()
