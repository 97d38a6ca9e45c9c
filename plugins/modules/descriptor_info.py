#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: descriptor_info
short_description: Describe a VMX, OVF, OVA or libvirt domain XML file as a vmigrate spec
version_added: 1.0.0
description:
  - Reads a VM descriptor file and returns the neutral spec (schema version 1, see the
    collection's docs/spec.md) that the other vmigrate.v2v modules use.
  - The format is recognised by content (a tar archive is an OVA, an XML C(Envelope) an
    OVF, an XML C(domain) a libvirt domain, C(key = "value") lines a VMX).
  - Disk capacities come from the OVF DiskSection, or from the disk images themselves
    (C(qemu-img info)) for VMX and libvirt XML.
  - Disk files that the descriptor names but that are absent are returned in
    RV(missing_disks); the descriptor is still described.
  - An OVA is read in place; nothing is extracted and nothing is written. The digests of its
    manifest (C(.mf)) are checked unless O(verify_manifest=false).
  - Changes nothing.
author:
  - vmigrate.v2v contributors (@vmigrate)
requirements:
  - qemu-img (Debian package qemu-utils) on the host that runs the module, for disk capacities
attributes:
  check_mode:
    support: full
    description: The module never changes anything, so check mode returns the same result.
  diff_mode:
    support: none
  platform:
    platforms: posix
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
options:
  path:
    description:
      - The descriptor, a C(.vmx), C(.ovf), C(.ova) or libvirt domain XML file.
      - Relative disk file names in it are resolved against the file's directory.
    type: path
    required: true
  verify_manifest:
    description:
      - For an OVA, check every member against the SHA1/SHA256/SHA512 digests of its
        manifest. This reads the whole archive. Ignored for other formats.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Describe an ESXi VM from its VMX
  vmigrate.v2v.descriptor_info:
    path: /mnt/datastore1/web01/web01.vmx
  register: web01

- name: Stop when a disk file is missing
  ansible.builtin.assert:
    that: web01.missing_disks | length == 0
    fail_msg: "disk files missing: {{ web01.missing_disks | join(', ') }}"

- name: Describe an appliance without reading its disks twice
  vmigrate.v2v.descriptor_info:
    path: /srv/images/appliance.ova
    verify_manifest: false
  register: appliance

- name: Show CPUs, memory and disk buses
  ansible.builtin.debug:
    msg: "{{ appliance.spec.memory_mib }} MiB, disk buses {{ appliance.spec.disks | map(attribute='bus') }}"
"""

RETURN = r"""
format:
  description: The descriptor's format.
  returned: success
  type: str
  sample: vmx
  choices: [vmx, ovf, ova, libvirt]
spec:
  description:
    - The neutral VM spec, schema version 1 (documented in the collection's docs/spec.md).
    - C(origin.platform) is the format and C(origin.ref) the descriptor's absolute path.
  returned: success
  type: dict
  contains:
    schema:
      description: Spec schema version.
      type: int
      sample: 1
    name:
      description: VM name.
      type: str
    uuid:
      description: The VM's UUID (lower case), or null when the descriptor has none.
      type: str
    firmware:
      description: C(type) (bios or uefi) and C(secure_boot).
      type: dict
    cpu:
      description: C(sockets), C(cores) per socket and C(threads) per core.
      type: dict
    memory_mib:
      description: Memory in MiB.
      type: int
    disks:
      description:
        - Disks with C(id), C(bus), C(controller), C(capacity) (bytes, null when unknown),
          C(format), C(source), C(storage) and C(boot_order).
      type: list
      elements: dict
    nics:
      description: NICs with C(mac), C(network), C(network_type) and C(model).
      type: list
      elements: dict
    removable:
      description: CD-ROM and floppy drives with C(type), C(bus) and C(path).
      type: list
      elements: dict
    guest_os:
      description: C(family), C(id) (vSphere guestId), C(osinfo) (libosinfo id) and C(description).
      type: dict
    annotations:
      description: C(description) and C(title).
      type: dict
    origin:
      description: C(platform) (the format) and C(ref) (the descriptor's path).
      type: dict
  sample:
    schema: 1
    name: web01
    uuid: 421c5f0e-3c0b-2b3a-9d4f-528a1d9e2f11
    firmware: {type: uefi, secure_boot: true}
    cpu: {sockets: 2, cores: 2, threads: 1}
    memory_mib: 2048
    disks:
      - id: disk0
        bus: scsi
        controller: pvscsi
        capacity: 67108864
        format: vmdk
        source: {path: /mnt/datastore1/web01/web01.vmdk}
        storage: /mnt/datastore1/web01
        boot_order: null
    nics:
      - {mac: "00:50:56:9a:3b:7c", network: VM Network, network_type: null, model: vmxnet3}
    removable: []
    guest_os: {family: linux, id: debian11_64Guest, osinfo: "http://debian.org/debian/11", description: null}
    annotations: {description: Web front end, title: null}
    origin: {platform: vmx, ref: /mnt/datastore1/web01/web01.vmx}
missing_disks:
  description:
    - Disk files the descriptor names that do not exist (absolute paths; for an OVA,
      C(<ova path>:<member name>)).
  returned: success
  type: list
  elements: str
  sample: [/mnt/datastore1/web01/web01_1.vmdk]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import fail_from_exception  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _descriptor_read  # noqa: E402


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            verify_manifest=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        spec, missing = _descriptor_read.read_descriptor(
            module.params["path"], verify_manifest=module.params["verify_manifest"]
        )
    except Exception as exc:  # noqa: BLE001 - one failure shape for every error
        fail_from_exception(module, exc)
    module.exit_json(changed=False, format=spec["origin"]["platform"], spec=spec, missing_disks=missing)


if __name__ == "__main__":
    main()
