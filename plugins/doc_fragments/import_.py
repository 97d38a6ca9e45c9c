# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the import step, the same on every platform (module_utils/_runner.import_options)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  bundle:
    description: The bundle directory (written by an export module, usually through M(vmigrate.v2v.convert)).
    type: path
    required: true
  name:
    description:
      - Name of the target VM. Default - the name in the bundle's spec.
      - A name the target platform refuses (see the module's notes) is refused before anything is made.
    type: str
  replace:
    description:
      - Remove a same-named VM that did not come from this bundle's source (or that holds a newer sync of
        its chain) and import again. Without it such a VM is refused and kept.
    type: bool
    default: false
  network_map:
    description:
      - Source network name to target network, for NICs M(vmigrate.v2v.convert) did not map already.
      - When given, every NIC's network must be in it (a NIC left unmapped is an error naming it).
    type: dict
  storage_map:
    description:
      - Source storage (pool, datastore or directory) to target storage (pool or datastore) per disk.
    type: dict
  start:
    description: Power the target on after the import (when it is off).
    type: bool
    default: false
  planned:
    description:
      - Check mode only. What a checked M(vmigrate.v2v.convert) would have written
        (its RV(vmigrate.v2v.convert#module:planned)), read instead of O(bundle),
        which a checked convert does not write. The name, the capacities and an
        existing VM of that name are checked as in a real run (a VM from another source is refused), and the
        result says what would be done (RV(action), C(would), and C(would_create) - name, cpus, memory, disks
        with capacity and format, NICs - when a VM would be made).
    type: dict
notes:
  - What happens to an existing VM of that name is decided the same way on every platform, from the
    provenance it carries - see RV(action).
  - The bundle is checked against itself first (digest files, capacities, the images' own sizes); a
    hand-edited or damaged bundle is refused before anything is made.
"""
