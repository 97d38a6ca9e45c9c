"""The Platform contract: every platform class implements the whole interface with the
same parameters, and the engine's verify step runs on any class that does (here a fake
platform holding its disks in memory, so the decisions are tested without a lab)."""

from __future__ import annotations

import contextlib
import inspect
import os

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, VerifyError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.disk import Extent
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import Platform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.platform import VspherePlatform

MIB = 1024 * 1024


class MemoryReader:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def extents(self):
        return [Extent(0, self.size, True, False)]

    def pread(self, length, offset):
        return bytes(self.data[offset : offset + length])


class FakePlatform(Platform):
    """A hypervisor in a dict: {name: {"spec": ..., "disks": [bytearray], "state": ...}}.

    It holds what a KVM target holds (the engine translates specs by platform name)."""

    name = "kvm"

    def __init__(self, vms):
        super().__init__({})
        self.vms = vms
        self.booted = []

    def close(self):
        pass

    def list_vms(self):
        return [{"name": n, "power_state": vm["state"]} for n, vm in self.vms.items()]

    def find_vm(self, ref):
        if ref not in self.vms:
            raise InputError("VM %r not found" % ref, "use one of %s" % ", ".join(self.vms))
        return ref

    def lookup(self, name):
        return name if name in self.vms else None

    def vm_name(self, vm):
        return vm

    def describe(self, vm):
        return self.vms[vm]["spec"]

    def power_state(self, vm):
        return self.vms[vm]["state"]

    def export(self, vm, bundle, mode="auto", check_mode=False, options=None):
        raise NotImplementedError

    def _disks_of(self, bundle, ids=None):
        out = []
        for record in bundle.disks:
            with open(bundle.disk_path(record), "rb") as fh:
                out.append(bytearray(fh.read()) if ids is None or record["id"] in ids else None)
        return out

    def create_vm(self, name, spec, bundle, prov, options, check_mode):
        if not check_mode:
            self.vms[name] = {"spec": spec, "disks": self._disks_of(bundle), "state": "off", "provenance": prov}
        return {"bytes_written": sum(r["capacity"] for r in bundle.disks)}

    def remove_vm(self, vm, spec, options, check_mode):
        if not check_mode:
            del self.vms[vm]
        return vm

    def update_disks(self, vm, spec, bundle, plan, options, check_mode):
        if not check_mode:
            self.write_provenance(vm, steps.mark_updating(plan))
            new = self._disks_of(bundle, plan.disks)
            self.vms[vm]["disks"] = [n if n is not None else o for n, o in zip(new, self.vms[vm]["disks"], strict=True)]
            self.write_provenance(vm, plan.want)
        return {"rewritten": plan.disks}

    def start_vm(self, vm):
        self.vms[vm]["state"] = "running"

    def read_provenance(self, vm):
        return self.vms[vm].get("provenance")

    def write_provenance(self, vm, prov):
        self.vms[vm]["provenance"] = prov

    def target_disks(self, vm):
        return [{"where": "%s/disk%d" % (vm, i), "index": i} for i in range(len(self.vms[vm]["disks"]))]

    def open_disk(self, vm, tdisk):
        return contextlib.nullcontext(MemoryReader(self.vms[vm]["disks"][tdisk["index"]]))

    def boot_check(self, vm, options):
        self.booted.append(vm)
        return {"ok": True, "reason": "fake boot", "changed": False}


@pytest.mark.parametrize("cls", [KvmPlatform, VspherePlatform, FakePlatform])
def test_platform_implements_the_whole_interface(cls):
    assert issubclass(cls, Platform) and not cls.__abstractmethods__
    for name in Platform.__abstractmethods__:
        want = list(inspect.signature(getattr(Platform, name)).parameters)
        have = list(inspect.signature(getattr(cls, name)).parameters)
        if isinstance(inspect.getattr_static(cls, name), staticmethod):
            have = ["self"] + have
        assert have == want, "%s.%s%s differs from the interface's %s" % (cls.__name__, name, have, want)


SPEC = _spec.new_spec(name="web01", cpu={"sockets": 1, "cores": 2, "threads": 1}, memory_mib=256)


@pytest.fixture
def world(tmp_path):
    """A bundle of one 3 MiB disk and a fake target holding the same bytes."""
    data = bytearray(3 * MIB)
    data[MIB : MIB + 5] = b"hello"
    digests = _blocks.digest_disk(MemoryReader(data), MIB)
    spec = dict(SPEC, disks=[_spec.new_disk(id="disk0", capacity=len(data), format="raw")])
    bundle = Bundle.create(str(tmp_path / "b"), {"platform": "kvm", "id": "src-1", "name": "web01"}, spec, save=False)
    rel = "digests/disk0.blocks"
    record = {"id": "disk0", "capacity": len(data), "block_size": MIB, "digests": rel, "blocks": 3}
    record.update(path="disks/disk0.raw", format="raw")
    os.makedirs(bundle.resolve("disks"))
    with open(bundle.resolve(record["path"]), "wb") as fh:
        fh.write(data)
    record["digests_sha256"] = digests.save(bundle.resolve(rel))
    bundle.manifest["disks"] = [record]
    bundle.mark_complete()
    target = {"web01": {"spec": spec, "disks": [bytearray(data)], "state": "off"}}
    return bundle, FakePlatform(target)


def test_verify_equal_disks_and_boot(world):
    bundle, platform = world
    result = platform.verify(bundle, "web01", {"boot_check": True})
    assert result["ok"] and result["mismatches"] == [] and platform.booted == ["web01"]
    assert result["disks"][0]["mismatched"] == 0 and result["bytes_read"] == 3 * MIB


def test_verify_names_the_block_that_differs(world):
    bundle, platform = world
    platform.vms["web01"]["disks"][0][2 * MIB + 7] = 1
    with pytest.raises(VerifyError) as err:
        platform.verify(bundle, "web01", {"boot_check": True})
    assert "differs from the bundle in 1 of 3 blocks, first at byte %d" % (2 * MIB) in str(err.value)
    assert platform.booted == []  # no boot check of a target whose data is wrong


def test_verify_refuses_a_running_target_and_a_short_disk(world):
    bundle, platform = world
    platform.vms["web01"]["state"] = "running"
    with pytest.raises(InputError, match="shut it down before verifying digests"):
        platform.verify(bundle, "web01", {})
    platform.vms["web01"]["state"] = "off"
    del platform.vms["web01"]["disks"][0][-512:]
    with pytest.raises(VerifyError, match="holds %d bytes, the bundle %d" % (3 * MIB - 512, 3 * MIB)):
        platform.verify(bundle, "web01", {})


def test_verify_compares_the_spec(world):
    bundle, platform = world
    platform.vms["web01"]["spec"] = dict(platform.vms["web01"]["spec"], memory_mib=512)
    with pytest.raises(VerifyError, match="memory_mib: target 512, bundle 256"):
        platform.verify(bundle, "web01", {"digests": False})


def test_verify_records_its_result_and_trusts_it_once_the_target_runs(world):
    bundle, platform = world
    vm = platform.vms["web01"]
    vm["provenance"] = steps.provenance(bundle.manifest)
    first = platform.verify(bundle, "web01", {})
    assert first["changed"] and vm["provenance"]["verified"] == steps.content_fingerprint(bundle.manifest)
    again = platform.verify(bundle, "web01", {})
    assert not again["changed"] and again["digests"] == "compared"
    vm["state"] = "running"  # booted after the check: the guest writes
    vm["disks"][0][0] = 0xFF
    running = platform.verify(bundle, "web01", {})
    assert running["ok"] and running["digests"].startswith("verified earlier") and running["bytes_read"] == 0
    # Another bundle's content was never verified on it: refused, not trusted.
    vm["provenance"] = dict(vm["provenance"], verified="0" * 64)
    with pytest.raises(InputError, match="shut it down before verifying digests"):
        platform.verify(bundle, "web01", {})


def test_an_incomplete_bundle_is_continued_unless_it_disagrees_with_itself(world):
    bundle, _platform = world
    bundle.mark_incomplete()  # its last export died half-way, after a finished sync
    assert steps.resume_refusal(bundle) is None
    with open(bundle.digest_path("disk0"), "r+b") as fh:  # a digest list replaced, the manifest not
        fh.write(b"\x01" * 32)
    reason = steps.resume_refusal(bundle)
    assert "left incomplete and no longer agrees with itself" in reason and "a new full copy" in reason


def test_import_decides_the_same_way_on_any_platform(world):
    bundle, platform = world
    del platform.vms["web01"]
    first = platform.import_vm(bundle, {"start": True})
    assert first["action"] == "create" and first["changed"] and platform.vms["web01"]["state"] == "running"
    assert platform.vms["web01"]["provenance"]["fingerprint"] == steps.content_fingerprint(bundle.manifest)
    platform.vms["web01"]["state"] = "off"
    again = platform.import_vm(bundle, {})
    assert again["action"] == "none" and not again["changed"] and again["summary"].endswith("(nothing to do)")
    # The source's disk changed and a new full export of it arrived: the changed disk is rewritten.
    data = bytearray(3 * MIB)
    data[:4] = b"new!"
    with open(bundle.disk_path("disk0"), "wb") as fh:
        fh.write(data)
    record = bundle.disk("disk0")
    record["digests_sha256"] = _blocks.digest_disk(MemoryReader(data), MIB).save(bundle.digest_path(record))
    bundle.manifest["sync"] = [{"index": 1, "chain": "another"}]
    bundle.save()
    updated = platform.import_vm(bundle, {})
    assert updated["action"] == "rewrite" and updated["rewritten"] == ["disk0"]
    assert bytes(platform.vms["web01"]["disks"][0][:4]) == b"new!"
    # A VM of that name from another source is refused, then replaced on request.
    platform.vms["web01"]["provenance"] = dict(platform.vms["web01"]["provenance"], source_id="other")
    with pytest.raises(InputError, match="replace=true"):
        platform.import_vm(bundle, {})
    assert platform.import_vm(bundle, {"replace": True})["action"] == "replace"
