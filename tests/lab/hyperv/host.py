"""A model of a Hyper-V host: VMs in a JSON state file, disks as real VHDX files.

The host's storage is one directory that stands in for the SMB share the conversion host
mounts: Hyper-V sees it as a Windows path (``share_windows``, e.g. ``C:\\VMs``), the
conversion host as a local directory (``share_local``). VHDX files are made with
``qemu-img create -f vhdx`` and Get-VHD reports what ``qemu-img info`` says about them
(size, block size, format); only whether a disk is fixed or dynamic is recorded here,
because qemu-img does not report it.

Cmdlets return objects with the properties Microsoft documents for the Hyper-V module
(names and enum values), so scripts that read them here read the same names on Windows.
The read-only cmdlets are here; the ones that change the host (New-VM, Set-VM, ...) are
in actions.py. Anything else is refused by the interpreter as an unknown cmdlet.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import ntpath
import os
import subprocess
import time
import uuid

from . import powershell as ps
from .actions import HEARTBEAT_AFTER, HostActions
from .powershell import Cmdlet, PSEnum, PSObject, PSRuntimeError
from .rct import HostRct

STATE_FILE = "hyperv.json"

# Enum values of Microsoft.HyperV.PowerShell (what ConvertTo-Json writes for them).
VM_STATE = {"Other": 1, "Running": 2, "Off": 3, "Stopping": 4, "Saved": 6, "Paused": 9, "Starting": 10,
            "Reset": 11, "Saving": 32773, "Pausing": 32776, "Resuming": 32777}  # fmt: skip
CONTROLLER_TYPE = {"IDE": 0, "SCSI": 1}
VHD_FORMAT = {"VHD": 2, "VHDX": 3, "VHDSet": 4}
VHD_TYPE = {"Fixed": 2, "Dynamic": 3, "Differencing": 4}
ON_OFF = {"On": 0, "Off": 1}
VLAN_MODE = {"Untagged": 0, "Access": 1, "Trunk": 2, "Private": 3}
SNAPSHOT_TYPE = {"Standard": 0, "Recovery": 1, "Planned": 2, "Missing": 3, "Replica": 4}
INTEGRATION_SERVICES = ["Guest Service Interface", "Heartbeat", "Key-Value Pair Exchange", "Shutdown",
                        "Time Synchronization", "VSS"]  # fmt: skip

GIB = 1024**3
MIB = 1024**2


def enum(type_name, table, name):
    return PSEnum("Microsoft.HyperV.PowerShell." + type_name, name, table[name])


def error_id(reason, cmdlet):
    """Hyper-V's FullyQualifiedErrorId: '<reason>,Microsoft.HyperV.PowerShell.Commands.GetVMCommand'."""
    return "%s,Microsoft.HyperV.PowerShell.Commands.%sCommand" % (reason, cmdlet.replace("-", ""))


def _not_found_vm(name, cmdlet):
    # As Windows Server 2016+ prints it (CategoryInfo "InvalidArgument: (name:String)").
    return PSRuntimeError(
        "A parameter is invalid. Hyper-V was unable to find a virtual machine with name %s." % name,
        "InvalidArgument",
        error_id("InvalidParameter", cmdlet),
        target=name,
        exception="Microsoft.HyperV.PowerShell.VirtualizationInvalidArgumentException",
    )


_REGION_METADATA = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
_ITEM_VIRTUAL_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le


def vhdx_metadata(local):
    """What Get-VHD reads of a VHDX that qemu-img refuses: its format and virtual size, from
    the region table (at 192 KiB) and the metadata table (VHDX specification 2.6)."""
    with open(local, "rb") as f:
        f.seek(192 * 1024)
        table = f.read(64 * 1024)
        regions = {table[16 + 32 * i : 32 + 32 * i]: int.from_bytes(table[32 + 32 * i : 40 + 32 * i], "little")
                   for i in range(int.from_bytes(table[8:12], "little"))}  # fmt: skip
        if table[:4] != b"regi" or _REGION_METADATA not in regions:
            return {"format": "raw", "virtual-size": os.path.getsize(local)}
        base = regions[_REGION_METADATA]
        f.seek(base)
        meta = f.read(64 * 1024)
        for i in range(int.from_bytes(meta[10:12], "little")):
            entry = meta[32 + 32 * i : 64 + 32 * i]
            if entry[:16] == _ITEM_VIRTUAL_SIZE:
                f.seek(base + int.from_bytes(entry[16:20], "little"))
                return {"format": "vhdx", "virtual-size": int.from_bytes(f.read(8), "little")}
    return {"format": "raw", "virtual-size": os.path.getsize(local)}


class HyperVHost(HostActions, HostRct):
    """The host: ``state_dir`` holds hyperv.json; ``share_local`` is the VHDX directory
    Hyper-V knows as ``share_windows``."""

    def __init__(self, state_dir, computer_name="HVLAB01"):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE)
        self.computer_name = computer_name

    # ------------------------------------------------------------ state

    @contextlib.contextmanager
    def _locked(self):
        # One writer at a time across the server's threads and the CLI.
        with open(self.path + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self):
        with open(self.path, encoding="utf-8") as f:
            return json.load(f)

    def save(self, state):
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    @classmethod
    def init(cls, state_dir, share_local, share_windows="C:\\VMs", computer_name="HVLAB01"):
        """Create (or keep) the state file for a host whose disks live in ``share_local``."""
        os.makedirs(state_dir, exist_ok=True)
        os.makedirs(share_local, exist_ok=True)
        host = cls(state_dir, computer_name)
        with host._locked():
            if not os.path.exists(host.path):
                host.save({"computer_name": computer_name, "share_local": os.path.abspath(share_local),
                           "share_windows": share_windows, "vms": [], "vhds": {}})  # fmt: skip
        return host

    # ------------------------------------------------------------ paths

    def local_path(self, state, win_path):
        """The local file for a Windows path under the share, or None (Windows paths are
        case-insensitive; the share's own root is compared that way)."""
        root = state["share_windows"].rstrip("\\")
        if not win_path or not win_path.lower().startswith(root.lower() + "\\"):
            return None
        rel = win_path[len(root) + 1 :]
        parts = [p for p in rel.split("\\") if p]
        if any(p in (".", "..") for p in parts):
            return None
        return os.path.join(state["share_local"], *parts)

    def windows_path(self, state, file_name):
        return ntpath.join(state["share_windows"], file_name)

    # ------------------------------------------------------------ creating lab VMs

    def new_vm(self, name, generation=2, cpus=1, memory_mib=1024, dynamic_memory=False, memory_min_mib=None,
               memory_max_mib=None, secure_boot=None, secure_boot_template="MicrosoftUEFICertificateAuthority",
               disks=(), nics=(), notes="", state="Off", checkpoints=(), guest_services=True):  # fmt: skip
        """Add a VM to the model (for tests and `lab up`). ``disks``: dicts with
        ``size`` (bytes) and optional ``controller`` (IDE/SCSI), ``type`` (Dynamic/Fixed),
        ``file`` (name in the share); ``nics``: dicts with ``switch``, ``mac``
        (12 hex digits, or None for dynamic), ``vlan``."""
        if generation == 1 and any(d.get("controller", "IDE") == "SCSI" and i == 0 for i, d in enumerate(disks)):
            raise ValueError("a generation 1 VM boots from IDE; put the first disk on IDE")
        with self._locked():
            st = self.load()
            vm_id = str(uuid.uuid4())
            drives = []
            counters = {}
            for i, d in enumerate(disks):
                controller = d.get("controller") or ("IDE" if generation == 1 else "SCSI")
                if generation == 2 and controller == "IDE":
                    raise ValueError("generation 2 VMs have no IDE controller")
                slot = counters.get(controller, 0)
                counters[controller] = slot + 1
                number, location = (slot // 2, slot % 2) if controller == "IDE" else (0, slot)
                file_name = d.get("file") or "%s-disk%d.vhdx" % (name, i)
                local = os.path.join(st["share_local"], file_name)
                if not os.path.exists(local):
                    opts = ["-o", "subformat=fixed"] if d.get("type") == "Fixed" else []
                    subprocess.run(
                        ["qemu-img", "create", "-q", "-f", "vhdx", *opts, local, str(int(d["size"]))], check=True
                    )
                win = self.windows_path(st, file_name)
                st["vhds"][win.lower()] = {"type": d.get("type", "Dynamic"), "id": str(uuid.uuid4()).upper()}
                drives.append({"controller_type": controller, "controller_number": number,
                               "controller_location": location, "path": win})  # fmt: skip
            adapters = []
            for n in nics:
                adapters.append({"name": n.get("name", "Network Adapter"), "switch": n.get("switch"),
                                 "mac": (n.get("mac") or "").replace(":", "").replace("-", "").upper() or None,
                                 "vlan": n.get("vlan"), "id": str(uuid.uuid4()).upper()})  # fmt: skip
            st["vms"].append({
                "name": name, "id": vm_id, "state": state, "generation": generation, "cpus": cpus,
                "memory_startup": memory_mib * MIB, "dynamic_memory": dynamic_memory,
                "memory_minimum": (memory_min_mib or min(512, memory_mib)) * MIB,
                "memory_maximum": (memory_max_mib or 1048576) * MIB, "notes": notes,
                "secure_boot": (generation == 2) if secure_boot is None else bool(secure_boot),
                "secure_boot_template": secure_boot_template, "drives": drives, "nics": adapters,
                "checkpoints": [{"name": c, "id": str(uuid.uuid4()).upper()} for c in checkpoints],
                "integration": {s: True for s in INTEGRATION_SERVICES}, "guest_services": guest_services,
            })  # fmt: skip
            self.save(st)
            return vm_id

    # ------------------------------------------------------------ PowerShell

    def run_powershell(self, script):
        """(stdout, stderr, exit code) of one script, the way powershell.exe returns them."""
        cmdlets = dict(ps.GENERIC_CMDLETS)
        cmdlets.update(self.cmdlets())
        return ps.Interpreter(cmdlets).run(script)

    @staticmethod
    def integration_services():
        return list(INTEGRATION_SERVICES)

    def cmdlets(self):
        table = {
            "Get-VM": Cmdlet("Get-VM", {"Name": "list", "Id": "value"}, self.get_vm),
            "Get-VHD": Cmdlet("Get-VHD", {"Path": "list"}, self.get_vhd, pipeline="Path", required=("Path",)),
        }
        # The Get-VM* cmdlets that take a VM by -VMName or -VM (also from the pipeline).
        per_vm = {
            "Get-VMHardDiskDrive": self._drives,
            "Get-VMNetworkAdapter": self._nics,
            "Get-VMFirmware": self._firmware,
            "Get-VMMemory": self._memory,
            "Get-VMProcessor": self._processor,
            "Get-VMSnapshot": self._snapshots,
            "Get-VMCheckpoint": self._snapshots,
            "Get-VMIntegrationService": self._integration,
        }
        for name, fn in per_vm.items():
            params = {"VMName": "list", "VM": "value"}
            if name in ("Get-VMSnapshot", "Get-VMCheckpoint", "Get-VMIntegrationService"):
                params["Name"] = "list"
            table[name] = Cmdlet(name, params, self._per_vm(fn, name), pipeline="VM")
        table.update(self.mutating_cmdlets())
        table.update(self.cim_cmdlets())
        return table

    # Get-VM

    def _find(self, state, names, cmdlet):
        """VMs matching -Name patterns (wildcards as Hyper-V takes them; a name without
        wildcards that matches nothing is an error, a pattern that matches nothing is not)."""
        out = []
        for pattern in names:
            pattern = ps.to_string(pattern)
            wild = any(c in pattern for c in "*?[")
            hits = [vm for vm in state["vms"] if fnmatch.fnmatchcase(vm["name"].lower(), pattern.lower())]
            if not wild:
                hits = [vm for vm in state["vms"] if vm["name"].lower() == pattern.lower()]
                if not hits:
                    raise _not_found_vm(pattern, cmdlet)
            out.extend(h for h in hits if h not in out)
        return out

    def get_vm(self, args, inputs):
        state = self.load()
        if "Id" in args:
            vms = [vm for vm in state["vms"] if vm["id"].lower() == ps.to_string(args["Id"]).lower()]
            if not vms:
                raise PSRuntimeError(
                    "A parameter is invalid. Hyper-V was unable to find a virtual machine with id %s."
                    % ps.to_string(args["Id"]),
                    "InvalidArgument",
                    error_id("InvalidParameter", "Get-VM"),
                    target=args["Id"],
                    exception="Microsoft.HyperV.PowerShell.VirtualizationInvalidArgumentException",
                )
        elif "Name" in args:
            names = args["Name"] if isinstance(args["Name"], list) else [args["Name"]]
            vms = self._find(state, names, "Get-VM")
        else:
            vms = state["vms"]
        return [self._vm_object(vm) for vm in vms]

    def _vm_object(self, vm):
        return PSObject(
            "Microsoft.HyperV.PowerShell.VirtualMachine",
            Name=vm["name"], Id=vm["id"], VMId=vm["id"], VMName=vm["name"], ComputerName=self.computer_name,
            State=enum("VMState", VM_STATE, vm["state"]), Generation=vm["generation"], Version="9.0",
            ProcessorCount=vm["cpus"], MemoryStartup=vm["memory_startup"], DynamicMemoryEnabled=vm["dynamic_memory"],
            MemoryMinimum=vm["memory_minimum"], MemoryMaximum=vm["memory_maximum"],
            MemoryAssigned=vm["memory_startup"] if vm["state"] == "Running" else 0, Notes=vm["notes"],
            Path=vm.get("path") or "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V",
        )  # fmt: skip

    def _per_vm(self, fn, cmdlet):
        """A Get-VM* cmdlet taking -VMName (names) or -VM (objects, also from the pipeline)."""

        def run(args, inputs):
            state = self.load()
            if inputs is not None or "VM" in args:
                given = inputs if inputs is not None else ps.unroll(args["VM"])
                ids = [ps.member(v, "Id") for v in given]
                vms = [vm for i in ids for vm in state["vms"] if vm["id"] == i]
            elif "VMName" in args:
                names = args["VMName"] if isinstance(args["VMName"], list) else [args["VMName"]]
                vms = self._find(state, names, cmdlet)
            else:
                raise PSRuntimeError(
                    "Parameter set cannot be resolved using the specified named parameters.",
                    "InvalidArgument",
                    "AmbiguousParameterSet," + error_id("", cmdlet).split(",", 1)[1],
                    exception="System.Management.Automation.ParameterBindingException",
                )
            out = []
            for vm in vms:
                out.extend(fn(state, vm, args))
            return out

        return run

    def _drives(self, state, vm, args):
        for d in vm["drives"]:
            yield PSObject(
                "Microsoft.HyperV.PowerShell.HardDiskDrive",
                Name="Hard Drive on %s controller number %d at location %d"
                % (d["controller_type"], d["controller_number"], d["controller_location"]),
                VMName=vm["name"], VMId=vm["id"], ComputerName=self.computer_name,
                ControllerType=enum("ControllerType", CONTROLLER_TYPE, d["controller_type"]),
                ControllerNumber=d["controller_number"], ControllerLocation=d["controller_location"],
                Path=d["path"], DiskNumber=None,
            )  # fmt: skip

    def _nics(self, state, vm, args):
        for n in vm["nics"]:
            vlan = n.get("vlan")
            yield PSObject(
                "Microsoft.HyperV.PowerShell.VMNetworkAdapter",
                Name=n["name"], Id=n["id"], VMName=vm["name"], VMId=vm["id"], SwitchName=n["switch"],
                MacAddress=n["mac"] or "000000000000", DynamicMacAddressEnabled=n["mac"] is None,
                IsLegacy=False, Connected=n["switch"] is not None,
                VlanSetting=PSObject(
                    "Microsoft.HyperV.PowerShell.VMNetworkAdapterVlanSetting",
                    OperationMode=enum("VMNetworkAdapterVlanMode", VLAN_MODE, "Access" if vlan else "Untagged"),
                    AccessVlanId=vlan or 0,
                ),
            )  # fmt: skip

    def _firmware(self, state, vm, args):
        if vm["generation"] != 2:
            raise PSRuntimeError(
                "Generation 1 virtual machines do not support the operation. Get-VMFirmware applies to generation 2 "
                'virtual machines; "%s" is generation 1.' % vm["name"],
                "InvalidArgument",
                error_id("InvalidParameter", "Get-VMFirmware"),
                target=vm["name"],
            )
        yield PSObject(
            "Microsoft.HyperV.PowerShell.VMFirmware",
            VMName=vm["name"], VMId=vm["id"],
            SecureBoot=enum("OnOffState", ON_OFF, "On" if vm["secure_boot"] else "Off"),
            SecureBootTemplate=vm["secure_boot_template"],
            PreferredNetworkBootProtocol=PSEnum("Microsoft.HyperV.PowerShell.IPProtocolPreference", "IPv4", 0),
        )  # fmt: skip

    def _memory(self, state, vm, args):
        yield PSObject(
            "Microsoft.HyperV.PowerShell.VMMemory",
            VMName=vm["name"], VMId=vm["id"], Startup=vm["memory_startup"], DynamicMemoryEnabled=vm["dynamic_memory"],
            Minimum=vm["memory_minimum"], Maximum=vm["memory_maximum"], Buffer=20, Priority=50,
        )  # fmt: skip

    def _processor(self, state, vm, args):
        yield PSObject(
            "Microsoft.HyperV.PowerShell.VMProcessor",
            VMName=vm["name"], VMId=vm["id"], Count=vm["cpus"], CompatibilityForMigrationEnabled=False,
            ExposeVirtualizationExtensions=False,
        )  # fmt: skip

    def _snapshots(self, state, vm, args):
        names = args.get("Name")
        for c in vm["checkpoints"]:
            if names is not None and not any(c["name"].lower() == ps.to_string(n).lower() for n in ps.unroll(names)):
                continue
            yield PSObject(
                "Microsoft.HyperV.PowerShell.VMSnapshot",
                Name=c["name"], Id=c["id"], VMName=vm["name"], VMId=vm["id"],
                SnapshotType=enum("SnapshotType", SNAPSHOT_TYPE, "Standard"), ParentSnapshotName=None,
            )  # fmt: skip

    def _integration(self, state, vm, args):
        names = args.get("Name")
        # The guest answers once it has booted (HEARTBEAT_AFTER), and only when it runs the
        # integration services; otherwise Hyper-V shows "No Contact".
        running = vm["state"] == "Running" and vm.get("guest_services", True)
        running = running and time.time() - vm.get("started_at", 0) >= HEARTBEAT_AFTER
        for service, enabled in vm["integration"].items():
            if names is not None and not any(service.lower() == ps.to_string(n).lower() for n in ps.unroll(names)):
                continue
            yield PSObject(
                "Microsoft.HyperV.PowerShell.VMIntegrationComponent",
                Name=service, VMName=vm["name"], VMId=vm["id"], Enabled=enabled,
                PrimaryStatusDescription="OK" if running and enabled else "No Contact" if enabled else None,
            )  # fmt: skip

    # Get-VHD

    def get_vhd(self, args, inputs):
        state = self.load()
        paths = inputs if inputs is not None else ps.unroll(args["Path"])
        out = []
        for p in paths:
            p = ps.to_string(ps.member(p, "Path") if isinstance(p, PSObject) else p)
            local = self.local_path(state, p)
            if local is None or not os.path.isfile(local):
                raise PSRuntimeError(
                    "'%s' is not an existing virtual hard disk file." % p,
                    "ObjectNotFound",
                    "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD",
                    target=p,
                )
            proc = subprocess.run(["qemu-img", "info", "--output=json", "-U", local], capture_output=True, text=True)
            # qemu-img refuses a damaged VHDX (a BAT entry past the file's end); Hyper-V's
            # Get-VHD reads only the headers and metadata, so it still reports the disk.
            info = json.loads(proc.stdout) if proc.returncode == 0 else vhdx_metadata(local)
            meta = state["vhds"].get(p.lower(), {})
            # A checkpoint's .avhdx is a qcow2 overlay here (see actions.py): Hyper-V calls it VHDX.
            fmt = "VHDX" if meta.get("parent") else {"vhdx": "VHDX", "vpc": "VHD"}.get(info.get("format"))
            if fmt is None:
                raise PSRuntimeError(
                    "The file '%s' is not a virtual hard disk file (qemu-img reads it as %s)."
                    % (p, info.get("format")),
                    "InvalidArgument",
                    "InvalidParameter,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD",
                    target=p,
                )
            parent = meta.get("parent") or info.get("backing-filename")
            vtype = "Differencing" if parent else meta.get("type", "Dynamic")
            out.append(PSObject(
                "Microsoft.Vhd.PowerShell.VirtualHardDisk",
                ComputerName=self.computer_name, Path=p, VhdFormat=enum("VhdFormat", VHD_FORMAT, fmt),
                VhdType=enum("VhdType", VHD_TYPE, vtype), FileSize=os.path.getsize(local), Size=info["virtual-size"],
                MinimumSize=None, LogicalSectorSize=512, PhysicalSectorSize=4096, BlockSize=info.get("cluster-size", 0),
                ParentPath=parent, DiskIdentifier=meta.get("id"), Attached=False, DiskNumber=None,
            ))  # fmt: skip
        return out
