"""Guest conversion (issue 13) on the lab's real Linux guest (tests/lab/guest/build-linux):
Debian 12 whose initramfs drives SATA/AHCI, pvscsi and Hyper-V's storvsc, and no virtio.

- KVM -> vSphere (vcsim) and Hyper-V: the controller and NIC the convert step chose are
  ones the guest's initramfs and kernel carry, read here with debugfs and lsinitramfs.
- vSphere (its pvscsi disk) -> KVM, by the modules: converted without inspection (guest_conversion=skip)
  the guest lands on virtio and does not reach its boot marker; with inspect it is given
  SATA, which it drives, and boots; with auto, virt-v2v-in-place converts it after the
  import (the disks first compared equal to the source by qemu-img) and it boots on
  virtio, its initramfs now carrying virtio_blk.
- The same through the roles, warm: migrate.yml leaves the conversion for the cutover
  (the source runs), cutover.yml converts the final data, boots it and starts it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
import xml.etree.ElementTree as ET

import pytest
from plan_lab import PLAYBOOKS, vsphere_endpoint
from pyVim.task import WaitForTask
from test_kvm_migrate import domain_type, undefine, volumes
from test_vsphere_import import conn_vars, destroy, find_vm

pytestmark = pytest.mark.slow
MARKER = "VMIGRATE-GUEST-READY"
ROOT_PARTITION_OFFSET = 1024 * 1024  # build-linux's one partition starts at 1 MiB


@pytest.fixture(scope="module")
def linux_guest(lab):
    image = lab.get("linux_guest_image")
    if not image or not os.path.exists(image):
        pytest.fail("the lab has no Linux guest image (lab.json linux_guest_image): run tests/lab/lab up")
    info = json.loads(
        subprocess.run(["qemu-img", "info", "--output=json", image], capture_output=True, check=True).stdout
    )
    return {"path": image, "capacity": info["virtual-size"]}


def linux_overlay(linux_guest, tmp_path):
    """A qcow2 over the lab's Linux guest image, for a source VM to own."""
    disk = str(tmp_path / "src.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", linux_guest["path"], disk], check=True)
    return disk


def define_source(lab, conn, linux_guest, name, disk, mac):
    """A KVM domain of the Linux guest on a virtio disk and NIC (never started here)."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    spec = _spec.new_spec(
        name=name,
        memory_mib=512,
        disks=[_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=linux_guest["capacity"])],
        nics=[_spec.new_nic(mac=mac, network=lab["network"], model="virtio")],
    )
    paths = {"disk0": {"path": disk, "format": "qcow2"}}
    xml = _libvirt_xml.libvirt_xml_from_spec(spec, paths, domain_type=domain_type(lab))
    conn.defineXML(xml.replace(' mode="host-passthrough"', ""))


def initramfs_modules(image, fmt, tmp_path):
    """The kernel modules in the image's initramfs, read with qemu-img, debugfs and lsinitramfs."""
    raw = str(tmp_path / ("read-%s.raw" % uuid.uuid4().hex[:6]))
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", image, raw], check=True)
    fs = "%s?offset=%d" % (raw, ROOT_PARTITION_OFFSET)

    def debugfs(request):
        return subprocess.run(["debugfs", "-R", request, fs], check=True, capture_output=True, text=True).stdout

    try:
        (version,) = re.findall(r"\bvmlinuz-(\S+)", debugfs("ls -l /boot"))
        initrd = str(tmp_path / "initrd.img")
        debugfs("dump /boot/initrd.img-%s %s" % (version, initrd))
        listing = subprocess.run(["lsinitramfs", initrd], check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(raw)
    return {os.path.basename(p).split(".ko")[0].replace("-", "_") for p in listing.split() if ".ko" in p}


def write_warm_plan(lab, tmp_path, vm, target):
    """vSphere (vcsim) -> KVM, warm, the guest converted and boot-checked; the vCenter
    password from LAB_VC_PASSWORD."""
    options = {"guest_conversion": "auto", "boot_check": True, "boot_timeout": 240}
    options.update(shutdown_timeout=2, on_shutdown_timeout="poweroff")  # vcsim's guest has no tools
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', mode: warm, options: %s}" % (tmp_path / "work", json.dumps(options)),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], lab["pools"]["target"]),
        *vsphere_endpoint(lab["vcsim"], "LAB_VC_PASSWORD"),
        "network_map: {'VM Network': '%s'}" % lab["network"],
        "storage_map: {'%s': %s}" % (lab["vcsim"]["datastore"], lab["pools"]["target"]),
        "waves:",
        "  - {name: w0, source: lab-vc, target: lab-kvm, vms: [{name: %s, target_name: %s}]}" % (vm, target),
    ]
    path = tmp_path / "plan-gc.v2v.yml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def disk_buses(conn, name):
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    return [t.get("bus") for t in root.findall("./devices/disk[@device='disk']/target")]


def drop_domain(conn, lab, name):
    undefine(conn, name)
    pool = conn.storagePoolLookupByName(lab["pools"]["target"])
    for v in volumes(conn, lab["pools"]["target"], name):
        pool.storageVolLookupByName(v).delete(0)


def test_linux_guest_kvm_to_vsphere_and_back_boots_only_converted_or_on_hardware_it_drives(
    lab, linux_guest, libvirt_conn, vsphere_si, run_module, run_playbook, tmp_path
):
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import read_provenance

    tag = uuid.uuid4().hex[:6]
    src, mid = "lab-gc-kvm-" + tag, "lab-gc-vs-" + tag
    names = {mode: "lab-gc-%s-%s" % (mode, tag) for mode in ("skip", "inspect", "auto", "plan")}
    disk = linux_overlay(linux_guest, tmp_path)
    define_source(lab, libvirt_conn, linux_guest, src, disk, "52:54:00:76:6d:a1")
    kvm = {"uri": lab["libvirt_uri"]}
    export = dict(kvm, vm=src, bundle=str(tmp_path / "export"))
    vc = lab["vcsim"]
    vsphere = conn_vars(lab)
    back = dict(vsphere, vm=mid, bundle=str(tmp_path / "from-vsphere"))

    def to_kvm(mode):
        dest = str(tmp_path / ("kvm-" + mode))
        conv = {"src": back["bundle"], "dest": dest, "target_platform": "kvm", "guest_conversion": mode}
        conv["network_map"] = {"VM Network": lab["network"]}
        res = run_module("convert", conv)
        assert not res.get("failed"), res
        imp = dict(kvm, bundle=dest, name=names[mode], pool=lab["pools"]["target"], cpu_mode="default")
        imp["domain_type"] = domain_type(lab)
        assert run_module("kvm_import", imp).get("changed")
        return res, dest

    def boot(dest, name, timeout):
        args = dict(kvm, bundle=dest, name=name, boot_check=True, boot_marker=MARKER, boot_timeout=timeout)
        return run_module("kvm_verify", args)

    try:
        assert run_module("kvm_export", export).get("changed")
        initramfs = initramfs_modules(disk, "qcow2", tmp_path)

        # KVM -> vSphere: pvscsi and vmxnet3, which the guest carries (read here independently).
        conv = {"src": export["bundle"], "dest": str(tmp_path / "vs"), "target_platform": "vsphere"}
        conv.update(guest_conversion="auto", network_map={lab["network"]: "VM Network"})
        res = run_module("convert", conv)
        assert not res.get("failed"), res
        info = res["guest"]["inspection"]
        assert info["os"] == "linux" and info["distro"] == "debian", info
        assert set(info["boot_drivers"]) <= initramfs and "virtio_blk" not in initramfs, (info, sorted(initramfs))
        disk0, nic0 = res["spec"]["disks"][0], res["spec"]["nics"][0]
        assert (disk0["bus"], disk0["controller"]) == ("scsi", "pvscsi") and "vmw_pvscsi" in initramfs, disk0
        assert nic0["model"] == "vmxnet3" and "vmxnet3" in info["drivers"], nic0
        imp = dict(vsphere, bundle=conv["dest"], name=mid, datastore=vc["datastore"])
        assert run_module("vsphere_import", imp).get("changed")
        kinds = {type(d).__name__ for d in find_vm(vsphere_si, mid).config.hardware.device}
        assert "vim.vm.device.ParaVirtualSCSIController" in kinds and "vim.vm.device.VirtualVmxnet3" in kinds, kinds

        # KVM -> Hyper-V: generation 1 boots from IDE, which ata_piix (or hv_storvsc) drives.
        hconv = {"src": export["bundle"], "dest": str(tmp_path / "hv"), "target_platform": "hyperv"}
        hconv.update(guest_conversion="auto", network_map={lab["network"]: "lab-switch"})
        res = run_module("convert", hconv)
        assert not res.get("failed"), res
        disk0, nic0 = res["spec"]["disks"][0], res["spec"]["nics"][0]
        assert disk0["bus"] == "ide" and {"ata_piix", "hv_storvsc"} & initramfs, disk0
        assert nic0["model"] == "hyperv" and "hv_netvsc" in res["guest"]["inspection"]["drivers"], nic0

        # vSphere (pvscsi) -> KVM.
        assert run_module("vsphere_export", back).get("changed")

        # Not inspected: KVM's default virtio disk, which this initramfs cannot drive.
        res, dest = to_kvm("skip")
        assert res["guest"]["action"] == "none" and res["guest"]["inspection"] is None, res["guest"]
        assert disk_buses(libvirt_conn, names["skip"]) == ["virtio"]
        res = boot(dest, names["skip"], 75)
        assert res.get("failed") and not res["boot"]["ok"], res
        assert MARKER not in (res["boot"].get("console_tail") or ""), res["boot"]

        # Inspected, not converted: the disk goes on SATA, which the initramfs drives.
        res, dest = to_kvm("inspect")
        changed = [{k: c[k] for k in ("field", "from", "to")} for c in res["changes"]]
        assert {"field": "disks[0].bus", "from": "virtio", "to": "sata"} in changed, res["changes"]
        assert disk_buses(libvirt_conn, names["inspect"]) == ["sata"]
        res = boot(dest, names["inspect"], 240)
        assert not res.get("failed") and res["boot"]["ok"], res

        # Converted by virt-v2v-in-place after the import: virtio.
        res, dest = to_kvm("auto")
        assert res["guest"]["action"] == "convert", res["guest"]
        assert disk_buses(libvirt_conn, names["auto"]) == ["virtio"]
        dom = libvirt_conn.lookupByName(names["auto"])
        path = ET.fromstring(dom.XMLDesc(0)).find("./devices/disk/source").get("file")
        # The data arrived intact (a reader independent of the collection), before the conversion.
        assert subprocess.run(["qemu-img", "compare", "-q", "-F", "qcow2", path, disk]).returncode == 0
        gc = dict(kvm, bundle=dest, vm=names["auto"])
        checked = run_module("kvm_guest_convert", gc, check=True)
        assert checked["changed"] and checked["action"] == "convert", checked
        assert subprocess.run(["qemu-img", "compare", "-q", "-F", "qcow2", path, disk]).returncode == 0
        res = run_module("kvm_guest_convert", gc)
        assert res.get("changed") and not res.get("failed"), res
        conv = res["conversion"]
        assert conv["version"].startswith("virt-v2v-in-place") and conv["state"] == "done", conv
        assert any("Converting" in m for m in conv["messages"]), conv
        assert res["disks"][0]["blocks_changed"] > 0, res["disks"]
        assert subprocess.run(["qemu-img", "compare", "-q", "-F", "qcow2", path, disk]).returncode == 1
        modules = initramfs_modules(path, "qcow2", tmp_path)
        assert {"virtio_blk", "virtio_pci"} <= modules, sorted(modules)
        # The provenance records both: the data as it arrived, the disks after conversion.
        prov = read_provenance(dom)
        assert prov["guest_converted"]["fingerprint"] == prov["fingerprint"], prov
        after = prov["guest_converted"]["disks"]["disk0"]
        assert after == res["disks"][0]["after_sha256"] != prov["disks"]["disk0"], prov
        assert run_module("kvm_guest_convert", gc)["changed"] is False
        res = boot(dest, names["auto"], 240)
        assert not res.get("failed") and res["boot"]["ok"], res
        assert "guest conversion" in res.get("guest_conversion", ""), res

        # The roles, warm: the conversion waits while the source runs, then the cutover
        # converts the final data and the verify boots it before the target is started.
        WaitForTask(find_vm(vsphere_si, mid).PowerOnVM_Task())
        plan = write_warm_plan(lab, tmp_path, mid, names["plan"])
        env = {"ANSIBLE_INVENTORY": plan, "LAB_VC_PASSWORD": vc["password"]}
        first = run_playbook(os.path.join(PLAYBOOKS, "migrate.yml"), env=env, timeout=1800)
        assert first.returncode == 0, first.stdout[-5000:]
        assert "deferred to the cutover" in first.stdout, first.stdout[-5000:]
        target = libvirt_conn.lookupByName(names["plan"])
        assert not read_provenance(target).get("guest_converted") and not target.isActive()
        cut = run_playbook(os.path.join(PLAYBOOKS, "cutover.yml"), env=env, timeout=1800)
        assert cut.returncode == 0, cut.stdout[-5000:]
        prov = read_provenance(target)
        assert prov["guest_converted"]["state"] == "done" and prov["state"] == "complete", prov
        assert target.isActive() and disk_buses(libvirt_conn, names["plan"]) == ["virtio"]
        cutover = json.loads((tmp_path / "work" / "w0" / names["plan"] / "cutover.json").read_text())
        assert cutover["status"] == "cut-over" and cutover["target_started"], cutover
        # The status files the report reads say it: deferred at the migration, done at the cutover.
        status = json.loads((tmp_path / "work" / "w0" / names["plan"] / "status.json").read_text())
        assert status["guest"]["action"] == "convert" and status["guest"]["deferred"], status["guest"]
        assert cutover["steps"]["guest_convert"]["changed"] and not cutover["guest"]["deferred"], cutover
    finally:
        undefine(libvirt_conn, src)
        destroy(vsphere_si, mid)
        for name in names.values():
            drop_domain(libvirt_conn, lab, name)


def strip_storage_drivers(image, lab, tmp_path):
    """Rewrite the initramfs of ``image`` (qcow2, changed in place) without any disk driver
    vSphere offers (pvscsi, LSI, AHCI, IDE): a guest that cannot boot there. Unpacked with
    unmkinitramfs, repacked with cpio and gzip, written back by libguestfs."""
    import guestfs

    os.environ.update(lab.get("guestfs_env") or {})
    g = guestfs.GuestFS(python_return_dict=True)
    g.add_drive_opts(image, format="qcow2")
    g.launch()
    try:
        root = g.inspect_os()[0]
        g.mount(g.inspect_get_mountpoints(root)["/"], "/")
        (initrd,) = [p for p in g.ls("/boot") if p.startswith("initrd.img-")]
        local = str(tmp_path / "initrd.img")
        g.download("/boot/" + initrd, local)
        tree = tmp_path / "initrd"
        subprocess.run(["unmkinitramfs", local, str(tree)], check=True)
        gone = ("ahci.ko", "libahci.ko", "ata_piix.ko", "vmw_pvscsi.ko", "mptspi.ko", "mptsas.ko", "mptscsih.ko")
        removed = [
            os.path.join(d, f) for d, _, files in os.walk(tree) for f in files if f in gone
        ]  # fmt: skip
        assert removed
        for path in removed:
            os.unlink(path)
        main = tree / "main" if (tree / "main").is_dir() else tree
        files = subprocess.run(["find", "."], cwd=main, check=True, capture_output=True).stdout
        packed = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"], cwd=main, input=files, check=True, capture_output=True
        ).stdout
        with open(local, "wb") as f:
            f.write(subprocess.run(["gzip", "-9"], input=packed, check=True, capture_output=True).stdout)
        g.upload(local, "/boot/" + initrd)
        g.umount_all()
    finally:
        g.close()


def test_a_guest_that_cannot_boot_on_the_target_is_refused_by_preflight_and_convert(
    lab, linux_guest, libvirt_conn, run_module, run_playbook, tmp_path, reliability
):
    reliability(
        "engine",
        "a Linux guest whose initramfs lacks every storage driver the target offers",
        "preflight: 'cannot boot on vsphere' with 'Fix: add vmw_pvscsi to the guest's initramfs'; convert "
        "refuses too ('cannot boot on vsphere', 'cannot boot on kvm')",
        "nothing exported by preflight; convert writes no manifest; the source disk only read (sha256 unchanged)",
    )
    tag = uuid.uuid4().hex[:6]
    src, dst = "lab-gc-nodrv-" + tag, "lab-gc-nodrv-t-" + tag
    disk = linux_overlay(linux_guest, tmp_path)
    strip_storage_drivers(disk, lab, tmp_path)
    assert not {"ahci", "ata_piix", "vmw_pvscsi", "mptspi"} & initramfs_modules(disk, "qcow2", tmp_path)
    define_source(lab, libvirt_conn, linux_guest, src, disk, "52:54:00:76:6d:a2")
    before = subprocess.run(["sha256sum", disk], check=True, capture_output=True, text=True).stdout.split()[0]
    try:
        # Preflight, before anything is exported: the guest is named as the problem, with the fix.
        vc = lab["vcsim"]
        plan = tmp_path / "plan-nodrv.v2v.yml"
        plan.write_text(
            "\n".join(
                [
                    "plugin: vmigrate.v2v.plan",
                    "version: 1",
                    "defaults: {work_dir: '%s', mode: full, options: {guest_conversion: auto}}" % (tmp_path / "work"),
                    "endpoints:",
                    "  lab-kvm: {platform: kvm, uri: '%s'}" % lab["libvirt_uri"],
                    *vsphere_endpoint(vc, "LAB_VC_PASSWORD"),
                    "network_map: {'%s': 'VM Network'}" % lab["network"],
                    "storage_map: {'%s': %s}" % (tmp_path, vc["datastore"]),
                    "waves:",
                    "  - {name: w0, source: lab-kvm, target: lab-vc, vms: [{name: %s, target_name: %s}]}" % (src, dst),
                    "",
                ]
            )
        )
        env = {"ANSIBLE_INVENTORY": str(plan), "LAB_VC_PASSWORD": vc["password"]}
        run = run_playbook(os.path.join(PLAYBOOKS, "preflight.yml"), env=env, timeout=900)
        assert run.returncode != 0, run.stdout[-5000:]
        written = tmp_path / "work" / "w0" / dst / "preflight.json"
        assert written.exists(), run.stdout[-5000:] + run.stderr[-3000:]
        record = json.loads(written.read_text())
        assert record["status"] == "failed" and record["guest"] == "refused", record
        (problem,) = [p for p in record["problems"] if "cannot boot on vsphere" in p]
        assert "vmw_pvscsi" in problem and "Fix: add vmw_pvscsi to the guest's initramfs" in problem, problem
        assert not (tmp_path / "work" / "w0" / dst / "export").exists()

        # The convert step refuses it too, before any disk is converted.
        export = {"uri": lab["libvirt_uri"], "vm": src, "bundle": str(tmp_path / "export")}
        assert run_module("kvm_export", export).get("changed")
        conv = {"src": export["bundle"], "dest": str(tmp_path / "vs"), "target_platform": "vsphere"}
        res = run_module("convert", dict(conv, guest_conversion="auto"))
        assert res.get("failed") and "cannot boot on vsphere" in res["msg"], res
        assert not os.path.exists(os.path.join(conv["dest"], "manifest.json"))
        # Toward KVM with inspect it gets a bus it can drive (virtio: the kernel has it, the
        # initramfs not) - none here: refused the same way, naming KVM's buses.
        res = run_module(
            "convert", dict(conv, target_platform="kvm", dest=str(tmp_path / "kvm"), guest_conversion="inspect")
        )
        assert res.get("failed") and "cannot boot on kvm" in res["msg"], res
        after = subprocess.run(["sha256sum", disk], check=True, capture_output=True, text=True).stdout.split()[0]
        assert after == before  # the source was only read
    finally:
        undefine(libvirt_conn, src)
