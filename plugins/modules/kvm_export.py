#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_export
short_description: Write or refresh a migration bundle from a libvirt domain
version_added: 0.1.0
description:
  - Cold (domain shut off) - the bundle references the domain's disk files in place and records
    their block digests, computed by reading each allocated byte once. With O(transfer=stream) (the
    default for remote URIs) the volumes are downloaded with C(virStorageVolDownload) instead.
  - Warm (domain running) - a libvirt backup job in pull mode exports the disks over NBD on a private
    unix socket; the first run copies everything into the bundle (a sparse raw file per disk, digests
    taken in flight) and creates a checkpoint. Each later run is an incremental - only the extents the
    dirty bitmap of the last checkpoint marks are read, and written into the bundle as a delta file
    (and into the bundle's copy, which stays the disk as of the last sync).
  - When the domain is shut off after warm syncs (the cutover), the final incremental reads only what
    the persistent bitmap QEMU stored in each qcow2 at shut-down marks (exported with C(qemu-nbd -B));
    without one it compares block digests with the last sync's, and RV(fallback_reason) says so.
  - Checkpoints need qcow2 disks (persistent dirty bitmaps). For raw disks the warm copy still works;
    incrementals then compare digests (reading the whole disk), and RV(fallback_reason) says so.
  - A broken chain falls back and says why in RV(fallback_reason) - the last checkpoint deleted by
    someone else, to a digest comparison; a disk added, removed or resized, to a new full copy.
  - With O(quiesce=true) the qemu guest agent freezes the guest's filesystems around the start of each
    backup job when it answers; RV(frozen) says whether it did.
  - The domain is found by O(vm) - its name or UUID.
  - A re-run with nothing new (a shut-off domain whose disk files did not change; a running domain
    whose dirty bitmap is empty) changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - vmigrate.v2v.export
  - ansible.builtin.action_common_attributes
options:
  transfer:
    description:
      - How a cold export reads disks. V(path) reads (references) the files on this host, V(stream)
        downloads the storage volumes through libvirt, V(auto) picks V(path) for local URIs.
      - Either way the disk is checked with C(qemu-img check) first (a truncated or corrupt image fails
        the export). A re-export whose disks and spec are unchanged (same block digests) keeps the
        bundle's chain and reports no change, so targets imported from it stay current.
    type: str
    default: auto
    choices: [auto, path, stream]
  cleanup_checkpoints:
    description:
      - Delete the checkpoints this module created on the domain once the sync is done (use on the
        final sync of a cutover). The newest one is kept while the domain runs.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    details: Says which kind of export would run; touches neither the domain nor the bundle.
  diff_mode:
    support: full
    details: Shows the bundle's chain, latest sync, checkpoint and content fingerprint before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Export a shut-off domain (references its disks in place)
  vmigrate.v2v.kvm_export:
    vm: web01
    bundle: /srv/v2v/web01/export

- name: Warm sync of a running domain (full first, incremental afterwards)
  vmigrate.v2v.kvm_export:
    uri: qemu:///system
    vm: db01
    bundle: /srv/v2v/db01/export
  register: sync

- name: Show what the sync moved
  ansible.builtin.debug:
    msg: "{{ sync.summary }}"
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
checkpoints_deleted:
  description: Checkpoints deleted by O(cleanup_checkpoints).
  returned: when O(cleanup_checkpoints=true)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import export_options, export_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import connection as _kvm_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_kvm_connection.argument_spec(
            **export_options(
                transfer=dict(type="str", default="auto", choices=["auto", "path", "stream"]),
                cleanup_checkpoints=dict(type="bool", default=False),
            )
        ),
        supports_check_mode=True,
    )
    export_step(module, KvmPlatform)


if __name__ == "__main__":
    main()
