"""The lab fault tests use the integration suite's fixtures (lab, libvirt_conn, vsphere_si,
run_module, run_playbook ...) and helpers (test_kvm_migrate, plan_lab ...): loaded here
under another module name, since a second module called `conftest` would clash."""

import importlib.util
import os
import sys

INTEGRATION = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "integration")
sys.path.insert(0, INTEGRATION)

_path = os.path.join(INTEGRATION, "conftest.py")
_spec = importlib.util.spec_from_file_location("vmigrate_integration_fixtures", _path)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
globals().update({k: v for k, v in vars(_fixtures).items() if not k.startswith("__")})

# The Hyper-V tests' own simulator (free ports, state under tmp; never the lab's shared one).
from test_hyperv_migrate import hv  # noqa: E402, F401
