# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Finding and describing vSphere VMs: their disks, NICs, snapshots, spec and facts, and
the provenance a target VM carries in its extraConfig."""

from __future__ import annotations

import json
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, VmNotFoundError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import rollback as _rollback
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.profiles import escape_name
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import (
    get_props,
    split_ds_path,
    vim,
    vmodl,
    wait_task,
)

PROVENANCE_KEY = "vmigrate.provenance"
# extraConfig key set while a disk of an existing target is being rewritten: a VM that
# carries it is not complete, whatever its provenance says.
INCOMPLETE_KEY = "vmigrate.incomplete"


# ---------------------------------------------------------------- describe

CONTROLLERS = (
    # (pyvmomi class name, spec bus, spec controller)
    ("ParaVirtualSCSIController", "scsi", "pvscsi"),
    ("VirtualLsiLogicController", "scsi", "lsilogic"),
    ("VirtualLsiLogicSASController", "scsi", "lsisas1068"),
    ("VirtualBusLogicController", "scsi", "buslogic"),
    ("VirtualAHCIController", "sata", None),
    ("VirtualIDEController", "ide", None),
    ("VirtualNVMEController", "nvme", None),
)
NIC_MODELS = (
    ("VirtualVmxnet3", "vmxnet3"),
    ("VirtualE1000e", "e1000e"),
    ("VirtualE1000", "e1000"),
    ("VirtualPCNet32", "pcnet"),
)


def _controller_kind(dev):
    for cls_name, bus, ctrl in CONTROLLERS:
        if isinstance(dev, getattr(vim.vm.device, cls_name)):
            return bus, ctrl
    return None, None


def _nic_model(dev):
    for cls_name, model in NIC_MODELS:
        if isinstance(dev, getattr(vim.vm.device, cls_name)):
            return model
    return "e1000"


def _nic_network(dev, vm=None):
    """The network name of a NIC: the port group's name for distributed port groups too."""
    backing = dev.backing
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = backing.port.portgroupKey
        for net in (vm.network if vm is not None else None) or []:
            if isinstance(net, vim.dvs.DistributedVirtualPortgroup) and net.key == key:
                return net.name
        return key
    name = getattr(backing, "deviceName", None)
    if getattr(backing, "network", None) is not None:
        try:
            name = backing.network.name
        except vmodl.fault.ManagedObjectNotFound:  # a stale reference: keep deviceName
            pass
    return name


def _disk_capacity(dev):
    return int(dev.capacityInBytes or dev.capacityInKB * 1024)


def vm_disks(vm, config=None):
    """Virtual disks in device order as dicts with the backing facts export needs."""
    config = config or vm.config
    devices = {d.key: d for d in config.hardware.device}
    disks = []
    for dev in config.hardware.device:
        if not isinstance(dev, vim.vm.device.VirtualDisk):
            continue
        backing = dev.backing
        bus, ctrl = _controller_kind(devices.get(dev.controllerKey))
        file_name = getattr(backing, "fileName", None)
        ds_name = split_ds_path(file_name)[0] if file_name else None
        disks.append(
            {
                "key": dev.key,
                "label": dev.deviceInfo.label if dev.deviceInfo else None,
                "file": file_name,
                "datastore": ds_name,
                "capacity": _disk_capacity(dev),
                "bus": bus or "scsi",
                "controller": ctrl,
                "controller_key": dev.controllerKey,
                "unit_number": dev.unitNumber,
                "thin": bool(getattr(backing, "thinProvisioned", False)),
                "change_id": getattr(backing, "changeId", None) or None,
                "backing": type(backing).__name__,
            }
        )
    return disks


def extra_config(vm, key):
    """An extraConfig value; the last entry wins and an empty value means unset
    (vSphere removes a key set to ""; the simulator appends entries instead)."""
    value = None
    for opt in (vm.config.extraConfig if vm.config else None) or []:
        if opt.key == key:
            value = opt.value
    return value or None


def read_provenance(vm):
    value = extra_config(vm, PROVENANCE_KEY)
    if value is None:
        return None
    try:
        prov = json.loads(value)
    except (TypeError, ValueError):
        return {"unreadable": value}
    if isinstance(prov, dict) and extra_config(vm, INCOMPLETE_KEY):
        prov["state"] = "incomplete"  # the marker of targets made before provenance had a state
    return prov


def snapshot_list(vm):
    out = []

    def walk(trees):
        for tree in trees or []:
            out.append(
                {
                    "name": tree.name,
                    "description": tree.description,
                    "moid": tree.snapshot._moId,
                    "id": tree.id,
                    "created": tree.createTime.isoformat() if tree.createTime else None,
                    "state": tree.state,
                }
            )
            walk(tree.childSnapshotList)

    info = get_props(vm, ["snapshot"]).get("snapshot")
    if info is not None:
        walk(info.rootSnapshotList)
    return out


def describe_vm(vm):
    """The neutral spec of a VM (see docs/architecture.md, Spec)."""
    cfg = vm.config
    hw = cfg.hardware
    cores = max(1, hw.numCoresPerSocket or 1)
    sockets = max(1, hw.numCPU // cores) if hw.numCPU % cores == 0 else hw.numCPU
    if hw.numCPU % cores:
        cores = 1
    disks = []
    for i, d in enumerate(vm_disks(vm)):
        disks.append(
            {
                "id": "disk%d" % i,
                "bus": d["bus"],
                "controller": d["controller"] if d["bus"] == "scsi" else None,
                "capacity": d["capacity"],
                "format": "vmdk",
                "source": {"datastore": d["datastore"], "file": d["file"], "device_key": d["key"]},
                "storage": d["datastore"],
                "boot_order": 1 if i == 0 else None,
            }
        )
    nics = []
    for dev in hw.device:
        if isinstance(dev, vim.vm.device.VirtualEthernetCard):
            name = _nic_network(dev, vm)
            mac = (dev.macAddress or "").lower() or None
            nics.append({"mac": mac, "network": name, "network_type": None, "model": _nic_model(dev)})
    removable = []
    for dev in hw.device:
        if isinstance(dev, (vim.vm.device.VirtualCdrom, vim.vm.device.VirtualFloppy)):
            bus, _ctrl = _controller_kind({d.key: d for d in hw.device}.get(dev.controllerKey))
            kind = "cdrom" if isinstance(dev, vim.vm.device.VirtualCdrom) else "floppy"
            if kind == "floppy":
                bus = "fdc"
            elif bus not in ("sata", "ide", "scsi"):
                bus = "sata"
            path = getattr(dev.backing, "fileName", None) or None
            removable.append({"type": kind, "bus": bus, "path": path})
    secure = bool(cfg.bootOptions and getattr(cfg.bootOptions, "efiSecureBootEnabled", False))
    firmware = "uefi" if cfg.firmware == "efi" else "bios"
    annotation = cfg.annotation or None
    uuid = (cfg.instanceUuid or cfg.uuid or "").lower() or None
    return _spec.new_spec(
        name=cfg.name,
        uuid=uuid,
        firmware={"type": firmware, "secure_boot": secure and firmware == "uefi"},
        cpu={"sockets": sockets, "cores": cores, "threads": 1},
        memory_mib=int(hw.memoryMB),
        disks=disks,
        nics=nics,
        removable=removable,
        guest_os={
            "family": _spec.guest_family(cfg.guestId),
            "id": cfg.guestId or None,
            "osinfo": _spec.osinfo_for(cfg.guestId),
            "description": cfg.guestFullName or None,
        },
        annotations={"description": annotation, "title": None},
        origin={"platform": "vsphere", "ref": vm._moId},
    )


def vm_facts(vm):
    """What vsphere_vm_info returns for one VM: the spec plus vSphere facts."""
    cfg = vm.config
    return {
        "name": vm.name,
        "moid": vm._moId,
        "instance_uuid": cfg.instanceUuid,
        "bios_uuid": cfg.uuid,
        "power_state": str(vm.runtime.powerState),
        "hardware_version": cfg.version,
        "firmware": cfg.firmware,
        "guest_id": cfg.guestId,
        "cbt_enabled": bool(cfg.changeTrackingEnabled),
        "folder": inventory_path(vm),
        "disks": vm_disks(vm),
        "nics": [
            {
                "key": d.key,
                "label": d.deviceInfo.label if d.deviceInfo else None,
                "mac": (d.macAddress or "").lower() or None,
                "network": _nic_network(d, vm),
                "model": _nic_model(d),
                "connected": bool(d.connectable and d.connectable.connected),
            }
            for d in cfg.hardware.device
            if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ],
        "snapshots": snapshot_list(vm),
        "provenance": read_provenance(vm),
        "incomplete": (read_provenance(vm) or {}).get("state") == "incomplete",
        "spec": describe_vm(vm),
    }


def inventory_path(entity):
    """'DC0/vm/folder': the datacenter and folders above a VM."""
    parts = []
    node = entity.parent
    while node is not None:
        parts.append(node.name)
        if isinstance(node, vim.Datacenter):
            break
        node = node.parent
    return "/".join(reversed(parts))


class VsphereInventory:
    """Finding and describing VMs; the provenance they carry.

    A part of VspherePlatform: ``self.conn`` (a Connection), ``self.content`` and
    ``self.dc`` (its datacenter) are set by VspherePlatform.__init__.
    """

    def _all_vms(self):
        view = self.content.viewManager.CreateContainerView(self.dc.vmFolder, [vim.VirtualMachine], True)
        try:
            return list(view.view)
        finally:
            view.Destroy()

    def list_vms(self):
        return [
            {"name": vm.name, "moid": vm._moId, "power_state": str(vm.runtime.powerState)} for vm in self._all_vms()
        ]

    def find_vm(self, ref):
        return self._find(ref, required=True)

    def lookup(self, name):
        return self._find(name, required=False)

    def _find(self, ref, required):
        """A VM by name, inventory path (DC/vm/folder/name), moid (vm-42) or instance UUID."""
        ref = (ref or "").strip()
        if not ref:
            raise InputError("no VM given", "give the VM's name, folder path, moid or instance UUID")
        vm = None
        si = self.content.searchIndex
        if "/" in ref:
            path = ref if ref.startswith(self.dc.name + "/") else "%s/vm/%s" % (self.dc.name, ref.lstrip("/"))
            vm = si.FindByInventoryPath(path)
        elif re.match(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", ref):
            vm = si.FindByUuid(self.dc, ref.lower(), True, True) or si.FindByUuid(self.dc, ref.lower(), True, False)
        elif re.match(r"^vm-\d+$", ref):
            vm = next((v for v in self._all_vms() if v._moId == ref), None)
        if vm is None:
            # vSphere stores slash, backslash and '%' in names escaped (a/b is a%2fb): match both forms.
            names = {ref, escape_name("vsphere", ref)}
            matches = [v for v in self._all_vms() if v.name in names]
            if len(matches) > 1:
                raise InputError(
                    "%d VMs are named %r in datacenter %s (%s)"
                    % (len(matches), ref, self.dc.name, ", ".join(v._moId for v in matches)),
                    "give the moid, instance UUID or folder path instead of the name",
                )
            vm = matches[0] if matches else None
        if vm is None and required:
            raise VmNotFoundError(
                "VM %r not found in datacenter %s at %s" % (ref, self.dc.name, self.conn.host),
                "check the name (vsphere_vm_info lists VMs), or give its moid, instance UUID or folder path",
                vm=ref,
            )
        return vm

    def describe(self, vm):
        return describe_vm(vm)

    def _reconfigure(self, vm, extra, annotation=None):
        spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra.items()])
        if annotation is not None:
            spec.annotation = annotation
        wait_task(vm.ReconfigVM_Task(spec=spec), "reconfigure %s" % vm.name, self.conn.timeout)

    # -- what run_verify asks of every platform --

    @staticmethod
    def vm_name(vm):
        return vm.name

    @staticmethod
    def read_provenance(vm):
        return read_provenance(vm)

    def write_provenance(self, vm, prov):
        self._write_provenance(vm, prov)

    def _write_provenance(self, vm, prov, extra=None):
        """``prov`` in extraConfig (with ``extra`` keys, in one reconfigure). The rollback
        mark is also shown in the annotation (what the vSphere Client shows first); it
        follows the provenance, so a new import removes it."""
        old = (vm.config.annotation if vm.config else None) or ""
        new = _rollback.with_note(old, _rollback.note(prov))
        keys = dict(extra or {}, **{PROVENANCE_KEY: json.dumps(prov, sort_keys=True)})
        self._reconfigure(vm, keys, new if new != old else None)

    @staticmethod
    def power_state(vm):
        state = str(vm.runtime.powerState)
        return {"poweredOff": "off", "poweredOn": "running"}.get(state, state)
