# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the verify step, the same on every platform (module_utils/_runner.verify_options)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  bundle:
    description: Directory of the bundle the target was imported from.
    type: path
    required: true
  vm:
    description:
      - The target VM - its name, UUID or the platform's own id.
      - Defaults to the VM name in the bundle's spec.
    type: str
    aliases: [name]
  digests:
    description:
      - Read every target disk back and compare its block digests with the ones the export
        recorded from the source (costs one read of the target's allocated data).
      - The target must be off while its disks are read.
    type: bool
    default: true
  spec:
    description: Compare CPUs, memory, firmware, disk and NIC counts, and the MACs the bundle fixes.
    type: bool
    default: true
  boot_check:
    description:
      - After the comparison, check that the target boots - how depends on the platform (see the
        module's description).
    type: bool
    default: false
    aliases: [power_on]
  boot_timeout:
    description: Seconds the boot check waits for its sign of life.
    type: int
    default: 300
"""
