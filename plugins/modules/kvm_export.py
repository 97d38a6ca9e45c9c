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
  - The qemu guest agent freezes the guest's filesystems around the start of each backup job when it
    answers; RV(frozen) says whether it did.
  - A re-run with nothing new (a shut-off domain whose disk files did not change; a running domain
    whose dirty bitmap is empty) changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
options:
  name:
    description: Name of the domain. One of O(name) or O(uuid) is required.
    type: str
  uuid:
    description: UUID of the domain.
    type: str
  bundle:
    description: The bundle directory to write (created when absent).
    type: path
    required: true
  mode:
    description:
      - V(auto) - cold when the domain is off and the bundle has no warm chain, a full warm copy when
        it runs and the bundle has no chain, an incremental otherwise.
      - V(cold) - fail unless the domain is shut off.
      - V(warm) - a new full copy of the running domain (a new chain).
      - V(incremental) - fail unless the bundle holds a warm chain.
    type: str
    default: auto
    choices: [auto, cold, warm, incremental]
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
  freeze:
    description: Freeze the guest filesystems (qemu guest agent) while a backup job starts.
    type: bool
    default: true
  cleanup_checkpoints:
    description:
      - Delete the checkpoints this module created on the domain once the sync is done (use on the
        final sync of a cutover). The newest one is kept while the domain runs.
    type: bool
    default: false
  block_size:
    description: Block size of the digests, in bytes.
    type: int
    default: 1048576
attributes:
  check_mode:
    support: full
    description: Says which kind of export would run; touches neither the domain nor the bundle.
"""

EXAMPLES = r"""
- name: Export a shut-off domain (references its disks in place)
  vmigrate.v2v.kvm_export:
    name: web01
    bundle: /srv/v2v/web01/export

- name: Warm sync of a running domain (full first, incremental afterwards)
  vmigrate.v2v.kvm_export:
    uri: qemu:///system
    name: db01
    bundle: /srv/v2v/db01/export
  register: sync

- name: Show what the sync moved
  ansible.builtin.debug:
    msg: "{{ sync.summary }}"
"""

RETURN = r"""
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

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import platform as _kvm  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_kvm.argument_spec(
            name=dict(type="str"),
            uuid=dict(type="str"),
            bundle=dict(type="path", required=True),
            mode=dict(type="str", default="auto", choices=["auto", "cold", "warm", "incremental"]),
            transfer=dict(type="str", default="auto", choices=["auto", "path", "stream"]),
            freeze=dict(type="bool", default=True),
            cleanup_checkpoints=dict(type="bool", default=False),
            block_size=dict(type="int", default=1048576),
        ),
        required_one_of=[("name", "uuid")],
        mutually_exclusive=[("name", "uuid")],
        supports_check_mode=True,
    )
    if not _kvm.HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=str(_kvm.LIBVIRT_IMPORT_ERROR))
    p = module.params
    try:
        with _kvm.KvmPlatform(p) as platform:
            dom = platform.find_vm(p["name"], uuid=p["uuid"])
            result = platform.export(
                dom,
                p["bundle"],
                p["mode"],
                check_mode=module.check_mode,
                transfer=p["transfer"],
                freeze=p["freeze"],
                cleanup_checkpoints=p["cleanup_checkpoints"],
                block_size=p["block_size"],
            )
    except Exception as exc:  # noqa: BLE001 - one failure shape for every error
        fail_from_exception(module, exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
