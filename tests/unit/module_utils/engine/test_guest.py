"""engine/guest.py's decisions, on inspection results as libguestfs returns them (the
inspection itself and virt-v2v run on the lab's real guest: tests/integration/test_guest_conversion.py)."""

from __future__ import annotations

import copy

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import guest, steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

# The lab's Linux guest: a VMware/Hyper-V-like initramfs, every driver on disk.
DEBIAN = {
    "os": "linux",
    "distro": "debian",
    "product": "12.15",
    "osinfo": "debian12",
    "kernels": [{"version": "6.1.0-50-amd64", "initramfs": "/boot/initrd.img-6.1.0-50-amd64"}],
    "boot_drivers": ["ahci", "ata_piix", "hv_storvsc", "mptspi", "vmw_pvscsi"],
    "drivers": sorted(guest.RELEVANT - {"buslogic"}),
}
WINDOWS = {"os": "windows", "product": "Windows Server 2019", "osinfo": "win2k19", "kernels": []}
WINDOWS.update(
    boot_drivers=["atapi", "lsi_sas", "storahci", "storvsc"], drivers=["atapi", "lsi_sas", "storahci", "storvsc"]
)


def spec_for(target, bus="virtio", controller=None, model="virtio", firmware="bios"):
    spec = _spec.new_spec(
        name="web01",
        firmware={"type": firmware, "secure_boot": False},
        disks=[_spec.new_disk(id="disk0", bus=bus, controller=controller, capacity=1 << 30)],
        nics=[_spec.new_nic(mac="52:54:00:00:00:01", network="n", model=model)],
    )
    return _spec.apply_maps(spec, target)[0]


def test_kvm_without_conversion_gets_a_bus_the_initramfs_drives():
    spec = spec_for("kvm")
    changes, warnings = guest.choose_hardware(spec, "kvm", DEBIAN)
    assert (spec["disks"][0]["bus"], spec["disks"][0]["controller"]) == ("sata", None)
    assert [c["field"] for c in changes] == ["disks[0].bus"] and "virtio_blk" in changes[0]["reason"]
    assert spec["nics"][0]["model"] == "virtio" and not warnings  # virtio_net is on disk


def test_vsphere_keeps_pvscsi_when_the_initramfs_has_it_else_the_next_it_drives():
    spec = spec_for("vsphere")
    assert guest.choose_hardware(spec, "vsphere", DEBIAN) == ([], [])
    assert (spec["disks"][0]["bus"], spec["disks"][0]["controller"]) == ("scsi", "pvscsi")
    info = dict(DEBIAN, boot_drivers=["ahci"], drivers=["ahci", "e1000e"])
    spec = spec_for("vsphere")
    changes = guest.choose_hardware(spec, "vsphere", info)[0]
    assert (spec["disks"][0]["bus"], spec["disks"][0]["controller"]) == ("sata", None)
    assert spec["nics"][0]["model"] == "e1000e"
    assert {c["field"] for c in changes} == {"disks[0].bus", "disks[0].controller", "nics[0].model"}


def test_a_guest_that_cannot_boot_on_the_target_is_refused_naming_the_drivers_and_the_fix():
    info = dict(DEBIAN, boot_drivers=["virtio_blk", "virtio_pci"])
    with pytest.raises(InputError) as err:
        guest.choose_hardware(spec_for("vsphere"), "vsphere", info)
    assert "cannot boot on vsphere" in err.value.problem and "vmw_pvscsi" in err.value.problem
    assert "initramfs" in err.value.fix
    # Hyper-V generation 2 boots from synthetic SCSI only: hv_storvsc or nothing.
    with pytest.raises(InputError) as err:
        guest.choose_hardware(spec_for("hyperv", firmware="uefi"), "hyperv", info)
    assert "generation 2" in err.value.problem and "hv_storvsc" in err.value.problem


def test_no_nic_driver_is_a_warning_not_a_refusal():
    info = dict(DEBIAN, drivers=[d for d in DEBIAN["drivers"] if d != "hv_netvsc"])
    changes, warnings = guest.choose_hardware(spec_for("hyperv"), "hyperv", info)
    assert not changes and len(warnings) == 1 and "without network" in warnings[0]


def test_an_unknown_guest_is_left_as_it_is_with_a_warning():
    spec = spec_for("vsphere")
    before = copy.deepcopy(spec)
    changes, warnings = guest.choose_hardware(spec, "vsphere", {"os": "unknown", "reason": "no OS"})
    assert spec == before and not changes and "not checked" in warnings[0]


def test_conversion_plan():
    assert guest.plan(DEBIAN, "vsphere", "kvm", "auto")["action"] == "convert"
    assert guest.plan(DEBIAN, "vsphere", "kvm", "inspect")["action"] == "none"
    assert guest.plan(DEBIAN, "kvm", "vsphere", "auto")["action"] == "none"
    # A KVM guest is not converted (its buses are checked against its drivers instead).
    assert guest.plan(DEBIAN, "kvm", "kvm", "auto")["action"] == "none"
    assert guest.plan({"os": "unknown", "reason": "x"}, "vsphere", "kvm", "auto")["action"] == "none"
    with pytest.raises(InputError) as err:
        guest.plan(dict(DEBIAN, distro="alpine"), "vsphere", "kvm", "auto")
    assert "inspect" in err.value.fix


def test_windows_toward_kvm_needs_virtio_win_before_anything_is_copied(tmp_path):
    with pytest.raises(InputError) as err:
        guest.plan(WINDOWS, "vsphere", "kvm", "auto")
    assert "Windows" in err.value.problem and "virtio_win" in err.value.fix
    with pytest.raises(InputError):
        guest.plan(WINDOWS, "vsphere", "kvm", "auto", virtio_win=str(tmp_path / "missing.iso"))
    iso = tmp_path / "virtio-win.iso"
    iso.write_bytes(b"")
    assert guest.plan(WINDOWS, "vsphere", "kvm", "auto", virtio_win=str(iso))["action"] == "convert"
    # Toward vSphere a Windows guest gets a controller it has an in-box driver for.
    spec = spec_for("vsphere")
    guest.choose_hardware(spec, "vsphere", WINDOWS)
    assert (spec["disks"][0]["bus"], spec["disks"][0]["controller"]) == ("scsi", "lsisas1068")


def test_a_converted_target_takes_no_delta_it_is_written_again():
    manifest = {
        "source": {"id": "u1", "platform": "vsphere", "name": "web01"},
        "sync": [{"index": 1, "chain": "c"}, {"index": 2, "chain": "c"}],
        "disks": [{"id": "disk0", "digests_sha256": "new", "deltas": [{"index": 2}]}],
    }
    found = dict(
        steps.provenance(dict(manifest, sync=manifest["sync"][:1], disks=[{"id": "disk0", "digests_sha256": "old"}]))
    )
    assert steps.plan_import(manifest, "web01", True, found).action == "deltas"
    found["guest_converted"] = {"fingerprint": found["fingerprint"], "state": "done", "at": "t"}
    plan = steps.plan_import(manifest, "web01", True, found)
    assert plan.action == "rewrite" and plan.disks == ["disk0"] and "converted" in plan.reason


def fake_v2v(tmp_path, monkeypatch, body):
    """A virt-v2v-in-place on PATH that answers --version and runs ``body`` (sh) otherwise,
    with $MR the machine-readable file it was given."""
    tool = tmp_path / "bin" / "virt-v2v-in-place"
    tool.parent.mkdir()
    tool.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "virt-v2v-in-place 2.2.0"; exit 0; }\n'
        'for a in "$@"; do case "$a" in --machine-readable=file:*) MR=${a#--machine-readable=file:};; esac; done\n'
        + body
    )
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (tool.parent, __import__("os").environ["PATH"]))


def test_virt_v2v_report_comes_from_its_machine_readable_lines(tmp_path, monkeypatch):
    fake_v2v(
        tmp_path,
        monkeypatch,
        'echo \'{ "message": "Converting 12 to run on KVM", "type": "message" }\' > "$MR"\n'
        'echo \'{ "message": "could not update Grub2", "type": "warning" }\' >> "$MR"\n',
    )
    seen = []
    report = guest.virt_v2v_in_place("<domain/>", str(tmp_path), on_message=seen.append)
    assert report["version"] == "virt-v2v-in-place 2.2.0" and report["warnings"] == ["could not update Grub2"]
    assert seen == ["Converting 12 to run on KVM"]


def test_virt_v2v_failure_and_hang_are_clear_errors(tmp_path, monkeypatch):
    from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import PlatformError

    fake_v2v(tmp_path, monkeypatch, 'echo \'{ "message": "inspect_os: no root", "type": "error" }\' > "$MR"; exit 1\n')
    with pytest.raises(PlatformError) as err:
        guest.virt_v2v_in_place("<domain/>", str(tmp_path))
    assert "exit 1" in err.value.problem and "inspect_os: no root" in err.value.problem
    (tmp_path / "bin").rename(tmp_path / "old")
    fake_v2v(tmp_path, monkeypatch, "exec sleep 30\n")
    with pytest.raises(PlatformError) as err:
        guest.virt_v2v_in_place("<domain/>", str(tmp_path), timeout=1)
    assert "ran over 1 s" in err.value.problem and "incomplete" in err.value.fix
