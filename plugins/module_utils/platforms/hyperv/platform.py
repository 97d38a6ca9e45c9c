# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hyper-V as a source and a target, through PowerShell over WinRM (pywinrm).

HyperVPlatform implements platforms/base.py's interface from its parts: connection.py
(WinRM, the scripts), inventory.py (describing VMs), share.py (the SMB share the VHDX
files are read and written through), source.py (cold export) and target.py (import,
what verify reads, the boot check, power). A VM handle is the vm_info script's answer
for one VM (a dict); it is read again after every change. The target is the journal:
the provenance is the last line of the VM's Notes.
"""

from __future__ import annotations

import json
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, VmNotFoundError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import rollback as _rollback
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import Platform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _connection
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _inventory
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import Share
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.source import HyperVSource
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.target import HyperVTarget

# The Notes line that carries the provenance; what the user wrote above it is kept.
NOTES_MARKER = "vmigrate.v2v provenance: "
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def split_notes(notes):
    """(the user's text, the provenance dict or None) of a VM's Notes."""
    user, prov = [], None
    for line in (notes or "").splitlines():
        if line.startswith(NOTES_MARKER):
            try:
                prov = json.loads(line[len(NOTES_MARKER) :])
            except ValueError:
                prov = None
        else:
            user.append(line)
    return "\n".join(user).strip(), prov


def join_notes(user, prov):
    line = NOTES_MARKER + json.dumps(prov, sort_keys=True, separators=(",", ":"))
    return "%s\n%s" % (user, line) if user else line


class HyperVPlatform(HyperVSource, HyperVTarget, Platform):
    """One WinRM connection to a Hyper-V host; a source (export) and a target (import, verify)."""

    name = "hyperv"
    boot_check_starts_target = True
    shutdown_needs = "the Shutdown integration service in the guest"

    @classmethod
    def missing_library(cls):
        return None if _connection.HAS_WINRM else ("pywinrm", str(_connection.WINRM_IMPORT_ERROR))

    @classmethod
    def tls_warning(cls, params):
        return _connection.tls_warning(params)

    def __init__(self, params):
        super().__init__(params)
        self.conn = _connection.HyperVConnection(params)

    def close(self):
        self.conn = None

    def share(self):
        if not self.params.get("share"):
            raise InputError("no share given", "give share (the local mount point) and share_windows")
        return Share(self.params["share"], self.params.get("share_windows"), self.conn.host)

    # -- discovery --

    def list_vms(self):
        return [
            {"name": raw["Name"], "id": (raw.get("Id") or "").lower(), "power_state": (raw.get("State") or "").lower()}
            for raw in _inventory.read_vms(self.conn)
        ]

    def find_vm(self, ref):
        if UUID_RE.match(ref or ""):
            try:
                found = self.conn.run("vm_info", {"Id": ref}, vm=ref, what="describing the VM")
            except InputError as exc:
                # Get-VM -Id of a well-formed Id fails as input (InvalidArgument: "unable to
                # find a virtual machine with id") only when the host has no such VM.
                raise VmNotFoundError(exc.problem, exc.fix, **dict(exc.details, vm=ref)) from exc
            if not found:
                raise VmNotFoundError(
                    "VM %s not found on Hyper-V host %s" % (ref, self.conn.host),
                    "check the Id: Get-VM on %s lists the VMs this user can see" % self.conn.host,
                    vm=ref,
                )
        else:
            found = _inventory.read_vms(self.conn, [ref])
        return self._one(found, ref)

    def _one(self, found, ref):
        if len(found) > 1:
            raise InputError(
                "Hyper-V host %s has %d VMs named %r (Hyper-V allows that)" % (self.conn.host, len(found), ref),
                "give the VM's Id instead of its name: one of %s" % ", ".join(vm["Id"] for vm in found),
            )
        return found[0]

    def lookup(self, name):
        found = self.conn.run("vm_info", {"Names": [name]}, vm=name, what="looking for the VM")
        return self._one(found, name) if found else None

    def vm_name(self, vm):
        return vm["Name"]

    def describe(self, vm):
        spec = _inventory.describe_vm(vm)
        spec["annotations"]["description"] = split_notes(vm.get("Notes"))[0] or None
        return spec

    def power_state(self, vm):
        """Read live (the power step and verify poll it), and kept in the handle."""
        vm["State"] = self.conn.run("vm_state", {"Id": vm["Id"]}, vm=vm["Name"], what="reading the power state")
        return {"Off": "off", "Running": "running"}.get(vm["State"], (vm["State"] or "other").lower())

    # -- provenance in Notes --

    def read_provenance(self, vm):
        return split_notes(vm.get("Notes"))[1]

    def write_provenance(self, vm, prov):
        notes = self._notes(vm, prov)
        self.conn.run("set_notes", {"Id": vm["Id"], "Notes": notes}, vm=vm["Name"], what="writing Notes")
        vm["Notes"] = notes

    @staticmethod
    def _notes(vm, prov):
        # A rolled-back target says so first, where people read Notes (engine/rollback).
        user = _rollback.with_note(split_notes((vm or {}).get("Notes"))[0], _rollback.note(prov))
        return join_notes(user, prov)
