#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: hyperv_export
short_description: Write or refresh a migration bundle from a Hyper-V VM, cold or warm
version_added: 0.2.0
description:
  - Cold - the VM must be off. Its VHDX (or VHD) files are read through the share (O(share), the
    conversion host's mount of the Hyper-V host's O(share_windows)), checked with C(qemu-img check), and
    copied into the bundle (a sparse raw file per disk, block digests taken in flight).
  - Warm - the VM runs. A temporary checkpoint (C(vmigrate-sync-*)) is made, each disk's parent VHDX - which
    holds still while the VM writes into the checkpoint's differencing disk - is read through the share, and
    the checkpoint is removed (merged), also when the export fails.
  - With the warm copy (and every later sync of the chain) an RCT reference point is made just before the
    checkpoint (C(Msvm_VirtualSystemReferencePointService.CreateReferencePoint), RCT type); its per-disk
    ResilientChangeTrackingIdentifiers are recorded. Later syncs - warm, or cold after the VM was shut down
    (the cutover) - read only the byte ranges C(Msvm_ImageManagementService.GetVirtualDiskChanges) reports
    changed since them. The reference point a sync replaces is destroyed; one a sync did not need is too.
  - When Hyper-V no longer knows the recorded RCT id (the disk was changed outside Hyper-V, change tracking
    was reset), the whole disk is read and its block digests compared with the last sync's, and
    RV(fallback_reason) says so.
  - A cold re-run whose disk files did not change (same size, mtime and inode) and whose VM did not change
    reports no change without reading the disks.
  - A VM whose disks are already differencing disks (its own checkpoints, a child VHD) is refused - remove
    the checkpoints (which merges them) first; VMs in another state than Off or Running are refused.
  - A temporary checkpoint an earlier export could not remove (the host failed, the connection dropped, the run was
    killed) is removed first, and RV(leftover_checkpoints_removed) names it.
  - The VM is found by O(vm) - its name or its Id.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.hyperv
  - vmigrate.v2v.hyperv_share
  - vmigrate.v2v.export
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Says which kind of export would run; makes no checkpoint or reference point, writes no bundle.
  diff_mode:
    support: full
    details: Shows the bundle's chain, latest sync and content fingerprint before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Export a shut-off Hyper-V VM through the share mounted at /mnt/hv01
  vmigrate.v2v.hyperv_export:
    hostname: hv01.example.com
    username: EXAMPLE\migrator
    password: "{{ hyperv_password }}"
    vm: web01
    share: /mnt/hv01
    share_windows: C:\VMs
    bundle: /srv/v2v/web01/export
"""

RETURN = r"""
mode:
  description: How the source was read - V(cold) (off) or V(warm) (running, from a temporary checkpoint).
  returned: always
  type: str
kind:
  description: V(full) (a new chain) or V(incremental) (changes since the last sync - RCT ranges, else digests).
  returned: always
  type: str
sync_index:
  description: Number of the bundle's latest sync.
  returned: when the bundle holds a sync
  type: int
fingerprint:
  description: SHA-256 over the disks' digest lists - what a target imported from this bundle will carry.
  returned: when the bundle holds a sync
  type: str
bytes_read:
  description: Bytes read from the source by this run.
  returned: always
  type: int
bytes_written:
  description: Bytes written into the bundle by this run.
  returned: always
  type: int
disks:
  description: Per disk - id, path, format, capacity, method, bytes_read, bytes_written, digests_sha256.
  returned: when a sync ran
  type: list
  elements: dict
frozen:
  description: Whether the guest was quiesced at the point in time read (false - a cold export reads a VM that is off).
  returned: always
  type: bool
freeze_reason:
  description: Why it was not, or null.
  returned: always
  type: str
fallback_reason:
  description: Why a slower path ran than the bundle's chain allows, or null.
  returned: always
  type: str
reference_point:
  description: The InstanceID of the RCT reference point this sync made (the next sync's base).
  returned: when one was made
  type: str
checkpoint_removed:
  description: The temporary checkpoint a warm sync made and removed.
  returned: warm syncs
  type: str
leftover_checkpoints_removed:
  description: Temporary checkpoints (C(vmigrate-sync-*)) an earlier export left on the VM, removed (merged) before
    this one.
  returned: when there were any
  type: list
  elements: str
vm:
  description: The source VM - name, id and power_state.
  returned: always
  type: dict
summary:
  description: One readable line about what was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import export_options, export_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _hyperv_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import share_args  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_hyperv_connection.argument_spec(**export_options(**share_args())),
        supports_check_mode=True,
    )
    export_step(module, HyperVPlatform)


if __name__ == "__main__":
    main()
