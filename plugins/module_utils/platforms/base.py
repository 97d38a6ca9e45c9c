# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one interface every hypervisor implements (see docs/architecture.md).

A platform only talks to its hypervisor. What a migration decides (the provenance a
target carries, what an import does with an existing target, the verify comparison)
is engine/steps.py's, so a new platform implements the methods below and nothing else.
"""

from __future__ import annotations

import abc

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import export as _export
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import power as _power
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import rollback as _rollback
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps

# Seconds a boot check waits for its sign of life, the same on every platform (a TCG
# guest in the lab takes ~20 s; a real one with a slow firmware more).
BOOT_TIMEOUT = 300


class Platform(abc.ABC):
    """A connection to one hypervisor endpoint, as a source and as a target.

    Handles (``vm``) are whatever the platform's library uses (a libvirt domain, a
    pyvmomi VirtualMachine); only the platform looks inside them. Methods that change
    something take ``check_mode`` and then report what they would do, doing nothing.
    """

    name = "abstract"
    # True when boot_check starts the target itself (vSphere), not a twin of it (KVM):
    # then verify skips it in check mode.
    boot_check_starts_target = False
    # What request_shutdown needs to reach the guest, for messages when it cannot.
    shutdown_needs = "a guest that answers shutdown requests"

    def __init__(self, params):
        self.params = params

    @classmethod
    def missing_library(cls):
        """(pip package, import error) when the platform's Python library is missing."""
        return None

    @classmethod
    def tls_warning(cls, params):
        """A warning for the module result when ``params`` turn certificate checks off."""
        return None

    @abc.abstractmethod
    def close(self):
        """Release the connection; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- discovery --

    @abc.abstractmethod
    def list_vms(self):
        """Short descriptions of every VM: [{name, id, power_state, ...}]."""

    @abc.abstractmethod
    def find_vm(self, ref):
        """The VM named, or identified (UUID, platform id), by ``ref``; InputError naming
        what exists when there is none."""

    @abc.abstractmethod
    def lookup(self, name):
        """The VM with exactly this name, or None (an import's target)."""

    @abc.abstractmethod
    def vm_name(self, vm):
        """The VM's name, for messages and results."""

    @abc.abstractmethod
    def describe(self, vm):
        """The VM as a neutral spec (engine/spec.py)."""

    @abc.abstractmethod
    def power_state(self, vm):
        """``off``, ``running``, or the platform's word for another state."""

    # -- source (the export step is the engine's: engine/export.py) --

    @abc.abstractmethod
    def source_record(self, vm):
        """What a bundle records about its source: {platform, id, name, connection}."""

    @abc.abstractmethod
    def source_session(self, vm, bundle, incremental, options):
        """A SourceSession over ``vm``'s disks for one export; no side effects until entered.

        ``bundle`` is the bundle as it is (None when there is none), ``incremental`` says
        whether the sync continues its chain (changes since the last sync's checkpoints
        are asked for) or starts a new one."""

    def export(self, vm, bundle, mode="auto", check_mode=False, options=None):
        """Write or refresh the bundle directory ``bundle`` from ``vm``; a result dict."""
        return _export.run_export(self, vm, bundle, mode, options, check_mode)

    @abc.abstractmethod
    def migration_leftovers(self, vm, bundle):
        """What exports made on the source ``vm`` and left there (checkpoints, snapshots, a
        backup job of a killed run): [{kind, name, record, ...}], ``record`` being the
        entry ``bundle`` (None when there is none) keeps of it under ``created[kind + 's']``,
        or None. Only what is recorded or unmistakably ours by name; never the user's."""

    @abc.abstractmethod
    def remove_leftover(self, vm, item):
        """Remove one item of migration_leftovers (never the VM's disks)."""

    def cleanup(self, vm, bundle_dir, check_mode=False):
        """The cleanup step is the engine's (engine/rollback.run_cleanup); a result dict."""
        return _rollback.run_cleanup(self, vm, bundle_dir, check_mode)

    # -- target --

    def import_vm(self, bundle, options, check_mode=False):
        """The import step is the engine's (steps.run_import), on the primitives below."""
        return steps.run_import(self, bundle, options, check_mode)

    def import_planned(self, planned, options):
        """Check mode on a bundle not written yet (steps.run_import_planned)."""
        return steps.run_import_planned(self, planned, options)

    @abc.abstractmethod
    def create_vm(self, name, spec, bundle, prov, options, check_mode):
        """Make a new VM ``name`` from ``spec`` (translated for this platform) and the
        bundle's disks (applying its deltas up to ``prov['sync_index']``), carrying
        ``prov``. Never leaves a half-made VM that looks complete; returns result keys
        (bytes_written, what was made)."""

    @abc.abstractmethod
    def remove_vm(self, vm, spec, options, check_mode):
        """Remove a VM being replaced and the disks this import would write to; returns
        what was (or would be) removed."""

    @abc.abstractmethod
    def update_disks(self, vm, spec, bundle, plan, options, check_mode):
        """Bring an existing VM's disks to the bundle: ``plan.action`` is ``deltas``
        (apply ``plan.deltas``, where the platform can) or ``rewrite`` (write the disks in
        ``plan.disks`` whole). Marks the VM with steps.mark_updating first and writes
        ``plan.want`` last; returns result keys."""

    @abc.abstractmethod
    def start_vm(self, vm):
        """Power a VM that is off on (the import's ``start`` option, the power step)."""

    # -- power (the power step is the engine's: engine/power.py) --

    def power(self, vm, options, check_mode=False):
        """Bring ``vm`` to ``options['state']`` (running, shutdown, off), marking it rolled
        back with ``options['mark_rolled_back']``; a result dict."""
        return _power.run_power(self, vm, options, check_mode)

    @abc.abstractmethod
    def request_shutdown(self, vm, check_mode):
        """Ask a running VM's guest to shut down and return at once, without waiting: the
        method used (``acpi``, ``guest``), or None when the guest cannot be asked (no
        agent or Tools, no ACPI). In check mode, the method it would use; nothing sent."""

    @abc.abstractmethod
    def power_off(self, vm):
        """Power the VM off hard (pull the plug) and return once it is off."""

    @abc.abstractmethod
    def read_provenance(self, vm):
        """The provenance the VM carries (engine/steps.provenance's shape), or None."""

    @abc.abstractmethod
    def write_provenance(self, vm, prov):
        """Record ``prov`` on the VM (libvirt metadata, vSphere extraConfig, Hyper-V Notes)."""

    @abc.abstractmethod
    def target_disks(self, vm):
        """The VM's disks in spec order, each a dict with at least ``where`` (a path or
        datastore file, for messages) that open_disk understands."""

    @abc.abstractmethod
    def open_disk(self, vm, tdisk):
        """A context manager reading the guest-visible bytes of one of target_disks:
        ``.size``, ``.extents()``, ``.pread(length, offset)`` (engine/disk.py's shape)."""

    @abc.abstractmethod
    def boot_check(self, vm, options):
        """Start the target (or a twin of it) and wait for a sign of life, at most
        ``options['boot_timeout']`` seconds: {ok, reason, changed, ...}."""

    def guest_xml(self, vm):
        """The target VM's description for virt-v2v-in-place (libvirt XML): KVM only."""
        raise InputError(
            "guest conversion in place runs only on a KVM target, not %s" % self.name,
            "toward %s, convert chooses hardware the guest drives (guest_conversion=auto)" % self.name,
        )

    def verify(self, bundle, ref, options, check_mode=False):
        """The verify step is the engine's, on this platform's primitives."""
        return steps.run_verify(self, bundle, ref, dict(options, _check_mode=check_mode))


class SourceSession(abc.ABC):
    """One export's view of a source VM's disks (engine/export.py drives it).

    Made without side effects (check mode stops there). Entering it fixes the point in
    time the export reads: a backup job or a snapshot of a running VM, nothing for a
    shut-off one; where the platform tracks changes, a new checkpoint is made there.
    Leaving it ends that point in time; on failure it also drops the new checkpoint, so
    the last recorded one stays the base of the next sync. ``bundle`` is the bundle the
    sync writes into (the engine sets it when a new chain replaces the old manifest).
    """

    # What the sync record's `method` says when every disk's changes came from the tracker.
    tracker = "tracker"

    def __init__(self, vm, bundle, incremental, options):
        self.vm = vm
        self.bundle = bundle
        self.incremental = incremental
        self.options = options
        self.disks = []  # [{id, target, source: {...}}] in spec order; may be filled on entry
        self.frozen = False
        self.freeze_reason = None
        self.reasons = []  # why a slower path was taken: the result's fallback_reason
        self.notes = {}  # platform result keys (cbt, snapshots removed, ...)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def plan_note(self):
        """Words check mode adds to what it would do (" (enabling CBT first)")."""
        return ""

    def stamp(self, disk):
        """A cheap identity of a shut-off VM's disk contents (file size, mtime, inode), or
        None: equal stamps let a re-run skip reading."""
        return None

    def plan_disk(self, disk):
        """What a full sync would do with ``disk``, for check mode (nothing is read):
        {method: copy or reference, format and path of the data it would leave, the
        source's allocated bytes or None}."""
        return {"method": "copy", "format": "raw", "path": "disks/%s.raw" % disk["id"], "allocated": None}

    def reference(self, disk):
        """{path, format, allocated, bytes_written} when a full sync keeps the disk where it
        is (a shut-off local disk) instead of copying it, else None."""
        return None

    @abc.abstractmethod
    def open_disk(self, disk):
        """A context manager reading the disk's guest bytes at the session's point in
        time (engine/disk.py's reader shape: size, extents(), pread)."""

    def changes(self, disk, reader, record):
        """[[start, length], ...] that changed since ``record``'s checkpoint (the disk's
        record in the bundle), or with ``record`` None, that hold data; None when the
        platform cannot say (the engine then compares block digests, or reads the
        reader's own extents). Append the reason for a None to ``self.reasons``."""
        return None

    def checkpoint(self, index):
        """The checkpoint sync ``index`` records (what the next sync asks changes since)."""
        return {"kind": "digests", "id": index}

    def disk_checkpoint(self, disk, index):
        """The checkpoint recorded on one disk's record."""
        return self.checkpoint(index)

    def commit(self, changed):
        """The sync is recorded (``changed``) or found nothing (the new checkpoint is not
        needed): keep what the next sync starts from, release what is no longer needed.
        True when that changed the source beyond the sync itself."""
        return False
