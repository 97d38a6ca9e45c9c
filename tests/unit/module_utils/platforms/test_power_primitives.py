"""The power primitives that the lab cannot reach: vSphere's ShutdownGuest needs running
VMware Tools (vcsim's VMs have none), and KVM's refusal for a domain without ACPI."""

from __future__ import annotations

import types

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.target import KvmTarget
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.power import VspherePower


class FakeVsphereVm:
    def __init__(self, tools):
        self.guest = types.SimpleNamespace(toolsRunningStatus=tools)
        self.calls = []

    def ShutdownGuest(self):  # noqa: N802 - pyvmomi's name
        self.calls.append("ShutdownGuest")


def test_vsphere_asks_the_guest_only_when_tools_run():
    power = object.__new__(VspherePower)
    running = FakeVsphereVm("guestToolsRunning")
    assert power.request_shutdown(running, check_mode=True) == "guest" and running.calls == []
    assert power.request_shutdown(running, check_mode=False) == "guest" and running.calls == ["ShutdownGuest"]
    absent = FakeVsphereVm("guestToolsNotRunning")
    assert power.request_shutdown(absent, check_mode=False) is None and absent.calls == []


class FakeDomain:
    def __init__(self, features):
        self.xml = "<domain><name>d</name><features>%s</features></domain>" % features
        self.calls = []

    def XMLDesc(self, flags):  # noqa: N802 - libvirt's name
        return self.xml

    def shutdownFlags(self, flags):  # noqa: N802
        self.calls.append(flags)


def test_kvm_presses_the_acpi_button_only_when_the_domain_has_one():
    target = object.__new__(KvmTarget)
    with_acpi = FakeDomain("<acpi/><apic/>")
    assert target.request_shutdown(with_acpi, check_mode=True) == "acpi" and with_acpi.calls == []
    assert target.request_shutdown(with_acpi, check_mode=False) == "acpi" and len(with_acpi.calls) == 1
    without = FakeDomain("<apic/>")
    assert target.request_shutdown(without, check_mode=False) is None and without.calls == []
