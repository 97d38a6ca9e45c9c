"""Names (issue 14, bad input): unicode, spaces and shell/PowerShell metacharacters in VM,
disk-file and network names round-trip through every platform; names a target refuses are
refused before anything is written there.

- One VM goes KVM -> Hyper-V -> vSphere -> KVM through the modules (each platform once as
  source and once as target). Its names hold ' " ` $ ; & | ( ) $(...) `n < > * ? [ ] \\,
  "ü", "名前", an emoji and a leading dash; the Hyper-V and vSphere names also hold "/..".
  At each hop: the name the hypervisor reports is exactly the one asked for (libvirt's
  dom.name(), the simulator's state, vcsim's vm.name unescaped), the disk equals the
  previous one (qemu-img compare), the files made from the name stay in their directory
  (no "/" or ".." path), and no canary a `$(touch ...)` would create exists.
- Refused names (kvm_import / hyperv_import / vsphere_import): "/" in a libvirt name, a
  control character, too long for Hyper-V (100) or vSphere (80), too long for libvirt's
  file names (bytes): each refused with the name, the rule and the fix, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.parse
import uuid
import xml.etree.ElementTree as ET

from pyVmomi import vim
from test_hyperv_migrate import MIB, notes_provenance, remove_hyperv_vm, share_files, vms
from test_kvm_migrate import domain_type, sha256, undefine, volumes
from test_vsphere_import import conn_vars, destroy, find_vm

# Everything a shell or PowerShell would act on, plus unicode (an emoji is outside the BMP:
# a UTF-16 surrogate pair on the way to Windows). The canary is what `$(touch ...)` makes.
META = " ü名前🚀 '\"`$;&|()$(touch %s)`n<>*?[]\\ x"


def same(a, fa, b, fb):
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", fa, "-F", fb, a, b], capture_output=True, text=True)
    return cmp.returncode == 0


def find_canaries(canary, dirs):
    """Any file named like the canary in the places a command could have run."""
    hits = []
    for top in dirs:
        for d, _dirs, files in os.walk(top):
            hits += [os.path.join(d, f) for f in files + _dirs if canary in f and f.startswith(canary)]
    return hits


def no_traceback(res):
    text = json.dumps(res)
    return "Traceback" not in text and "MODULE FAILURE" not in text


def add_portgroup(si, name):
    """A standard port group called ``name`` on the first host (vcsim lists it in dc.network)."""
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        host = view.view[0]
    finally:
        view.Destroy()
    ns = host.configManager.networkSystem
    policy = vim.host.NetworkPolicy()
    spec = vim.host.PortGroup.Specification(name=name, vlanId=0, vswitchName="vSwitch0", policy=policy)
    ns.AddPortGroup(portgrp=spec)
    return ns


def make_kvm_source(lab, conn, name, disk_path, network):
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    # A tiny qcow2 with data at both ends: names are the subject, not bytes.
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk_path, str(8 * MIB)], check=True)
    for off, byte in ((0, 0x5A), (3 * MIB + 512, 0x61), (8 * MIB - 4096, 0x7E)):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P %d %d 4096" % (byte, off), disk_path],
                       check=True, capture_output=True)  # fmt: skip
    spec = _spec.new_spec(
        name=name,
        memory_mib=256,
        disks=[_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=8 * MIB)],
        nics=[_spec.new_nic(mac="52:54:00:76:6e:03", network=network, model="virtio")],
    )
    xml = _libvirt_xml.libvirt_xml_from_spec(
        spec, {"disk0": {"path": disk_path, "format": "qcow2"}}, domain_type=domain_type(lab)
    )
    return conn.defineXML(xml.replace(' mode="host-passthrough"', ""))


def kvm_disk(conn, name):
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    disk = root.find("./devices/disk[@device='disk']")
    return disk.find("source").get("file"), disk.find("driver").get("type")


def kvm_networks(conn, name):
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(0))
    return [i.find("source").get("network") for i in root.findall("./devices/interface")]


def test_names_round_trip_through_every_platform(lab, hv, libvirt_conn, vsphere_si, run_module, reliability, tmp_path):
    reliability("names", "VM, disk-file and network names with unicode, spaces, ' \" ` $ ; & | $(...) `n < > * ? [ ] "
                "and a leading dash, KVM -> Hyper-V -> vSphere -> KVM",
                "nothing special: each import makes the VM under exactly that name",
                "each hypervisor reports the name unchanged; disks equal (qemu-img compare); no command ran "
                "(no canary file, the Hyper-V simulator saw only its PowerShell subset)")  # fmt: skip
    reliability("names", "'/' and '..' in a Hyper-V or vSphere VM name",
                "accepted: Hyper-V keeps the name, its VHDX file name has '_' for '/' '\\' and what Windows or "
                "PowerShell's -Path would misread; vSphere "
                "stores it escaped like vCenter (%2f, %5c)",
                "one file / one datastore folder inside the share or datastore, no path outside it")  # fmt: skip
    reliability("kvm", "'/' in the libvirt domain name asked for (name option)",
                "kvm_import fails before writing: \"the VM name '...' contains '/', which is not allowed in a "
                "libvirt domain name (libvirt refuses it)\" and the fix (option name, e.g. with '-')",
                "no domain, no volume")  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    canary = "nmc-" + tag
    meta = META % canary
    n1 = "-nm1-%s%s" % (tag, meta)  # the KVM source
    n2 = "-nm2-%s/..\\..%s" % (tag, meta)  # Hyper-V
    n3 = "-nm3-%s/..\\..%s" % (tag, meta)  # vSphere (80 characters at most)
    n4 = "-nm4-%s%s" % (tag, meta)  # back on KVM
    assert len(n3) <= 80
    net_kvm = "net-%s ü '$(touch %s)\";&|`n" % (tag, canary)
    switch = "sw-%s ü '$(touch %s)\";&|`n [*]" % (tag, canary)
    portgroup = "pg-%s ü '$(touch %s)\";&|`n/x" % (tag, canary)
    pool = lab["pools"]["target"]
    src_disk = os.path.join(lab["pool_paths"][lab["pools"]["source"]], "nm-%s ü '$(touch %s)';&.qcow2" % (tag, canary))
    ds_dir = lab["vcsim"]["datastore_dir"]
    watched = [str(tmp_path), hv["share"], ds_dir, os.getcwd(), os.path.expanduser("~"), "/tmp"]
    watched += list(lab["pool_paths"].values())
    with hv["host"]._locked():
        st = hv["host"].load()
        st["switches"] = list(st.get("switches") or []) + [switch]
        hv["host"].save(st)
    ns = None
    files_before = share_files(hv)
    try:
        make_kvm_source(lab, libvirt_conn, n1, src_disk, net_kvm)
        assert libvirt_conn.lookupByName(n1).name() == n1
        src_sum = sha256(src_disk)

        # -- KVM -> Hyper-V --
        export = {"uri": lab["libvirt_uri"], "name": n1, "bundle": str(tmp_path / "b1")}
        res = run_module("kvm_export", export)
        assert res.get("changed") and not res.get("failed"), res
        convert = {"src": export["bundle"], "dest": str(tmp_path / "c1"), "target_platform": "hyperv",
                   "network_map": {net_kvm: switch}}  # fmt: skip
        res = run_module("convert", convert)
        assert not res.get("failed"), res
        res = run_module("hyperv_import", dict(hv["conn"], bundle=convert["dest"], name=n2))
        assert res.get("changed") and res["action"] == "create" and no_traceback(res), res
        (vm,) = vms(hv, n2)
        assert vm["name"] == n2 and [n["switch"] for n in vm["nics"]] == [switch]
        assert notes_provenance(vm["notes"])["state"] == "complete"
        # The VHDX is one file in the share, its name made safe for Windows ('/' '\\' -> '_').
        new = sorted(set(share_files(hv)) - set(files_before))
        assert len(new) == 1 and "/" not in new[0] and "\\" not in new[0], new
        # ('[' ']' '`' too: PowerShell's -Path reads them as wildcards and escapes.)
        assert new[0] == "-nm2-%s_.._.. ü名前🚀 '__$;&_()$(touch %s)_n_______ x-disk0.vhdx" % (tag, canary), new
        vhdx = os.path.join(hv["share"], new[0])
        assert vm["drives"][0]["path"] == hv["conn"]["share_windows"] + "\\" + new[0]
        assert same(vhdx, "vhdx", src_disk, "qcow2")
        res = run_module("hyperv_verify", dict(hv["conn"], bundle=convert["dest"], vm=n2))
        assert not res.get("failed") and res["ok"], res

        # -- Hyper-V -> vSphere --
        ns = add_portgroup(vsphere_si, portgroup)
        vc = conn_vars(lab)
        export = dict(hv["conn"], vm=n2, bundle=str(tmp_path / "b2"))
        res = run_module("hyperv_export", export)
        assert res.get("changed") and not res.get("failed"), res
        convert = {"src": export["bundle"], "dest": str(tmp_path / "c2"), "target_platform": "vsphere",
                   "network_map": {switch: portgroup}}  # fmt: skip
        assert not run_module("convert", convert).get("failed")
        vs_import = dict(vc, bundle=convert["dest"], name=n3, datastore=lab["vcsim"]["datastore"])
        res = run_module("vsphere_import", vs_import)
        assert res.get("changed") and res["action"] == "create" and no_traceback(res), res
        stored = n3.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")
        assert res["vsphere_name"] == stored, res
        vsvm = find_vm(vsphere_si, stored)
        assert vsvm is not None and urllib.parse.unquote(vsvm.name) == n3
        assert [n.deviceInfo.summary for n in vsvm.config.hardware.device
                if isinstance(n, vim.vm.device.VirtualEthernetCard)] == [portgroup]  # fmt: skip
        # One datastore folder named like the VM, nothing nested, nothing outside it.
        assert [e for e in os.listdir(ds_dir) if tag in e] == [stored]
        folder = os.path.join(ds_dir, stored)
        assert [d for _r, dirs, _f in os.walk(folder) for d in dirs] == []
        flat = os.path.join(folder, stored + "-flat.vmdk")
        assert same(flat, "raw", vhdx, "vhdx")
        res = run_module("vsphere_verify", dict(vc, bundle=convert["dest"], vm=n3))
        assert not res.get("failed") and res["disks"][0]["mismatched"] == 0, res

        # -- vSphere -> KVM --
        export = dict(vc, vm=n3, bundle=str(tmp_path / "b3"))
        res = run_module("vsphere_export", export)
        assert res.get("changed") and not res.get("failed"), res
        convert = {"src": export["bundle"], "dest": str(tmp_path / "c3"), "target_platform": "kvm",
                   "network_map": {portgroup: net_kvm}}  # fmt: skip
        assert not run_module("convert", convert).get("failed")
        imp = {"uri": lab["libvirt_uri"], "bundle": convert["dest"], "pool": pool, "domain_type": domain_type(lab),
               "cpu_mode": "default"}  # fmt: skip
        # libvirt refuses '/' in a domain name: refused up front, nothing written.
        vols = [v for v in volumes(libvirt_conn, pool) if tag in v]  # other tests share the pool
        res = run_module("kvm_import", dict(imp, name=n3))
        assert res.get("failed") and res["error_kind"] == "input" and no_traceback(res), res
        assert "the VM name %r contains '/', which is not allowed in a libvirt domain name" % n3 in res["msg"], res
        assert "Fix: give another name (option name)" in res["msg"], res
        assert [v for v in volumes(libvirt_conn, pool) if tag in v] == vols == []
        assert not [d for d in libvirt_conn.listAllDomains(0) if tag in d.name() and d.name() != n1]

        res = run_module("kvm_import", dict(imp, name=n4))
        assert res.get("changed") and not res.get("failed") and no_traceback(res), res
        dom = libvirt_conn.lookupByName(n4)
        assert dom.name() == n4 and not dom.isActive()
        assert kvm_networks(libvirt_conn, n4) == [net_kvm]
        path, fmt = kvm_disk(libvirt_conn, n4)
        assert os.path.dirname(path) == lab["pool_paths"][pool] and os.path.basename(path) == n4 + "-disk0.qcow2"
        assert same(path, fmt, flat, "raw") and same(path, fmt, src_disk, "qcow2")
        res = run_module("kvm_verify", {"uri": lab["libvirt_uri"], "bundle": convert["dest"], "name": n4})
        assert not res.get("failed") and res["ok"], res

        # The source was only read, and no metacharacter ever ran as a command.
        assert sha256(src_disk) == src_sum
        assert find_canaries(canary, watched) == []
    finally:
        undefine(libvirt_conn, n4)
        undefine(libvirt_conn, n1)
        p = libvirt_conn.storagePoolLookupByName(pool)
        p.refresh(0)
        for v in p.listAllVolumes(0):
            if tag in v.name():
                v.delete(0)
        if os.path.exists(src_disk):
            os.unlink(src_disk)
        destroy(vsphere_si, n3.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c"))
        if ns is not None:
            ns.RemovePortGroup(pgName=portgroup)
        remove_hyperv_vm(hv, n2)
        for f in set(share_files(hv)) - set(files_before):
            os.unlink(os.path.join(hv["share"], f))


def test_names_a_target_refuses(lab, hv, libvirt_conn, vsphere_si, run_module, reliability, tmp_path):
    from test_vsphere_import import make_bundle, small_image

    tag = uuid.uuid4().hex[:6]
    fix = "in a plan, the VM's target_name"
    rows = [
        ("kvm", "domain name longer than 240 bytes in UTF-8 (81 x '名')",
         "kvm_import fails before writing: 'the VM name ... is 243 bytes long in UTF-8; a libvirt domain name has at "
         "most 240 (libvirt names files after it ...)' and the fix (a shorter name; plan: target_name)",
         "no domain, no volume"),
        ("kvm", "domain name '.' (libvirt makes its directories from it)",
         "kvm_import fails before writing: \"the VM name '.' is a directory reference\" and the fix",
         "no domain, no volume; libvirt never asked"),
        ("names", "a newline or tab in the VM name (any platform)",
         "the import fails before writing: \"the VM name '...' contains the control character '\\n', which "
         "<platform's name> cannot hold\" and the fix, e.g. with a space instead",
         "nothing on the target"),
        ("hyperv", "VM name longer than 100 characters",
         "hyperv_import fails before writing: 'the VM name ... is 101 characters long; a Hyper-V VM name has at "
         "most 100 (Hyper-V refuses a longer one)' and the fix",
         "no VM, no file in the share"),
        ("vsphere", "VM name longer than 80 characters (unicode: 81 x '名')",
         "vsphere_import fails before any upload: '... is 81 characters long; a vSphere VM name has at most 80' "
         "and the fix", "no VM, no datastore folder"),
        ("vsphere", "VM name '..' (its datastore folder would be the datastore's parent)",
         "vsphere_import fails before any upload: \"the VM name '..' is a directory reference\" and the fix",
         "no VM, nothing written beside or above the datastore"),
        ("vsphere", "network_map naming a port group with '/' as its client shows it (vCenter stores a%2fb)",
         "nothing special: the import finds the port group in either form",
         "the VM's NIC on that port group"),
    ]  # fmt: skip
    for row in rows:
        reliability(*row)
    bundle = make_bundle(str(tmp_path / "b"), small_image(tmp_path), "nm-r-src-" + tag)
    pool = lab["pools"]["target"]
    ds_dir = lab["vcsim"]["datastore_dir"]
    ds_parent = os.path.dirname(ds_dir)
    kvm = {"uri": lab["libvirt_uri"], "bundle": bundle.dir, "pool": pool, "domain_type": domain_type(lab),
           "cpu_mode": "default", "network_map": {"lab-net": lab["network"]}}  # fmt: skip
    hyperv = dict(hv["conn"], bundle=bundle.dir, network_map={"lab-net": "lab-switch"})
    vc = conn_vars(lab, bundle=bundle.dir, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"})

    def state(name):
        # Only what this name could have made: other tests use the lab's libvirt and vcsim meanwhile.
        files = (".vmx", ".vmdk", ".partial", ".nvram")
        return (
            [v for v in volumes(libvirt_conn, pool) if v.startswith(name)],
            [d.name() for d in libvirt_conn.listAllDomains(0) if d.name() == name],
            share_files(hv),
            [vm["name"] for vm in hv["host"].load()["vms"]],
            [e for e in os.listdir(ds_dir) if name in e or tag in e],
            [e for e in os.listdir(ds_parent) if e.endswith(files) or e.startswith(".")],
            find_vm(vsphere_si, name) is None,
        )

    cases = [
        ("kvm_import", kvm, "名" * 81,
         "the VM name %r is 243 bytes long in UTF-8; a libvirt domain name has at most 240 (libvirt names files "
         "after it, and a file name has at most 255 bytes)" % ("名" * 81)),
        ("kvm_import", kvm, ".", "the VM name '.' is a directory reference: a libvirt domain name would make paths"),
        ("kvm_import", kvm, "nm-r-%s\nrm -rf x" % tag,
         "the VM name %r contains the control character '\\n', which a libvirt domain name cannot hold"
         % ("nm-r-%s\nrm -rf x" % tag)),
        ("hyperv_import", hyperv, "nm-r-%s-" % tag + "h" * 89,
         "the VM name %r is 101 characters long; a Hyper-V VM name has at most 100 (Hyper-V refuses a longer one)"
         % ("nm-r-%s-" % tag + "h" * 89)),
        ("hyperv_import", hyperv, "nm-r-%s\tx" % tag,
         "the VM name %r contains the control character '\\t', which a Hyper-V VM name cannot hold"
         % ("nm-r-%s\tx" % tag)),
        ("vsphere_import", vc, "名" * 81,
         "the VM name %r is 81 characters long; a vSphere VM name has at most 80 (vSphere refuses a longer one)"
         % ("名" * 81)),
        ("vsphere_import", vc, "..", "the VM name '..' is a directory reference: a vSphere VM name would make paths"),
        ("vsphere_import", vc, "nm-r-%s\x1b[31m" % tag,
         "the VM name %r contains the control character '\\x1b', which a vSphere VM name cannot hold"
         % ("nm-r-%s\x1b[31m" % tag)),
    ]  # fmt: skip
    for module, args, name, msg in cases:
        before = state(name)
        res = run_module(module, dict(args, name=name))
        assert res.get("failed") and res.get("error_kind") == "input" and no_traceback(res), (module, name, res)
        assert msg in res["msg"], (module, name, res["msg"])
        assert "Fix: give " in res["msg"] and fix in res["msg"], res["msg"]
        assert state(name) == before and before[-1], (module, name)

    # A port group vCenter stores escaped ('/' as %2f) is found by the name its client shows.
    ns = add_portgroup(vsphere_si, "pg%%2fnm-%s" % tag)
    made = "nm-r-pg-" + tag
    try:
        res = run_module("vsphere_import", dict(vc, name=made, network_map={"lab-net": "pg/nm-%s" % tag}))
        assert res.get("changed") and not res.get("failed"), res
        vm = find_vm(vsphere_si, made)
        assert [n.deviceInfo.summary for n in vm.config.hardware.device
                if isinstance(n, vim.vm.device.VirtualEthernetCard)] == ["pg%%2fnm-%s" % tag]  # fmt: skip
    finally:
        destroy(vsphere_si, made)
        ns.RemovePortGroup(pgName="pg%%2fnm-%s" % tag)


def test_plan_with_such_names(lab, libvirt_conn, run_playbook, reliability, tmp_path):
    from plan_lab import SourceDomains, play

    reliability("names", "plan (inventory, roles, playbook) whose VM and target_name hold unicode, spaces and "
                "shell/PowerShell metacharacters and Jinja ('{{ 7*6 }}', '{% raw %}')",
                "the plan migrates it like any other VM (names are never templated)",
                "the target domain under exactly the target_name, disks equal; its work dir one safe path "
                "component (no '/', never shared with another name)")  # fmt: skip
    sources = SourceDomains(lab, libvirt_conn, "nmp")
    tag = sources.tag
    canary = "nmc-" + tag
    # Jinja too: Ansible must not template a name ('{{ 7*6 }}' stays, never becomes 42).
    src = "nmp-%s{{ 7*6 }}%s" % (tag, META % canary)
    dst = "nmp-t-%s {%% raw %%}{{ 7*6 }}%s" % (tag, META % canary)
    try:
        src, src_disk = sources.make(src)
        work, pool = tmp_path / "work", lab["pools"]["target"]
        lines = [
            "plugin: vmigrate.v2v.plan",
            "version: 1",
            "defaults: {work_dir: '%s', mode: full}" % work,
            "endpoints:",
            "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], pool),
            "storage_map: {'%s': %s}" % (lab["pool_paths"][lab["pools"]["source"]], pool),
            "waves:",
            "  - {name: w0, source: lab-kvm, target: lab-kvm, vms: [%s]}"
            % json.dumps({"name": src, "target_name": dst}, ensure_ascii=False),
        ]
        path = tmp_path / "plan.v2v.yml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        run = play(run_playbook, str(path), "migrate.yml")
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        dom = libvirt_conn.lookupByName(dst)
        assert dom.name() == dst and not dom.isActive()
        tpath, fmt = kvm_disk(libvirt_conn, dst)
        assert same(tpath, fmt, src_disk, "qcow2")
        (wdir,) = os.listdir(work / "w0")
        assert "/" not in wdir and wdir.startswith("nmp-t-%s_" % tag), wdir
        status = json.loads((work / "w0" / wdir / "status.json").read_text())
        assert status["status"] == "migrated" and status["steps"]["verify"]["ok"], status
        assert find_canaries(canary, [str(tmp_path), os.getcwd(), "/tmp"] + list(lab["pool_paths"].values())) == []
    finally:
        sources.cleanup()


def test_hyperv_source_disk_file_with_such_names(lab, hv, run_module, reliability, tmp_path):
    reliability("hyperv", "source VM whose VHDX file name holds [ ] ` $ ' ; unicode and a leading dash "
                "(wildcards and escapes to PowerShell)",
                "nothing special: hyperv_export reads that file",
                "the bundle's disk equals the VHDX (qemu-img compare); the source file unchanged (sha256)")  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    canary = "nmc-" + tag
    name = "-nm-hs-%s [1] `$x ü名前🚀 '$(touch %s)'; x" % (tag, canary)
    fname = "-nm-hs-%s [1] `$x ü名前🚀 '$(touch %s)'; x [*].vhdx" % (tag, canary)
    vhdx = os.path.join(hv["share"], fname)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vhdx", vhdx, str(8 * MIB)], check=True)
    subprocess.run(["qemu-io", "-f", "vhdx", "-c", "write -P 0x3c %d 65536" % (2 * MIB), vhdx],
                   check=True, capture_output=True)  # fmt: skip
    hv["host"].new_vm(name, generation=2, cpus=1, memory_mib=256, secure_boot=False,
                      disks=[{"size": 8 * MIB, "controller": "SCSI", "file": fname}], nics=[])  # fmt: skip
    before = sha256(vhdx)
    try:
        export = dict(hv["conn"], vm=name, bundle=str(tmp_path / "b"))
        res = run_module("hyperv_export", export)
        assert res.get("changed") and not res.get("failed") and no_traceback(res), res
        with open(os.path.join(export["bundle"], "manifest.json"), encoding="utf-8") as f:
            manifest = json.load(f)
        (disk,) = manifest["disks"]
        assert same(os.path.join(export["bundle"], disk["path"]), disk["format"], vhdx, "vhdx")
        assert manifest["spec"]["name"] == name
        assert sha256(vhdx) == before and find_canaries(canary, [str(tmp_path), hv["share"], os.getcwd()]) == []
    finally:
        remove_hyperv_vm(hv, name)
        if os.path.exists(vhdx):
            os.unlink(vhdx)
