"""vSphere faults against the lab's vcsim: the connection dies mid-transfer, the datastore
is too small, snapshot removal fails, the bundle was hand-edited or its disk changed after
it was written.

Wrong password, unknown VM, missing datastore and missing port group are covered in
test_vsphere_import.py and test_vsphere_export.py.

The mid-transfer faults put a small TCP forwarder between the module and vcsim
(`CuttingProxy`). TLS stays end to end (the proxy sees only ciphertext), so the module
still verifies vcsim's certificate against the lab CA; only the port differs. The proxy
tells a disk transfer from SOAP by size: it cuts a connection when one side sends more
than `cut_after` bytes without the other side saying anything (a PUT body or a Range
GET answer; SOAP messages of these tests are far smaller).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import struct
import threading
import time
import uuid

import bundle_edits  # tests/integration/bundle_edits.py
import pytest
from pyVim.task import WaitForTask
from pyVmomi import vim, vmodl
from test_vsphere_export import same_bytes
from test_vsphere_import import backing_flat_path, conn_vars, destroy, find_vm, flat_path, make_bundle

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle

MIB = 1024 * 1024
GIB = 1024 * MIB
DISK_SIZE = 40 * MIB
FAIL_REMOVAL = "vmigrate.lab.fail-snapshot-removal"  # fault switch in tests/lab/vcsim/faults.go


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to vcsim and cuts a connection mid-transfer.

    stop_on_cut=True models vcsim going away: at the first cut every connection is reset
    and the port closed, so nothing (not even SOAP) gets through any more.
    stop_on_cut=False models a network that breaks every large transfer but lets SOAP
    through. The proxy stops by itself after `lifetime` seconds.
    """

    def __init__(self, upstream, cut_after, stop_on_cut, lifetime=300):
        self.upstream = upstream
        self.cut_after = cut_after
        self.stop_on_cut = stop_on_cut
        self.deadline = time.monotonic() + lifetime
        self.cuts = 0
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.sockets = set()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set() and time.monotonic() < self.deadline:
            try:
                client, _ = self.listener.accept()
            except OSError:  # timeout, or closed by stop()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
        self.stop()

    def _pump(self, client, server):
        burst = {client: 0, server: 0}  # bytes one side sent since the other last spoke
        peer = {client: server, server: client}
        try:
            while not self.stopped.is_set() and time.monotonic() < self.deadline:
                ready, _, _ = select.select([client, server], [], [], 0.2)
                for sock in ready:
                    data = sock.recv(256 * 1024)
                    if not data:
                        return
                    burst[sock] += len(data)
                    burst[peer[sock]] = 0
                    if not self._passes(burst[sock]):
                        return
                    peer[sock].sendall(data)
        except OSError:
            return
        finally:
            self._reset(client)
            self._reset(server)

    def _passes(self, burst):
        """Whether data that makes a burst of this many bytes is passed on; False cuts the
        connection (tests/faults/lab's Forwarder slows or hangs here instead)."""
        if burst <= self.cut_after:
            return True
        with self.lock:
            self.cuts += 1
        if self.stop_on_cut:
            self.stop()
        return False

    def _reset(self, sock):
        """Close with RST, as a dead peer's kernel would for unread data."""
        with self.lock:
            self.sockets.discard(sock)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()

    def stop(self):
        self.stopped.set()
        self.listener.close()
        with self.lock:
            open_sockets = list(self.sockets)
        for sock in open_sockets:
            self._reset(sock)


@pytest.fixture
def proxy(lab):
    made = []

    def start(cut_after, stop_on_cut):
        p = CuttingProxy((lab["vcsim"]["hostname"], lab["vcsim"]["port"]), cut_after, stop_on_cut)
        made.append(p)
        return p

    yield start
    for p in made:
        p.stop()
        p.thread.join(timeout=5)


def snapshot_names(vm):
    """Names of the VM's snapshots as vcsim reports them (PropertyCollector: an unset
    `snapshot` property cannot be read as an attribute from the simulator)."""
    pc = vim.PropertyCollector("propertyCollector", vm._stub)
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=vm)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["snapshot"])],
    )
    names = []

    def walk(trees):
        for tree in trees or []:
            names.append(tree.name)
            walk(tree.childSnapshotList)

    for item in pc.RetrieveContents([spec]) or []:
        for prop in item.propSet:
            walk(prop.val.rootSnapshotList)
    return names


def random_disk(path, size=DISK_SIZE):
    with open(path, "wb") as fh:
        for _ in range(size // MIB):
            fh.write(os.urandom(MIB))
    return str(path)


def import_args(lab, bundle, **extra):
    return conn_vars(
        lab, bundle=bundle, datastore=lab["vcsim"]["datastore"], network_map={"lab-net": "VM Network"}, **extra
    )


@pytest.fixture
def vm_name(vsphere_si):
    name = "v2v-fault-%s" % uuid.uuid4().hex[:8]
    yield name
    destroy(vsphere_si, name)


@pytest.fixture
def random_vm(lab, run_module, tmp_path, vm_name):
    """A vcsim VM whose 40 MiB disk holds random bytes (imported directly, no proxy)."""
    image = random_disk(tmp_path / "random.raw")
    bundle = make_bundle(str(tmp_path / "seed"), image, vm_name)
    res = run_module("vsphere_import", import_args(lab, bundle.dir))
    assert res.get("changed") and not res.get("failed"), res
    return vm_name


def test_import_vcsim_stops_mid_upload(lab, vsphere_si, run_module, proxy, tmp_path, vm_name, reliability):
    reliability(
        "vsphere",
        "vCenter gone mid-upload (connection cut after 8 MiB, vcsim unreachable after)",
        "import fails: 'upload of disk [ds] vm/vm.vmdk', the endpoint and 're-run'",
        "the VM made stays marked incomplete (provenance state incomplete, no disks) beside vmigrate.partial; "
        "the re-run completes, flat file equal to the source, marker gone",
    )
    image = random_disk(tmp_path / "disk.raw")
    bundle = make_bundle(str(tmp_path / "b"), image, vm_name)
    vm_dir = os.path.join(lab["vcsim"]["datastore_dir"], vm_name)
    p = proxy(cut_after=8 * MIB, stop_on_cut=True)

    res = run_module("vsphere_import", import_args(lab, bundle.dir, port=p.port))
    assert p.cuts == 1
    assert res.get("failed"), res
    msg = res["msg"]
    assert "upload of disk [%s] %s/%s.vmdk" % (lab["vcsim"]["datastore"], vm_name, vm_name) in msg, msg
    assert "127.0.0.1:%d" % p.port in msg and "re-run" in msg, msg
    # vcsim was gone, so the module could neither abort the import lease nor remove the
    # VM the import made: it stays, flagged incomplete, beside the vmigrate.partial
    # marker (vSphere removes the VM of a lease that times out; vcsim does not).
    vm = find_vm(vsphere_si, vm_name)
    values = {o.key: o.value for o in vm.config.extraConfig}  # the last entry of a key wins
    marked = json.loads(values["vmigrate.provenance"])
    assert marked["state"] == "incomplete" and marked["disks"] == {}, values
    assert "vmigrate.partial" in os.listdir(vm_dir)

    # The re-run, straight to vcsim, completes it.
    res = run_module("vsphere_import", import_args(lab, bundle.dir))
    assert res.get("changed") and not res.get("failed"), res
    assert same_bytes(backing_flat_path(lab, find_vm(vsphere_si, vm_name)), image)
    assert not os.path.exists(os.path.join(vm_dir, "vmigrate.partial"))
    assert find_vm(vsphere_si, vm_name) is not None


def test_update_cut_mid_upload_leaves_vm_marked_incomplete(
    lab, vsphere_si, run_module, proxy, tmp_path, random_vm, reliability
):
    reliability(
        "vsphere",
        "connection cut mid-upload of an update (a newer bundle of the same source)",
        "import fails: 'upload of disk [ds] vm/vm-...'",
        "the old disk still attached, helper VM gone, the VM marked incomplete (vm_info: incomplete true); "
        "the re-run rewrites it, equal to the source, provenance complete",
    )
    # A newer bundle of the same source: the disk's content changed.
    seed = Bundle.load(str(tmp_path / "seed"))
    image = seed.disk_path("disk0")
    with open(image, "r+b") as fh:
        fh.seek(21 * MIB)
        fh.write(os.urandom(MIB))
    newer = make_bundle(str(tmp_path / "newer"), image, random_vm, source_id=seed.manifest["source"]["id"])
    p = proxy(cut_after=8 * MIB, stop_on_cut=False)

    res = run_module("vsphere_import", import_args(lab, newer.dir, port=p.port))
    assert res.get("failed") and p.cuts == 1, res
    # The changed disk goes as a new file beside the old one (see VsphereTarget._update_vm).
    assert "upload of disk [%s] %s/%s-" % (lab["vcsim"]["datastore"], random_vm, random_vm) in res["msg"], res
    vm = find_vm(vsphere_si, random_vm)
    assert backing_flat_path(lab, vm) == flat_path(lab, random_vm)  # the old disk is still attached
    view = vsphere_si.content.viewManager.CreateContainerView(vsphere_si.content.rootFolder, [vim.VirtualMachine], True)
    assert not [v.name for v in view.view if ".vmigrate-sync-" in v.name]  # the helper is gone
    view.Destroy()
    # The VM exists and says it is incomplete; vm_info reports it.
    vm = find_vm(vsphere_si, random_vm)
    values = {o.key: o.value for o in vm.config.extraConfig}  # the last entry of a key wins
    marked = json.loads(values["vmigrate.provenance"])
    assert marked["state"] == "incomplete" and "disk0" not in marked["disks"], values
    info = run_module("vsphere_vm_info", conn_vars(lab, vms=[random_vm]))
    assert info["vms"][0]["incomplete"] is True, info

    res = run_module("vsphere_import", import_args(lab, newer.dir))
    assert res.get("changed") and res["action"] == "rewrite" and not res.get("failed"), res
    assert same_bytes(backing_flat_path(lab, find_vm(vsphere_si, random_vm)), image)
    vm = find_vm(vsphere_si, random_vm)
    values = {o.key: o.value for o in vm.config.extraConfig}
    assert not values.get("vmigrate.incomplete")
    prov = json.loads(values["vmigrate.provenance"])
    assert prov["fingerprint"] == steps.content_fingerprint(newer.manifest) and prov["state"] == "complete"


def test_warm_export_transfer_cut_removes_snapshot(
    lab, vsphere_si, run_module, proxy, tmp_path, random_vm, reliability
):
    reliability(
        "vsphere",
        "every disk read of a warm export cut after 4 MiB (SOAP still answers)",
        "export fails: '[ds] vm/vm-flat.vmdk', the endpoint and 're-run' (the read retried first)",
        "the export's snapshot removed, no bundle left; the re-run completes, bundle equal to the disk",
    )
    vm = find_vm(vsphere_si, random_vm)
    WaitForTask(vm.PowerOnVM_Task())
    bdir = str(tmp_path / "bundle")
    # Every disk read is cut after 4 MiB; SOAP still gets through.
    p = proxy(cut_after=4 * MIB, stop_on_cut=False)

    res = run_module("vsphere_export", conn_vars(lab, vm=random_vm, bundle=bdir, port=p.port))
    assert res.get("failed"), res
    msg = res["msg"]
    assert "[%s] %s/%s-flat.vmdk" % (lab["vcsim"]["datastore"], random_vm, random_vm) in msg, msg
    assert "127.0.0.1:%d" % p.port in msg and "re-run" in msg, msg
    assert p.cuts >= 2  # the read was retried on a new connection
    assert snapshot_names(vm) == []  # the snapshot it took was removed
    assert not os.path.exists(bdir)  # and a first export that failed leaves no bundle

    res = run_module("vsphere_export", conn_vars(lab, vm=random_vm, bundle=bdir))
    assert not res.get("failed") and res["mode"] == "warm" and res["kind"] == "full", res
    assert Bundle.load(bdir).complete
    assert same_bytes(flat_path(lab, random_vm), Bundle.load(bdir).disk_path("disk0"))
    assert snapshot_names(vm) == []


def test_warm_export_vcsim_stops_snapshot_left_then_cleaned(
    lab, vsphere_si, run_module, proxy, tmp_path, random_vm, reliability
):
    reliability(
        "vsphere",
        "vCenter gone mid-download of a warm export (snapshot cannot be removed)",
        "export fails naming the flat file first, then 'snapshot vmigrate-1' and 'next run removes it'",
        "snapshot vmigrate-1 left, recorded in the incomplete bundle; the re-run removes it "
        "(removed_leftover_snapshots) and completes, bundle equal to the disk",
    )
    vm = find_vm(vsphere_si, random_vm)
    WaitForTask(vm.PowerOnVM_Task())
    bdir = str(tmp_path / "bundle")
    p = proxy(cut_after=4 * MIB, stop_on_cut=True)

    res = run_module("vsphere_export", conn_vars(lab, vm=random_vm, bundle=bdir, port=p.port))
    assert res.get("failed") and p.cuts == 1, res
    msg = res["msg"]
    # The transfer error comes first; the snapshot that could not be removed is named.
    assert "[%s] %s/%s-flat.vmdk" % (lab["vcsim"]["datastore"], random_vm, random_vm) in msg, msg
    assert "snapshot vmigrate-1" in msg and "next run removes it" in msg, msg
    assert msg.index("flat.vmdk") < msg.index("snapshot vmigrate-1")
    assert snapshot_names(vm) == ["vmigrate-1"]
    bundle = Bundle.load(bdir)
    assert not bundle.complete
    assert [s["name"] for s in bundle.manifest["created"]["snapshots"]] == ["vmigrate-1"]

    res = run_module("vsphere_export", conn_vars(lab, vm=random_vm, bundle=bdir))
    assert not res.get("failed") and res["removed_leftover_snapshots"] == ["vmigrate-1"], res
    assert snapshot_names(vm) == []
    bundle = Bundle.load(bdir)
    assert bundle.complete and not bundle.manifest["created"]["snapshots"]
    assert same_bytes(flat_path(lab, random_vm), bundle.disk_path("disk0"))


def test_import_datastore_too_small(lab, vsphere_si, run_module, tmp_path, vm_name, reliability):
    reliability(
        "vsphere",
        "datastore smaller than the disks' capacity",
        "import refused: 'datastore <ds> has N bytes free, the disks need M'",
        "refused up front: no VM, no datastore folder",
    )
    ds_name = lab["vcsim"]["datastore"]
    ds = next(d for d in vsphere_si.RetrieveContent().rootFolder.childEntity[0].datastore if d.name == ds_name)
    with contextlib.suppress(Exception):  # what the import reads too; vcsim answers it with an empty body
        ds.RefreshDatastore()
    free = ds.summary.freeSpace
    capacity = (free // GIB + 8) * GIB  # sparse: a few MiB of data, more than the datastore holds
    image = str(tmp_path / "huge.raw")
    with open(image, "wb") as fh:
        fh.truncate(capacity)
        fh.seek(MIB)
        fh.write(os.urandom(2 * MIB))
    bundle = make_bundle(str(tmp_path / "b"), image, vm_name)

    res = run_module("vsphere_import", import_args(lab, bundle.dir))
    assert res.get("failed"), res
    msg = res["msg"]
    assert "datastore %s has" % ds_name in msg and "bytes free, the disks need %d" % capacity in msg, msg
    assert find_vm(vsphere_si, vm_name) is None
    assert not os.path.exists(os.path.join(lab["vcsim"]["datastore_dir"], vm_name))


def set_extra_config(vm, key, value):
    spec = vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key=key, value=value)])
    WaitForTask(vm.ReconfigVM_Task(spec=spec))


def test_snapshot_removal_failing(lab, vsphere_si, run_module, tmp_path, random_vm, reliability):
    reliability(
        "vsphere",
        "vCenter refuses to remove the export's snapshot (with and without a failed read)",
        "export fails: the read error first ('has no flat extent'), then 'snapshot vmigrate-1 ... next run "
        "removes it'; while still refused: 'left by an earlier run'",
        "the snapshot stays, recorded in the incomplete bundle; once removal works the next run removes it and "
        "completes, bundle equal to the disk",
    )
    """The lab's vcsim refuses snapshot removal for a VM flagged in extraConfig
    (tests/lab/vcsim/faults.go); the export must say so, keep the record, clean up later."""
    vm = find_vm(vsphere_si, random_vm)
    WaitForTask(vm.PowerOnVM_Task())
    set_extra_config(vm, FAIL_REMOVAL, "true")
    flat = flat_path(lab, random_vm)
    bdir = str(tmp_path / "bundle")
    args = conn_vars(lab, vm=random_vm, bundle=bdir)

    # 1. The disk read fails and so does the removal: both are told, the read first.
    os.rename(flat, flat + ".away")
    res = run_module("vsphere_export", args)
    os.rename(flat + ".away", flat)
    assert res.get("failed"), res
    msg = res["msg"]
    assert "has no flat extent" in msg and "snapshot vmigrate-1" in msg, msg
    assert msg.index("has no flat extent") < msg.index("snapshot vmigrate-1")
    assert "lab fault injection" in msg and "next run removes it" in msg, msg
    assert snapshot_names(vm) == ["vmigrate-1"]
    bundle = Bundle.load(bdir)
    assert not bundle.complete
    assert [s["name"] for s in bundle.manifest["created"]["snapshots"]] == ["vmigrate-1"]

    # 2. Still refused: the next run stops before reading, naming the leftover snapshot.
    res = run_module("vsphere_export", args)
    assert res.get("failed"), res
    assert "snapshot vmigrate-1" in res["msg"] and "left by an earlier run" in res["msg"], res
    assert "lab fault injection" in res["msg"], res
    assert snapshot_names(vm) == ["vmigrate-1"]
    assert [s["name"] for s in Bundle.load(bdir).manifest["created"]["snapshots"]] == ["vmigrate-1"]

    # 3. Only the removal of this run's own snapshot fails, after a good read.
    set_extra_config(vm, FAIL_REMOVAL, "")
    res = run_module("vsphere_export", args)
    assert not res.get("failed") and res["removed_leftover_snapshots"] == ["vmigrate-1"], res
    assert snapshot_names(vm) == []
    set_extra_config(vm, FAIL_REMOVAL, "true")
    with open(flat, "r+b") as fh:
        fh.seek(3 * MIB)
        fh.write(os.urandom(4096))
    res = run_module("vsphere_export", args)
    assert res.get("failed"), res
    assert res["msg"].startswith("snapshot vmigrate-2 ("), res  # no other error to report
    assert "could not be removed" in res["msg"] and "lab fault injection" in res["msg"], res
    assert snapshot_names(vm) == ["vmigrate-2"]

    # 4. Fault removed: the next run removes it and finishes; the bundle equals the disk.
    set_extra_config(vm, FAIL_REMOVAL, "")
    res = run_module("vsphere_export", args)
    assert not res.get("failed") and res["removed_leftover_snapshots"] == ["vmigrate-2"], res
    assert snapshot_names(vm) == []
    bundle = Bundle.load(bdir)
    assert bundle.complete and not bundle.manifest["created"]["snapshots"]
    assert same_bytes(flat, bundle.disk_path("disk0"))


# --- a bundle that does not agree with itself ------------------------------------------------


@pytest.mark.parametrize("edit,field", bundle_edits.EDITS, ids=bundle_edits.IDS)
def test_import_hand_edited_bundle_is_refused(lab, vsphere_si, run_module, tmp_path, vm_name, edit, field, reliability):
    reliability(
        "vsphere",
        "hand-edited bundle manifest: %s changed" % field,
        "import (and --check) refused: 'bundle B, disk disk0: field %s ...' and "
        "'Fix: re-run the export/convert that wrote this bundle'" % field,
        "refused before anything is made: no VM, no datastore folder; the unedited bundle imports",
    )
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    bundle = make_bundle(str(tmp_path / "b"), image, vm_name)
    with open(bundle.path, encoding="utf-8") as fh:
        original = fh.read()
    m = json.loads(original)
    edit(m)
    with open(bundle.path, "w", encoding="utf-8") as fh:
        json.dump(m, fh, indent=2)
    vm_dir = os.path.join(lab["vcsim"]["datastore_dir"], vm_name)

    for check in (True, False):
        res = run_module("vsphere_import", import_args(lab, bundle.dir), check=check)
        assert res.get("failed") and res["error_kind"] == "input", res
        msg = res["msg"]
        assert "bundle %s, disk disk0: field %s " % (bundle.dir, field) in msg, msg
        assert "Fix: re-run the export/convert that wrote this bundle" in msg, msg
        assert find_vm(vsphere_si, vm_name) is None
        assert not os.path.exists(vm_dir)

    # The same bundle unedited imports: the refusal came from the edit alone.
    with open(bundle.path, "w", encoding="utf-8") as fh:
        fh.write(original)
    res = run_module("vsphere_import", import_args(lab, bundle.dir))
    assert res.get("changed") and not res.get("failed"), res
    assert same_bytes(backing_flat_path(lab, find_vm(vsphere_si, vm_name)), image)
    disks = [d for d in find_vm(vsphere_si, vm_name).config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    assert [d.capacityInBytes for d in disks] == [8 * MIB]


def test_import_failing_after_upload_removes_what_it_made(lab, vsphere_si, run_module, tmp_path, vm_name, reliability):
    reliability(
        "vsphere",
        "bundle disk bytes changed after the export (same size: the bundle's own check passes)",
        "import fails: 'disk disk0 read from the bundle differs from its manifest digests in 1 blocks', "
        "'first at byte B'",
        "no VM; the VM folder it made removed; a folder that was there before kept with its files",
    )
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    bundle = make_bundle(str(tmp_path / "b"), image, vm_name)
    # The disk's bytes change after the bundle was written, its size does not: the bundle's
    # own check passes (it does not read disk data), the digests taken while uploading differ.
    with open(image, "r+b") as fh:
        fh.seek(3 * MIB + 5)
        fh.write(os.urandom(4096))
    vm_dir = os.path.join(lab["vcsim"]["datastore_dir"], vm_name)
    try:
        res = run_module("vsphere_import", import_args(lab, bundle.dir))
        assert res.get("failed"), res
        msg = res["msg"]
        assert res["error_kind"] == "disk", res
        says = "bundle %s, disk disk0: the data in %s does not match the bundle's block digests" % (bundle.dir, image)
        assert says in msg, msg
        assert "(1 of 8 blocks differ, first at byte %d): the file is damaged" % (3 * MIB) in msg, msg
        assert "Fix: copy the bundle again, or re-run the export (and convert)" in msg, msg
        # Nothing left: no VM, and the VM's directory this run made is gone with its files.
        assert find_vm(vsphere_si, vm_name) is None
        assert not os.path.exists(vm_dir)

        # A directory that was there before the run is kept with what it held; only the
        # run's own files (marker, extent, descriptor) are removed.
        os.makedirs(vm_dir)
        with open(os.path.join(vm_dir, "keep.txt"), "w") as fh:
            fh.write("not vmigrate's")
        res = run_module("vsphere_import", import_args(lab, bundle.dir))
        assert res.get("failed") and "does not match the bundle's block digests" in res["msg"], res
        assert find_vm(vsphere_si, vm_name) is None
        assert sorted(os.listdir(vm_dir)) == ["keep.txt"]
    finally:
        shutil.rmtree(vm_dir, ignore_errors=True)
