"""The Platform contract: every platform class implements the whole interface with the
same parameters, and the engine's verify step runs on any class that does (here a fake
platform holding its disks in memory, so the decisions are tested without a lab)."""

from __future__ import annotations

import contextlib
import inspect
import os

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError, VerifyError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import power, steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.disk import Extent
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import Platform, SourceSession
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform
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
        rec = self.vms[vm]
        # A guest asked to shut down is off after ``stops_after`` reads (None: it ignores the request).
        if rec.get("shutting") is not None:
            rec["shutting"] -= 1
            if rec["shutting"] <= 0:
                rec.update(state="off", shutting=None)
        return rec["state"]

    def source_record(self, vm):
        return {"platform": "kvm", "id": "id-" + vm, "name": vm}

    def source_session(self, vm, bundle, incremental, options):
        return FakeSession(self, vm, bundle, incremental, options)

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
        self.vms[vm].setdefault("calls", []).append("start")

    def request_shutdown(self, vm, check_mode):
        rec = self.vms[vm]
        if not rec.get("agent", True):
            return None
        if not check_mode:
            rec.setdefault("calls", []).append("shutdown")
            rec["shutting"] = rec.get("stops_after")
        return "acpi"

    def power_off(self, vm):
        self.vms[vm].update(state="off", shutting=None)
        self.vms[vm].setdefault("calls", []).append("poweroff")

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

    def migration_leftovers(self, vm, bundle):
        return [{"kind": "checkpoint", "name": c, "record": c} for c in sorted(self.vms[vm].get("leftovers", ()))]

    def remove_leftover(self, vm, item):
        self.vms[vm]["leftovers"].discard(item["name"])


class FakeSession(SourceSession):
    """The fake source: a VM's ``dirty`` list is what its change tracker saw since checkpoint
    ``generation`` (``tracking`` False: the tracker was lost, as a deleted checkpoint)."""

    tracker = "fake-tracker"

    def __init__(self, platform, vm, bundle, incremental, options):
        super().__init__(vm, bundle, incremental, options)
        self.source = platform.vms[vm]
        self.disks = [{"id": "disk%d" % i, "source": {}} for i in range(len(self.source["disks"]))]
        self.fail_after = options.get("fail_after")  # raise after this many disks were opened

    def __enter__(self):
        self.source["sessions"] = self.source.get("sessions", 0) + 1
        self.new = self.source.get("generation", 0) + 1
        self.source.setdefault("checkpoints", set()).add(self.new)
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self.source["checkpoints"].discard(self.new)
        return False

    def open_disk(self, disk):
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise OSError("the source went away")
            self.fail_after -= 1
        return contextlib.nullcontext(MemoryReader(self.source["disks"][int(disk["id"][4:])]))

    def changes(self, disk, reader, record):
        if record is None:
            return None
        since = (record.get("checkpoint") or {}).get("id")
        if not self.source.get("tracking", True) or since not in self.source.get("checkpoints", ()):
            self.reasons.append("checkpoint %s is gone" % since)
            return None
        return [list(e) for e in self.source.get("dirty", {}).get(disk["id"], [])]

    def checkpoint(self, index):
        return {"kind": "fake", "id": self.new}

    def commit(self, changed):
        if changed:
            self.source["generation"] = self.new
            self.source["checkpoints"] = {self.new}
            self.source["dirty"] = {}
        else:
            self.source["checkpoints"].discard(self.new)
        return False


@pytest.mark.parametrize("cls", [KvmPlatform, VspherePlatform, HyperVPlatform, FakePlatform])
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


# --- the export step (engine/export.py) on the fake source --------------------------------


def _source(capacity=4 * MIB, pieces=((0, b"boot"), (3 * MIB + 100, b"tail"))):
    data = bytearray(capacity)
    for off, b in pieces:
        data[off : off + len(b)] = b
    spec = dict(SPEC, disks=[_spec.new_disk(id="disk0", capacity=capacity, format="raw")])
    return FakePlatform({"src": {"spec": spec, "disks": [data], "state": "running"}})


def _write(platform, offset, data):
    vm = platform.vms["src"]
    vm["disks"][0][offset : offset + len(data)] = data
    vm.setdefault("dirty", {}).setdefault("disk0", []).append((offset, len(data)))


def _bundle_equals_source(bundle_dir, platform):
    """The bundle's base copy and digests hold the source's bytes (read back independently)."""
    bundle = Bundle.load(bundle_dir)
    source = bytes(platform.vms["src"]["disks"][0])
    with open(bundle.disk_path("disk0"), "rb") as fh:
        copy = fh.read()
    assert copy.ljust(len(source), b"\0") == source
    fresh = _blocks.digest_disk(MemoryReader(bytearray(source)), MIB)
    assert bundle.load_digests("disk0").digests == fresh.digests
    bundle.check_integrity()
    return bundle


def test_export_full_then_incrementals_follow_the_tracker(tmp_path):
    platform = _source()
    out = str(tmp_path / "b")
    first = platform.export("src", out, "auto", options={"block_size": MIB})
    assert first["changed"] and first["kind"] == "full" and first["mode"] == "warm" and first["sync_index"] == 1
    # The digest blocks holding data are written; the others stay holes of the copy.
    assert first["disks"][0]["method"] == "copy" and first["bytes_written"] == 2 * MIB
    _bundle_equals_source(out, platform)

    nothing = platform.export("src", out, "auto", options={"block_size": MIB})
    assert not nothing["changed"] and nothing["kind"] == "incremental" and nothing["sync_index"] == 1
    assert platform.vms["src"]["checkpoints"] == {1}  # the unused new checkpoint was dropped

    _write(platform, 512, b"x" * 1024)
    _write(platform, 2 * MIB + 4096, b"y" * 4096)
    inc = platform.export("src", out, "auto", options={"block_size": MIB})
    assert inc["changed"] and inc["kind"] == "incremental" and inc["sync_index"] == 2
    assert inc["bytes_read"] == 1024 + 4096 and inc["fallback_reason"] is None
    assert inc["diff"]["before"]["sync_index"] == 1 and inc["diff"]["after"]["sync_index"] == 2
    assert inc["diff"]["before"]["fingerprint"] != inc["diff"]["after"]["fingerprint"]
    delta = inc["disks"][0]["last_delta"]
    assert delta["extents"] == [[512, 1024], [2 * MIB + 4096, 4096]]
    bundle = _bundle_equals_source(out, platform)
    assert bundle.manifest["sync"][-1]["method"] == "fake-tracker" and platform.vms["src"]["checkpoints"] == {2}


def test_export_without_the_tracker_compares_digests_and_says_so(tmp_path):
    platform = _source()
    out = str(tmp_path / "b")
    platform.export("src", out, "auto", options={"block_size": MIB})
    _write(platform, 3 * MIB, b"z" * 10)
    platform.vms["src"]["tracking"] = False
    inc = platform.export("src", out, "auto", options={"block_size": MIB})
    assert inc["kind"] == "incremental" and "checkpoint 1 is gone" in inc["fallback_reason"]
    assert inc["disks"][0]["last_delta"]["extents"] == [[3 * MIB, MIB]]  # the changed digest block
    bundle = _bundle_equals_source(out, platform)
    assert bundle.manifest["sync"][-1]["method"] == "digests"


def test_export_starts_a_new_chain_when_the_disks_change_or_full_is_asked(tmp_path):
    platform = _source()
    out = str(tmp_path / "b")
    chain = platform.export("src", out, "auto", options={"block_size": MIB})["checkpoint"]
    vm = platform.vms["src"]
    vm["disks"][0].extend(bytes(MIB))
    vm["spec"] = dict(vm["spec"], disks=[_spec.new_disk(id="disk0", capacity=5 * MIB, format="raw")])
    grown = platform.export("src", out, "auto", options={"block_size": MIB})
    assert grown["kind"] == "full" and "disks changed since the last sync" in grown["fallback_reason"]
    assert grown["sync_index"] == 1 and grown["checkpoint"] != chain
    _bundle_equals_source(out, platform)
    again = platform.export("src", out, "auto", options={"block_size": MIB, "full": True})
    assert again["kind"] == "full" and again["changed"]
    assert sorted(os.listdir(os.path.join(out, "disks"))) == ["disk0.raw"]


def test_export_refuses_what_it_cannot_do_and_check_mode_writes_nothing(tmp_path, reliability):
    reliability(
        "engine",
        "export options it cannot honour: incremental without a chain, cold of a running VM, block_size 3000, "
        "a bundle of another VM",
        "InputError 'holds no sync chain'; 'is running; a cold export needs it off'; 'block_size 3000 is not a "
        "power of two'; 'not from VM other'",
        "refused before writing (the bundle dir not made)",
    )
    platform = _source()
    out = str(tmp_path / "b")
    with pytest.raises(InputError, match="holds no sync chain"):
        platform.export("src", out, "incremental")
    with pytest.raises(InputError, match="is running; a cold export needs it off"):
        platform.export("src", out, "cold")
    with pytest.raises(InputError, match="block_size 3000 is not a power of two"):
        platform.export("src", out, "auto", options={"block_size": 3000})
    would = platform.export("src", out, "auto", check_mode=True)
    assert would["changed"] and "warm full sync of src" in would["would"] and not os.path.exists(out)
    platform.export("src", out, "auto")
    assert Bundle.load(out).disk("disk0")["block_size"] == 64 * 1024  # by capacity: blocks.auto_block_size
    platform.vms["other"] = dict(platform.vms["src"])
    with pytest.raises(InputError, match="not from VM other"):
        platform.export("other", out, "auto")


def test_a_failed_export_leaves_the_bundle_incomplete_and_a_rerun_finishes(tmp_path, reliability):
    reliability(
        "engine",
        "the source connection lost mid incremental export (fake platform)",
        "the error itself ('went away'); the re-run says fallback_reason 'died while updating its base copies'",
        "the failed sync's checkpoint dropped, bundle incomplete; the re-run makes a full copy, bundle equal "
        "to the source",
    )
    platform = _source()
    out = str(tmp_path / "b")
    platform.export("src", out, "auto", options={"block_size": MIB})
    _write(platform, 0, b"new")
    with pytest.raises(OSError, match="went away"):
        platform.export("src", out, "auto", options={"block_size": MIB, "fail_after": 0})
    assert platform.vms["src"]["checkpoints"] == {1}  # the failed sync's checkpoint was dropped
    assert not Bundle.load(out).complete
    # The dead sync was about to write the base copy in place: no delta is built on it.
    rerun = platform.export("src", out, "auto", options={"block_size": MIB})
    assert rerun["kind"] == "full" and "died while updating its base copies" in rerun["fallback_reason"]
    assert Bundle.load(out).complete
    _bundle_equals_source(out, platform)


# --- the power step (engine/power.py) on the fake platform ---------------------------------


class FakeClock:
    """time.monotonic and time.sleep for the power wait: sleeping advances the clock."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _power(platform, state, check_mode=False, **options):
    clock = FakeClock()
    return power.run_power(platform, "vm1", dict(options, state=state), check_mode, clock=clock, sleep=clock.sleep)


def _vm(state="running", **extra):
    return FakePlatform({"vm1": dict({"spec": SPEC, "disks": [], "state": state}, **extra)})


@pytest.mark.parametrize("state", ["shutdown", "off"])
def test_power_an_off_vm_off_changes_nothing(state):
    platform = _vm("off")
    result = _power(platform, state)
    assert not result["changed"] and result["method"] == "none" and result["state_after"] == "off"
    assert "calls" not in platform.vms["vm1"] and result["summary"].endswith("(nothing to do)")
    assert result["diff"] == {"before": {"power_state": "off"}, "after": {"power_state": "off"}}


def test_power_on_and_off_then_nothing_on_a_rerun():
    platform = _vm("off")
    on = _power(platform, "running")
    assert on["changed"] and on["method"] == "start" and on["state_after"] == "running"
    assert not _power(platform, "running")["changed"]
    off = _power(platform, "off")
    assert off["method"] == "poweroff" and off["state_after"] == "off"
    assert platform.vms["vm1"]["calls"] == ["start", "poweroff"]


def test_shutdown_that_completes_in_time():
    platform = _vm(stops_after=5)
    result = _power(platform, "shutdown", shutdown_timeout=300)
    assert result["changed"] and result["method"] == "acpi" and result["state_after"] == "off"
    assert result["state_before"] == "running" and 3 <= result["seconds"] < 10
    assert platform.vms["vm1"]["calls"] == ["shutdown"]  # no hard power off


def test_shutdown_that_times_out_fails_and_leaves_the_vm_running():
    platform = _vm(stops_after=None)  # the guest ignores the request
    with pytest.raises(PlatformError) as err:
        _power(platform, "shutdown", shutdown_timeout=30)
    text = str(err.value)
    assert "VM vm1 is still running" in text and "within 30 s" in text and "on_timeout=poweroff" in text
    assert err.value.details["seconds"] == 30 and err.value.details["method"] == "acpi"
    assert platform.vms["vm1"]["state"] == "running" and platform.vms["vm1"]["calls"] == ["shutdown"]


def test_shutdown_that_times_out_with_poweroff_forces_it_off():
    platform = _vm(stops_after=None)
    result = _power(platform, "shutdown", shutdown_timeout=30, on_timeout="poweroff")
    assert result["changed"] and result["method"] == "forced" and result["state_after"] == "off"
    assert "did not shut down within 30 s" in result["reason"] and "powered off hard" in result["summary"]
    assert 30 <= result["seconds"] < 35
    assert platform.vms["vm1"]["calls"] == ["shutdown", "poweroff"]


def test_shutdown_of_a_guest_that_cannot_be_asked_follows_on_timeout():
    platform = _vm(agent=False)
    with pytest.raises(PlatformError, match="the guest cannot be asked to shut down") as err:
        _power(platform, "shutdown")
    assert err.value.details["seconds"] == 0 and platform.vms["vm1"]["state"] == "running"
    forced = _power(platform, "shutdown", on_timeout="poweroff")
    assert forced["method"] == "forced" and "cannot be asked" in forced["reason"] and forced["seconds"] < 1
    assert platform.vms["vm1"]["calls"] == ["poweroff"]


def test_power_check_mode_touches_nothing():
    platform = _vm(stops_after=1)
    for state, method in (("shutdown", "acpi"), ("off", "poweroff")):
        result = _power(platform, state, check_mode=True)
        assert result["changed"] and result["method"] == method and result["state_after"] == "off"
        assert "would be" in result["summary"]
    assert _power(_vm(agent=False), "shutdown", check_mode=True, on_timeout="poweroff")["method"] == "forced"
    off = _vm("off")
    would = _power(off, "running", check_mode=True)
    assert would["method"] == "start" and would["state_after"] == "running"
    assert "calls" not in platform.vms["vm1"] and "calls" not in off.vms["vm1"]
    assert platform.vms["vm1"]["state"] == "running" and off.vms["vm1"]["state"] == "off"


def test_power_on_refuses_a_paused_vm():
    with pytest.raises(InputError, match="VM vm1 is paused, neither off nor running"):
        _power(_vm("paused"), "running")
    # ...and a paused guest cannot be asked to shut down: on_timeout decides.
    assert _power(_vm("paused"), "shutdown", on_timeout="poweroff")["method"] == "forced"


# --- check mode over the whole chain: what earlier checked steps would have written ----------


def _convert(src, dest, check_mode=False, planned=None, target="kvm"):
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.convert import Converter

    return Converter({"src": src, "dest": dest, "target_platform": target}).run(check_mode, planned=planned)


def test_a_checked_chain_says_what_each_step_would_do_and_writes_nothing(tmp_path):
    platform = _source()
    export_dir, convert_dir = str(tmp_path / "export"), str(tmp_path / "convert")
    checked = platform.export("src", export_dir, "auto", check_mode=True)
    planned = checked["planned"]
    assert planned["source"]["id"] == "id-src" and planned["spec"]["name"] == platform.vms["src"]["spec"]["name"]
    assert planned["sync"] == [{"index": 1, "kind": "full", "mode": "warm", "planned": True, "chain": None}]
    (disk,) = planned["disks"]
    assert disk["id"] == "disk0" and disk["capacity"] == 4 * MIB and disk["method"] == "copy"
    assert disk["format"] == "raw" and disk["digests_sha256"] is None
    # The checked convert reads that instead of the bundle that was not written.
    with pytest.raises(InputError, match="only read in check mode"):
        _convert(export_dir, convert_dir, planned=planned)
    conv = _convert(export_dir, convert_dir, check_mode=True, planned=planned, target="vsphere")
    assert conv["changed"] and conv["disks"][0]["action"] == "convert"
    assert conv["disks"][0]["format"] == "vmdk" and conv["disks"][0]["subformat"] == "monolithicFlat"
    assert "convert disk0 (4194304 bytes, raw -> vmdk monolithicFlat)" in conv["would"]
    assert conv["planned"]["target_platform"] == "vsphere" and conv["descriptors"] == {"vmx": "web01.vmx"}
    conv = _convert(export_dir, convert_dir, check_mode=True, planned=planned)
    assert conv["planned"]["target_platform"] == "kvm" and conv["disks"][0]["format"] == "qcow2"
    # The checked import decides from it as from a written bundle: a new VM.
    before = dict(platform.vms)
    imp = platform.import_planned(conv["planned"], {"name": "new01"})
    assert imp["action"] == "create" and imp["changed"] and imp["planned"]
    assert imp["would_create"]["disks"] == [
        {"id": "disk0", "capacity": 4 * MIB, "format": "qcow2", "subformat": None, "storage": None}
    ]
    assert imp["would"].startswith("create new01 on kvm: 1 disk(s) disk0 4.0 MiB qcow2")
    assert imp["summary"] == "would " + imp["would"] and conv["summary"].endswith(conv["would"])
    assert platform.vms == before and not os.path.exists(export_dir) and not os.path.exists(convert_dir)
    # A VM of that name from elsewhere: refused as a real import would refuse it.
    platform.vms["taken"] = {"spec": SPEC, "disks": [], "state": "off"}
    with pytest.raises(InputError, match="'taken' already exists on the target and was not made from kvm VM src"):
        platform.import_planned(conv["planned"], {"name": "taken"})
    with pytest.raises(InputError, match="would be converted for vsphere, not kvm"):
        platform.import_planned(dict(conv["planned"], target_platform="vsphere"), {})
    with pytest.raises(InputError, match="planned has no disks"):
        platform.import_planned({"source": {}, "spec": {}}, {})


def test_a_checked_incremental_plans_deltas_on_the_target(tmp_path):
    platform = _source()
    export_dir, convert_dir = str(tmp_path / "export"), str(tmp_path / "convert")
    platform.export("src", export_dir, "auto", options={"block_size": MIB})
    _convert(export_dir, convert_dir)
    platform.import_vm(Bundle.load(convert_dir), {"name": "web"})
    _write(platform, 0, b"changed")
    checked = platform.export("src", export_dir, "auto", check_mode=True)
    planned = checked["planned"]
    assert checked["kind"] == "incremental" and planned["sync"][-1]["index"] == 2
    assert planned["sync"][-1]["chain"] == steps.chain_id(Bundle.load(export_dir).manifest)
    assert planned["disks"][0]["method"] == "delta" and planned["disks"][0]["deltas"][-1]["index"] == 2
    conv = _convert(export_dir, convert_dir, check_mode=True, planned=planned)
    assert conv["disks"][0]["action"] == "refresh"
    imp = platform.import_planned(conv["planned"], {"name": "web"})
    assert imp["action"] == "deltas" and imp["changed"] and "would_create" not in imp
    assert Bundle.load(export_dir).manifest["sync"][-1]["index"] == 1  # nothing written


def test_a_checked_convert_of_a_written_bundle_plans_for_the_import(tmp_path):
    platform = _source()
    export_dir, convert_dir = str(tmp_path / "export"), str(tmp_path / "convert")
    platform.export("src", export_dir, "auto", options={"block_size": MIB})
    conv = _convert(export_dir, convert_dir, check_mode=True)
    assert not os.path.exists(convert_dir)
    fingerprint = Bundle.load(export_dir).disk("disk0")["digests_sha256"]
    assert conv["planned"]["disks"][0]["digests_sha256"] == fingerprint and conv["planned"]["sync"][0]["index"] == 1
    imp = platform.import_planned(conv["planned"], {"name": "web"})
    assert imp["action"] == "create"
    assert imp["provenance"]["fingerprint"] == steps.content_fingerprint(Bundle.load(export_dir).manifest)
