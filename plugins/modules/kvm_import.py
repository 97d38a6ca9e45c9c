#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: kvm_import
short_description: Create a libvirt domain from a bundle, or bring it up to the bundle's last sync
version_added: 0.1.0
description:
  - Creates one storage volume per disk in O(pool) (qcow2 or raw), copies the disk data in
    (C(qemu-img convert) on the libvirt host; C(virStorageVolUpload) for remote URIs or O(transfer=stream)),
    applies the bundle's incremental deltas, and only then defines the domain, so a half-made target is never
    defined. On failure the volumes made so far are removed.
  - Each volume gets the source disk's exact capacity in bytes (libvirt makes qcow2 volumes in whole
    KiB, so a new volume is resized before it is filled). A capacity that is not a multiple of
    512 bytes cannot be held by a volume and is refused before anything is made.
  - The domain carries its provenance in C(<metadata>) - source id, the chain and sync number
    applied, the checkpoint and the disks' fingerprints. A re-run with the same bundle changes nothing.
  - When the domain exists with provenance from the same source - at an older sync of the same chain,
    the newer deltas are applied to its disks; from another chain (a new full export), the changed
    disks are written again whole into its volumes. The domain must be shut off; while its disks change
    the provenance says C(state=incomplete), so a run that dies half-way is finished by a re-run.
  - A domain with the same name that did not come from this source is refused unless O(replace=true),
    which removes it (and its volumes in the pools the import writes to) first.
  - "A domain name with C(/) or a control character, C(.), C(..), or longer than 240 bytes in UTF-8
    (libvirt and the pool name files after it) is refused before anything is made. Volumes are named
    C(<name>-<disk id>.<format>)."
  - Disks go to O(pool), or to the pool O(storage_map) maps their source storage to.
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.kvm
  - vmigrate.v2v.import_
  - ansible.builtin.action_common_attributes
options:
  pool:
    description: Storage pool the volumes are created in, for disks O(storage_map) does not map to another pool.
    type: str
    default: default
  volume_format:
    description: Format of the volumes.
    type: str
    default: qcow2
    choices: [qcow2, raw]
  domain_type:
    description: libvirt domain type. Default - V(kvm) when the host offers it, else V(qemu) (TCG).
    type: str
    choices: [kvm, qemu]
  cpu_mode:
    description:
      - CPU mode of the new domain. Default - what the spec translation chose (host-passthrough with kvm).
      - V(default) leaves the CPU model to QEMU, for hosts that cannot run host CPU models (some nested hosts).
    type: str
    choices: [host-passthrough, host-model, maximum, default]
  transfer:
    description:
      - How the volumes are filled. V(path) runs C(qemu-img convert) into the volume's file on this
        host, V(stream) converts into a temporary file in the bundle directory and sends it with
        C(virStorageVolUpload) (sparse), V(auto) picks V(path) for local URIs and V(stream) otherwise.
      - V(stream) also works on a local URI, for pools whose files this host may not write directly.
    type: str
    default: auto
    choices: [auto, path, stream]
attributes:
  check_mode:
    support: full
    details: Says which volumes, domain and deltas would be made or applied; changes nothing.
  diff_mode:
    support: full
    details: Shows the target's provenance (its record of source, chain, sync, disk fingerprints) before and after.
  platform:
    platforms: posix
"""

EXAMPLES = r"""
- name: Import a converted bundle into the pool vmigrate-target
  vmigrate.v2v.kvm_import:
    bundle: /srv/v2v/web01/kvm
    name: web01-migrated
    pool: vmigrate-target
  register: imported

- name: Show what was written
  ansible.builtin.debug:
    msg: "{{ imported.summary | default('already up to date') }}"
"""

RETURN = r"""
would:
  description:
    - With O(planned) (check mode), what the import would do, in one line (action, name, disks with size and
      format, why).
  returned: with O(planned)
  type: str
would_create:
  description:
    - With O(planned), the VM that would be made - name, platform, cpus, memory_mib, disks (id, capacity, format,
      subformat, storage), nics.
  returned: with O(planned), when a VM would be created or replaced
  type: dict
planned:
  description: True when the result was planned from O(planned) rather than read from a bundle.
  returned: with O(planned)
  type: bool
name:
  description: Name of the target domain.
  returned: always
  type: str
action:
  description:
    - What the import did with the target, decided the same way on every platform.
    - V(create) (no VM of that name), V(replace) (O(replace=true)), V(none) (it holds this bundle),
      V(record) (same content, only its provenance moved to this sync), V(deltas) (same sync chain,
      the bundle's deltas applied), V(rewrite) (same source, the changed disks written again whole).
  returned: always
  type: str
reason:
  description: Why that action, in a few words.
  returned: always
  type: str
spec_changes:
  description: Translations for KVM (network_map, buses), each C({field, from, to, reason}).
  returned: always
  type: list
  elements: dict
rewritten:
  description: Disks written again whole (action V(rewrite)).
  returned: when action is rewrite
  type: list
  elements: str
volumes:
  description: Volumes created (or, in check mode, that would be) - pool, name, format.
  returned: when a domain was created
  type: list
  elements: dict
bytes_written:
  description: Bytes written into the target volumes (0 when none).
  returned: always
  type: int
deltas_applied:
  description: Incremental deltas applied - disk, index, bytes_written.
  returned: when deltas were applied
  type: list
  elements: dict
provenance:
  description:
    - The provenance recorded on the domain in its libvirt metadata - source_id, source_platform, source_name,
      chain, sync_index, checkpoint, fingerprint (of the disks' digest lists), disks (per-disk fingerprints), state.
  returned: success
  type: dict
transfer:
  description: How the volumes were filled - V(path) (qemu-img into the files) or V(stream) (virStorageVolUpload).
  returned: when volumes were created
  type: str
started:
  description: True when O(start) started the domain.
  returned: when the domain was started
  type: bool
replaced:
  description: The domain (and volumes) removed because O(replace=true).
  returned: when a domain was replaced
  type: dict
summary:
  description: One readable line about what was done.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import import_options, import_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import connection as _kvm_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_kvm_connection.argument_spec(
            **import_options(
                pool=dict(type="str", default="default"),
                volume_format=dict(type="str", default="qcow2", choices=["qcow2", "raw"]),
                domain_type=dict(type="str", choices=["kvm", "qemu"]),
                cpu_mode=dict(type="str", choices=["host-passthrough", "host-model", "maximum", "default"]),
                transfer=dict(type="str", default="auto", choices=["auto", "path", "stream"]),
            )
        ),
        supports_check_mode=True,
    )
    import_step(module, KvmPlatform)


if __name__ == "__main__":
    main()
