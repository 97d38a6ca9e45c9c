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
    unix socket; the first run copies everything into the bundle (qcow2, sparse, digests taken in
    flight) and creates a checkpoint. Each later run is an incremental - only blocks the dirty
    bitmap of the last checkpoint marks are read, and written into the bundle as a delta file.
  - When the domain is shut off after warm syncs (the cutover), the final incremental compares block
    digests of the disk files with the last sync's and writes only the changed blocks.
  - Checkpoints need qcow2 disks (persistent dirty bitmaps). For raw disks the warm copy still works;
    incrementals then compare digests (reading the whole disk), and RV(fallback_reason) says so.
  - A broken chain (the last checkpoint deleted by someone else, a disk added or removed) falls back
    to a full copy and says why in RV(fallback_reason).
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
    support: none
    details: The bundle is a directory of disk data; RV(summary) says what changed in it.
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
mode:
  description: How the source was read - V(cold) (shut off) or V(warm) (running, backup job).
  returned: always
  type: str
kind:
  description: What ran - V(cold), V(full) (warm full copy) or V(incremental).
  returned: always
  type: str
sync_index:
  description: Number of the bundle's latest sync (1 for the first copy).
  returned: always
  type: int
checkpoint:
  description: The libvirt checkpoint (or digest sync number) the latest sync ends at.
  returned: always
  type: raw
bytes_read:
  description: Bytes read from the source by this run.
  returned: always
  type: int
bytes_written:
  description: Bytes written into the bundle by this run (0 when disks are referenced in place).
  returned: always
  type: int
disks:
  description: Per disk - id, target, path, format, capacity, digests_sha256, checkpoint and, for an
    incremental, the delta written (last_delta with extents and bytes).
  returned: always
  type: list
  elements: dict
frozen:
  description: Whether the guest filesystems were frozen through the guest agent.
  returned: always
  type: bool
fallback_reason:
  description: Why a full copy or a digest comparison ran instead of a bitmap incremental, or null.
  returned: always
  type: str
seconds:
  description: Duration of the export.
  returned: always
  type: float
summary:
  description: One readable line about what was done.
  returned: always
  type: str
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
