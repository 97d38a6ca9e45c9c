"""Unit tests of _vsphere parts that need no vCenter: paths, pins, retries, descriptors, deltas."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl
import subprocess

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import connection as _connection
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import target as _target


def test_datastore_paths():
    assert _connection.split_ds_path("[LocalDS_0] web01/web01.vmdk") == ("LocalDS_0", "web01/web01.vmdk")
    assert _connection.split_ds_path("[ds with space]  a/b.vmdk") == ("ds with space", "a/b.vmdk")
    with pytest.raises(InputError, match="not a datastore path"):
        _connection.split_ds_path("/vmfs/volumes/ds/x.vmdk")
    assert _connection.flat_name("web01/web01.vmdk") == "web01/web01-flat.vmdk"
    assert _connection.flat_name("web01/web01_1.vmdk") == "web01/web01_1-flat.vmdk"


def test_thumbprint_pin(reliability):
    reliability(
        "vsphere",
        "a pinned thumbprint that is neither SHA-256 nor SHA-1",
        "InputError 'neither SHA-256 nor SHA-1'",
        "refused before any connection",
    )
    cert = b"not really DER, but bytes all the same"
    sha256 = hashlib.sha256(cert).hexdigest()
    _connection.check_thumbprint(cert, ":".join(sha256[i : i + 2] for i in range(0, 64, 2)).upper(), "h")
    _connection.check_thumbprint(cert, hashlib.sha1(cert).hexdigest(), "h")
    with pytest.raises(PlatformError, match="not the pinned thumbprint"):
        _connection.check_thumbprint(cert, "00" * 32, "h")
    with pytest.raises(InputError, match="neither SHA-256 nor SHA-1"):
        _connection.check_thumbprint(cert, "abcd", "h")


def test_pinned_context_for_every_connection():
    # With a pin, the context every connection uses (pyVmomi's login included) checks it
    # in the handshake; a malformed pin is refused before any connection.
    ctx = _connection.ssl_context(False, None, "ab" * 32, "vc1")
    assert isinstance(ctx, _connection.PinnedContext) and ctx.pin == "ab" * 32 and ctx.pin_host == "vc1"
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    ctx = _connection.ssl_context(True, None, "ab" * 32, "vc1")
    assert isinstance(ctx, _connection.PinnedContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(InputError, match="neither SHA-256 nor SHA-1"):
        _connection.ssl_context(False, None, "abcd", "vc1")
    assert not isinstance(_connection.ssl_context(False), _connection.PinnedContext)


def test_retry_transient_then_success_and_exhaustion():
    calls = []
    sleeps = []

    @_connection.retry("test call", attempts=3, delay=0.5, sleep=sleeps.append)
    def flaky(n):
        calls.append(n)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert flaky(1) == "ok" and len(calls) == 3 and sleeps == [0.5, 1.0]

    @_connection.retry("always failing", attempts=2, delay=0, sleep=lambda s: None)
    def dead():
        raise http.client.RemoteDisconnected("gone")

    with pytest.raises(PlatformError, match="always failing failed 2 times"):
        dead()

    @_connection.retry("not transient", sleep=lambda s: None)
    def wrong():
        calls.append("x")
        raise ValueError("bad")

    before = len(calls)
    with pytest.raises(ValueError):
        wrong()
    assert len(calls) == before + 1  # no retry


def test_transient_faults_include_vsphere_busy():
    vim = pytest.importorskip("pyVmomi").vim
    vmodl = pytest.importorskip("pyVmomi").vmodl
    assert _connection._transient(vim.fault.TaskInProgress())
    assert _connection._transient(vmodl.fault.HostCommunication())
    assert not _connection._transient(vim.fault.InvalidLogin())


def test_fault_text_prefers_the_message():
    vim = pytest.importorskip("pyVmomi").vim
    assert _connection.fault_text(vim.fault.FileNotFound(msg="File [ds] x not found")) == (
        "File [ds] x not found (vim.fault.FileNotFound)"
    )
    assert _connection.fault_text(vim.fault.FileNotFound()) == "vim.fault.FileNotFound"


def test_unreachable_vcenter_is_a_clear_error(reliability):
    reliability(
        "vsphere",
        "unreachable vCenter endpoint (nothing listens on the port)",
        "PlatformError 'cannot reach vSphere at <host>:<port>: ... Connection refused' and 'Fix: check "
        "hostname and port, and that the server is up'; the password not in it",
        "nothing sent",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    params = {"hostname": "127.0.0.1", "port": port, "username": "u", "password": "pw-Zq81", "validate_certs": False}
    with pytest.raises(PlatformError) as err:
        _connection.Connection(params)
    assert "cannot reach vSphere at 127.0.0.1:%d" % port in err.value.problem, err.value.message
    assert "Connection refused" in err.value.problem and "check hostname and port" in err.value.fix
    assert "pw-Zq81" not in err.value.message


def test_ssl_context_checks_ca_path(tmp_path, reliability):
    reliability(
        "vsphere",
        "ca_path missing, or not a PEM CA file",
        "InputError 'ca_path ... does not exist'; 'not a PEM CA file'",
        "refused before any connection",
    )
    with pytest.raises(InputError, match="ca_path .* does not exist"):
        _connection.ssl_context(True, str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InputError, match="not a PEM CA file"):
        _connection.ssl_context(True, str(bad))
    assert _connection.ssl_context(False).verify_mode.name == "CERT_NONE"


# -- streamOptimized VMDKs (the import's upload format) and allocated areas (verify's reads)

MIB = 1024 * 1024


def _stream_of(tmp_path, pieces, size):
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as fh:
        fh.truncate(size)
        for offset, data in pieces:
            fh.seek(offset)
            fh.write(data)
    out = tmp_path / "disk.vmdk"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized", raw, out],
        check=True,
    )
    return str(raw), str(out)


def test_stream_vmdk_grains_rebuild_the_disk(tmp_path):
    # Data at odd places (inside a grain, across grains, in the last grain), a run of
    # explicit zeros, and a compressible piece.
    size = 8 * MIB + 4096
    pieces = [(5, os.urandom(100)), (MIB - 10, os.urandom(70000)), (3 * MIB, bytes(MIB))]
    pieces += [(4 * MIB, b"abc" * 100000), (size - 512, os.urandom(512))]
    raw, stream = _stream_of(tmp_path, pieces, size)
    capacity, grains = _target.read_stream_vmdk(stream)
    assert capacity == size
    rebuilt = bytearray(size)
    sent = 0
    for offset, data in grains:
        assert offset % 512 == 0 and offset + len(data) <= size
        rebuilt[offset : offset + len(data)] = data
        sent += len(data)
    with open(raw, "rb") as fh:
        assert bytes(rebuilt) == fh.read()
    # The 64 KiB grains holding data only (1 + 3 + 5 whole, the last one 4 KiB): no
    # zeros, no holes.
    assert sent == 9 * 64 * 1024 + 4096
    assert os.path.getsize(stream) < 400000  # the repeated text is compressed


def test_stream_vmdk_without_data_has_no_grains(tmp_path):
    _raw, stream = _stream_of(tmp_path, [], 4 * MIB)
    capacity, grains = _target.read_stream_vmdk(stream)
    assert capacity == 4 * MIB and list(grains) == []


def test_stream_vmdk_refuses_other_formats(tmp_path):
    raw = tmp_path / "x.raw"
    raw.write_bytes(bytes(4096))
    with pytest.raises(PlatformError, match="not a sparse VMDK"):
        _target.read_stream_vmdk(str(raw))
    sparse = tmp_path / "x.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(sparse), "1M"], check=True)
    with pytest.raises(PlatformError, match="not a streamOptimized VMDK"):
        _target.read_stream_vmdk(str(sparse))


def test_allocated_areas_become_extents():
    def shape(extents):
        return [(e.start, e.length, e.data) for e in extents]

    assert shape(_connection.areas_to_extents([], 100)) == [(0, 100, False)]
    # Touching areas merge, gaps are zero extents, areas past the end are cut.
    got = _connection.areas_to_extents([(10, 5), (15, 5), (50, 10), (95, 20)], 100)
    want = [(0, 10, False), (10, 10, True), (20, 30, False), (50, 10, True), (60, 35, False), (95, 5, True)]
    assert shape(got) == want
    assert all(e.zero for e in got if not e.data)
    assert shape(_connection.areas_to_extents([(0, 100)], 100)) == [(0, 100, True)]


def test_allocated_areas_pages_through_the_disk():
    class Info:
        def __init__(self, start, length, areas):
            self.startOffset, self.length = start, length
            self.changedArea = [type("A", (), {"start": s, "length": n})() for s, n in areas]

    class Vm:
        calls = []

        def QueryChangedDiskAreas(self, snapshot, deviceKey, startOffset, changeId):
            self.calls.append((snapshot, deviceKey, startOffset, changeId))
            pages = {0: Info(0, 64, [(0, 8)]), 64: Info(64, 36, [(70, 4), (90, 10)])}
            return pages[startOffset]

    vm = Vm()
    assert _connection.allocated_areas(vm, 2000, 100) == [(0, 8), (70, 4), (90, 10)]
    assert vm.calls == [(None, 2000, 0, "*"), (None, 2000, 64, "*")]


def test_write_stream_vmdk_is_read_back_by_qemu(tmp_path):
    # Our own writer: data at odd places, explicit zeros, a last partial grain; qemu-img
    # (an independent reader, through the grain directory and tables) must agree.
    size = 40 * MIB + 4096  # two grain tables' worth and a bit
    pieces = [(5, os.urandom(100)), (MIB - 10, os.urandom(70000)), (3 * MIB, bytes(MIB))]
    pieces += [(33 * MIB, b"abc" * 100000), (size - 512, os.urandom(512))]
    raw, _qemu_stream = _stream_of(tmp_path, pieces, size)
    out = str(tmp_path / "ours.vmdk")
    with _disk.open_guest(raw, "raw") as reader:
        digests, data = _target.write_stream_vmdk(reader, out, adapter="ide", block_size=MIB)
        want = _blocks.digest_disk(reader, MIB)
    assert digests == want
    assert data == 9 * 64 * 1024 + 4096  # the non-zero grains only
    # The text and the mostly-zero grains are deflated: the file (with its 64 KiB head
    # and tables) is under half the data.
    assert os.path.getsize(out) < data // 2
    check = subprocess.run(["qemu-img", "check", out], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, out], capture_output=True, text=True, check=False
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    info = subprocess.run(["qemu-img", "info", "--output=json", out], capture_output=True, text=True, check=True)
    assert '"create-type": "streamOptimized"' in info.stdout and str(size) in info.stdout
    # Our reader gives the same grains back.
    capacity, grains = _target.read_stream_vmdk(out)
    assert capacity == size and sum(len(g) for _o, g in grains) == data


def test_write_stream_vmdk_of_an_empty_disk(tmp_path):
    raw = str(tmp_path / "empty.raw")
    with open(raw, "wb") as fh:
        fh.truncate(8 * MIB)
    out = str(tmp_path / "empty.vmdk")
    with _disk.open_guest(raw, "raw") as reader:
        _digests, data = _target.write_stream_vmdk(reader, out)
    assert data == 0 and os.path.getsize(out) < 128 * 1024
    cmp = subprocess.run(
        ["qemu-img", "compare", "-f", "raw", "-F", "vmdk", raw, out], capture_output=True, text=True, check=False
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_allocated_of_reads_the_current_extents_of_a_disk():
    from types import SimpleNamespace as NS

    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.source import allocated_of

    files = [
        NS(key=1, type="diskDescriptor", size=500, name="[ds] web/web.vmdk"),
        NS(key=2, type="diskExtent", size=3 * 1024 * 1024, name="[ds] web/web-flat.vmdk"),
        NS(key=3, type="diskDescriptor", size=400, name="[ds] web/web-000001.vmdk"),
        NS(key=4, type="diskExtent", size=1024 * 1024, name="[ds] web/web-000001-delta.vmdk"),
    ]
    # Under a snapshot: the base's extent and the delta's, not the descriptors.
    layout = NS(file=files, disk=[NS(key=2000, chain=[NS(fileKey=[1, 2]), NS(fileKey=[3, 4])])])
    assert allocated_of(layout, 2000) == 4 * 1024 * 1024
    layout.disk[0].chain = [NS(fileKey=[1, 2])]
    assert allocated_of(layout, 2000) == 3 * 1024 * 1024
    assert allocated_of(layout, 2001) is None and allocated_of(None, 2000) is None
    files[1].size = 0  # vcsim: no sizes
    assert allocated_of(layout, 2000) is None


def test_extent_bytes_reads_a_flat_descriptor():
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.source import extent_bytes

    desc = b'# Disk DescriptorFile\nversion=1\ncreateType="vmfs"\n\nRW 16384 VMFS "vm/vm-flat.vmdk"\n'
    assert extent_bytes(desc, "vm-flat.vmdk") == 16384 * 512
    assert extent_bytes(desc.replace(b"VMFS", b"FLAT"), "vm/vm-flat.vmdk") == 16384 * 512
    assert extent_bytes(desc, "other-flat.vmdk") is None
    assert extent_bytes(b"", "vm-flat.vmdk") is None  # vcsim's own empty disks: no size to check
    assert extent_bytes(None, "vm-flat.vmdk") is None
