"""vSphere faults on real lab transfers (issue 14): a slow and a hung endpoint, a pinned
certificate checked on the connection that logs in, vcsim stopped and restarted mid-upload
and mid-download, and a changeId vSphere no longer knows between warm syncs.

The network faults put a small TCP forwarder (`Forwarder`) in front of vcsim: TLS stays end
to end (the forwarder sees only ciphertext), so the module still verifies vcsim's
certificate against the lab CA. A fault that stops vcsim runs a private vcsim
(`private_vcsim`: the lab's binary, certificate and a datastore directory of the test's own,
on a free port); the lab's shared vcsim is never stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVim.task import WaitForTask
from test_vsphere_export import _has_snapshot, same_bytes
from test_vsphere_import import backing_flat_path, conn_vars, destroy, find_vm, flat_path, make_bundle

# tests/integration/test_vsphere_recovery.py (vSphere faults of the integration suite): its forwarder,
# random disks and import arguments.
from test_vsphere_recovery import CuttingProxy, import_args, random_disk

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle

MIB = 1024 * 1024
PREFIX = "lab-fv-"


class Forwarder(CuttingProxy):
    """Forwards 127.0.0.1:<port> to ``upstream``, waiting ``delay`` seconds before passing
    on each read (a slow link). ``hang_after``: once one side has sent that many bytes
    without the other answering (a disk transfer, not SOAP), the connection goes silent:
    nothing more is passed either way, and the sockets stay open (a hung server)."""

    def __init__(self, upstream, delay=0.0, hang_after=None):  # noqa: D107
        self.delay, self.hang_after = delay, hang_after
        self.hangs = 0
        self.most = 0  # the largest burst passed: how far a disk transfer got
        super().__init__(upstream, cut_after=None, stop_on_cut=False, lifetime=3600)

    def _passes(self, burst):
        self.most = max(self.most, burst)
        if self.hang_after is not None and burst > self.hang_after:
            self.hangs += 1
            self.stopped.wait()  # silent until the test ends
            return False
        time.sleep(self.delay)
        return True


@pytest.fixture
def forwarder(lab):
    made = []

    def start(**kw):
        f = Forwarder((lab["vcsim"]["hostname"], lab["vcsim"]["port"]), **kw)
        made.append(f)
        return f

    yield start
    for f in made:
        f.stop()


@pytest.fixture
def vm_name(vsphere_si):
    name = PREFIX + uuid.uuid4().hex[:8]
    yield name
    destroy(vsphere_si, name)


# --- a slow endpoint, a hung one -------------------------------------------------------------


def test_slow_endpoint_completes(lab, vsphere_si, run_module, forwarder, tmp_path, vm_name, reliability):
    reliability(
        "vsphere",
        "slow endpoint (100 ms added per read) during import",
        "the import completes, only slower",
        "VM complete; its flat file equals the source disk",
    )
    image = random_disk(tmp_path / "disk.raw", 2 * MIB)
    bundle = make_bundle(str(tmp_path / "b"), image, vm_name)
    f = forwarder(delay=0.1)
    started = time.monotonic()
    res = run_module("vsphere_import", import_args(lab, bundle.dir, port=f.port, io_timeout=10))
    assert res.get("changed") and not res.get("failed"), res
    assert time.monotonic() - started > 2  # the latency was really there
    vm = find_vm(vsphere_si, vm_name)
    assert same_bytes(backing_flat_path(lab, vm), image)
    values = {o.key: o.value for o in vm.config.extraConfig}
    assert json.loads(values["vmigrate.provenance"])["state"] == "complete"


def test_hung_endpoint_times_out(lab, run_module, reliability):
    reliability(
        "vsphere",
        "hung endpoint (accepts, never answers) at connect",
        "'vSphere at host:port did not answer in N s (io_timeout) while connecting' and the fix",
        "nothing sent or changed; the step ends after io_timeout",
    )
    listener = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    port = listener.getsockname()[1]
    try:
        for args, env in (({"io_timeout": 3}, None), ({}, {"VMIGRATE_VSPHERE_IO_TIMEOUT": "3"})):
            started = time.monotonic()
            res = run_module("vsphere_vm_info", conn_vars(lab, port=port, vms=["DC0_H0_VM0"], **args), env=env)
            took = time.monotonic() - started
            assert res.get("failed"), res
            assert "127.0.0.1:%d did not answer in 3 s (io_timeout)" % port in res["msg"], res
            assert "io_timeout" in res["msg"] and "Traceback" not in json.dumps(res), res
            assert took < 60, took
    finally:
        listener.close()


def test_hung_mid_download_times_out(lab, vsphere_si, run_module, forwarder, tmp_path, vm_name, reliability):
    reliability(
        "vsphere",
        "endpoint hangs mid-download (export)",
        "'reading [ds] vm-flat.vmdk ... failed N times, last with TimeoutError' and the fix",
        "no bundle left; export snapshot removed; a re-run completes, disks equal",
    )
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    res = run_module("vsphere_import", import_args(lab, make_bundle(str(tmp_path / "seed"), image, vm_name).dir))
    assert res.get("changed"), res
    vm = find_vm(vsphere_si, vm_name)
    WaitForTask(vm.PowerOnVM_Task())
    flat = flat_path(lab, vm_name)
    before = hashlib.sha256(open(flat, "rb").read()).hexdigest()
    bdir = str(tmp_path / "bundle")
    f = forwarder(hang_after=2 * MIB)
    started = time.monotonic()
    res = run_module("vsphere_export", conn_vars(lab, vm=vm_name, bundle=bdir, port=f.port, io_timeout=2))
    assert res.get("failed") and f.hangs >= 1, res
    assert time.monotonic() - started < 120
    msg = res["msg"]
    assert "%s-flat.vmdk" % vm_name in msg and "TimeoutError" in msg and "re-run" in msg, msg
    assert not _has_snapshot(vm)  # the export's snapshot was removed
    assert not os.path.exists(bdir)
    assert hashlib.sha256(open(flat, "rb").read()).hexdigest() == before  # the source is unchanged

    res = run_module("vsphere_export", conn_vars(lab, vm=vm_name, bundle=bdir))
    assert not res.get("failed") and res["kind"] == "full", res
    assert Bundle.load(bdir).complete and same_bytes(flat, Bundle.load(bdir).disk_path("disk0"))


# --- the pinned certificate is checked on the connection that logs in ------------------------


class RecordingTLSServer:
    """A TLS server that records every decrypted byte a client sends (and answers
    nothing). ``certs`` [(pem, key), ...]: the i-th connection presents the i-th pair, the
    last pair from then on (a man in the middle who passes the first connection through)."""

    def __init__(self, certs):
        self.ctxs = []
        for pem, key in certs:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(pem, key)
            self.ctxs.append(ctx)
        self.received = []  # per connection, in accept order: bytearray of what came
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                continue
            ctx = self.ctxs[min(len(self.received), len(self.ctxs) - 1)]
            self.received.append(bytearray())
            threading.Thread(target=self._client, args=(raw, ctx, self.received[-1]), daemon=True).start()

    def _client(self, raw, ctx, got):
        raw.settimeout(5)
        try:
            with ctx.wrap_socket(raw, server_side=True) as tls:
                while True:
                    data = tls.recv(65536)
                    if not data:
                        return
                    got += data
                    if b"\r\n\r\n" in data:
                        return  # one request is enough to see what was sent
        except OSError:
            return

    def stop(self):
        self.stopped.set()
        self.listener.close()


def test_wrong_pin_refused_before_credentials(lab, run_module, tmp_path, reliability):
    reliability(
        "vsphere",
        "server certificate not the pinned thumbprint (validate_certs=false)",
        "'the certificate of host has fingerprint X, not the pinned thumbprint' and the fix",
        "refused in the TLS handshake of every connection (the login one too): nothing sent on it",
    )
    pki = os.path.dirname(lab["vcsim"]["ca_path"])
    lab_cert = (os.path.join(pki, "server.pem"), os.path.join(pki, "server.key"))
    with open(lab_cert[0]) as fh:
        right = hashlib.sha256(ssl.PEM_cert_to_DER_cert(fh.read())).hexdigest()
    # Another certificate for 127.0.0.1, as a man in the middle would present.
    other = (str(tmp_path / "other.pem"), str(tmp_path / "other.key"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", other[1], "-out", other[0]],
        check=True,
        capture_output=True,
    )
    password = lab["vcsim"]["password"].encode()
    args = conn_vars(lab, validate_certs=False, vms=["DC0_H0_VM0"], io_timeout=5)
    del args["ca_path"]

    # 1. Every connection presents another certificate than the pinned one.
    server = RecordingTLSServer([other])
    try:
        res = run_module("vsphere_vm_info", dict(args, port=server.port, thumbprint=right))
    finally:
        server.stop()
    assert res.get("failed") and "not the pinned thumbprint" in res["msg"], res
    assert server.received and all(got == b"" for got in server.received), server.received

    # 2. The first connection is the real server (the pinned certificate), the next ones
    # are not: the connection after the first (which logs in) must be refused too, with
    # nothing sent on it.
    server = RecordingTLSServer([lab_cert, other])
    try:
        res = run_module("vsphere_vm_info", dict(args, port=server.port, thumbprint=right))
    finally:
        server.stop()
    assert res.get("failed") and "not the pinned thumbprint" in res["msg"], res
    assert len(server.received) >= 2, server.received
    assert all(got == b"" for got in server.received[1:]), server.received
    assert not any(password in got for got in server.received)

    # Against vcsim itself: the right pin logs in, a wrong one does not.
    args = conn_vars(lab, validate_certs=False, vms=["DC0_H0_VM0"])
    del args["ca_path"]
    res = run_module("vsphere_vm_info", dict(args, thumbprint=right))
    assert not res.get("failed") and res["vms"][0]["name"] == "DC0_H0_VM0", res


# --- the source changed behind the tool's back between warm syncs ----------------------------


def test_cbt_reset_and_snapshot_gone_between_warm_syncs(lab, vsphere_si, run_module, tmp_path, vm_name, reliability):
    reliability(
        "vsphere",
        "CBT reset between warm syncs (the bundle's changeId no longer valid)",
        "the sync completes; fallback_reason: 'vSphere refused the changeId ... block digests were compared'",
        "bundle equals the source (whole disk read); the next sync uses CBT again; no snapshot left",
    )
    reliability(
        "vsphere",
        "snapshot recorded in the bundle removed in vCenter between syncs",
        "the sync completes; leftover_snapshots_gone names it",
        "record dropped from the bundle; bundle equals the source; no snapshot left",
    )
    image = random_disk(tmp_path / "disk.raw", 8 * MIB)
    res = run_module("vsphere_import", import_args(lab, make_bundle(str(tmp_path / "seed"), image, vm_name).dir))
    assert res.get("changed"), res
    vm = find_vm(vsphere_si, vm_name)
    WaitForTask(vm.PowerOnVM_Task())
    flat = flat_path(lab, vm_name)
    bdir = str(tmp_path / "bundle")
    args = conn_vars(lab, vm=vm_name, bundle=bdir, enable_cbt=True)
    res = run_module("vsphere_export", args)
    assert not res.get("failed") and res["cbt"] and res["kind"] == "full", res

    # CBT reset: the changeId the bundle holds is one vSphere no longer knows (ESXi forgets
    # them when tracking is turned off and on; the lab's vcsim models that as an unknown id).
    with open(flat, "r+b") as fh:
        fh.seek(5 * MIB + 3)
        fh.write(os.urandom(3000))
    bundle = Bundle.load(bdir)
    record = bundle.disk("disk0")
    stale = record["checkpoint"]["change_id"].rsplit("/", 1)[0] + "/999999"
    record["checkpoint"]["change_id"] = stale
    bundle.set_disk(record)
    bundle.save()
    res = run_module("vsphere_export", args)
    assert not res.get("failed") and res["kind"] == "incremental", res
    assert "refused the changeId %s of disk disk0" % stale in res["fallback_reason"], res
    assert "block digests were compared" in res["fallback_reason"], res
    assert res["bytes_read"] >= 8 * MIB  # the whole disk was read and compared
    assert same_bytes(flat, Bundle.load(bdir).disk_path("disk0"))
    assert not _has_snapshot(vm)
    assert Bundle.load(bdir).disk("disk0")["checkpoint"]["change_id"] != stale

    # A snapshot an interrupted run made (recorded in the bundle) was removed in vCenter.
    snap = WaitForTask(
        vm.CreateSnapshot_Task(
            name="vmigrate-9", description="vmigrate.v2v sync; removed by it", memory=False, quiesce=False
        )
    )
    snap = vm.snapshot.currentSnapshot
    bundle = Bundle.load(bdir)
    bundle.record_created("snapshots", {"name": "vmigrate-9", "moid": snap._moId, "vm": vm._moId})
    bundle.save()
    WaitForTask(snap.RemoveSnapshot_Task(removeChildren=False))
    with open(flat, "r+b") as fh:
        fh.seek(1 * MIB)
        fh.write(os.urandom(1000))
    res = run_module("vsphere_export", args)
    assert not res.get("failed") and res["kind"] == "incremental", res
    assert res["leftover_snapshots_gone"] == ["vmigrate-9"] and not res.get("removed_leftover_snapshots"), res
    assert not res["fallback_reason"] and 0 < res["bytes_read"] <= 2 * 64 * 1024, res  # CBT again
    bundle = Bundle.load(bdir)
    assert not bundle.manifest["created"]["snapshots"]
    assert same_bytes(flat, bundle.disk_path("disk0"))
    assert not _has_snapshot(vm)


# --- vcsim stopped and restarted mid-upload and mid-download ---------------------------------


class PrivateVcsim:
    """The lab's vcsim binary on a free port with the lab's certificate and user, its
    datastores under ``root``: a vcsim this test may stop (the shared one stays up)."""

    def __init__(self, lab, root):
        self.lab, self.root = lab, str(root)
        pki = os.path.dirname(lab["vcsim"]["ca_path"])
        self.binary = os.path.join(os.path.dirname(os.path.dirname(pki)), "build", "vcsim")
        self.cert, self.key = os.path.join(pki, "server.pem"), os.path.join(pki, "server.key")
        with socket.create_server(("127.0.0.1", 0)) as probe:
            self.port = probe.getsockname()[1]
        self.proc = None
        self.start()

    def start(self):
        info = os.path.join(self.root, "info.json")
        if os.path.exists(info):
            os.unlink(info)
        env = dict(os.environ, VCSIM_PASSWORD=self.lab["vcsim"]["password"])
        cmd = [self.binary, "-listen", "127.0.0.1:%d" % self.port, "-cert", self.cert, "-key", self.key]
        cmd += ["-username", self.lab["vcsim"]["username"], "-root", self.root, "-info", info]
        with open(os.path.join(self.root, "vcsim.log"), "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not os.path.exists(info):
            assert self.proc.poll() is None and time.monotonic() < deadline, "private vcsim did not start"
            time.sleep(0.2)
        with open(info) as fh:
            self.datastore_dir = json.load(fh)["datastores"][self.lab["vcsim"]["datastore"]]
        # The lab as the tests' helpers read it, pointed at this vcsim.
        self.facts = dict(self.lab, vcsim=dict(self.lab["vcsim"], port=self.port, datastore_dir=self.datastore_dir))

    def stop(self, sig=signal.SIGTERM):
        """SIGTERM lets vcsim finish the requests under way; SIGKILL stops it mid-transfer."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def si(self):
        vc = self.lab["vcsim"]
        ctx = ssl.create_default_context(cafile=vc["ca_path"])
        return SmartConnect(
            host=vc["hostname"], port=self.port, user=vc["username"], pwd=vc["password"], sslContext=ctx
        )


@pytest.fixture
def private_vcsim(lab, tmp_path):
    root = tmp_path / "vcsim"
    root.mkdir()
    vc = PrivateVcsim(lab, root)
    yield vc
    vc.stop()


def run_stopping_vcsim(run_module, module, args, vc, forwarder, after):
    """Run ``module`` through a slow forwarder to ``vc``; stop vcsim once a disk transfer
    has passed ``after`` bytes, and start it again once the module has ended."""
    result = {}
    args = dict(args, port=forwarder.port, io_timeout=20)
    worker = threading.Thread(target=lambda: result.update(run_module(module, args)))
    worker.start()
    deadline = time.monotonic() + 120
    while forwarder.most < after and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped_at = forwarder.most
    vc.stop(signal.SIGKILL)
    worker.join(300)
    assert not worker.is_alive()
    vc.start()
    return result, stopped_at


def test_vcsim_restarted_mid_upload_and_mid_download(lab, run_module, private_vcsim, tmp_path, reliability):
    reliability(
        "vsphere",
        "vcsim stopped and restarted mid-upload (import)",
        "'upload of disk [ds] vm/vm.vmdk to host:port failed after N of M bytes' (or 'lost the connection "
        "to vSphere ... while importing VM x') and 're-run'",
        "after the restart vCenter reports no such VM; a re-run completes, flat file equals the source",
    )
    reliability(
        "vsphere",
        "vcsim stopped and restarted mid-download (export)",
        "'reading [ds] vm/vm-flat.vmdk ... failed' and 're-run'",
        "bundle absent or marked incomplete; a re-run completes, bundle disk equals the source",
    )
    vc = private_vcsim
    name = PREFIX + uuid.uuid4().hex[:8]
    image = random_disk(tmp_path / "disk.raw", 16 * MIB)
    source_sha = hashlib.sha256(open(image, "rb").read()).hexdigest()
    seed = make_bundle(str(tmp_path / "seed"), image, name)
    upstream = ("127.0.0.1", vc.port)

    # Mid-upload.
    slow = Forwarder(upstream, delay=0.03)
    try:
        res, at = run_stopping_vcsim(run_module, "vsphere_import", import_args(vc.facts, seed.dir), vc, slow, 4 * MIB)
    finally:
        slow.stop()
    assert 4 * MIB <= at < 16 * MIB, at  # stopped while the disk was on its way
    assert res.get("failed"), res
    msg = res["msg"]
    # Cut during the disk's transfer, or during the API calls that finish the import.
    assert (
        "upload of disk [%s] %s/%s.vmdk" % (lab["vcsim"]["datastore"], name, name) in msg
        or "lost the connection to vSphere at 127.0.0.1:%d while importing VM %s" % (slow.port, name) in msg
    ), msg
    assert "re-run" in msg and res.get("error_kind") == "platform", res
    si = vc.si()
    try:
        assert find_vm(si, name) is None  # nothing that looks complete (vcsim forgot it all)
        assert not os.path.exists(os.path.join(vc.datastore_dir, name))
        res = run_module("vsphere_import", import_args(vc.facts, seed.dir))
        assert res.get("changed") and not res.get("failed"), res
        vm = find_vm(si, name)
        assert same_bytes(backing_flat_path(vc.facts, vm), image)
        values = {o.key: o.value for o in vm.config.extraConfig}
        assert json.loads(values["vmigrate.provenance"])["state"] == "complete"
    finally:
        Disconnect(si)

    # Mid-download: the VM just imported is the source.
    bdir = str(tmp_path / "bundle")
    slow = Forwarder(upstream, delay=0.03)
    try:
        res, at = run_stopping_vcsim(
            run_module, "vsphere_export", conn_vars(vc.facts, vm=name, bundle=bdir), vc, slow, 4 * MIB
        )
    finally:
        slow.stop()
    assert 4 * MIB <= at < 16 * MIB, at
    assert res.get("failed"), res
    msg = res["msg"]
    assert "%s/%s-flat.vmdk" % (name, name) in msg and "re-run" in msg, msg
    assert "Traceback" not in json.dumps(res), res
    assert not os.path.exists(bdir) or not Bundle.load(bdir).complete
    # vcsim restarted empty: the source VM is made again from the same disk, then the
    # export is simply run again into the same bundle directory.
    res = run_module("vsphere_import", import_args(vc.facts, seed.dir))
    assert res.get("changed") and not res.get("failed"), res
    res = run_module("vsphere_export", conn_vars(vc.facts, vm=name, bundle=bdir))
    assert not res.get("failed"), res
    bundle = Bundle.load(bdir)
    assert bundle.complete and same_bytes(image, bundle.disk_path("disk0"))
    assert hashlib.sha256(open(image, "rb").read()).hexdigest() == source_sha
