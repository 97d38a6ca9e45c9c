# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The power step, the same on every platform (the cutover and rollback roles use it).

What to do for a wanted state given the VM's power state, the wait for a graceful
shutdown, what happens when the guest does not stop in time (``on_timeout``) and the
result are decided here; a platform only supplies primitives (platforms/base.py):
power_state, start_vm, request_shutdown and power_off.
"""

from __future__ import annotations

import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import rollback as _rollback
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps

STATES = ("running", "shutdown", "off")
ON_TIMEOUT = ("fail", "poweroff")
SHUTDOWN_TIMEOUT = 300  # seconds a graceful shutdown may take, the same on every platform
POLL = 1.0  # seconds between power state reads while waiting


def _target_state(want):
    return "running" if want == "running" else "off"


def run_power(platform, vm, options, check_mode=False, clock=time.monotonic, sleep=time.sleep):
    """Bring ``vm`` to ``options['state']``; a result dict (changed, state_before,
    state_after, method, seconds, summary, diff). ``clock``/``sleep`` are for tests."""
    started = clock()
    want = options.get("state") or "running"
    if want not in STATES:
        raise InputError("state %r is not one of %s" % (want, ", ".join(STATES)), "use one of them")
    on_timeout = options.get("on_timeout") or "fail"
    timeout = options.get("shutdown_timeout")
    timeout = SHUTDOWN_TIMEOUT if timeout is None else int(timeout)
    mark = bool(options.get("mark_rolled_back"))
    if mark and want == "running":
        raise InputError(
            "mark_rolled_back marks a VM that is powered off, but state is running",
            "use state=off or state=shutdown with mark_rolled_back",
        )
    name = platform.vm_name(vm)
    before = platform.power_state(vm)
    result = {"name": name, "state_before": before, "method": "none", "reason": None}

    if before == _target_state(want):
        result["reason"] = "already %s" % before
    elif want == "running":
        # A rolled-back target holds stale disks: it is started only after an import. In
        # check mode the import before it (a checked cutover) would have cleared the mark.
        try:
            _rollback.refuse_start(platform, vm)
        except InputError as exc:
            if not check_mode:
                raise
            result["reason"] = "%s: a run refuses to start it unless an import clears the mark first" % exc.problem
        if before != "off":
            # A paused or suspended VM is neither: starting it means something else on each
            # platform (resume, or power on from the suspend file), so the user decides.
            raise InputError(
                "VM %s is %s, neither off nor running" % (name, before),
                "resume it with the hypervisor's own tools, or power it off (state=off) and start it again",
            )
        result["method"] = "start"
        if not check_mode:
            platform.start_vm(vm)
    elif want == "off":
        result["method"] = "poweroff"
        if not check_mode:
            platform.power_off(vm)
    else:
        _shutdown(platform, vm, name, before, result, timeout, on_timeout, check_mode, clock, sleep)

    result["changed"] = result["method"] != "none"
    if check_mode:
        result["state_after"] = _target_state(want) if result["changed"] else before
    else:
        result["state_after"] = platform.power_state(vm)
    result["diff"] = {"before": {"power_state": before}, "after": {"power_state": result["state_after"]}}
    if mark:
        # Marked once off: a VM that is still running is not mistaken for stopped.
        marked = _rollback.mark_target(platform, vm, check_mode)
        result.update(marked_rolled_back=marked["marked"], rolled_back=marked["rolled_back"], note=marked["note"])
        result["changed"] = result["changed"] or marked["marked"]
        result["diff"]["before"]["rolled_back"] = None if marked["marked"] else marked["rolled_back"]
        result["diff"]["after"]["rolled_back"] = marked["rolled_back"]
    steps.finish_step(result, started, "power %s" % name)
    result["seconds"] = round(clock() - started, 3)
    result["summary"] = _summary(name, want, result, check_mode)
    return result


def _shutdown(platform, vm, name, before, result, timeout, on_timeout, check_mode, clock, sleep):
    """Ask the guest to shut down, wait up to ``timeout`` s for the VM to be off, then
    apply ``on_timeout``. Fills ``result``; raises PlatformError when on_timeout is fail."""
    # Only a running guest can be asked (a paused or suspended one cannot answer).
    method = platform.request_shutdown(vm, check_mode) if before == "running" else None
    if method is None:
        why = (
            "the guest cannot be asked to shut down (%s)" % platform.shutdown_needs
            if before == "running"
            else "a %s VM cannot be asked to shut down" % before
        )
        waited = 0
    else:
        result["method"] = method
        if check_mode:
            return
        deadline = clock() + timeout
        while platform.power_state(vm) != "off":
            if clock() >= deadline:
                break
            sleep(POLL)
        else:
            result["reason"] = "the guest shut down (%s)" % method
            return
        waited = timeout
        why = "the guest did not shut down within %d s of the %s request" % (timeout, method)
    if on_timeout == "poweroff":
        result["method"] = "forced"
        result["reason"] = "%s; powered off hard (on_timeout=poweroff)" % why
        if not check_mode:
            platform.power_off(vm)
        return
    raise PlatformError(
        "VM %s is still %s: %s" % (name, platform.power_state(vm) if not check_mode else before, why),
        "raise shutdown_timeout (waited %d s), make the guest answer (%s), or set on_timeout=poweroff "
        "(or state=off) to power it off hard" % (waited, platform.shutdown_needs),
        name=name,
        state_before=before,
        method=result["method"],
        seconds=waited,
    )


def _summary(name, want, result, check_mode):
    text = _power_summary(name, result, check_mode)
    if result.get("marked_rolled_back"):
        text += "; %smarked rolled back" % ("would be " if check_mode else "")
    return text if result["changed"] else text + " (nothing to do)"


def _power_summary(name, result, check_mode):
    if result["method"] == "none":
        return "power %s: already %s" % (name, result["state_before"])
    words = {
        "start": "started",
        "poweroff": "powered off",
        "acpi": "shut down (ACPI)",
        "guest": "shut down by the guest",
        "forced": "powered off hard after the graceful shutdown failed",
    }
    done = words.get(result["method"], result["method"])
    text = "power %s: %s%s in %.1f s" % (name, "would be " if check_mode else "", done, result["seconds"])
    if result["method"] == "forced":
        text += " (%s)" % result["reason"]
    return text
