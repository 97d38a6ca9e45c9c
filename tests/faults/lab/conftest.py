"""The lab fault tests use the integration suite's fixtures (lab, libvirt_conn, vsphere_si,
run_module, run_playbook ...) and helpers (test_kvm_migrate, plan_lab ...): loaded here
under another module name, since a second module called `conftest` would clash."""

import importlib.util
import os
import sys

import libvirt
import pytest

INTEGRATION = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "integration")
sys.path.insert(0, INTEGRATION)

_path = os.path.join(INTEGRATION, "conftest.py")
_spec = importlib.util.spec_from_file_location("vmigrate_integration_fixtures", _path)
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
globals().update({k: v for k, v in vars(_fixtures).items() if not k.startswith("__")})

# The Hyper-V tests' own simulator (free ports, state under tmp; never the lab's shared one).
from test_hyperv_migrate import hv  # noqa: E402, F401


class ReconnectingConnection:
    """The session's libvirt connection, which one fault test outlives: it restarts libvirtd
    and then calls reopen(). Everything else goes to the libvirt connection itself."""

    def __init__(self, uri):
        self.uri = uri
        self.conn = libvirt.open(uri)

    def reopen(self):
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass  # the old connection died with the libvirtd that held it
        self.conn = libvirt.open(self.uri)

    def __getattr__(self, name):
        return getattr(self.conn, name)


@pytest.fixture(scope="session")
def libvirt_conn(lab):  # noqa: F811 - this suite's own: it survives a libvirtd restart
    conn = ReconnectingConnection(lab["libvirt_uri"])
    yield conn
    conn.conn.close()
