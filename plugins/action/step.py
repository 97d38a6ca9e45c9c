# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one migration step on the platform a VM's endpoint names (see modules/step.py).

Roles call every platform the same way: this picks ``vmigrate.v2v.<platform>_<step>``
(``convert`` is platform-neutral), gives it the endpoint's connection options plus the
step's own, and runs it where the task runs (``delegate_to`` the conversion host).
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

PLATFORMS = ("kvm", "vsphere", "hyperv")
STEPS = ("vm_info", "export", "convert", "import", "verify", "power", "cleanup")

ARGUMENT_SPEC = {
    "step": {"type": "str", "required": True, "choices": list(STEPS)},
    "platform": {"type": "str", "choices": list(PLATFORMS)},
    "connection": {"type": "dict", "default": {}, "no_log": True},
    "args": {"type": "dict", "default": {}},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        step, platform = args["step"], args["platform"]
        if step == "convert":
            module, module_args = "vmigrate.v2v.convert", dict(args["args"])
        else:
            if not platform:
                raise AnsibleActionFail("step %s needs platform (one of %s)" % (step, ", ".join(PLATFORMS)))
            module = "vmigrate.v2v.%s_%s" % (platform, step)
            # Options left out (None) fall back to the module's defaults and environment.
            module_args = {k: v for k, v in (args["connection"] or {}).items() if v is not None}
            module_args.update(args["args"])
        if not self._shared_loader_obj.module_loader.find_plugin(module):
            raise AnsibleActionFail(
                "this collection has no module %s: platform %s cannot do step %s yet" % (module, platform, step)
            )
        result.update(self._execute_module(module_name=module, module_args=module_args, task_vars=task_vars))
        result["step_module"] = module
        return result
