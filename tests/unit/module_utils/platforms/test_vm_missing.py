"""A VM that is not there fails with VmNotFoundError, whose result says missing: true
(the preflight and rollback roles test that field), on every platform; other failures
do not say it."""

from __future__ import annotations

import os
import sys

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import (
    InputError,
    VmNotFoundError,
    fail_from_exception,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import inventory as _hv_inventory
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import inventory as _vs_inventory

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "lab"))
from hyperv.host import HyperVHost  # noqa: E402
from test_hyperv_platform import LocalConnection  # noqa: E402 - pytest puts this directory on sys.path


class FakeModule:
    def fail_json(self, **result):
        self.result = result
        raise SystemExit(1)


def failure_of(exc):
    """The result fail_from_exception gives a module for ``exc``."""
    module = FakeModule()
    with pytest.raises(SystemExit):
        fail_from_exception(module, exc)
    return module.result


def test_the_flag_reaches_the_failure_result():
    result = failure_of(VmNotFoundError("VM 'x' not found", "check the name", vm="x"))
    assert result["missing"] is True and result["vm"] == "x" and result["error_kind"] == "input"
    assert "missing" not in failure_of(InputError("vms is not a list", "give a list"))


def test_kvm_unknown_domain_is_missing():
    # libvirt's own test driver: a real lookup, no daemon.
    with KvmPlatform({"uri": "test:///default"}) as platform:
        assert platform.find_vm("test").name() == "test"
        with pytest.raises(VmNotFoundError, match="domain 'lab-sec-gone' does not exist") as err:
            platform.find_vm("lab-sec-gone")
        with pytest.raises(VmNotFoundError):
            platform.find_vm("0badc0de-0000-4000-8000-00000000dead")  # a UUID nobody has
        with pytest.raises(InputError) as empty:
            platform.find_vm("")
    assert failure_of(err.value)["missing"] is True and err.value.details["vm"] == "lab-sec-gone"
    assert "missing" not in failure_of(empty.value)  # no name given is not "no such VM"


class FakeVm:
    def __init__(self, name, moid):
        self.name, self._moId = name, moid


class FakeVsphere(_vs_inventory.VsphereInventory):
    """The inventory's lookups over a fixed list of VMs (no vCenter)."""

    def __init__(self, vms):
        self.vms = vms
        self.dc = type("Dc", (), {"name": "DC0"})()
        self.conn = type("Conn", (), {"host": "vc1"})()
        self.content = type("Content", (), {"searchIndex": None})()

    def _all_vms(self):
        return list(self.vms)


def test_vsphere_unknown_vm_is_missing():
    inv = FakeVsphere([FakeVm("web01", "vm-1"), FakeVm("twin", "vm-2"), FakeVm("twin", "vm-3")])
    assert inv.find_vm("web01")._moId == "vm-1" and inv.lookup("gone") is None
    with pytest.raises(VmNotFoundError, match="VM 'gone' not found in datacenter DC0 at vc1") as err:
        inv.find_vm("gone")
    assert failure_of(err.value)["missing"] is True and err.value.details["vm"] == "gone"
    with pytest.raises(InputError, match="2 VMs are named 'twin'") as twins:
        inv.find_vm("twin")
    assert "missing" not in failure_of(twins.value)  # there is such a VM, twice


@pytest.fixture
def hyperv(tmp_path):
    host = HyperVHost.init(str(tmp_path / "st"), str(tmp_path / "share"))
    return LocalConnection(host)


def test_hyperv_unknown_vm_is_missing(hyperv):
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import platform as _platform

    hyperv.hv.new_vm("n1")
    with pytest.raises(VmNotFoundError, match="VM 'gone' not found on Hyper-V host hvlab") as err:
        _hv_inventory.read_vms(hyperv, ["n1", "gone"])
    assert failure_of(err.value)["missing"] is True and err.value.details["vm"] == "gone"

    p = _platform.HyperVPlatform.__new__(_platform.HyperVPlatform)
    p.params, p.conn = {}, hyperv
    with pytest.raises(VmNotFoundError) as by_id:
        p.find_vm("0badc0de-0000-4000-8000-00000000dead")  # an Id the host does not have
    assert failure_of(by_id.value)["missing"] is True
    hyperv.hv.new_vm("n1")  # Hyper-V allows a second VM of the same name
    with pytest.raises(InputError, match="2 VMs named 'n1'") as twins:
        p.find_vm("n1")
    assert "missing" not in failure_of(twins.value)
