"""Every task starts a new Python process that imports its module's code again (compiled
from AnsiballZ's zip each time), so a module must not import a platform library it does
not use: a KVM module no pyVmomi, a vSphere module no libvirt, convert neither. Checked in
a fresh interpreter per module, on what it really imports (sys.modules)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "plugins", "modules")) if f.endswith(".py"))
PLATFORM_LIBS = {"libvirt": ("libvirt", "libvirtmod"), "pyvmomi": ("pyVmomi", "pyVim"), "pywinrm": ("winrm",)}


def imported_libraries(module):
    code = (
        "import json, sys\n"
        "import ansible_collections.vmigrate.v2v.plugins.modules.%s\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n" % module
    )
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections"))
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
    return set(json.loads(out))


def allowed(module):
    if module.startswith("kvm_"):
        return {"libvirt"}
    if module.startswith("vsphere_"):
        return {"pyvmomi"}
    if module.startswith("hyperv_"):
        return {"pywinrm"}
    return set()  # convert, descriptor_info: the engine only


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_only_its_platform_library(module):
    top = imported_libraries(module)
    loaded = {lib for lib, names in PLATFORM_LIBS.items() if top & set(names)}
    assert loaded <= allowed(module), "%s imports %s" % (module, sorted(loaded - allowed(module)))
    if allowed(module):  # and it does load its own (the check above is not vacuous)
        assert loaded == allowed(module)
