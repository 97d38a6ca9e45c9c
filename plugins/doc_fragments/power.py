# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options of the power step, the same on every platform (module_utils/_runner.power_options)."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  vm:
    description: The VM - its name, UUID or the platform's own id.
    type: str
    required: true
    aliases: [name]
  state:
    description:
      - V(running) powers the VM on.
      - V(shutdown) asks the guest to shut down (how depends on the platform, see the module's description)
        and waits up to O(shutdown_timeout) seconds for the VM to be off; O(on_timeout) says what happens
        when it is not, or when the guest cannot be asked at all.
      - V(off) powers the VM off hard, as pulling the plug (the guest gets no chance to flush its caches).
      - A VM already in the wanted state is left alone (changed=false); V(shutdown) and V(off) are both
        satisfied by a VM that is off.
    type: str
    default: running
    choices: [running, shutdown, "off"]
  shutdown_timeout:
    description: Seconds O(state=shutdown) waits for the VM to be off after asking the guest.
    type: int
    default: 300
  on_timeout:
    description:
      - What O(state=shutdown) does when the VM is not off after O(shutdown_timeout) seconds, or when its guest
        cannot be asked to shut down.
      - V(fail) leaves the VM as it is and fails, naming the VM, the seconds waited and the fix.
      - V(poweroff) powers it off hard; the result says so (RV(method=forced)) and why (RV(reason)).
    type: str
    default: fail
    choices: [fail, poweroff]
  mark_rolled_back:
    description:
      - With O(state=off) or O(state=shutdown), once the VM is off, mark it as the target of a rollback - its
        provenance (the record an import left on it) gets state C(rolled-back) and the time, and a note people
        see is put first in its description (libvirt C(<title>) and C(<description>), the vSphere annotation).
      - Only a VM that carries a provenance (one an import made) can be marked. A VM already marked is left
        as it is (changed=false).
      - A marked VM is not started by O(state=running) (the step fails, naming the fix; in check mode RV(reason)
        says so); the next import into it writes every disk again and removes the mark (see the rollback role).
    type: bool
    default: false
"""
