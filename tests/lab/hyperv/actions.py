"""The mutating cmdlets of the Hyper-V host model (a part of host.HyperVHost).

Each cmdlet takes the parameters Microsoft documents for it (only those the collection
uses are accepted; any other is refused by the interpreter), changes the JSON state under
the host's lock, and fails the way Hyper-V does: an unknown VM is InvalidArgument, a VM
in the wrong state is InvalidOperation with Hyper-V's sentence, a taken controller slot or
a missing VHDX is InvalidArgument / ObjectNotFound.

What is modelled, and how (docs/lab.md repeats it):
- New-VM makes a VM with one network adapter, not connected, as Hyper-V does; like
  Hyper-V it allows two VMs of the same name (callers check names themselves).
- Start-VM / Stop-VM change the state at once; Stop-VM without -TurnOff is a guest
  shutdown, which needs the guest to run the Shutdown integration service.
- The guest is not run. A VM's ``guest_services`` says whether its guest runs Hyper-V's
  integration services (Linux has them in its kernel, hv_utils): then the Heartbeat
  service reports OK from HEARTBEAT_AFTER seconds after Start-VM, else "No Contact".
- Checkpoint-VM makes each disk's differencing disk (an .avhdx) and points the drive at
  it. qemu cannot write VHDX differencing disks, so the .avhdx file is a qcow2 overlay on
  the parent VHDX; Get-VHD reports it as Hyper-V would (VHDX, Differencing, ParentPath).
  Remove-VMCheckpoint merges it into the parent (qemu-img commit, real bytes) and points
  the drive back; only the newest checkpoint can be removed here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

from . import powershell as ps
from .powershell import Cmdlet, PSRuntimeError

HEARTBEAT_AFTER = 1.0  # seconds from Start-VM until a guest with integration services answers
STATE_SENTENCE = "The operation cannot be performed while the virtual machine is in its current state."
_VM = {"Name": "list", "VM": "value"}
_VMNAME = {"VMName": "list", "VM": "value"}


def _invalid(message, cmdlet, target=None, reason="InvalidParameter", category="InvalidArgument"):
    from .host import error_id

    return PSRuntimeError(
        message,
        category,
        error_id(reason, cmdlet),
        target=target,
        exception="Microsoft.HyperV.PowerShell.VirtualizationInvalidArgumentException",
    )


def _wrong_state(vm, what, cmdlet):
    from .host import error_id

    return PSRuntimeError(
        "%s failed for virtual machine '%s' (state %s). %s" % (what, vm["name"], vm["state"], STATE_SENTENCE),
        "InvalidOperation",
        error_id("InvalidState", cmdlet),
        target=vm["name"],
        exception="Microsoft.HyperV.PowerShell.VirtualizationException",
    )


def _int(value, name, cmdlet):
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _invalid(
            'Cannot bind parameter \'%s\'. Cannot convert value "%s" to type "System.Int64".'
            % (name, ps.to_string(value)),
            cmdlet,
            reason="CannotConvertArgumentNoMessage",
        ) from None


def _virtual_size(local):
    info = subprocess.run(["qemu-img", "info", "--output=json", "-U", local], check=True, capture_output=True)
    return json.loads(info.stdout)["virtual-size"]


def _mac(value, cmdlet):
    mac = ps.to_string(value).replace("-", "").replace(":", "").upper()
    if len(mac) != 12 or any(c not in "0123456789ABCDEF" for c in mac) or int(mac[1], 16) & 1:
        raise _invalid("The MAC address '%s' is not valid (12 hex digits, unicast)." % ps.to_string(value), cmdlet)
    return mac


class HostActions:
    """Mixed into HyperVHost: the cmdlets that change the host."""

    def mutating_cmdlets(self):
        def c(name, params, fn, pipeline="VM"):
            return Cmdlet(name, params, self._mutating(fn, name), pipeline=pipeline)

        return {
            "New-VM": c(
                "New-VM",
                {
                    "Name": "value",
                    "Generation": "value",
                    "MemoryStartupBytes": "value",
                    "NoVHD": "switch",
                    "Path": "value",
                },
                self._new_vm,
                pipeline=None,
            ),  # fmt: skip
            "Set-VM": c(
                "Set-VM",
                dict(
                    _VM,
                    ProcessorCount="value",
                    DynamicMemory="switch",
                    StaticMemory="switch",
                    MemoryStartupBytes="value",
                    MemoryMinimumBytes="value",
                    MemoryMaximumBytes="value",
                    Notes="value",
                    Passthru="switch",
                ),
                self._set_vm,
            ),  # fmt: skip
            "Set-VMFirmware": c(
                "Set-VMFirmware",
                dict(_VMNAME, EnableSecureBoot="value", SecureBootTemplate="value", Passthru="switch"),
                self._set_firmware,
            ),
            "Add-VMHardDiskDrive": c(
                "Add-VMHardDiskDrive",
                dict(
                    _VMNAME,
                    ControllerType="value",
                    ControllerNumber="value",
                    ControllerLocation="value",
                    Path="value",
                    Passthru="switch",
                ),
                self._add_drive,
            ),  # fmt: skip
            "Add-VMNetworkAdapter": c(
                "Add-VMNetworkAdapter",
                dict(_VMNAME, Name="value", SwitchName="value", StaticMacAddress="value", Passthru="switch"),
                self._add_nic,
            ),
            "Connect-VMNetworkAdapter": c(
                "Connect-VMNetworkAdapter",
                {
                    "VMName": "list",
                    "VMNetworkAdapter": "value",
                    "Name": "value",
                    "SwitchName": "value",
                    "Passthru": "switch",
                },
                self._connect_nic,
                pipeline=None,
            ),
            "Set-VMNetworkAdapter": c(
                "Set-VMNetworkAdapter",
                dict(
                    _VMNAME,
                    VMNetworkAdapter="value",
                    Name="value",
                    StaticMacAddress="value",
                    DynamicMacAddress="switch",
                    Passthru="switch",
                ),
                self._set_nic,
            ),
            "Remove-VMNetworkAdapter": c(
                "Remove-VMNetworkAdapter", dict(_VMNAME, Name="value", Passthru="switch"), self._remove_nic
            ),
            "Remove-VM": c("Remove-VM", dict(_VM, Force="switch", Passthru="switch"), self._remove_vm),
            "Start-VM": c("Start-VM", dict(_VM, Passthru="switch"), self._start_vm),
            "Stop-VM": c("Stop-VM", dict(_VM, Force="switch", TurnOff="switch", Passthru="switch"), self._stop_vm),
            "Checkpoint-VM": c(
                "Checkpoint-VM", dict(_VM, SnapshotName="value", Passthru="switch"), self._checkpoint_vm
            ),
            "Remove-VMCheckpoint": c(
                "Remove-VMCheckpoint", dict(_VMNAME, Name="list", Passthru="switch"), self._remove_checkpoint
            ),
            "Remove-VMSnapshot": c(
                "Remove-VMSnapshot", dict(_VMNAME, Name="list", Passthru="switch"), self._remove_checkpoint
            ),
        }

    def _mutating(self, fn, cmdlet):
        """Run ``fn(state, args, vms)`` under the lock on the VMs the call names (by -VM
        objects, the pipeline, -Name or -VMName), then save; its output goes on."""

        def run(args, inputs):
            with self._locked():
                st = self.load()
                vms = self._targets(st, args, inputs, cmdlet)
                out = list(fn(st, args, vms, cmdlet))
                self.save(st)
            return out

        return run

    def _targets(self, st, args, inputs, cmdlet):
        if cmdlet == "New-VM":
            return []
        if "VMNetworkAdapter" in args:
            # Adapter objects (Add-VMNetworkAdapter -Passthru): their VMs; the adapters are
            # picked by _adapters.
            ids = [ps.to_string(ps.member(a, "VMId")).lower() for a in ps.unroll(args["VMNetworkAdapter"])]
            return [vm for vm in st["vms"] if vm["id"].lower() in ids]
        if inputs is not None or "VM" in args:
            given = inputs if inputs is not None else ps.unroll(args["VM"])
            ids = [ps.to_string(ps.member(v, "Id")).lower() for v in given]
            vms = [vm for i in ids for vm in st["vms"] if vm["id"].lower() == i]
            if len(vms) != len(ids):
                raise _invalid("The virtual machine object given to %s no longer exists." % cmdlet, cmdlet)
            return vms
        key = "Name" if cmdlet in ("Set-VM", "Remove-VM", "Start-VM", "Stop-VM", "Checkpoint-VM") else "VMName"
        if key not in args:
            raise ps.PSParseError("%s needs -VM or -%s in the simulator's subset" % (cmdlet, key))
        names = args[key] if isinstance(args[key], list) else [args[key]]
        return self._find(st, names, cmdlet)

    # ------------------------------------------------------------ VMs

    def _new_vm(self, st, args, vms, cmdlet):
        name = ps.to_string(args.get("Name"))
        if not name:
            raise _invalid("The virtual machine name cannot be empty.", cmdlet)
        generation = _int(args.get("Generation", 1), "Generation", cmdlet)
        if generation not in (1, 2):
            raise _invalid("The generation %d is not supported (1 or 2)." % generation, cmdlet)
        memory = _int(args.get("MemoryStartupBytes", 512 * 1024 * 1024), "MemoryStartupBytes", cmdlet)
        if memory % (2 * 1024 * 1024) or memory < 32 * 1024 * 1024:
            raise _invalid(
                "Failed to modify device 'Memory'. Invalid startup memory amount: %d bytes. The amount of memory "
                "must be a multiple of 2 MB and at least 32 MB." % memory,
                cmdlet,
            )
        if not args.get("NoVHD"):
            raise ps.PSParseError("New-VM without -NoVHD (making a VHD) is not in the simulator's subset")
        vm = {
            "name": name, "id": str(uuid.uuid4()), "state": "Off", "generation": generation, "cpus": 1,
            "memory_startup": memory, "dynamic_memory": False, "memory_minimum": 512 * 1024 * 1024,
            "memory_maximum": 1048576 * 1024 * 1024, "notes": "", "secure_boot": generation == 2,
            "secure_boot_template": "MicrosoftWindows", "drives": [], "checkpoints": [],
            "nics": [{"name": "Network Adapter", "switch": None, "mac": None, "vlan": None,
                      "id": str(uuid.uuid4()).upper()}],
            "integration": {s: True for s in self.integration_services()}, "guest_services": True,
            "path": ps.to_string(args.get("Path")) or None,
        }  # fmt: skip
        st["vms"].append(vm)
        yield self._vm_object(vm)

    def _set_vm(self, st, args, vms, cmdlet):
        for vm in vms:
            hardware = [k for k in args if k not in ("Name", "VM", "Notes", "Passthru")]
            if hardware and vm["state"] != "Off":
                raise _wrong_state(vm, "Modifying the processor or memory", cmdlet)
            if "ProcessorCount" in args:
                count = _int(args["ProcessorCount"], "ProcessorCount", cmdlet)
                if not 1 <= count <= 240:
                    raise _invalid("The processor count %d is out of range (1 to 240)." % count, cmdlet)
                vm["cpus"] = count
            if args.get("DynamicMemory") and args.get("StaticMemory"):
                raise _invalid("Parameters -DynamicMemory and -StaticMemory cannot be used together.", cmdlet)
            if args.get("DynamicMemory"):
                vm["dynamic_memory"] = True
            if args.get("StaticMemory"):
                vm["dynamic_memory"] = False
            for param, key in (("MemoryStartupBytes", "memory_startup"), ("MemoryMinimumBytes", "memory_minimum"),
                               ("MemoryMaximumBytes", "memory_maximum")):  # fmt: skip
                if param in args:
                    vm[key] = _int(args[param], param, cmdlet)
            if vm["dynamic_memory"] and not vm["memory_minimum"] <= vm["memory_startup"] <= vm["memory_maximum"]:
                raise _invalid(
                    "Failed to modify device 'Memory'. The startup memory must lie between the minimum and the "
                    "maximum memory of virtual machine '%s'." % vm["name"],
                    cmdlet,
                )
            if "Notes" in args:
                vm["notes"] = ps.to_string(args["Notes"])
            if args.get("Passthru"):
                yield self._vm_object(vm)

    def _set_firmware(self, st, args, vms, cmdlet):
        for vm in vms:
            if vm["generation"] != 2:
                raise _invalid(
                    'Generation 1 virtual machines do not support the operation; "%s" is generation 1.' % vm["name"],
                    cmdlet,
                    target=vm["name"],
                )
            if vm["state"] != "Off":
                raise _wrong_state(vm, "Modifying the firmware", cmdlet)
            if "EnableSecureBoot" in args:
                value = ps.to_string(args["EnableSecureBoot"]).lower()
                if value not in ("on", "off"):
                    raise _invalid("EnableSecureBoot takes On or Off, not '%s'." % value, cmdlet)
                vm["secure_boot"] = value == "on"
            if "SecureBootTemplate" in args:
                template = ps.to_string(args["SecureBootTemplate"])
                if template not in ("MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM"):
                    raise _invalid("The secure boot template '%s' does not exist on this host." % template, cmdlet)
                vm["secure_boot_template"] = template
            if args.get("Passthru"):
                yield from self._firmware(st, vm, {})

    def _remove_vm(self, st, args, vms, cmdlet):
        # Hyper-V turns a running VM off and removes it; its VHDX files stay.
        for vm in vms:
            st["vms"].remove(vm)
        return []

    def _start_vm(self, st, args, vms, cmdlet):
        for vm in vms:
            if vm["state"] == "Running":
                continue  # Hyper-V warns "already in the specified state" and does nothing
            if vm["state"] not in ("Off", "Saved", "Paused"):
                raise _wrong_state(vm, "Starting", cmdlet)
            missing = [d["path"] for d in vm["drives"] if not os.path.isfile(self.local_path(st, d["path"]) or "")]
            if missing:
                raise PSRuntimeError(
                    "'%s' failed to start. Failed to open attachment '%s'. The system cannot find the file "
                    "specified." % (vm["name"], missing[0]),
                    "ObjectNotFound",
                    "ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.StartVM",
                    target=vm["name"],
                )
            vm["state"] = "Running"
            vm["started_at"] = time.time()
            if args.get("Passthru"):
                yield self._vm_object(vm)

    def _stop_vm(self, st, args, vms, cmdlet):
        for vm in vms:
            if vm["state"] == "Off":
                continue  # "already in the specified state"
            if not args.get("TurnOff") and not (
                vm["state"] == "Running" and vm.get("guest_services", True) and vm["integration"].get("Shutdown")
            ):
                raise PSRuntimeError(
                    "The virtual machine '%s' could not be shut down: the Shutdown integration service is not "
                    "available. Use -TurnOff to turn it off." % vm["name"],
                    "InvalidOperation",
                    "ShutdownIntegrationServiceUnavailable,Microsoft.HyperV.PowerShell.Commands.StopVM",
                    target=vm["name"],
                )
            vm["state"] = "Off"
            vm.pop("started_at", None)
            if args.get("Passthru"):
                yield self._vm_object(vm)

    # ------------------------------------------------------------ disks

    def _add_drive(self, st, args, vms, cmdlet):
        for vm in vms:
            ctype = ps.to_string(args.get("ControllerType") or "IDE").upper()
            if ctype not in ("IDE", "SCSI"):
                raise _invalid("The controller type '%s' is not valid (IDE or SCSI)." % ctype, cmdlet)
            if ctype == "IDE" and vm["generation"] == 2:
                raise _invalid("Generation 2 virtual machines have no IDE controller.", cmdlet, target=vm["name"])
            if ctype == "IDE" and vm["state"] != "Off":
                raise _wrong_state(vm, "Adding a drive to the IDE controller", cmdlet)
            number = _int(args.get("ControllerNumber", 0), "ControllerNumber", cmdlet)
            location = _int(args.get("ControllerLocation", 0), "ControllerLocation", cmdlet)
            limits = (2, 2) if ctype == "IDE" else (4, 64)
            if not (0 <= number < limits[0] and 0 <= location < limits[1]):
                raise _invalid(
                    "There is no %s controller %d location %d on '%s'." % (ctype, number, location, vm["name"]), cmdlet
                )
            taken = [d for d in vm["drives"] if (d["controller_type"], d["controller_number"],
                     d["controller_location"]) == (ctype, number, location)]  # fmt: skip
            if taken:
                raise _invalid(
                    "The %s controller %d location %d of '%s' is already in use."
                    % (ctype, number, location, vm["name"]),
                    cmdlet,
                    target=vm["name"],
                )
            path = ps.to_string(args.get("Path"))
            local = self.local_path(st, path)
            if local is None or not os.path.isfile(local):
                raise PSRuntimeError(
                    "Failed to add device 'Virtual Hard Disk'. The system cannot find the file specified: '%s'." % path,
                    "ObjectNotFound",
                    "ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.AddVMHardDiskDrive",
                    target=path,
                )
            drive = {"controller_type": ctype, "controller_number": number, "controller_location": location,
                     "path": path}  # fmt: skip
            vm["drives"].append(drive)
            # A file the host has not seen: fixed when it holds every block (qemu-img does not
            # say which subformat a VHDX is; a fixed one is at least its virtual size).
            vtype = "Fixed" if os.path.getsize(local) >= _virtual_size(local) else "Dynamic"
            st["vhds"].setdefault(path.lower(), {"type": vtype, "id": str(uuid.uuid4()).upper()})
            if args.get("Passthru"):
                yield from (x for x in self._drives(st, vm, {}) if x.get("Path") == path)

    # ------------------------------------------------------------ network adapters

    def _adapter(self, vm, name, cmdlet):
        found = [n for n in vm["nics"] if n["name"].lower() == ps.to_string(name).lower()]
        if not found:
            raise _invalid(
                "Hyper-V was unable to find a network adapter named '%s' on '%s'." % (ps.to_string(name), vm["name"]),
                cmdlet,
                target=vm["name"],
            )
        return found

    def _adapters(self, vm, args, cmdlet):
        """The adapters a call names: -VMNetworkAdapter objects, -Name, or all of the VM's."""
        if "VMNetworkAdapter" in args:
            ids = {ps.to_string(ps.member(a, "Id")) for a in ps.unroll(args["VMNetworkAdapter"])}
            return [n for n in vm["nics"] if n["id"] in ids]
        return self._adapter(vm, args["Name"], cmdlet) if "Name" in args else vm["nics"]

    def _switch(self, st, name, cmdlet):
        name = ps.to_string(name)
        switches = st.get("switches")
        if switches is not None and name.lower() not in (s.lower() for s in switches):
            raise _invalid('Hyper-V was unable to find a virtual switch with name "%s".' % name, cmdlet)
        return name

    def _add_nic(self, st, args, vms, cmdlet):
        for vm in vms:
            if vm["state"] != "Off" and vm["generation"] == 1:
                raise _wrong_state(vm, "Adding a network adapter", cmdlet)
            nic = {"name": ps.to_string(args.get("Name")) or "Network Adapter", "switch": None, "mac": None,
                   "vlan": None, "id": str(uuid.uuid4()).upper()}  # fmt: skip
            if "SwitchName" in args:
                nic["switch"] = self._switch(st, args["SwitchName"], cmdlet)
            if "StaticMacAddress" in args:
                nic["mac"] = _mac(args["StaticMacAddress"], cmdlet)
            vm["nics"].append(nic)
            if args.get("Passthru"):
                yield from (x for x in self._nics(st, vm, {}) if x.get("Id") == nic["id"])

    def _connect_nic(self, st, args, vms, cmdlet):
        switch = self._switch(st, args.get("SwitchName"), cmdlet)
        for vm in vms:
            for nic in self._adapters(vm, args, cmdlet):
                nic["switch"] = switch
        return []

    def _set_nic(self, st, args, vms, cmdlet):
        for vm in vms:
            for nic in self._adapters(vm, args, cmdlet):
                if ("StaticMacAddress" in args or args.get("DynamicMacAddress")) and vm["state"] != "Off":
                    raise _wrong_state(vm, "Changing the MAC address", cmdlet)
                if "StaticMacAddress" in args:
                    nic["mac"] = _mac(args["StaticMacAddress"], cmdlet)
                if args.get("DynamicMacAddress"):
                    nic["mac"] = None
        return []

    def _remove_nic(self, st, args, vms, cmdlet):
        for vm in vms:
            if vm["state"] != "Off" and vm["generation"] == 1:
                raise _wrong_state(vm, "Removing a network adapter", cmdlet)
            gone = self._adapter(vm, args["Name"], cmdlet) if "Name" in args else list(vm["nics"])
            vm["nics"] = [n for n in vm["nics"] if n not in gone]
        return []

    # ------------------------------------------------------------ checkpoints

    def _checkpoint_vm(self, st, args, vms, cmdlet):
        for vm in vms:
            name = ps.to_string(args.get("SnapshotName")) or "%s - checkpoint" % vm["name"]
            cp = {"name": name, "id": str(uuid.uuid4()).upper(), "drives": {}}
            for d in vm["drives"]:
                parent = d["path"]
                local_parent = self.local_path(st, parent)
                stem = os.path.splitext(os.path.basename(local_parent))[0]
                child_name = "%s_%s.avhdx" % (stem, cp["id"])
                child = os.path.join(os.path.dirname(local_parent), child_name)
                fmt = "qcow2" if st["vhds"].get(parent.lower(), {}).get("parent") else "vhdx"
                subprocess.run(
                    ["qemu-img", "create", "-q", "-f", "qcow2", "-b", local_parent, "-F", fmt, child],
                    check=True, capture_output=True,
                )  # fmt: skip
                child_win = parent[: len(parent) - len(os.path.basename(local_parent))] + child_name
                st["vhds"][child_win.lower()] = {"type": "Differencing", "parent": parent,
                                                 "id": str(uuid.uuid4()).upper()}  # fmt: skip
                cp["drives"][child_win] = parent
                d["path"] = child_win
            vm["checkpoints"].append(cp)
            if args.get("Passthru"):
                yield from self._snapshots(st, vm, {"Name": [name]})

    def _remove_checkpoint(self, st, args, vms, cmdlet):
        names = [ps.to_string(n).lower() for n in ps.unroll(args.get("Name"))] if "Name" in args else None
        for vm in vms:
            chosen = [c for c in vm["checkpoints"] if names is None or c["name"].lower() in names]
            if names is not None and not chosen:
                raise PSRuntimeError(
                    "Hyper-V was unable to find a checkpoint named '%s' on '%s'." % (", ".join(names), vm["name"]),
                    "ObjectNotFound",
                    "ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.RemoveVMSnapshot",
                    target=vm["name"],
                )
            for cp in sorted(chosen, key=vm["checkpoints"].index, reverse=True):
                self._merge(st, vm, cp, cmdlet)
        return []

    def _merge(self, st, vm, cp, cmdlet):
        """Merge a checkpoint's differencing disks into their parents (the newest only)."""
        current = {d["path"] for d in vm["drives"]}
        if cp.get("drives") and not set(cp["drives"]) <= current:
            raise ps.PSParseError("the simulator merges only the newest checkpoint (%s)" % cp["name"])
        for d in vm["drives"]:
            parent = (cp.get("drives") or {}).get(d["path"])
            if parent is None:
                continue
            child_local = self.local_path(st, d["path"])
            subprocess.run(["qemu-img", "commit", "-q", "-f", "qcow2", child_local], check=True, capture_output=True)
            os.unlink(child_local)
            st["vhds"].pop(d["path"].lower(), None)
            d["path"] = parent
        vm["checkpoints"].remove(cp)
