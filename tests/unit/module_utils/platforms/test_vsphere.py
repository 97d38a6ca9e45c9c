"""Unit tests of _vsphere parts that need no vCenter: paths, pins, retries, descriptors, deltas."""

from __future__ import annotations

import hashlib
import http.client

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, PlatformError
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


def test_thumbprint_pin():
    cert = b"not really DER, but bytes all the same"
    sha256 = hashlib.sha256(cert).hexdigest()
    _connection.check_thumbprint(cert, ":".join(sha256[i : i + 2] for i in range(0, 64, 2)).upper(), "h")
    _connection.check_thumbprint(cert, hashlib.sha1(cert).hexdigest(), "h")
    with pytest.raises(PlatformError, match="not the pinned thumbprint"):
        _connection.check_thumbprint(cert, "00" * 32, "h")
    with pytest.raises(InputError, match="neither SHA-256 nor SHA-1"):
        _connection.check_thumbprint(cert, "abcd", "h")


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


def test_ssl_context_checks_ca_path(tmp_path):
    with pytest.raises(InputError, match="ca_path .* does not exist"):
        _connection.ssl_context(True, str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(InputError, match="not a PEM CA file"):
        _connection.ssl_context(True, str(bad))
    assert _connection.ssl_context(False).verify_mode.name == "CERT_NONE"


def test_vmdk_descriptor_is_qemu_img_s(tmp_path):
    text = _target.vmdk_descriptor(64 * 1024 * 1024, "web01-flat.vmdk", "lsilogic")
    assert b'createType="monolithicFlat"' in text and b'RW 131072 FLAT "web01-flat.vmdk" 0' in text
    # With a raw extent beside it, qemu-img reads the pair as one 64 MiB vmdk.
    (tmp_path / "web01.vmdk").write_bytes(text)
    with open(tmp_path / "web01-flat.vmdk", "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    assert _disk.info(str(tmp_path / "web01.vmdk"), "vmdk")["virtual-size"] == 64 * 1024 * 1024
