# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hyper-V as a source: the export's source session (cold) over the share.

A shut-off VM's VHDX files are read through the share (the conversion host's mount of the
Hyper-V host's directory) and copied into the bundle by the engine. A VM whose disks are
differencing disks (a checkpoint's AVHDX, a child VHD) is refused: the merged view is not
read yet, and reading only the child would be half the disk. Warm export (RCT reference
points) is not built yet: a running VM is refused with a clear message.
"""

from __future__ import annotations

import os

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import SourceSession
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _inventory


class HyperVSession(SourceSession):
    """One cold export of a shut-off VM: its disk files, read through the share."""

    def __init__(self, platform, vm, bundle, incremental, options):
        super().__init__(vm, bundle, incremental, options)
        name = vm["Name"]
        state = vm.get("State")
        if state != "Off":
            raise InputError(
                "VM %s is %s; Hyper-V VMs are exported cold only (warm export with RCT is not built yet)"
                % (name, state),
                "shut it down (Stop-VM, or vmigrate.v2v.hyperv_power state=shutdown), then export again",
            )
        share = platform.share()
        share.check()
        for i, d in enumerate(_inventory.vm_disks(vm)):
            where = "disk %d of VM %s (%s controller %s, location %s)" % (
                i,
                name,
                d["controller_type"],
                d["controller_number"],
                d["controller_location"],
            )
            if d["parent_path"] or d["vhd_type"] == "Differencing":
                raise InputError(
                    "%s is a differencing disk (%s, parent %s): the VM has checkpoints or a child disk, and "
                    "reading only the child would copy half a disk" % (where, d["path"], d["parent_path"]),
                    "delete the VM's checkpoints (Remove-VMCheckpoint merges them) or merge the disk "
                    "(Merge-VHD), then export again",
                )
            local = share.to_local(d["path"], where)
            if not os.path.isfile(local):
                raise InputError(
                    "%s is %s, but %s is not on the share on the conversion host" % (where, d["path"], local),
                    share.mount_hint(),
                )
            self.disks.append(
                {
                    "id": "disk%d" % i,
                    "target": "%s %s:%s" % (d["controller_type"], d["controller_number"], d["controller_location"]),
                    "source": {"path": d["path"], "local": local, "format": d["format"]},
                }
            )

    def stamp(self, disk):
        local = disk["source"]["local"]
        return _bundle.file_stamp(local) if os.path.exists(local) else None

    def open_disk(self, disk):
        src = disk["source"]
        # qemu-img check first: a VHDX cut short would otherwise read as zeros past its end.
        _disk.info(src["local"], src["format"])
        return _disk.open_guest(src["local"], src["format"])


class HyperVSource:
    """Hyper-V as a source (a part of HyperVPlatform)."""

    def source_record(self, vm):
        return {
            "platform": "hyperv",
            "id": (vm.get("Id") or "").lower(),
            "name": vm["Name"],
            "connection": {"hostname": self.conn.host, "port": self.conn.port},
        }

    def source_session(self, vm, bundle, incremental, options):
        return HyperVSession(self, vm, bundle, incremental, options)
