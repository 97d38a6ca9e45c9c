# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the export step, the same on every platform (module_utils/_runner.export_options)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  vm:
    description: The source VM - its name, UUID or the platform's own id.
    type: str
    required: true
    aliases: [name]
  bundle:
    description: The bundle directory to write (created when absent); an existing bundle of this VM is refreshed.
    type: path
    required: true
  mode:
    description:
      - How the source is read. V(cold) - the VM must be off; V(warm) - the VM must run (snapshot or
        backup job, the guest keeps running); V(auto) - by the VM's power state; V(incremental) - either,
        but fail unless the bundle holds a sync chain to add to.
      - Whether a sync is full or incremental follows the bundle, not the mode - the first sync is
        full, later ones are incremental (see O(full)). After warm syncs, an export of the VM once it is
        off is the final incremental of a cutover.
    type: str
    default: auto
    choices: [auto, cold, warm, incremental]
  full:
    description: Start a new sync chain - read everything again, ignoring recorded checkpoints.
    type: bool
    default: false
  quiesce:
    description:
      - Freeze the guest's file systems for the point in time of a warm sync, when the guest's agent
        (qemu guest agent, VMware Tools) answers. Without one the copy is crash-consistent; the result's
        RV(frozen) says which.
    type: bool
    default: true
    aliases: [freeze]
  block_size:
    description:
      - Block size of the digests, in bytes (a power of two, at least 4096). By default it follows the
        disk's capacity - 64 KiB (the change tracker's granularity, so an incremental never re-reads a
        block to re-hash it) up to 64 GiB, then the smallest power of two that keeps one disk's digest
        list at 2^20 entries (32 MiB).
      - Applies to a full sync; incrementals keep the chain's.
    type: int
"""
