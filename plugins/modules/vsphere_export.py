#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vsphere_export
short_description: Write or refresh a bundle from a vSphere VM (cold, or warm with CBT)
version_added: 0.1.0
description:
  - "Cold (the VM is powered off): each disk's flat extent is read from its datastore
    over HTTPS (C(/folder), Range requests) into the bundle as a sparse raw file (zero
    blocks are not written), with block digests taken while the bytes pass."
  - "Warm (the VM runs): a snapshot C(vmigrate-<n>) is taken and the snapshot's base
    disks are read. With changed block tracking (CBT) the first sync reads only the
    allocated areas (C(QueryChangedDiskAreas) with changeId C(*)) and later syncs only
    the areas changed since the changeId recorded by the previous sync, paging through
    the whole disk. Without CBT every byte is read and only blocks whose digest changed
    are written (hash-diff)."
  - "CBT is enabled only with O(enable_cbt=true). On ESXi it starts at the VM's next
    stun/unstun cycle; for a running VM the module does one (a snapshot created and
    removed at once) and says so in RV(stun_cycle)."
  - "Snapshots the module makes are always removed before it returns, also when the
    export fails; changeIds stay valid after removal. Snapshots an interrupted run left
    (recorded in the bundle) are removed by the next run."
  - "Cutover: power the source off, then run this module again: it does a final
    incremental sync (CBT still applies to a powered-off VM)."
  - Disks are read with the datastore file service, which every vCenter and ESXi has.
    NBD through nbdkit's VDDK plugin would be faster but needs VMware's proprietary
    VDDK; it is not used.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.vsphere
  - vmigrate.v2v.export
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Reports the sync it would do; takes no snapshot and reads nothing.
  diff_mode:
    support: full
    details: Shows the bundle's chain, latest sync, checkpoint and content fingerprint before and after.
  platform:
    platforms: posix
options:
  enable_cbt:
    description:
      - Enable changed block tracking on the source when it is off
        (a configuration change, plus a stun cycle when it runs).
    type: bool
    default: false
  use_cbt:
    description: Use CBT when it is enabled. False forces the hash-diff path.
    type: bool
    default: true
requirements:
  - pyvmomi
"""

EXAMPLES = r"""
- name: First (full) warm sync, enabling CBT
  vmigrate.v2v.vsphere_export:
    hostname: vcenter.example.com
    username: migrate@vsphere.local
    password: "{{ vcenter_password }}"
    vm: web01
    bundle: /var/lib/vmigrate/web01
    enable_cbt: true

- name: Later syncs read only what changed
  vmigrate.v2v.vsphere_export:
    hostname: vcenter.example.com
    username: migrate@vsphere.local
    password: "{{ vcenter_password }}"
    vm: web01
    bundle: /var/lib/vmigrate/web01
"""

RETURN = r"""
planned:
  description:
    - In check mode, what the bundle would hold, for a checked M(vmigrate.v2v.convert)
      (its O(vmigrate.v2v.convert#module:planned)) - bundle, source, spec, sync (the chain's syncs plus the
      one this export would add) and per disk id, capacity,
      method (V(copy), V(reference) or V(delta)), format and path of the data, the source's allocated bytes (null when
      the platform cannot tell without reading), digests_sha256 (null) and deltas.
  returned: in check mode, when the export would change the bundle
  type: dict
mode:
  description: How the source was read - V(cold) (shut off) or V(warm) (running).
  returned: always
  type: str
kind:
  description: V(full) (a new chain, every disk copied or referenced) or V(incremental) (changes since the last sync).
  returned: always
  type: str
sync_index:
  description: Number of the bundle's latest sync (1 for the full copy).
  returned: when the bundle holds a sync
  type: int
checkpoint:
  description: What the latest sync ends at - the checkpoint the next incremental asks changes since.
  returned: when the bundle holds a sync
  type: raw
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
  description:
    - Per disk - id, path, format, capacity, method (V(copy), V(reference), V(delta) or V(none)), bytes_read,
      bytes_written, digests_sha256, checkpoint, progress and, for a delta, last_delta (extents and bytes).
  returned: when a sync ran
  type: list
  elements: dict
frozen:
  description: Whether the guest was quiesced at the point in time read.
  returned: always
  type: bool
freeze_reason:
  description: Why it was not, or null.
  returned: always
  type: str
fallback_reason:
  description:
    - Why a slower path ran than the bundle's chain allows, or null - a new full copy (the VM's disks changed,
      the bundle was left incomplete in a state that cannot be continued) or a digest comparison instead of
      the change tracker (its checkpoint is gone).
  returned: always
  type: str
would:
  description: In check mode, the sync that would run.
  returned: in check mode
  type: str
vm:
  description: The source VM - name, id and power_state.
  returned: always
  type: dict
seconds:
  description: Duration of the export.
  returned: always
  type: float
rate_bytes_per_second:
  description: Bytes moved per second.
  returned: always
  type: int
summary:
  description: One readable line about what was done.
  returned: always
  type: str
cbt:
  description: Whether changed block tracking was used.
  returned: always
  type: bool
cbt_enabled_now:
  description: Set when this run turned CBT on (O(enable_cbt)).
  returned: when CBT was enabled
  type: bool
stun_cycle:
  description: Set when CBT was enabled on a running VM and a snapshot was created and removed to start it.
  returned: when CBT was enabled on a running VM
  type: str
removed_leftover_snapshots:
  description: Snapshots an earlier, interrupted run made and this one removed.
  returned: when there were any
  type: list
  elements: str
leftover_snapshots_gone:
  description: Snapshots an earlier, interrupted run made and recorded in the bundle that were
    already gone (removed in vCenter meanwhile); they are no longer recorded.
  returned: when there were any
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import export_options, export_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import connection as _vsphere_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.platform import VspherePlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_vsphere_connection.argument_spec(
            **export_options(enable_cbt=dict(type="bool", default=False), use_cbt=dict(type="bool", default=True))
        ),
        supports_check_mode=True,
    )
    export_step(module, VspherePlatform)


if __name__ == "__main__":
    main()
