# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere as a target: import (ImportVApp with streamOptimized VMDKs through an NFC
lease; to bring a VM up to date, its changed disks as new files through a helper VM's
lease, swapped in), the primitives verify reads
the target with (only allocated areas where changed block tracking says which), and the
boot check."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import posixpath
import re
import shutil
import struct
import tempfile
import time
import zlib

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError, VerifyError
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress, human_bytes
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import BOOT_TIMEOUT
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.profiles import escape_name
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import (
    DatastoreFile,
    allocated_areas,
    datastore_dir_exists,
    delete_file,
    fault_text,
    flat_name,
    put_file,
    split_ds_path,
    upload_to_lease,
    vim,
    vmodl,
    wait_lease,
    wait_task,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.inventory import (
    INCOMPLETE_KEY,
    PROVENANCE_KEY,
    VsphereInventory,
    vm_disks,
)

ADAPTER_TYPE = {"ide": "ide", "buslogic": "buslogic"}  # VMDK ddb.adapterType; lsilogic otherwise


class VsphereTarget(VsphereInventory):
    """vSphere as a target: import, what verify reads, the boot check (a part of VspherePlatform)."""

    # -- the target primitives engine/steps.run_import uses --

    def create_vm(self, name, spec, bundle, prov, options, check_mode):
        """Import the VM with its disks through an NFC lease (ImportVApp).

        Each disk goes as a streamOptimized VMDK (only allocated grains, compressed), so
        the transfer costs data, not capacity; vSphere writes it into a thin disk. Order,
        so that nothing half-made looks complete: the disks are converted and checked
        against the bundle's digests first; the VM folder gets a ``vmigrate.partial``
        marker; ImportVApp creates the VM (its provenance says incomplete, no disk
        vouched for) and its empty disks; the disks are uploaded, the lease completed,
        the provenance set, the marker removed. A failure aborts the lease and removes
        the VM and what this run made (the folder, when it made it).
        """
        # vSphere's own form of the name: the VM's name and its datastore folder and files
        # (a/b -> a%2fb), as vCenter writes them for a VM created in its client.
        vsphere_name = escape_name("vsphere", name)
        plan = self._plan(vsphere_name, spec, bundle, options)
        result = {"disks": [{"id": p["id"], "file": p["file"]} for p in plan["disks"]]}
        if vsphere_name != name:
            result["vsphere_name"] = vsphere_name
        if check_mode:
            return result
        made = []
        ds_name = plan["datastore"]
        marker = "%s/vmigrate.partial" % vsphere_name
        # A folder this run makes is removed whole on failure (with whatever a failed
        # import left in it); in a folder that was there, only our own files are.
        made_folder = not datastore_dir_exists(self.conn, ds_name, vsphere_name)
        lease = vm = None
        work = tempfile.mkdtemp(prefix=".vmigrate-upload-", dir=_scratch_dir(bundle))
        try:
            # The disks are made ready (and checked against the bundle) before vSphere is
            # asked for anything, so a bad bundle leaves nothing behind.
            streams = [
                self._stream_disk(bundle, item, work, vsphere_name, "no VM, no file uploaded") for item in plan["disks"]
            ]
            put_file(self.conn, ds_name, marker, json.dumps(prov).encode(), len(json.dumps(prov)))
            config = self._config_spec(vsphere_name, spec, plan, prov, options)
            folder = self._folder(options.get("folder"))
            pool = self._resource_pool(options.get("resource_pool"))
            try:
                lease = pool.ImportVApp(spec=vim.VirtualMachineImportSpec(configSpec=config), folder=folder)
            except vmodl.MethodFault as exc:
                raise PlatformError(
                    "vSphere refused the import (create VM %s): %s" % (vsphere_name, fault_text(exc)),
                    "read the error above (free space, permissions, hardware_version, the VM's configuration)",
                    fault=type(exc).__name__,
                ) from exc
            info = wait_lease(lease, "the import of VM %s" % vsphere_name, self.conn.timeout)
            vm = info.entity
            for item in plan["disks"]:  # the VM's disk files now exist, made by this run
                made += [(item["datastore"], flat_name(item["path"])), (item["datastore"], item["path"])]
            stats = self._upload_disks(plan, streams, lease, info)
            lease.HttpNfcLeaseComplete()
            lease = None
            self._reconfigure(vm, {PROVENANCE_KEY: json.dumps(prov, sort_keys=True)})
        except BaseException as exc:
            self._abort_import(lease, vm)
            self._cleanup(made, ds_name, marker, vsphere_name if made_folder else None)
            if isinstance(exc, (OSError, http.client.HTTPException)):
                # An API call (not a transfer, those say so themselves) lost vSphere.
                raise PlatformError(
                    "lost the connection to vSphere at %s:%s while importing VM %s: %s: %s"
                    % (self.conn.host, self.conn.port, vsphere_name, type(exc).__name__, exc),
                    "check vSphere is up and reachable, then re-run (the import starts again)",
                ) from exc
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        try:
            delete_file(self.conn, "[%s] %s" % (ds_name, marker))
        except PlatformError as exc:  # the VM is complete; a stale marker only costs a file
            result["warnings"] = ["could not remove [%s] %s: %s" % (ds_name, marker, exc)]
        result.update(moid=vm._moId, instance_uuid=vm.config.instanceUuid)
        result["transfer"] = stats
        result["bytes_sent"] = sum(s["bytes_sent"] for s in stats)
        result["bytes_written"] = sum(s["bytes"] for s in stats)
        return result

    def _abort_import(self, lease, vm):
        """After a failed import: abort the lease, and remove the VM if vSphere left it."""
        if lease is not None:
            try:
                lease.HttpNfcLeaseAbort()
            except Exception:  # the lease may be gone already; the VM is what matters
                pass
        if vm is None:
            return
        try:
            self._destroy(vm)
        except Exception:  # vSphere removes the VM of an aborted import itself
            pass

    def _upload_disks(self, plan, streams, lease, info):
        """Send every disk's stream to its device URL of the lease."""
        urls = [u for u in info.deviceUrl or [] if u.disk]
        if len(urls) != len(plan["disks"]):
            raise PlatformError(
                "the import lease offers %d disk URLs for %d disks" % (len(urls), len(plan["disks"])),
                "report this with the vSphere version",
            )
        # vSphere names each URL's disk file in targetId (the file's base name); else the
        # URLs come in the VM's device order, which is the plan's order.
        by_name = {u.targetId: u for u in urls if u.targetId}
        if all(os.path.basename(item["path"]) in by_name for item in plan["disks"]):
            urls = [by_name[os.path.basename(item["path"])] for item in plan["disks"]]
        total = sum(os.path.getsize(st["path"]) for st in streams)
        stats, done = [], 0
        for i, (item, url, st) in enumerate(zip(plan["disks"], urls, streams, strict=True)):
            progress = Progress("upload %s" % item["id"], os.path.getsize(st["path"]))
            try:
                sent = upload_to_lease(self.conn, url, st["path"], item["file"], lease, progress, total, done)
            except PlatformError as exc:
                # The data still to write is what this upload and the next ones carry.
                self._raise_if_full(item["datastore"], sum(s["data"] for s in streams[i:]), exc)
                raise
            done += sent
            stats.append(
                {
                    "id": item["id"],
                    "file": item["file"],
                    "capacity": item["capacity"],
                    "bytes": st["data"],
                    "bytes_sent": sent,
                    "format": "streamOptimized",
                    "progress": progress.finish(),
                }
            )
        return stats

    def _stream_disk(self, bundle, item, work, name, left):
        """The disk as a streamOptimized VMDK in ``work``: the bundle's disk is read once
        (allocated extents only), hashed on the way and checked against the bundle's
        digests; only non-zero grains are written, compressed on every core.

        Hashing on the one read the upload needs anyway (rather than a read of the local
        file before, or of the target after) costs nothing extra, and the check is done
        before vSphere is asked for anything, so a damaged bundle leaves ``left``."""
        record = item["record"]
        capacity = item["capacity"]
        adapter = ADAPTER_TYPE.get(item["controller"] or item["bus"], "lsilogic")
        stream = os.path.join(work, "%s.vmdk" % len(os.listdir(work)))
        path = bundle.disk_path(record)
        with _disk.open_guest(path, record["format"]) as reader:
            if reader.size != capacity:
                raise InputError(
                    "disk %s of bundle %s holds %d bytes, its capacity is %d"
                    % (item["id"], bundle.dir, reader.size, capacity),
                    "re-run the export",
                )
            block_size = record.get("block_size") or _blocks.DEFAULT_BLOCK_SIZE
            digests, data = write_stream_vmdk(reader, stream, adapter, block_size)
        _blocks.refuse_damaged_data(bundle.dir, record, digests, name, left)
        return {"path": stream, "data": data}

    def remove_vm(self, vm, spec, options, check_mode):
        moid = vm._moId
        if not check_mode:
            self._destroy(vm)
        return moid

    def update_disks(self, vm, spec, bundle, plan, options, check_mode):
        return self._update_vm(vm, bundle, spec, plan, {}, check_mode)

    def start_vm(self, vm):
        wait_task(vm.PowerOnVM_Task(), "power on %s" % vm.name, self.conn.timeout)

    def _plan(self, name, spec, bundle, options):
        """Datastores, networks and files for a new VM; every lookup fails before any upload."""
        default_ds = options.get("datastore")
        disks = []
        ds_names = set()
        for i, disk in enumerate(spec["disks"]):
            record = bundle.disk(disk["id"])
            storage = disk.get("storage")
            ds_name = storage if storage and any(ds.name == storage for ds in self.dc.datastore) else default_ds
            if not ds_name:
                raise InputError(
                    "no datastore for disk %s (its storage %r is not a datastore here)" % (disk["id"], storage),
                    "set datastore, or map %r to a datastore in storage_map" % (storage,),
                )
            self.conn.datastore(ds_name)  # raises naming the datastores that exist
            ds_names.add(ds_name)
            base = name if i == 0 else "%s_%d" % (name, i)
            disks.append(
                {
                    "id": disk["id"],
                    "datastore": ds_name,
                    "path": "%s/%s.vmdk" % (name, base),
                    "file": "[%s] %s/%s.vmdk" % (ds_name, name, base),
                    "capacity": int(record.get("capacity") or disk["capacity"]),
                    "bus": disk["bus"],
                    "controller": disk.get("controller"),
                    "record": record,
                }
            )
        if len(ds_names) > 1:
            raise InputError(
                "disks map to several datastores (%s)" % ", ".join(sorted(ds_names)),
                "map every disk to one datastore; this module keeps a VM's files together",
            )
        ds_name = ds_names.pop() if ds_names else default_ds
        if not ds_name:
            raise InputError("no datastore for the VM's files", "set datastore")
        self.conn.datastore(ds_name)
        networks = {}
        for nic in spec["nics"]:
            networks[nic["network"]] = self._network(nic["network"])
        # The import writes thin disks: what they take is the bundle's data (its files'
        # allocation), not their capacity; a bundle that does not say counts capacity.
        self._check_free_space(ds_name, sum(int(d["record"].get("allocated") or d["capacity"]) for d in disks))
        return {"datastore": ds_name, "disks": disks, "networks": networks}

    def _free_space(self, ds_name):
        """The datastore's free bytes (None when vSphere does not say), refreshed first:
        vCenter's summary is only updated now and then."""
        ds = self.conn.datastore(ds_name)
        try:
            ds.RefreshDatastore()
        except Exception:  # no privilege (or an empty answer, as vcsim 0.24 gives): the summary is what there is
            pass
        return ds.summary.freeSpace

    def _check_free_space(self, ds_name, need):
        free = self._free_space(ds_name)
        if free is not None and free < need:
            raise PlatformError(
                "datastore %s has %d bytes free, the disks need %d (%s free, %s needed)"
                % (ds_name, free, need, human_bytes(free), human_bytes(need)),
                "free space on %s, or import onto another datastore (option datastore, or storage_map)" % ds_name,
                datastore=ds_name,
            )

    def _raise_if_full(self, ds_name, left, exc):
        """After a failed upload: when the datastore has less room than the data still to
        write, it filled up during the import (the up-front check counts the bundle's
        files; compressed ones hold more once written, and others write there too)."""
        try:
            free = self._free_space(ds_name)
        except Exception:  # vSphere itself may be the failure: keep the upload's error
            return
        if free is None or free >= left:
            return
        raise PlatformError(
            "%s: datastore %s is full (%s free, this import still had %s to write)"
            % (exc.problem.rstrip("."), ds_name, human_bytes(max(free, 0)), human_bytes(left)),
            "free space on %s, or import onto another datastore (option datastore, or storage_map), "
            "then re-run; what this import made is removed" % ds_name,
            datastore=ds_name,
        ) from exc

    def _network(self, name):
        # vCenter stores '/', '\\' and '%' in a port group's name escaped (a/b is a%2fb), as in
        # VM names: a network_map written with the name its client shows matches either form.
        names = (name, escape_name("vsphere", name))
        for want in names:
            for net in self.dc.network:
                if net.name == want:
                    return net
        raise InputError(
            "network %r not found in datacenter %s" % (name, self.dc.name),
            "map it in network_map to one of: %s" % ", ".join(sorted({n.name for n in self.dc.network})),
        )

    def _cleanup(self, uploaded, ds_name, marker, folder=None):
        """Remove what a failed import made: the folder if it made it, else its files."""
        files = [(ds, path) for ds, path in uploaded if folder is None or ds != ds_name]
        files += [(ds_name, folder)] if folder else [(ds_name, marker)]
        for ds, path in reversed(files):
            try:
                delete_file(self.conn, "[%s] %s" % (ds, path))
            except Exception:  # best effort: the first error is the one to report
                pass

    def _destroy(self, vm):
        name = vm.name  # read before the VM is gone
        if vm.runtime.powerState == vim.VirtualMachinePowerState.poweredOn:
            wait_task(vm.PowerOffVM_Task(), "power off %s" % name, self.conn.timeout)
        wait_task(vm.Destroy_Task(), "delete VM %s" % name, self.conn.timeout)

    def _resource_pool(self, name=None):
        pools = []
        for cr in self.dc.hostFolder.childEntity:
            if isinstance(cr, vim.ComputeResource):
                pools.append(cr.resourcePool)
                pools.extend(_child_pools(cr.resourcePool))
        if name:
            for pool in pools:
                if pool.name == name or pool.parent.name == name:
                    return pool
            raise InputError(
                "resource pool or cluster %r not found in %s" % (name, self.dc.name),
                "use one of: %s" % ", ".join(sorted({p.parent.name for p in pools} | {p.name for p in pools})),
            )
        if not pools:
            raise PlatformError("datacenter %s has no host or cluster" % self.dc.name, "add a host")
        return pools[0]

    def _folder(self, path=None):
        if not path:
            return self.dc.vmFolder
        full = path if path.startswith(self.dc.name + "/") else "%s/vm/%s" % (self.dc.name, path.strip("/"))
        folder = self.content.searchIndex.FindByInventoryPath(full)
        if not isinstance(folder, vim.Folder):
            raise InputError(
                "VM folder %r not found (looked for %s)" % (path, full), "create the folder or fix the path"
            )
        return folder

    def _config_spec(self, name, spec, plan, prov, options):
        """The new VM's ConfigSpec; its disks are created (thin) by the import."""
        changes = []
        controllers = {}
        units = {}
        next_key = [-100]

        def new_key():
            next_key[0] -= 1
            return next_key[0]

        def controller_for(bus, ctrl):
            kind = (bus, ctrl)
            if kind in controllers:
                return controllers[kind]
            if bus == "ide":
                controllers[kind] = 200  # every VM has IDE controllers 200 and 201
                return 200
            dev = _new_controller(bus, ctrl)
            dev.key = new_key()
            dev.busNumber = sum(1 for b, _c in controllers if b == bus)
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=dev))
            controllers[kind] = dev.key
            return dev.key

        for item in plan["disks"]:
            ckey = controller_for(item["bus"], item["controller"] if item["bus"] == "scsi" else None)
            unit = units.get(ckey, 0)
            if item["bus"] == "scsi" and unit == 7:
                unit += 1  # the SCSI controller itself sits on unit 7
            units[ckey] = unit + 1
            disk = vim.vm.device.VirtualDisk(
                key=new_key(), controllerKey=ckey, unitNumber=unit, capacityInBytes=item["capacity"]
            )
            disk.capacityInKB = item["capacity"] // 1024
            disk.backing = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                fileName=item["file"], diskMode="persistent", thinProvisioned=True
            )
            # Created empty by the import; the lease's upload fills it.
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk))
        for nic in spec["nics"]:
            dev = _new_nic(nic["model"])
            dev.key = new_key()
            net = plan["networks"][nic["network"]]
            if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
                dev.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(
                        portgroupKey=net.key, switchUuid=net.config.distributedVirtualSwitch.uuid
                    )
                )
            else:
                dev.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=net.name, network=net)
            dev.connectable = vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, allowGuestControl=True)
            if nic.get("mac"):
                dev.addressType = "manual"
                dev.macAddress = nic["mac"]
            else:
                dev.addressType = "generated"
            changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=dev))

        cpu = spec["cpu"]
        uefi = spec["firmware"]["type"] == "uefi"
        config = vim.vm.ConfigSpec(
            name=name,
            guestId=spec["guest_os"]["id"],
            numCPUs=cpu["sockets"] * cpu["cores"] * cpu["threads"],
            numCoresPerSocket=cpu["cores"] * cpu["threads"],
            memoryMB=int(spec["memory_mib"]),
            firmware="efi" if uefi else "bios",
            annotation=_annotation(spec, prov),
            files=vim.vm.FileInfo(vmPathName="[%s] %s/%s.vmx" % (plan["datastore"], name, name)),
            deviceChange=changes,
            # Incomplete, vouching for no disk, until the disks are uploaded: a run that
            # dies half-way leaves a VM the next run rewrites.
            extraConfig=[
                vim.option.OptionValue(
                    key=PROVENANCE_KEY, value=json.dumps(dict(prov, state="incomplete", disks={}), sort_keys=True)
                )
            ],
            # Changed block tracking lets verify read back only the allocated areas.
            changeTrackingEnabled=True,
        )
        if uefi:
            config.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=bool(spec["firmware"]["secure_boot"]))
        if options.get("hardware_version"):
            config.version = options["hardware_version"]
        return config

    def _update_vm(self, vm, bundle, spec, decision, result, check_mode):
        """Same source, other content: the changed disks go again, as new disk files.

        vSphere has no API that writes part of a disk (only VDDK's NBD transport does, which
        this collection does not use), and an import lease only makes a new VM. So the
        changed disks are imported through a lease into a helper VM, as streamOptimized
        VMDKs (their data, not their capacity), with their files placed in the target's
        folder; the helper lets go of them and is deleted; then one reconfigure of the
        target removes the old disks (their files deleted) and attaches the new files at
        the same controller and unit. Until that reconfigure the target keeps its old disks
        and says incomplete; a failure removes the helper and the new files.
        """
        disks = vm_disks(vm)
        todo = [d for d in spec["disks"] if d["id"] in decision.disks]
        result.update(moid=vm._moId, updated_disks=[d["id"] for d in todo])
        if check_mode:
            return result
        if len(disks) != len(spec["disks"]):
            raise PlatformError(
                "VM %s has %d disks, the bundle %d" % (vm.name, len(disks), len(spec["disks"])),
                "import into a new VM (another name) or set replace=true",
            )
        if vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOff:
            raise PlatformError(
                "VM %s is %s; its disk files cannot be rewritten while it runs" % (vm.name, vm.runtime.powerState),
                "power the target off before applying an incremental sync",
            )
        self.write_provenance(vm, _steps.mark_updating(decision))
        tag = os.urandom(3).hex()  # new file names: a run that died left its own behind
        items = []
        for i, disk in enumerate(spec["disks"]):
            if disk not in todo:
                continue
            ds_name, path = split_ds_path(disks[i]["file"])
            new_path = "%s-%s.vmdk" % (re.sub(r"(-[0-9a-f]{6})?\.vmdk$", "", path), tag)
            items.append(
                {
                    "id": disk["id"],
                    "datastore": ds_name,
                    "path": new_path,
                    "file": "[%s] %s" % (ds_name, new_path),
                    "capacity": disks[i]["capacity"],
                    "bus": disk["bus"],
                    "controller": disk.get("controller"),
                    "record": bundle.disk(disk["id"]),
                    "old": disks[i],
                }
            )
        stats = self._replace_disks(vm, bundle, spec, items, tag, decision.want)
        self._write_provenance(vm, decision.want, {INCOMPLETE_KEY: ""})
        # An import that died half-way left its folder's marker; the VM is complete now.
        ds_name, path = split_ds_path(vm.config.files.vmPathName)
        try:
            delete_file(self.conn, "[%s] %s" % (ds_name, posixpath.join(posixpath.dirname(path), "vmigrate.partial")))
        except PlatformError as exc:
            result["warnings"] = ["could not remove the import marker beside %s: %s" % (path, exc)]
        result["transfer"] = stats
        result["bytes_sent"] = sum(s["bytes_sent"] for s in stats)
        result["bytes_written"] = sum(s["bytes"] for s in stats)
        return result

    def _replace_disks(self, vm, bundle, spec, items, tag, prov):
        """Upload ``items`` as new files through a helper VM's import lease, then swap them
        into ``vm``; see _update_vm. Returns the upload statistics."""
        # Plain characters and a bounded length: vSphere names are at most 80 characters.
        helper_name = "%s.vmigrate-sync-%s" % (re.sub(r"[^A-Za-z0-9._-]", "_", vm.name)[:50], tag)
        ds_name = items[0]["datastore"]
        self._check_free_space(ds_name, sum(int(i["record"].get("allocated") or i["capacity"]) for i in items))
        work = tempfile.mkdtemp(prefix=".vmigrate-upload-", dir=_scratch_dir(bundle))
        lease = helper = None
        attached = False
        try:
            # Checked against the bundle's digests before vSphere is asked for anything.
            streams = [self._stream_disk(bundle, item, work, vm.name, "its disks unchanged") for item in items]
            plan = {"datastore": ds_name, "disks": items, "networks": {}}
            config = self._config_spec(helper_name, dict(spec, nics=[], disks=[]), plan, prov, {})
            config.annotation = "vmigrate.v2v: uploads new disks for VM %s; delete it if it is left behind" % vm.name
            config.extraConfig = [vim.option.OptionValue(key="vmigrate.sync_helper_of", value=vm.name)]
            config.changeTrackingEnabled = False
            try:
                lease = vm.resourcePool.ImportVApp(
                    spec=vim.VirtualMachineImportSpec(configSpec=config), folder=vm.parent
                )
            except vmodl.MethodFault as exc:
                raise PlatformError(
                    "vSphere refused the upload of the changed disks of VM %s: %s" % (vm.name, fault_text(exc)),
                    "read the error above (free space, permissions)",
                    fault=type(exc).__name__,
                ) from exc
            info = wait_lease(lease, "the upload of the changed disks of VM %s" % vm.name, self.conn.timeout)
            helper = info.entity
            stats = self._upload_disks(plan, streams, lease, info)
            lease.HttpNfcLeaseComplete()
            lease = None
            # The helper lets go of the files (kept), and goes.
            self._change_devices(
                helper,
                [
                    vim.vm.device.VirtualDeviceSpec(operation="remove", device=d)
                    for d in helper.config.hardware.device
                    if isinstance(d, vim.vm.device.VirtualDisk)
                ],
            )
            self._destroy(helper)
            helper = None
            changes = []
            for item in items:
                old = next(d for d in vm.config.hardware.device if d.key == item["old"]["key"])
                new = vim.vm.device.VirtualDisk(
                    key=-101 - len(changes),
                    controllerKey=old.controllerKey,
                    unitNumber=old.unitNumber,
                    capacityInBytes=item["capacity"],
                    capacityInKB=item["capacity"] // 1024,
                    backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
                        fileName=item["file"], diskMode="persistent", thinProvisioned=True
                    ),
                )
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="remove", fileOperation="destroy", device=old))
                changes.append(vim.vm.device.VirtualDeviceSpec(operation="add", device=new))
            self._change_devices(vm, changes)
            attached = True
            return stats
        except BaseException:
            self._abort_import(lease, helper)  # the helper's disks go with it
            if not attached:
                for item in items:
                    for path in (flat_name(item["path"]), item["path"]):
                        try:
                            delete_file(self.conn, "[%s] %s" % (item["datastore"], path))
                        except Exception:  # best effort: the first error is the one to report
                            pass
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _change_devices(self, vm, changes):
        name = vm.name
        try:
            task = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes))
        except vmodl.MethodFault as exc:
            raise PlatformError(
                "vSphere refused to change the disks of VM %s: %s" % (name, fault_text(exc)), "read the error above"
            ) from exc
        wait_task(task, "change the disks of VM %s" % name, self.conn.timeout)

    # -- the target primitives run_verify uses --

    @staticmethod
    def target_disks(vm):
        return [dict(d, where=d["file"]) for d in vm_disks(vm)]

    def open_disk(self, vm, tdisk):
        """The disk's flat extent; with changed block tracking on (the VM is off when
        verify reads it), only its allocated areas are read, the rest count as zeros."""
        ds_name, path = split_ds_path(tdisk["file"])
        areas, allocation = None, "unknown (changed block tracking is off): the whole capacity is read"
        if vm.config.changeTrackingEnabled:
            try:
                areas = allocated_areas(vm, tdisk["key"], tdisk["capacity"])
                allocation = "changed block tracking (QueryChangedDiskAreas '*')"
            except vmodl.MethodFault as exc:
                allocation = "unknown (QueryChangedDiskAreas failed: %s): the whole capacity is read" % fault_text(exc)
        # The size the guest sees is the VM's disk capacity, whatever the flat file's length.
        return DatastoreFile(
            self.conn, ds_name, flat_name(path), size=tdisk["capacity"], allocated=areas, allocation=allocation
        )

    def boot_check(self, vm, options):
        """Power on and wait for poweredOn (and a VMware Tools heartbeat where there are Tools)."""
        result = self._power_on_check(vm, options.get("boot_timeout") or BOOT_TIMEOUT)
        return dict(result, ok=True, reason=result["boot_check"])

    def _power_on_check(self, vm, timeout):
        """Power on and wait for poweredOn; with VMware Tools, also for a green heartbeat."""
        changed = False
        if vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOn:
            wait_task(vm.PowerOnVM_Task(), "power on %s" % vm.name, self.conn.timeout)
            changed = True
        deadline = time.monotonic() + timeout
        while vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOn:
            if time.monotonic() > deadline:
                raise VerifyError("VM %s did not reach poweredOn in %d s" % (vm.name, timeout), "look at its console")
            time.sleep(1)
        tools = vm.guest.toolsStatus if vm.guest else None
        heartbeat = None
        if tools in ("toolsOk", "toolsOld"):
            while vm.guestHeartbeatStatus != "green":
                if time.monotonic() > deadline:
                    raise VerifyError(
                        "VM %s runs but VMware Tools sent no green heartbeat in %d s" % (vm.name, timeout),
                        "look at its console; the guest may not have booted",
                    )
                time.sleep(2)
            heartbeat = "green"
        return {
            "changed": changed,
            "power_state": str(vm.runtime.powerState),
            "tools_status": tools,
            "heartbeat": heartbeat,
            "boot_check": "heartbeat" if heartbeat else "power state only (no VMware Tools in the guest)",
        }


def _child_pools(pool):
    out = []
    for child in pool.resourcePool or []:
        out.append(child)
        out.extend(_child_pools(child))
    return out


def _new_controller(bus, ctrl):
    if bus == "sata":
        return vim.vm.device.VirtualAHCIController()
    if bus == "nvme":
        return vim.vm.device.VirtualNVMEController()
    cls = {
        "pvscsi": vim.vm.device.ParaVirtualSCSIController,
        "lsilogic": vim.vm.device.VirtualLsiLogicController,
        "lsisas1068": vim.vm.device.VirtualLsiLogicSASController,
        "buslogic": vim.vm.device.VirtualBusLogicController,
    }.get(ctrl or "pvscsi", vim.vm.device.ParaVirtualSCSIController)
    dev = cls()
    dev.sharedBus = "noSharing"
    return dev


def _new_nic(model):
    cls = {
        "vmxnet3": vim.vm.device.VirtualVmxnet3,
        "e1000": vim.vm.device.VirtualE1000,
        "e1000e": vim.vm.device.VirtualE1000e,
        "pcnet": vim.vm.device.VirtualPCNet32,
    }.get(model, vim.vm.device.VirtualVmxnet3)
    return cls()


def _annotation(spec, prov):
    note = (spec.get("annotations") or {}).get("description") or ""
    origin = "Migrated by vmigrate.v2v from %s VM %s (%s)." % (
        prov["source_platform"],
        prov.get("source_name"),
        prov["source_id"],
    )
    return (note + "\n\n" + origin).strip()


def _scratch_dir(bundle):
    """Where the streamOptimized copy of a disk is written: beside the bundle (sized for
    disks), else the system's temporary directory."""
    return bundle.dir if os.access(bundle.dir, os.W_OK) else None


SECTOR = 512
_STREAM_FLAGS = (1 << 16) | (1 << 17)  # compressed grains, markers


def read_stream_vmdk(path):
    """A streamOptimized VMDK's capacity in bytes and an iterator of (offset, data) for
    its grains, inflated, in file order (a reader for tests and checks; write_stream_vmdk
    below writes them).

    Layout (VMware's Virtual Disk Format 5.0): a 512-byte sparse header, the embedded
    descriptor, then from ``overHead`` sectors on, sector-aligned records: a grain is
    lba (u64), size (u32) and ``size`` bytes of zlib data; a marker has size 0, a type
    (u32; 0 ends the stream) and is followed by ``lba`` sectors of metadata (tables,
    footer), which are skipped.
    """
    with open(path, "rb") as fh:
        header = fh.read(SECTOR)
    if len(header) < SECTOR or header[:4] != b"KDMV":
        raise PlatformError("%s is not a sparse VMDK" % path, "give a streamOptimized VMDK")
    flags, sectors = struct.unpack_from("<IQ", header, 8)
    overhead = struct.unpack_from("<Q", header, 64)[0]
    if flags & _STREAM_FLAGS != _STREAM_FLAGS or struct.unpack_from("<H", header, 77)[0] != 1:
        raise PlatformError("%s is not a streamOptimized VMDK" % path, "give a streamOptimized VMDK")
    return sectors * SECTOR, _stream_grains(path, overhead * SECTOR, sectors * SECTOR)


def _stream_grains(path, start, capacity):
    with open(path, "rb") as fh:
        pos = start
        while True:
            fh.seek(pos)
            head = fh.read(16)
            if not head:  # qemu-img ends a stream without grains after its tables, unmarked
                return
            if len(head) < 12:
                raise PlatformError("%s ends inside a grain header" % path, "report this bug")
            lba, size = struct.unpack_from("<QI", head)
            if size == 0:
                if len(head) < 16 or struct.unpack_from("<I", head, 12)[0] == 0:
                    return
                pos += SECTOR + lba * SECTOR
                continue
            fh.seek(pos + 12)
            data = zlib.decompress(fh.read(size))
            offset = lba * SECTOR
            if offset + len(data) > capacity:
                data = data[: max(0, capacity - offset)]
            yield offset, data
            pos += -(-(12 + size) // SECTOR) * SECTOR


# The streamOptimized writer below is hand-written rather than `qemu-img convert -O vmdk
# -o subformat=streamOptimized`: qemu-img deflates on one thread (22 s for 1 GiB of data
# here against 3.2 s on every core), and it would need a second read of the bundle's disk
# to check it against the bundle's digests, which this does on its one pass. qemu-img
# still judges the files: the unit tests run `qemu-img check` and `compare` on them.
GRAIN = 64 * 1024  # bytes per grain (128 sectors), as VMware's tools write them
GT_ENTRIES = 512  # grain table entries: one table covers 32 MiB
_MARKER_GT, _MARKER_GD, _MARKER_FOOTER = 1, 2, 3
_GD_AT_END = 0xFFFFFFFFFFFFFFFF


def _stream_header(capacity, desc_sectors, overhead, gd_offset):
    """The 512-byte sparse extent header of a streamOptimized VMDK (Virtual Disk Format 5.0)."""
    head = struct.pack(
        "<4sIIQQQQIQQQB4sH",
        b"KDMV",
        3,  # version
        1 | _STREAM_FLAGS,  # newline test valid, compressed grains, markers
        -(-capacity // SECTOR),
        GRAIN // SECTOR,
        1,  # the descriptor follows the header
        desc_sectors,
        GT_ENTRIES,
        0,  # no redundant grain directory
        gd_offset,
        overhead,
        0,  # clean
        b"\n \r\n",
        1,  # deflate
    )
    return head.ljust(SECTOR, b"\0")


def _stream_descriptor(capacity, adapter):
    sectors = -(-capacity // SECTOR)
    cylinders = min(65535, max(1, sectors // (255 * 63)))
    return (
        '# Disk DescriptorFile\nversion=1\nCID=%08x\nparentCID=ffffffff\ncreateType="streamOptimized"\n\n'
        '# Extent description\nRW %d SPARSE "disk.vmdk"\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.adapterType = "%s"\nddb.geometry.cylinders = "%d"\nddb.geometry.heads = "255"\n'
        'ddb.geometry.sectors = "63"\nddb.virtualHWVersion = "4"\n'
    ) % (int.from_bytes(os.urandom(4), "big") | 1, sectors, adapter, cylinders)


def _marker(sectors, kind):
    return struct.pack("<QII", sectors, 0, kind).ljust(SECTOR, b"\0")


def _deflate(grain):
    """A grain as zlib data. Deflating incompressible data (encrypted, already compressed)
    costs ~15 ns a byte and saves nothing, so a grain whose first 4 KiB do not shrink
    by 1/16 is stored (deflate's uncompressed blocks: valid zlib at copying speed)."""
    if len(zlib.compress(grain[:4096], 1)) > 3840:
        return zlib.compress(grain, 0)
    return zlib.compress(grain, 1)


def write_stream_vmdk(reader, path, adapter="lsilogic", block_size=_blocks.DEFAULT_BLOCK_SIZE, workers=None):
    """Write guest reader ``reader`` to ``path`` as a streamOptimized VMDK; return its
    (DigestList, guest bytes in grains).

    Only the allocated extents are read (once); grains that are all zeros are left out;
    the others are deflated in parallel (zlib releases the GIL), then the grain tables,
    the grain directory, the footer and the end-of-stream marker follow, as the format
    asks of a stream. The digests are taken on the same pass.
    """
    capacity = reader.size
    hasher = _blocks.BlockHasher(capacity, block_size)
    ngrains = -(-capacity // GRAIN)
    table = [0] * (-(-ngrains // GT_ENTRIES) * GT_ENTRIES)  # grain -> its sector in the file
    descriptor = _stream_descriptor(capacity, adapter).encode("ascii")
    desc_sectors = -(-len(descriptor) // SECTOR)
    overhead = 128  # sectors before the first grain: header and descriptor, rounded to a grain
    data = 0
    zeros = bytes(GRAIN)
    workers = workers or _blocks.default_workers()
    ranges = _blocks._data_ranges(reader.extents(), capacity, max(GRAIN, block_size))
    with open(path, "wb") as out, concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        out.write(_stream_header(capacity, desc_sectors, overhead, _GD_AT_END))
        out.write(descriptor.ljust(desc_sectors * SECTOR, b"\0"))
        out.seek(overhead * SECTOR)
        pos = overhead * SECTOR
        for off, chunk, length in _blocks._read_ahead(reader, ranges, _blocks.CHUNK, max(GRAIN, block_size)):
            hasher.feed(off, chunk, length, pool=pool, workers=workers)
            view = memoryview(chunk)
            grains = [
                (off + i, bytes(view[i : min(i + GRAIN, length)]))
                for i in range(0, length, GRAIN)
                if not chunk.startswith(zeros[: min(GRAIN, length - i)], i)
            ]
            packed = pool.map(lambda g: _deflate(g[1]), grains)
            for (goff, grain), z in zip(grains, packed, strict=True):
                table[goff // GRAIN] = pos // SECTOR
                record = struct.pack("<QI", goff // SECTOR, len(z)) + z
                out.write(record.ljust(-(-len(record) // SECTOR) * SECTOR, b"\0"))
                pos += -(-len(record) // SECTOR) * SECTOR
                data += len(grain)
        # Grain tables (only those with grains), then the directory pointing at them.
        directory = []
        gt_sectors = GT_ENTRIES * 4 // SECTOR
        for t in range(0, len(table), GT_ENTRIES):
            entries = table[t : t + GT_ENTRIES]
            if not any(entries):
                directory.append(0)
                continue
            out.write(_marker(gt_sectors, _MARKER_GT))
            directory.append(pos // SECTOR + 1)
            out.write(struct.pack("<%dI" % GT_ENTRIES, *entries))
            pos += SECTOR + gt_sectors * SECTOR
        gd = struct.pack("<%dI" % len(directory), *directory)
        gd_sectors = -(-len(gd) // SECTOR)
        out.write(_marker(gd_sectors, _MARKER_GD))
        gd_offset = pos // SECTOR + 1
        out.write(gd.ljust(gd_sectors * SECTOR, b"\0"))
        out.write(_marker(1, _MARKER_FOOTER))
        out.write(_stream_header(capacity, desc_sectors, overhead, gd_offset))
        out.write(bytes(SECTOR))  # end of stream
    return hasher.finish(), data
