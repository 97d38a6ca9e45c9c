# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hyper-V as a target: VHDX files written into the share, then New-VM and its settings,
and the primitives verify (digests through the share, heartbeat boot check) and the power
step use.

Order of a create: every disk is converted into its VHDX in the share first (a private
``.part`` directory, renamed into place when complete); then New-VM with Notes saying
``state: incomplete``; then processors, memory, firmware, drives and network adapters;
last the Notes with the complete provenance. A failure anywhere removes the VM and the
files this run made, so nothing half-made looks complete.
"""

from __future__ import annotations

import contextlib
import os
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError, V2VError
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress, human_bytes
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import BOOT_TIMEOUT
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _inventory
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import safe_file_name

MIB = 1024 * 1024
VHD_TYPES = ("dynamic", "fixed")
SECURE_BOOT_TEMPLATES = ("MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM")


def controller_slots(spec, generation):
    """(ControllerType, ControllerNumber, ControllerLocation) per spec disk, in order: IDE
    0:0, 0:1, 1:0, 1:1 (generation 1 boots from the first), SCSI 0:0, 0:1, ..."""
    slots, ide, scsi = [], 0, 0
    for disk in spec["disks"]:
        if disk["bus"] == "ide" and generation == 1:
            if ide >= 4:
                raise InputError(
                    "the spec puts %d disks on IDE; a Hyper-V generation 1 VM has 4 IDE slots" % (ide + 1),
                    "move data disks to SCSI (they are, unless the spec says ide)",
                )
            slots.append(("IDE", ide // 2, ide % 2))
            ide += 1
        else:
            slots.append(("SCSI", 0, scsi))
            scsi += 1
    return slots


def mac_hyperv(mac):
    return (mac or "").replace(":", "").replace("-", "").upper() or None


class HyperVTarget:
    """Hyper-V as a target (a part of HyperVPlatform)."""

    # -- the target primitives engine/steps.run_import uses --

    def _plan_files(self, name, spec, bundle, options):
        share = self.share()
        share.check(write=True)
        vhd_type = options.get("vhd_type") or "dynamic"
        if vhd_type not in VHD_TYPES:
            raise InputError("vhd_type %r is not known" % vhd_type, "use dynamic or fixed")
        if spec["memory_mib"] % 2:
            raise InputError(
                "VM %s has %d MiB of memory; Hyper-V needs a multiple of 2 MB" % (name, spec["memory_mib"]),
                "give the source VM an even amount of memory (MiB) and export again",
            )
        files = []
        for disk in spec["disks"]:
            fname = "%s-%s.vhdx" % (safe_file_name(name), disk["id"])
            files.append(
                {
                    "disk": disk,
                    "record": bundle.disk(disk["id"]),
                    "local": os.path.join(share.local, fname),
                    "windows": share.to_windows(fname),
                }
            )
        return files, vhd_type

    def create_vm(self, name, spec, bundle, prov, options, check_mode):
        files, vhd_type = self._plan_files(name, spec, bundle, options)
        for f in files:
            if os.path.exists(f["local"]):
                raise InputError(
                    "the share already holds %s (%s), which this import would write" % (f["windows"], f["local"]),
                    "remove that file (it belongs to no VM of this name), or import under another name",
                )
        self._check_free_space(files, vhd_type)
        generation = 2 if spec["firmware"]["type"] == "uefi" else 1
        result = {
            "changed": True,
            "generation": generation,
            "files": [f["windows"] for f in files],
            "vhd_type": vhd_type,
            "bytes_written": 0,
            "deltas_applied": [],
        }
        if check_mode:
            return result
        made, vm_id = [], None
        incomplete = dict(prov, state="incomplete")
        try:
            for f in files:
                made.append(f["local"])
                result["bytes_written"] += self._write_vhdx(f, bundle, prov, vhd_type, result, name)
                # Read back against the bundle's digests before New-VM: a bit flipped in the
                # bundle's VHDX data (no checksums there) would otherwise reach the target
                # unseen until verify. The VHDX is checked, not the bundle's file before the
                # conversion: the digests describe the disk with its deltas applied, which
                # exists only once written; a refusal removes it below (no VM is made).
                _blocks.check_disk_data(bundle.dir, f["record"], f["local"], "vhdx", name, left="no VM, no VHDX left")
            try:
                vm_id = self.conn.run(
                    "new_vm",
                    {
                        "Name": name,
                        "Generation": generation,
                        "Memory": spec["memory_mib"] * MIB,
                        "Notes": self._notes(None, incomplete),
                    },
                    vm=name,
                    what="creating the VM",
                )
            except V2VError:
                self._remove_unfinished(name)
                raise
            self.conn.run("configure_vm", self._configuration(vm_id, spec, generation, files, options), vm=name,
                          what="configuring the new VM")  # fmt: skip
            self.conn.run("set_notes", {"Id": vm_id, "Notes": self._notes(None, prov)}, vm=name, what="writing Notes")
        except BaseException as exc:
            # Leave nothing half-made behind: the VM and the files this run wrote.
            if vm_id is not None:
                with contextlib.suppress(V2VError):
                    self.conn.run("remove_vm", {"Id": vm_id}, vm=name, what="removing the half-made VM")
            for path in made:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if isinstance(exc, (DiskError, OSError)) and "No space left on device" in str(exc):
                # The free-space check counts the bundle's files; compressed ones hold more
                # once written, and others may write on that volume too.
                share = self.share()
                problem = getattr(exc, "problem", None) or "cannot import %s: %s" % (name, exc)
                raise DiskError(
                    "%s: the share %s (Hyper-V's %s) is full" % (problem.rstrip("."), share.local, share.windows),
                    "free space on the volume that holds %s, or give share and share_windows of a directory "
                    "with room; the files this import wrote were removed and no VM was made" % share.windows,
                    share=share.windows,
                ) from exc
            raise
        result["provenance"] = prov
        return result

    def _check_free_space(self, files, vhd_type):
        """Refuse an import the share's volume cannot hold, before writing anything. The
        share is the host's volume mounted over SMB: statvfs on the mount point is the
        free space the Hyper-V host's file server reports for that volume."""
        share = self.share()
        # A fixed VHDX takes its capacity; a dynamic one about the data (the bundle's files).
        need = 0
        for f in files:
            rec = f["record"]
            need += int(rec["capacity"] if vhd_type == "fixed" else rec.get("allocated") or rec["capacity"])
        st = os.statvfs(share.local)
        free = st.f_bavail * st.f_frsize
        if need > free:
            raise InputError(
                "the share %s (Hyper-V's %s) has %s free, the disks need up to %s"
                % (share.local, share.windows, human_bytes(free), human_bytes(need)),
                "free space on the volume that holds %s, or give share and share_windows of a directory with room"
                % share.windows,
                share=share.windows,
            )

    def _remove_unfinished(self, name):
        """New-VM may have made the VM before the script failed: remove VMs of this name
        whose Notes are empty or ours-incomplete (the import found none of that name)."""
        with contextlib.suppress(V2VError):
            for raw in self.conn.run("vm_info", {"Names": [name]}, vm=name, what="looking for a half-made VM"):
                prov = self.read_provenance(raw)
                if not (raw.get("Notes") or "").strip() or (prov and prov["state"] == "incomplete"):
                    self.conn.run("remove_vm", {"Id": raw["Id"]}, vm=name, what="removing the half-made VM")

    def _write_vhdx(self, f, bundle, prov, vhd_type, result, name):
        """Convert one bundle disk into its VHDX in the share, then apply its deltas."""
        rec = f["record"]
        src = bundle.resolve(rec["path"])
        progress = Progress("import %s %s" % (name, rec["id"]), rec["capacity"])
        _disk.convert(src, rec["format"], f["local"], "vhdx", subformat=vhd_type, progress=progress)
        progress.finish()
        for delta in [d for d in rec.get("deltas") or [] if d["index"] <= prov["sync_index"]]:
            st = self._apply_one(f["local"], bundle, delta)
            result["deltas_applied"].append({"disk": rec["id"], "index": delta["index"], **st})
            result["bytes_written"] += st["bytes_written"]
        return os.stat(f["local"]).st_blocks * 512

    @staticmethod
    def _apply_one(path, bundle, delta):
        return _blocks.apply_delta_file(path, "vhdx", bundle.resolve(delta["path"]), delta)

    def _configuration(self, vm_id, spec, generation, files, options):
        secure = bool(spec["firmware"].get("secure_boot"))
        linux = (spec.get("guest_os") or {}).get("family") != "windows"
        template = options.get("secure_boot_template") or (
            "MicrosoftUEFICertificateAuthority" if linux else "MicrosoftWindows"
        )
        slots = controller_slots(spec, generation)
        nics = []
        for i, nic in enumerate(spec.get("nics") or []):
            nics.append(
                {
                    "Name": "Network Adapter" if i == 0 else "Network Adapter %d" % (i + 1),
                    "Switch": nic.get("network"),
                    "Mac": mac_hyperv(nic.get("mac")),
                }
            )
        return {
            "Id": vm_id,
            "Generation": generation,
            "ProcessorCount": max(1, _cpus(spec)),
            "SecureBoot": "On" if secure else "Off",
            "SecureBootTemplate": template,
            "Disks": [
                {"T": t, "N": n, "L": loc, "P": f["windows"]} for (t, n, loc), f in zip(slots, files, strict=True)
            ],
            "Nics": nics,
        }

    def remove_vm(self, vm, spec, options, check_mode):
        """Remove a VM being replaced, and its disk files that lie in the share."""
        share = self.share()
        files = []
        for d in _inventory.vm_disks(vm):
            with contextlib.suppress(InputError):
                files.append(share.to_local(d["path"], "disk"))
        if check_mode:
            return {"name": vm["Name"], "files": files}
        self.conn.run("remove_vm", {"Id": vm["Id"]}, vm=vm["Name"], what="removing the VM being replaced")
        for path in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return {"name": vm["Name"], "files": files}

    def update_disks(self, vm, spec, bundle, plan, options, check_mode):
        tdisks = self.target_disks(vm)
        if len(tdisks) != len(bundle.disks):
            raise InputError(
                "target VM %s has %d disks, bundle %s has %d"
                % (vm["Name"], len(tdisks), bundle.dir, len(bundle.disks)),
                "import with replace=true to make the target again",
            )
        pairs = [(t, r) for t, r in zip(tdisks, bundle.disks, strict=True) if r["id"] in plan.disks]
        result = {"bytes_written": 0, "deltas_applied": []}
        if plan.action == "deltas":
            result["deltas_applied"] = [
                {"disk": r["id"], "index": x["index"], "bytes": x["bytes"]}
                for _t, r in pairs
                for x in plan.deltas[r["id"]]
            ]
        else:
            result["rewritten"] = [r["id"] for _t, r in pairs]
        if check_mode:
            return result
        if self.power_state(vm) != "off":
            raise InputError(
                "target VM %s is %s; its disks can only be updated while it is off" % (vm["Name"], vm.get("State")),
                "shut the target down, then import again",
            )
        self.write_provenance(vm, _steps.mark_updating(plan))
        applied = []
        for tdisk, rec in pairs:
            if plan.action == "deltas":
                deltas = plan.deltas[rec["id"]]
                stats = _steps.apply_deltas(tdisk["local"], "vhdx", bundle, rec, deltas, vm["Name"])
                for delta, st in zip(deltas, stats, strict=True):
                    result["bytes_written"] += st["bytes_written"]
                    applied.append({"disk": rec["id"], "index": delta["index"], **st})
            else:
                if tdisk["capacity"] != rec["capacity"]:
                    raise InputError(
                        "disk %s of target VM %s holds %d bytes, the bundle's disk %d"
                        % (tdisk["where"], vm["Name"], tdisk["capacity"], rec["capacity"]),
                        "import with replace=true to make the target again at the new size",
                    )
                f = {"record": rec, "local": tdisk["local"]}
                vhd_type = "fixed" if tdisk.get("vhd_type") == "Fixed" else "dynamic"
                result["bytes_written"] += self._write_vhdx(f, bundle, plan.want, vhd_type, result, vm["Name"])
                _blocks.check_disk_data(bundle.dir, rec, tdisk["local"], "vhdx", vm["Name"], left=_blocks.REWRITE_LEFT)
        result["deltas_applied"] = applied or result["deltas_applied"]
        self.write_provenance(vm, plan.want)
        return result

    def start_vm(self, vm):
        self.conn.run("start_vm", {"Id": vm["Id"]}, vm=vm["Name"], what="starting the VM")

    # -- the power primitives engine/power.run_power uses --

    def request_shutdown(self, vm, check_mode):
        """A guest shutdown through the Shutdown integration service (Stop-VM waits for it);
        None when the VM has that service off."""
        services = {s.get("Name"): s for s in vm.get("IntegrationServices") or []}
        if not (services.get("Shutdown") or {}).get("Enabled"):
            return None
        if not check_mode:
            self.conn.run("stop_vm", {"Id": vm["Id"], "TurnOff": False}, vm=vm["Name"], what="shutting the guest down")
        return "guest"

    def power_off(self, vm):
        self.conn.run("stop_vm", {"Id": vm["Id"], "TurnOff": True}, vm=vm["Name"], what="turning the VM off")

    # -- the target primitives run_verify uses --

    def target_disks(self, vm):
        share = self.share()
        out = []
        for i, d in enumerate(_inventory.vm_disks(vm)):
            where = "disk %d of VM %s" % (i, vm["Name"])
            out.append(dict(d, where=d["path"], local=share.to_local(d["path"], where)))
        return out

    def open_disk(self, vm, tdisk):
        if not os.path.isfile(tdisk["local"]):
            raise InputError(
                "%s of VM %s is not on the share on the conversion host (%s)"
                % (tdisk["where"], vm["Name"], tdisk["local"]),
                self.share().mount_hint(),
            )
        return _disk.open_guest(tdisk["local"], tdisk.get("format") or "vhdx")

    def boot_check(self, vm, options):
        """Start the VM (when off) and wait for its Heartbeat integration service to say OK;
        a VM whose Heartbeat service is off is checked by its power state only."""
        timeout = options.get("boot_timeout") or BOOT_TIMEOUT
        changed = False
        if self.power_state(vm) == "off":
            self.start_vm(vm)
            changed = True
        deadline = time.monotonic() + timeout
        while True:
            hb = self.conn.run("heartbeat", {"Id": vm["Id"]}, vm=vm["Name"], what="reading the heartbeat")
            base = {"changed": changed, "power_state": hb.get("State"), "heartbeat": hb.get("Status")}
            if hb.get("State") == "Running" and not (hb.get("Present") and hb.get("Enabled")):
                return dict(
                    base,
                    ok=True,
                    method="power_state",
                    reason="running; the Heartbeat integration service is off, so only the power state was checked",
                )
            if hb.get("State") == "Running" and hb.get("Status") == "OK":
                return dict(base, ok=True, method="heartbeat", reason="heartbeat OK")
            if time.monotonic() > deadline:
                return dict(
                    base,
                    ok=False,
                    method="heartbeat",
                    reason="VM %s is %s with heartbeat %r after %d s: the guest did not boot, or does not run "
                    "Hyper-V integration services (Linux: the hv_utils module)"
                    % (vm["Name"], hb.get("State"), hb.get("Status"), timeout),
                )
            time.sleep(1)


def _cpus(spec):
    c = spec.get("cpu") or {}
    return int(c.get("sockets", 1)) * int(c.get("cores", 1)) * int(c.get("threads", 1))
