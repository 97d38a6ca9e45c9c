#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: vsphere_import
short_description: Create a vSphere VM from a bundle, or apply a newer sync to it
version_added: 0.1.0
description:
  - Creates the VM with C(ImportVApp) (the spec's CPUs, memory, firmware, controllers,
    NICs on the mapped networks and guest id; thin disks; changed block tracking on) and
    sends each disk of the bundle through the import lease as a streamOptimized VMDK
    (only allocated, non-zero grains, compressed), as ovftool does, so an import costs
    about the disk's data, not its capacity. The streams are written beside the bundle
    first (about the compressed data's size), the bundle's disk read once and checked
    against its digests before vSphere is asked for anything.
  - "The VM's name and each disk's capacity are checked before anything is uploaded: a name
    longer than 80 characters, or a capacity that is not a multiple of 512 bytes (a VMDK
    counts 512-byte sectors), is refused with the fix."
  - Buses and NIC models vSphere lacks become its defaults (pvscsi, vmxnet3); the
    translations are returned in RV(spec_changes).
  - "The target carries its provenance in extraConfig C(vmigrate.provenance) (source id,
    checkpoint, sync index, bundle fingerprint, per-disk digests) and in its annotation.
    A re-run with the same bundle changes nothing; a VM of the same name from another
    origin is refused unless O(replace=true)."
  - "Nothing half-made looks complete: while disks upload, the VM folder holds a
    C(vmigrate.partial) marker and the VM's provenance says C(incomplete) with no disk
    vouched for; it is set when the upload completed. A failure aborts the import and
    removes the VM, the run's files, and the VM folder when the run made it. While an
    existing target is updated it carries extraConfig C(vmigrate.incomplete)."
  - "Incremental syncs: the bundle's disk image is kept up to date by the export and the
    convert, and no vSphere API writes part of a disk (only VDDK's NBD transport does,
    which is not used here). So each changed disk of an existing VM is uploaded again as
    a B(new file): through an import lease into a helper VM C(<name>.vmigrate-sync-<tag>)
    as a streamOptimized VMDK (its data, not its capacity), placed in the VM's folder; the
    helper is deleted and one reconfigure swaps the new file in for the old one (same
    controller and unit; the old files deleted). The cost per sync is the changed disks'
    allocated data, not the bytes that changed. The target must be powered off."
author:
  - vmigrate.v2v contributors (@vmigrate)
extends_documentation_fragment:
  - vmigrate.v2v.vsphere
  - vmigrate.v2v.import_
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: Shows the target's provenance (its record of source, chain, sync, disk fingerprints) before and after.
  platform:
    platforms: posix
options:
  datastore:
    description:
      - Datastore for the VM's files, used when a disk's storage is not a datastore
        here and O(storage_map) does not map it to one.
    type: str
  folder:
    description: VM folder, as a path below the datacenter's C(vm) folder (or a full inventory path).
    type: str
  resource_pool:
    description: Resource pool, cluster or host name. Defaults to the first compute resource's root pool.
    type: str
  hardware_version:
    description: Virtual hardware version such as C(vmx-19). Defaults to the server's default.
    type: str
notes:
  - A VM name has at most 80 characters, checked before anything is uploaded; C(.), C(..) and names
    with control characters are refused too.
  - "vSphere keeps C(/), C(\\) and C(%) in names escaped (C(%2f), C(%5c), C(%25)), as
    vCenter does for a VM made in its client: the VM C(a/b) is stored as C(a%2fb)
    (which the vSphere Client shows as C(a/b)), in the datastore folder C(a%2fb)
    with files C(a%2fb.vmx), C(a%2fb.vmdk). The name as given finds that VM again."
  - O(storage_map) maps a disk's source storage to a datastore; O(datastore) is used for the rest.
requirements:
  - pyvmomi
  - qemu-img (qemu-utils) on the conversion host
"""

EXAMPLES = r"""
- name: Create the VM from a converted bundle
  vmigrate.v2v.vsphere_import:
    hostname: vcenter.example.com
    username: migrate@vsphere.local
    password: "{{ vcenter_password }}"
    ca_path: /etc/pki/vcenter-ca.pem
    datacenter: DC1
    bundle: /var/lib/vmigrate/web01
    datastore: ssd01
    network_map:
      default: VM Network
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
  description: Name of the target VM, as given.
  returned: always
  type: str
vsphere_name:
  description: The name as vSphere stores it (and names the datastore folder), when escaping changed it.
  returned: when the name holds C(/), C(\) or C(%)
  type: str
  sample: lab%2fweb01
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
moid:
  description: Managed object id of the target VM.
  returned: when the VM exists
  type: str
  sample: vm-42
provenance:
  description:
    - What the target carries in extraConfig C(vmigrate.provenance) - source_id, source_platform, source_name,
      chain, sync_index, checkpoint, fingerprint (of the disks' digest lists), disks (per-disk fingerprints), state.
  returned: always
  type: dict
spec_changes:
  description: Translations for vSphere, each C({field, from, to, reason}).
  returned: always
  type: list
  elements: dict
transfer:
  description: Per disk - id, file, capacity, format (streamOptimized or monolithicFlat), bytes (guest bytes
    written), bytes_sent (on the wire), and a progress summary.
  returned: when disks were uploaded
  type: list
  elements: dict
bytes_sent:
  description: Bytes sent to vSphere for the disks (compressed stream, or whole extents for an update).
  returned: when disks were uploaded
  type: int
bytes_written:
  description: Guest bytes written into the target's disks (0 when none).
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._runner import import_options, import_step  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import connection as _vsphere_connection  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.platform import VspherePlatform  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=_vsphere_connection.argument_spec(
            **import_options(
                datastore=dict(type="str"),
                folder=dict(type="str"),
                resource_pool=dict(type="str"),
                hardware_version=dict(type="str"),
            )
        ),
        supports_check_mode=True,
    )
    import_step(module, VspherePlatform)


if __name__ == "__main__":
    main()
