"""HyperVPlatform's pieces that need no host: Notes provenance, the share mapping and its
checks, controller slots, and the new VM's configuration; plus every script that changes a
VM, run on the lab's host model against a state file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import connection as _conn
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import platform as _platform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv import target as _target
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.share import Share, safe_file_name

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv.host import HyperVHost  # noqa: E402

MIB = 1024 * 1024


def test_notes_keep_the_users_text_and_carry_one_provenance():
    prov = {"source_id": "x", "state": "complete", "disks": {"disk0": "ab"}}
    notes = _platform.join_notes("owner: team a\nline 2", prov)
    assert _platform.split_notes(notes) == ("owner: team a\nline 2", prov)
    # Writing again replaces the provenance line, not the text.
    again = _platform.join_notes(_platform.split_notes(notes)[0], dict(prov, state="incomplete"))
    assert again.count(_platform.NOTES_MARKER) == 1 and again.startswith("owner: team a")
    assert _platform.split_notes("") == ("", None)
    assert _platform.split_notes(_platform.NOTES_MARKER + "{broken") == ("", None)


def test_share_maps_windows_paths_case_insensitively(tmp_path):
    share = Share(str(tmp_path), "C:\\VMs\\", "hv01")
    assert share.to_local("c:\\vms\\sub\\a.vhdx", "disk") == os.path.join(str(tmp_path), "sub", "a.vhdx")
    assert share.to_windows("a.vhdx") == "C:\\VMs\\a.vhdx"
    with pytest.raises(InputError, match="not under the share"):
        share.to_local("D:\\other\\a.vhdx", "disk 0 of VM web")
    with pytest.raises(InputError, match="leaves the share"):
        share.to_local("C:\\VMs\\..\\secret.vhdx", "disk")
    unc = Share(str(tmp_path), "\\\\hv01\\VMs", "hv01")
    assert unc.to_local("\\\\HV01\\vms\\a.vhdx", "disk") == os.path.join(str(tmp_path), "a.vhdx")


def test_share_checks_say_how_to_mount(tmp_path):
    missing = Share(str(tmp_path / "nope"), "\\\\hv01\\VMs", "hv01")
    with pytest.raises(InputError) as err:
        missing.check()
    assert "mount -t cifs //hv01/VMs" in err.value.fix
    Share(str(tmp_path), "C:\\VMs", "hv01").check(write=True)
    assert os.listdir(tmp_path) == []  # the write test leaves nothing


def test_file_names_drop_what_windows_refuses():
    assert safe_file_name('a/b\\c:d*e?"f<g>h|i') == "a_b_c_d_e__f_g_h_i"
    assert safe_file_name("web 01 ünïcode") == "web 01 ünïcode"
    # PowerShell's -Path reads [ ] as wildcards and ` as their escape.
    assert safe_file_name("web[1]`$x") == "web_1__$x"


def _spec_for(firmware="bios", buses=("ide", "scsi"), nics=(("52:54:00:00:00:01", "net"),)):
    return _spec.new_spec(
        name="v",
        firmware={"type": firmware, "secure_boot": False},
        cpu={"sockets": 2, "cores": 2, "threads": 1},
        memory_mib=256,
        disks=[_spec.new_disk(id="disk%d" % i, bus=b, capacity=MIB) for i, b in enumerate(buses)],
        nics=[_spec.new_nic(mac=m, network=n) for m, n in nics],
    )


def test_controller_slots():
    assert _target.controller_slots(_spec_for(buses=("ide", "scsi", "scsi")), 1) == [
        ("IDE", 0, 0),
        ("SCSI", 0, 0),
        ("SCSI", 0, 1),
    ]
    assert _target.controller_slots(_spec_for(buses=("ide", "ide", "ide")), 1)[2] == ("IDE", 1, 0)
    assert _target.controller_slots(_spec_for(firmware="uefi", buses=("scsi", "scsi")), 2) == [
        ("SCSI", 0, 0),
        ("SCSI", 0, 1),
    ]
    with pytest.raises(InputError, match="4 IDE slots"):
        _target.controller_slots(_spec_for(buses=("ide",) * 5), 1)


def _run(host, name, params):
    stdout, stderr, code = host.run_powershell(_conn.build_script(_conn.SCRIPTS[name], params))
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["ok"], doc
    return doc["result"]


def test_import_scripts_build_the_vm_on_the_host_model(tmp_path):
    host = HyperVHost.init(str(tmp_path / "st"), str(tmp_path / "share"))
    for f in ("v-disk0.vhdx", "v-disk1.vhdx"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", str(tmp_path / "share" / f), "1M"], check=True)
    spec = _spec_for(nics=(("52:54:00:00:00:01", "net"), (None, None)))
    vm_id = _run(host, "new_vm", {"Name": "it's $v", "Generation": 1, "Memory": 256 * MIB, "Notes": "incomplete"})
    files = [{"windows": "C:\\VMs\\v-disk%d.vhdx" % i} for i in range(2)]
    platform = _target.HyperVTarget()
    _run(host, "configure_vm", platform._configuration(vm_id, spec, 1, files, {}))
    vm = host.load()["vms"][0]
    assert vm["name"] == "it's $v" and vm["notes"] == "incomplete" and vm["cpus"] == 4
    assert [(d["controller_type"], d["controller_number"], d["controller_location"]) for d in vm["drives"]] == [
        ("IDE", 0, 0),
        ("SCSI", 0, 0),
    ]
    assert [(n["name"], n["switch"], n["mac"]) for n in vm["nics"]] == [
        ("Network Adapter", "net", "525400000001"),
        ("Network Adapter 2", None, None),
    ]
    assert _run(host, "vm_state", {"Id": vm_id}) == "Off"
    _run(host, "start_vm", {"Id": vm_id})
    hb = _run(host, "heartbeat", {"Id": vm_id})
    assert hb["State"] == "Running" and hb["Present"] is True and hb["Enabled"] is True
    _run(host, "stop_vm", {"Id": vm_id, "TurnOff": True})
    _run(host, "set_notes", {"Id": vm_id, "Notes": "done"})
    (raw,) = _run(host, "vm_info", {"Id": vm_id})
    assert raw["Notes"] == "done" and raw["State"] == "Off"
    _run(host, "remove_vm", {"Id": vm_id})
    assert host.load()["vms"] == []


def test_warm_scripts_checkpoint_reference_point_and_changed_ranges(tmp_path):
    """checkpoint_begin/_end, reference_point, rct_changes and destroy_reference_point on the
    host model: the ranges are what really changed in the disk since the reference point."""
    host = HyperVHost.init(str(tmp_path / "st"), str(tmp_path / "share"))
    vhdx = str(tmp_path / "share" / "w.vhdx")
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", vhdx, "4M"], check=True)
    vm_id = host.new_vm("w", disks=[{"size": 4 * MIB, "file": "w.vhdx"}], state="Running")
    rp = _run(host, "reference_point", {"Id": vm_id})
    assert rp["ReturnValue"] == 0 and len(rp["Rct"]) == 1
    ask = {"Path": "C:\\VMs\\w.vhdx", "LimitId": rp["Rct"][0], "Offset": 0, "Length": 4 * MIB}
    assert _run(host, "rct_changes", ask) == {"ReturnValue": 0, "Processed": 4 * MIB, "Offsets": [], "Lengths": []}

    files = _run(host, "checkpoint_begin", {"Id": vm_id, "Checkpoint": "tmp1"})
    assert files[0]["ParentPath"] == "C:\\VMs\\w.vhdx" and files[0]["Path"].endswith(".avhdx")
    # The running guest writes into the checkpoint's differencing disk; the parent holds still.
    child = host.local_path(host.load(), files[0]["Path"])
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 7 70000 100", child], check=True, capture_output=True)
    assert _run(host, "rct_changes", ask)["Offsets"] == []
    assert _run(host, "checkpoint_end", {"Id": vm_id, "Checkpoint": "tmp1"}) == 1
    assert _run(host, "checkpoint_end", {"Id": vm_id, "Checkpoint": "tmp1"}) == 0  # gone: nothing to do
    # Merged: the write is in the disk now, and RCT reports its 64 KiB block.
    got = _run(host, "rct_changes", ask)
    assert (got["Offsets"], got["Lengths"]) == ([65536], [65536])

    assert _run(host, "destroy_reference_point", {"Id": rp["Id"]}) == 0
    assert _run(host, "destroy_reference_point", {"Id": rp["Id"]}) is None
    assert _run(host, "rct_changes", ask)["ReturnValue"] == 32773  # the id is gone
    assert os.listdir(os.path.join(str(tmp_path / "st"), "rct")) == []


class LocalConnection:
    """connection.HyperVConnection's run() straight into the host model (no WinRM)."""

    def __init__(self, host):
        self.hv, self.host, self.port = host, "hvlab", 5986

    def run(self, script_name, params, vm=None, what=None, fix=None):
        stdout, stderr, code = self.hv.run_powershell(_conn.build_script(_conn.SCRIPTS[script_name], params))
        doc = _conn.parse_output(stdout, stderr, code, what or script_name, self.host)
        if not doc.get("ok"):
            raise _conn.script_error(doc, what or script_name, self.host, vm=vm, fix=fix)
        return doc.get("result")


@pytest.fixture
def platform(tmp_path):
    host = HyperVHost.init(str(tmp_path / "st"), str(tmp_path / "share"))
    p = _platform.HyperVPlatform.__new__(_platform.HyperVPlatform)
    p.params = {"share": str(tmp_path / "share"), "share_windows": "C:\\VMs"}
    p.conn = LocalConnection(host)
    return p


def test_lookups_power_and_notes(platform):
    hv = platform.conn.hv
    vm_id = hv.new_vm("n1", disks=[{"size": MIB}], notes="owner: me")
    vm = platform.find_vm("n1")
    assert platform.find_vm(vm_id)["Name"] == "n1" and platform.lookup("nope") is None
    assert platform.describe(vm)["annotations"]["description"] == "owner: me"
    prov = {"source_id": "s", "state": "complete"}
    platform.write_provenance(vm, prov)
    again = platform.find_vm("n1")
    assert platform.read_provenance(again) == prov and platform.describe(again)["annotations"]["description"] == (
        "owner: me"
    )
    assert platform.power_state(vm) == "off"
    platform.start_vm(vm)
    assert platform.power_state(vm) == "running" and vm["State"] == "Running"
    assert platform.request_shutdown(platform.find_vm("n1"), check_mode=False) == "guest"
    assert platform.power_state(vm) == "off"
    hv.new_vm("n1")  # Hyper-V allows a second VM of the same name
    with pytest.raises(InputError, match="2 VMs named 'n1'") as err:
        platform.lookup("n1")
    assert vm_id in err.value.fix


def test_boot_check_heartbeat_and_its_absence(platform, monkeypatch):
    hv = platform.conn.hv
    hv.new_vm("b1", disks=[{"size": MIB}])
    res = platform.boot_check(platform.find_vm("b1"), {"boot_timeout": 10})
    assert res["ok"] and res["method"] == "heartbeat" and res["changed"], res
    # A guest without integration services never answers: the check fails and says why.
    hv.new_vm("b2", disks=[{"size": MIB}], guest_services=False)
    res = platform.boot_check(platform.find_vm("b2"), {"boot_timeout": 1})
    assert not res["ok"] and "integration services" in res["reason"] and res["heartbeat"] == "No Contact", res
    # The VM's Heartbeat service turned off: the power state is all there is, and it says so.
    hv.new_vm("b3", disks=[{"size": MIB}])
    with hv._locked():
        st = hv.load()
        st["vms"][-1]["integration"]["Heartbeat"] = False
        hv.save(st)
    res = platform.boot_check(platform.find_vm("b3"), {"boot_timeout": 10})
    assert res["ok"] and res["method"] == "power_state" and "only the power state" in res["reason"], res


def test_warm_export_when_the_host_answers_with_cim_jobs(platform, tmp_path):
    """A busy host answers CreateReferencePoint with 4096 and a job: the export waits for it
    and finds the reference point through the job; the data and the next sync are the same."""
    hv = platform.conn.hv
    hv.new_vm("j1", disks=[{"size": 4 * MIB}], state="Running")
    with hv._locked():
        st = hv.load()
        st["cim_jobs"] = True
        hv.save(st)
    vhdx = str(tmp_path / "share" / "j1-disk0.vhdx")
    subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P 9 0 100000", vhdx], check=True, capture_output=True)
    bundle = str(tmp_path / "bundle")
    res = platform.export(platform.find_vm("j1"), bundle, options={})
    assert res["mode"] == "warm" and res["kind"] == "full" and res["reference_point"], res
    assert [rp["id"] for rp in hv.load()["reference_points"]] == [res["reference_point"]]
    assert [j["affected"] for j in hv.load()["jobs"]] == [res["reference_point"]]  # it came through a job
    assert hv.load()["vms"][0]["checkpoints"] == []
    subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P 8 3000000 10", vhdx], check=True, capture_output=True)
    res = platform.export(platform.find_vm("j1"), bundle, options={})
    assert res["kind"] == "incremental" and res["bytes_read"] == 65536 and res["fallback_reason"] is None, res
    copy = os.path.join(bundle, "disks", "disk0.raw")
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "vhdx", copy, vhdx], capture_output=True, check=False
    )
    assert cmp.returncode == 0, cmp.stdout


def test_rollback_marks_notes_and_cleanup_removes_only_our_checkpoints(platform, tmp_path):
    """The rollback role's two steps on Hyper-V: the mark shows first in Notes (the user's
    text kept), and the cleanup removes a temporary checkpoint an export left, never the
    user's; both idempotent."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import rollback as _rollback

    hv = platform.conn.hv
    vhdx = str(tmp_path / "share" / "r1.vhdx")
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", vhdx, "1M"], check=True)
    vm_id = hv.new_vm("r1", disks=[{"size": MIB, "file": "r1.vhdx"}], notes="owner: me")
    vm = platform.find_vm("r1")
    prov = {"source_id": "s1", "source_platform": "kvm", "source_name": "web", "state": "complete"}
    platform.write_provenance(vm, prov)
    got = _rollback.mark_target(platform, platform.find_vm("r1"), check_mode=False)
    assert got["marked"] is True
    notes = platform.find_vm("r1")["Notes"]
    assert notes.startswith(_rollback.MARK) and "owner: me" in notes, notes
    assert platform.read_provenance(platform.find_vm("r1"))["state"] == _rollback.STATE
    assert _rollback.mark_target(platform, platform.find_vm("r1"), check_mode=False)["marked"] is False

    _run(hv, "checkpoint_begin", {"Id": vm_id, "Checkpoint": "before upgrade"})
    _run(hv, "checkpoint_begin", {"Id": vm_id, "Checkpoint": "vmigrate-sync-0123456789ab"})
    res = platform.cleanup(platform.find_vm("r1"), None, check_mode=False)
    assert res["removed"] == [{"kind": "checkpoint", "name": "vmigrate-sync-0123456789ab"}], res
    left = [c["Name"] for c in platform.find_vm("r1")["Checkpoints"]]
    assert left == ["before upgrade"]
    assert platform.cleanup(platform.find_vm("r1"), None, check_mode=False)["changed"] is False
