# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere's power primitives (a part of VspherePlatform): a guest shutdown through
VMware Tools and a hard power off. What to do when is engine/power.py's."""

from __future__ import annotations

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import vim, wait_task
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.inventory import VsphereInventory


def tools_running(vm):
    """True when VMware Tools run in the guest: only then can it be asked to shut down."""
    guest = vm.guest
    return bool(guest) and guest.toolsRunningStatus == "guestToolsRunning"


class VspherePower(VsphereInventory):
    """ShutdownGuest when VMware Tools run; PowerOffVM_Task."""

    def request_shutdown(self, vm, check_mode):
        if not tools_running(vm):
            return None
        if not check_mode:
            try:
                vm.ShutdownGuest()  # returns at once; the engine waits for poweredOff
            except vim.fault.ToolsUnavailable:
                return None  # Tools stopped between the check and the call
        return "guest"

    def power_off(self, vm):
        if vm.runtime.powerState != vim.VirtualMachinePowerState.poweredOff:
            wait_task(vm.PowerOffVM_Task(), "power off %s" % vm.name, self.conn.timeout)
