# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The guest inside the disks: what it is, which hardware it can drive, and its conversion.

Inspection is libguestfs's (its Python binding, Debian's python3-guestfs): the OS, the
installed kernels, the drivers each kernel's initramfs carries (what it can boot from)
and the drivers on disk (what it can load once booted). The decisions are data: which
disk bus and NIC model each platform offers, in order of preference, and the kernel
modules (Linux) or driver files (Windows) each needs.

Conversion toward KVM is virt-v2v-in-place's (Debian's virt-v2v): it adds virtio
drivers, rebuilds the initramfs, fixes the boot loader and removes the source platform's
tools. It runs on the target's disks once the data is final (engine/guest_step.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError

GUEST_MODES = ("auto", "inspect", "skip")

# (bus, controller) -> the alternatives, each a set of Linux kernel modules that must all be
# there. Hyper-V's buses are its own (synthetic SCSI, emulated IDE): see _disk_needs.
LINUX_DISK = {
    ("virtio", None): [("virtio_blk", "virtio_pci")],
    ("scsi", "virtio-scsi"): [("virtio_scsi", "virtio_pci")],
    ("scsi", "pvscsi"): [("vmw_pvscsi",)],
    ("scsi", "lsilogic"): [("mptspi",)],
    ("scsi", "lsisas1068"): [("mptsas",)],
    ("scsi", "buslogic"): [("buslogic",)],
    ("sata", None): [("ahci",)],
    ("ide", None): [("ata_piix",), ("pata_acpi",)],
    ("nvme", None): [("nvme",)],
}
LINUX_HYPERV_DISK = {
    ("scsi", None): [("hv_storvsc",)],
    # Generation 1 boots from emulated IDE; hv_storvsc takes those disks over too.
    ("ide", None): [("ata_piix",), ("hv_storvsc",)],
}
LINUX_NIC = {
    "virtio": [("virtio_net", "virtio_pci")],
    "e1000": [("e1000",)],
    "e1000e": [("e1000e",)],
    "vmxnet3": [("vmxnet3",)],
    "rtl8139": [("8139cp",), ("8139too",)],
    "pcnet": [("pcnet32",)],
    "hyperv": [("hv_netvsc",)],
}
# Windows: the driver files in Windows\System32\drivers (their presence, not whether they
# are registered to start at boot: virt-v2v does that part toward KVM).
WINDOWS_DISK = {
    ("virtio", None): [("viostor",)],
    ("scsi", "virtio-scsi"): [("vioscsi",)],
    ("scsi", "pvscsi"): [("pvscsi",)],
    ("scsi", "lsilogic"): [("lsi_scsi",)],
    ("scsi", "lsisas1068"): [("lsi_sas",)],
    ("sata", None): [("storahci",)],
    ("ide", None): [("atapi",), ("pciide",)],
    ("nvme", None): [("stornvme",)],
}
WINDOWS_HYPERV_DISK = {("scsi", None): [("storvsc",)], ("ide", None): [("atapi",), ("storvsc",)]}

# What each platform offers, most wanted first. KVM's IDE only with bios (q35 has none).
DISK_CHOICES = {
    "kvm": [("virtio", None), ("scsi", "virtio-scsi"), ("sata", None), ("ide", None)],
    "vsphere": [("scsi", "pvscsi"), ("scsi", "lsisas1068"), ("scsi", "lsilogic"), ("sata", None), ("ide", None)],
}
NIC_CHOICES = {
    "kvm": ["virtio", "e1000e", "e1000", "rtl8139"],
    "vsphere": ["vmxnet3", "e1000e", "e1000"],
    "hyperv": ["hyperv"],
}
# The Linux distributions virt-v2v 2.x converts (its documented guest support).
V2V_LINUX = {
    "rhel", "centos", "fedora", "rocky", "almalinux", "oraclelinux", "scientificlinux", "circle",
    "sles", "suse-based", "opensuse", "debian", "ubuntu", "linuxmint", "kalilinux", "altlinux",
}  # fmt: skip


# The drivers the decisions look at: what inspect() reports (a kernel has hundreds).
RELEVANT = {
    m
    for table in (LINUX_DISK, LINUX_HYPERV_DISK, LINUX_NIC, WINDOWS_DISK, WINDOWS_HYPERV_DISK)
    for alternatives in table.values()
    for needed in alternatives
    for m in needed
}


def _module_name(path):
    base = os.path.basename(path)
    for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(ext):
            return base[: -len(ext)].replace("-", "_").lower()
    return None


def _guestfs():
    try:
        import guestfs  # Debian's python3-guestfs; not on PyPI
    except ImportError as exc:
        raise PlatformError(
            "libguestfs's Python binding is missing on the conversion host (%s)" % exc,
            "install Debian's python3-guestfs (RHEL: python3-libguestfs), or set guest_conversion=skip",
        ) from exc
    return guestfs


def inspect(disks):
    """What the guest in ``disks`` ([(path, format)], read-only) is and which drivers it has.

    {os: linux|windows|unknown, distro, product, version, osinfo, arch, kernels,
     boot_drivers (in every kernel's initramfs or built in), drivers (loadable once booted)}.
    """
    gfs = _guestfs()
    g = gfs.GuestFS(python_return_dict=True)
    try:
        for path, fmt in disks:
            g.add_drive_opts(path, format=fmt, readonly=1)
        g.launch()
        roots = g.inspect_os()
        if not roots:
            return {"os": "unknown", "reason": "libguestfs found no operating system in the disks"}
        root = roots[0]
        info = {
            "os": g.inspect_get_type(root),
            "distro": g.inspect_get_distro(root),
            "product": g.inspect_get_product_name(root),
            "version": "%d.%d" % (g.inspect_get_major_version(root), g.inspect_get_minor_version(root)),
            "osinfo": g.inspect_get_osinfo(root),
            "arch": g.inspect_get_arch(root),
        }
        mounts = g.inspect_get_mountpoints(root)
        for mountpoint in sorted(mounts, key=len):
            try:
                g.mount_ro(mounts[mountpoint], mountpoint)
            except RuntimeError:
                pass  # e.g. a swap or an unformatted /srv: not needed for the drivers
        if info["os"] == "windows":
            info.update(_windows_drivers(g, root))
        elif info["os"] == "linux":
            info.update(_linux_drivers(g))
        return info
    except RuntimeError as exc:
        raise PlatformError(
            "libguestfs could not inspect the guest in %s: %s" % (", ".join(d[0] for d in disks), exc),
            "check that the disks are readable and libguestfs works here (libguestfs-test-tool), "
            "or set guest_conversion=skip",
        ) from exc
    finally:
        g.close()


def _linux_drivers(g):
    kernels, boot, loadable = [], None, None
    base = "/lib/modules"
    # Debian's, RHEL's and SUSE's initramfs names; /lib is a link to /usr/lib on merged-/usr systems.
    names = ("/boot/initrd.img-%s", "/boot/initramfs-%s.img", "/boot/initrd-%s")
    for version in sorted(g.ls(base)) if g.is_dir(base, followsymlinks=True) else []:
        initrds = [p % version for p in names if g.is_file(p % version, followsymlinks=True)]
        if not initrds:
            continue  # modules left from a removed kernel
        builtin = set()
        if g.is_file("%s/%s/modules.builtin" % (base, version), followsymlinks=True):
            builtin = {_module_name(line) for line in g.cat("%s/%s/modules.builtin" % (base, version)).splitlines()}
        in_initrd = {_module_name(p) for p in g.initrd_list(initrds[0])} | builtin
        on_disk = {_module_name(p) for p in g.find("%s/%s" % (base, version))} | builtin
        in_initrd.discard(None)
        on_disk.discard(None)
        kernels.append({"version": version, "initramfs": initrds[0]})
        boot = in_initrd if boot is None else boot & in_initrd
        loadable = on_disk if loadable is None else loadable & on_disk
    return {
        "kernels": kernels,
        "boot_drivers": sorted(RELEVANT & (boot or set())),
        "drivers": sorted(RELEVANT & (loadable or set())),
    }


def _windows_drivers(g, root):
    systemroot = g.inspect_get_windows_systemroot(root)
    path = g.case_sensitive_path("%s/system32/drivers" % systemroot)
    names = sorted({n.lower()[:-4] for n in g.ls(path) if n.lower().endswith(".sys")})
    names = sorted(RELEVANT & set(names))
    return {"kernels": [], "boot_drivers": names, "drivers": names}


def _satisfied(alternatives, have):
    return any(set(needed) <= have for needed in alternatives)


def _disk_needs(os_type, target, bus, controller):
    if target == "hyperv":
        table = WINDOWS_HYPERV_DISK if os_type == "windows" else LINUX_HYPERV_DISK
    else:
        table = WINDOWS_DISK if os_type == "windows" else LINUX_DISK
    return table.get((bus, controller))


def _nic_needs(os_type, model):
    return None if os_type == "windows" else LINUX_NIC.get(model)


def _hw(choice):
    return "/".join(x for x in choice if x)


def _names(alternatives):
    return " or ".join("+".join(a) for a in alternatives or [])


def _where(info):
    if info["os"] == "windows":
        return "its Windows\\System32\\drivers"
    kernels = ", ".join(k["version"] for k in info.get("kernels") or []) or "no kernel found"
    return "the initramfs of its kernel(s) (%s)" % kernels


def choose_hardware(spec, target, info):
    """Disk buses and NIC models ``info``'s guest can drive on ``target``.

    Returns (changes, warnings); ``spec`` (translated for the target) is changed in place.
    The boot disk must be on a bus whose driver is in the initramfs (Windows: among its
    drivers); other disks and NICs need a driver the booted kernel can load. A boot disk
    no offered bus can serve is refused (InputError) before anything is written.
    """
    changes, warnings = [], []
    if info.get("os") not in ("linux", "windows"):
        warnings.append("guest not inspected: %s; its disk buses and NIC models were not checked" % info.get("reason"))
        return changes, warnings
    boot_have, have = set(info["boot_drivers"]), set(info["drivers"])
    name = spec.get("name")
    disks = spec.get("disks") or []
    boot_id = _boot_disk_id(spec)
    for i, disk in enumerate(disks):
        where = "disks[%d]" % i
        is_boot = disk["id"] == boot_id
        pool = boot_have if is_boot else have
        current = (disk["bus"], disk.get("controller"))
        needs = _disk_needs(info["os"], target, *current)
        if needs is None or _satisfied(needs, pool):
            continue
        if target == "hyperv":
            # The bus follows the generation (firmware), which is not changed here.
            problem = "guest %s cannot drive its %s disk %s on Hyper-V %s: %s has no %s" % (
                name,
                "boot" if is_boot else "data",
                disk["id"],
                "generation 2 (synthetic SCSI)" if current[0] == "scsi" else "generation 1 (IDE)",
                _where(info) if is_boot else "its kernel",
                _names(needs),
            )
            if is_boot:
                raise InputError(problem, _fix(info, needs))
            warnings.append(problem)
            continue
        choices = [c for c in DISK_CHOICES[target] if not (c == ("ide", None) and spec["firmware"]["type"] == "uefi")]
        usable = [c for c in choices if _satisfied(_disk_needs(info["os"], target, *c) or [], pool)]
        if not usable:
            problem = "guest %s cannot boot on %s: %s has none of the disk drivers %s offers (%s)" % (
                name,
                target,
                _where(info) if is_boot else "its kernel",
                target,
                "; ".join("%s: %s" % (_hw(c), _names(_disk_needs(info["os"], target, *c))) for c in choices),
            )
            if is_boot:
                raise InputError(problem, _fix(info, _disk_needs(info["os"], target, *choices[0])))
            warnings.append(problem)
            continue
        bus, controller = usable[0]
        reason = "the guest has no driver for %s (%s) in %s; it has %s" % (
            _hw(current),
            _names(needs),
            _where(info) if is_boot else "its kernel",
            _names(_disk_needs(info["os"], target, bus, controller)),
        )
        if bus != disk["bus"]:
            changes.append({"field": where + ".bus", "from": disk["bus"], "to": bus, "reason": reason})
        if controller != disk.get("controller"):
            old = disk.get("controller")
            changes.append({"field": where + ".controller", "from": old, "to": controller, "reason": reason})
        disk["bus"], disk["controller"] = bus, controller
    for i, nic in enumerate(spec.get("nics") or []):
        needs = _nic_needs(info["os"], nic["model"])
        if needs is None or _satisfied(needs, have):
            continue
        usable = [m for m in NIC_CHOICES[target] if _satisfied(_nic_needs(info["os"], m) or [], have)]
        if not usable:
            warnings.append(
                "guest %s has no driver for any NIC model %s offers (%s): it will boot without network"
                % (name, target, ", ".join(NIC_CHOICES[target]))
            )
            continue
        reason = "the guest's kernel has no %s driver (%s); it has %s" % (
            nic["model"],
            _names(needs),
            _names(_nic_needs(info["os"], usable[0])),
        )
        changes.append({"field": "nics[%d].model" % i, "from": nic["model"], "to": usable[0], "reason": reason})
        nic["model"] = usable[0]
    return changes, warnings


def _boot_disk_id(spec):
    disks = spec.get("disks") or []
    ordered = [d for d in disks if d.get("boot_order")]
    if ordered:
        return min(ordered, key=lambda d: d["boot_order"])["id"]
    return disks[0]["id"] if disks else None


def _fix(info, needs):
    if info["os"] == "windows":
        return "install the driver (%s) in the guest and export again, or migrate to a platform it has drivers for" % (
            _names(needs)
        )
    return (
        "add %s to the guest's initramfs (Debian: /etc/initramfs-tools/modules and update-initramfs -u; "
        "RHEL: dracut --add-drivers) and export again, or migrate to kvm with guest_conversion=auto"
        % _names(needs).split(" or ", maxsplit=1)[0].replace("+", " ")
    )


def plan(info, source_platform, target, mode, virtio_win=None):
    """Whether the guest is converted toward KVM: {action: convert|none, reason}.

    Refuses (InputError), before anything is copied, a guest virt-v2v cannot convert
    when mode is auto: Windows without virtio-win, an unsupported distribution.
    """
    if target != "kvm" or mode != "auto":
        return {"action": "none", "reason": "no conversion toward %s (guest_conversion=%s)" % (target, mode)}
    if info.get("os") not in ("linux", "windows"):
        return {"action": "none", "reason": "not converted: %s" % info.get("reason", "unknown OS")}
    if info["os"] == "windows":
        if not virtio_win:
            raise InputError(
                "guest %s is Windows (%s): on KVM it needs the virtio-win drivers, and virtio_win is not set"
                % (info.get("product") or "", info.get("osinfo")),
                "give virtio_win (the virtio-win ISO or its unpacked directory, as virt-v2v's VIRTIO_WIN), "
                "or set guest_conversion=inspect to keep hardware it has in-box drivers for",
            )
        if not os.path.exists(virtio_win):
            raise InputError(
                "virtio_win %s does not exist" % virtio_win,
                "give the path of the virtio-win ISO or directory on the conversion host",
            )
        return {"action": "convert", "reason": "Windows toward KVM: virtio drivers from %s" % virtio_win}
    if info.get("distro") not in V2V_LINUX:
        raise InputError(
            "guest %s is a Linux distribution virt-v2v does not convert (%s)"
            % (info.get("product"), info.get("distro")),
            "set guest_conversion=inspect (hardware the guest already drives) or skip",
        )
    if source_platform == "kvm":
        # It runs on KVM already: not changed, its buses only checked against its drivers.
        return {"action": "none", "reason": "a KVM guest: not converted; its disk buses and NICs are ones it drives"}
    return {"action": "convert", "reason": "from %s: virtio drivers, initramfs, tools removed" % source_platform}


def decide(info, spec, source_platform, target, mode, virtio_win=None):
    """The guest record of a convert (and of guest_info): ``spec`` (translated for
    ``target``) gets hardware the guest drives unless it is converted toward KVM.
    Raises InputError for a guest that cannot boot there or cannot be converted."""
    record = {"mode": mode, "inspection": info, "changes": [], "warnings": []}
    if mode == "skip":
        record.update(action="none", reason="guest_conversion=skip: the guest was not inspected")
        return record
    decision = plan(info, source_platform, target, mode, virtio_win)
    if decision["action"] != "convert":
        # Not converted: the hardware must be what the guest drives already.
        record["changes"], record["warnings"] = choose_hardware(spec, target, info)
    record.update(decision, virtio_win=virtio_win)
    return record


def check(disks, spec, source_platform, target, mode, virtio_win=None):
    """guest_info: the convert step's guest decision on a source's disks, read-only, with
    its refusal as a problem instead of an error."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

    translated = _spec.apply_maps(spec, target)[0] if spec else {"name": None, "disks": [], "nics": []}
    info = inspect(disks) if mode != "skip" else None
    try:
        record = decide(info, translated, source_platform, target, mode, virtio_win)
        record["problems"] = []
    except InputError as exc:
        record = {"mode": mode, "inspection": info, "changes": [], "warnings": [], "action": "refused"}
        record.update(reason=exc.problem, problems=["%s. Fix: %s" % (exc.problem, exc.fix)])
    record["spec"] = translated
    return record


# -- virt-v2v-in-place --

MR_KINDS = {"message": "messages", "warning": "warnings", "info": "info", "error": "errors"}


def virt_v2v_in_place(domain_xml, workdir, virtio_win=None, timeout=3600, on_message=None):
    """Convert the guest whose libvirt XML is ``domain_xml`` (its disks, in place).

    Returns {version, seconds, messages, warnings, info}: virt-v2v 2.x's machine-readable
    output is prose lines by type, not a list of changes (docs/guest-conversion.md).
    """
    try:
        version = subprocess.run(["virt-v2v-in-place", "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise PlatformError(
            "virt-v2v-in-place is not available on the conversion host (%s)" % exc,
            "install Debian's virt-v2v (RHEL: virt-v2v), or set guest_conversion=inspect or skip",
        ) from exc
    xml_path = os.path.join(workdir, "guest-convert.xml")
    mr_path = os.path.join(workdir, "guest-convert.jsonl")
    with open(os.open(xml_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(domain_xml)
    if os.path.exists(mr_path):
        os.unlink(mr_path)
    env = dict(os.environ)
    if virtio_win:
        env["VIRTIO_WIN"] = virtio_win
    started = time.monotonic()
    cmd = ["virt-v2v-in-place", "-i", "libvirtxml", xml_path, "--machine-readable=file:" + mr_path]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # A watchdog, since reading its output blocks until it ends.
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    tail = []
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
        proc.wait()
    finally:
        watchdog.cancel()
    if proc.returncode < 0 and time.monotonic() - started >= timeout:
        raise PlatformError(
            "virt-v2v-in-place ran over %d s and was stopped: %s" % (timeout, " | ".join(tail[-5:])),
            "check that libguestfs's appliance starts here (libguestfs-test-tool); the target stays marked "
            "incomplete, so the next import writes its disks again before the conversion runs again",
        )
    report = {"version": version.stdout.strip(), "seconds": round(time.monotonic() - started, 1)}
    report.update(messages=[], warnings=[], info=[], errors=[])
    if os.path.exists(mr_path):
        with open(mr_path) as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                kind = MR_KINDS.get(event.get("type"))
                if kind:
                    report[kind].append(re.sub(r"\s+", " ", str(event.get("message", ""))).strip())
                    if on_message and kind == "messages":
                        on_message(report[kind][-1])
    if proc.returncode != 0:
        raise PlatformError(
            "virt-v2v-in-place failed (exit %d): %s"
            % (proc.returncode, "; ".join(report["errors"]) or " | ".join(tail[-5:])),
            "read its messages above; with guest_conversion=inspect the guest is not converted "
            "(hardware it already drives is chosen instead)",
            conversion=report,
        )
    return report


# -- the conversion step on a target --


def run_conversion(platform, bundle, ref, options, check_mode=False):
    """The guest conversion step on the target made from ``bundle`` (KVM: virt-v2v-in-place).

    Runs once the data is final (the bundle's last sync read a stopped source): the
    target's disks are first compared with the bundle's digests (the data arrived
    intact), then converted, then read again; the target's provenance records both
    (``guest_converted``), which verify and a later import read. A run that dies
    mid-conversion leaves the target incomplete (no disk vouched for): the next import
    writes its disks again and the conversion runs again.
    """
    import shutil
    import tempfile

    from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps

    started = time.monotonic()
    _steps.require_complete(bundle)
    record = bundle.manifest.get("guest") or {}
    vm = platform.find_vm(ref)
    name = platform.vm_name(vm)
    result = {"changed": False, "name": name, "action": "none", "deferred": False, "conversion": None, "disks": []}

    def finish(what):
        return _steps.finish_step(result, started, "guest conversion of %s (%s)" % (name, what))

    if record.get("action") != "convert":
        result["reason"] = record.get("reason") or "bundle %s holds no guest inspection (guest_conversion=skip)" % (
            bundle.dir
        )
        return finish("not needed")
    fingerprint = _steps.content_fingerprint(bundle.manifest)
    prov = _steps.read_provenance(platform.read_provenance(vm))
    done = (prov or {}).get("guest_converted") or {}
    if done.get("fingerprint") == fingerprint and done.get("state") == "done":
        result.update(reason="converted at %s from this bundle's data" % done.get("at"), conversion=done)
        return finish("done earlier")
    if not prov or prov["fingerprint"] != fingerprint or prov["state"] != "complete":
        raise InputError(
            "target VM %s does not hold bundle %s completely (import it first)" % (name, bundle.dir),
            "run the import of this bundle, then the guest conversion",
        )
    syncs = bundle.manifest.get("sync") or [{}]
    # options["final"]: the caller stopped the source since and its cold export found
    # nothing new (the cutover), so the bundle's last warm sync is the final data.
    if syncs[-1].get("mode") == "warm" and not options.get("final"):
        result["reason"] = (
            "deferred to the cutover: the source was running at this sync, and the next sync would write over "
            "a converted guest"
        )
        result["deferred"] = True
        return finish("deferred to the cutover")
    if platform.power_state(vm) != "off":
        raise InputError(
            "target VM %s is %s: its guest cannot be converted while it runs" % (name, platform.power_state(vm)),
            "shut it down (it was started after the import), import again, then convert",
        )
    result.update(action="convert", reason=record.get("reason"), changed=True)
    if check_mode:
        return finish("check mode")
    # The data as imported: the verify comparison, before anything changes it.
    before = _steps.run_verify(platform, bundle, ref, {"spec": False, "digests": True})
    prov = _steps.read_provenance(platform.read_provenance(vm))
    marker = {"fingerprint": fingerprint, "state": "running", "at": _bundle.now()}
    platform.write_provenance(vm, dict(prov, state="incomplete", disks={}, guest_converted=marker))
    workdir = tempfile.mkdtemp(prefix="vmigrate-guest-")
    try:
        progress = Progress("guest conversion %s" % name, 0)
        conversion = virt_v2v_in_place(
            platform.guest_xml(vm), workdir, record.get("virtio_win"), on_message=progress.note
        )
        progress.finish()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    after, bytes_read = {}, 0
    for rec, tdisk in zip(bundle.disks, platform.target_disks(vm), strict=False):
        want = bundle.load_digests(rec)
        with platform.open_disk(vm, tdisk) as reader:
            read_back = Progress("read back %s" % rec["id"], reader.size)
            got = _blocks.digest_disk(reader, want.block_size, progress=read_back)
            read_back.finish()
        bytes_read += got.bytes_read
        changed = want.changed_blocks(got)
        after[rec["id"]] = got.fingerprint()
        item = {"id": rec["id"], "where": tdisk["where"], "before_sha256": rec.get("digests_sha256")}
        item.update(after_sha256=after[rec["id"]], blocks_changed=len(changed))
        item["bytes_changed"] = len(changed) * want.block_size
        result["disks"].append(item)
    conversion = dict(conversion, fingerprint=fingerprint, state="done", at=_bundle.now(), disks=after)
    conversion["verified_before"] = before["summary"]
    platform.write_provenance(vm, dict(prov, state="complete", guest_converted=conversion))
    result.update(conversion=conversion, bytes_read=before["bytes_read"] + bytes_read)
    finish("converted")
    result["summary"] += "; %s; %d block(s) changed; warnings: %s" % (
        conversion["version"],
        sum(d["blocks_changed"] for d in result["disks"]),
        "; ".join(conversion["warnings"]) or "none",
    )
    return result
