"""The qemu-img layer against real images made by qemu-img in every format."""

import hashlib
import os
import subprocess

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk

MiB = 1024 * 1024
SIZE = 40 * MiB + 192 * 1024  # not a whole number of 1 MiB blocks: the last block is short
# (format, vmdk subformat, file suffix)
FORMATS = [
    ("qcow2", None, "qcow2"),
    ("vmdk", "monolithicSparse", "vmdk"),
    ("vmdk", "monolithicFlat", "vmdk"),
    ("vmdk", "streamOptimized", "vmdk"),
    ("vhdx", None, "vhdx"),
    ("vpc", None, "vhd"),
]
IDS = ["%s-%s" % (f[0], f[1]) if f[1] else f[0] for f in FORMATS]


def write_content(path):
    """A sparse raw disk with random data at known, partly unaligned offsets."""
    rnd = hashlib.sha256(b"vmigrate").digest()
    pieces = {
        0: os.urandom(MiB),
        5 * MiB + 4096: os.urandom(3 * MiB + 512),
        20 * MiB: bytes(2 * MiB),  # allocated zeros
        30 * MiB + 1000: rnd * 100,
        SIZE - 100000: os.urandom(100000),
    }
    with open(path, "wb") as fh:
        fh.truncate(SIZE)
        for off, data in pieces.items():
            fh.seek(off)
            fh.write(data)
    return pieces


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    raw = str(d / "base.raw")
    write_content(raw)
    made = {"raw": (raw, "raw")}
    for fmt, sub, suffix in FORMATS:
        path = str(d / ("base-%s.%s" % (sub or fmt, suffix)))
        opts = ["-o", "subformat=%s" % sub] if sub else (["-o", "force_size=on"] if fmt == "vpc" else [])
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt] + opts + [raw, path], check=True)
        made["%s-%s" % (fmt, sub) if sub else fmt] = (path, fmt)
    return made


def test_info_each_format(images):
    for key, (path, fmt) in images.items():
        data = _disk.info(path, fmt)
        assert data["virtual-size"] == SIZE, key
        assert data["format"] == fmt


@pytest.mark.parametrize("fmt,sub,suffix", FORMATS, ids=IDS)
def test_convert_is_equal_and_atomic(images, tmp_path, fmt, sub, suffix):
    raw = images["raw"][0]
    dst = str(tmp_path / ("out." + suffix))
    p = Progress("convert", SIZE, sink=lambda r: None, interval=0)
    _disk.convert(raw, "raw", dst, fmt, subformat=sub, progress=p)
    assert p.done_bytes == SIZE
    assert _disk.compare(raw, "raw", dst, fmt)
    expected = {"out." + suffix} | ({"out-flat.vmdk"} if sub == "monolithicFlat" else set())
    assert set(os.listdir(tmp_path)) == expected  # no .part left behind
    # and back to raw from the new format
    back = str(tmp_path / "back.raw")
    _disk.convert(dst, fmt, back, "raw")
    assert open(back, "rb").read() == open(raw, "rb").read()


def test_compare_detects_a_difference(images, tmp_path):
    raw = images["raw"][0]
    other = str(tmp_path / "other.raw")
    with open(raw, "rb") as src, open(other, "wb") as dst:
        dst.write(src.read())
    with open(other, "r+b") as fh:
        fh.seek(33 * MiB)
        fh.write(b"x")
    assert not _disk.compare(raw, "raw", other, "raw")
    assert not _disk.compare(images["qcow2"][0], "qcow2", other, "raw")


def test_allocation_map_matches_written_regions(images):
    for key in ("raw", "qcow2", "vmdk-monolithicSparse"):  # fine-grained allocation units
        path, fmt = images[key]
        extents = _disk.allocation_map(path, fmt)
        assert extents[0].start == 0
        assert sum(e.length for e in extents) == SIZE
        for a, b in zip(extents, extents[1:], strict=False):
            assert a.start + a.length == b.start
        data = [e for e in extents if e.data and not e.zero]
        assert any(e.start <= 0 < e.start + e.length for e in data), key
        assert any(e.start <= 6 * MiB < e.start + e.length for e in data), key
        # 10 MiB was never written: not data anywhere
        assert not any(e.start <= 10 * MiB < e.start + e.length for e in data), key
        # far less than the capacity is data
        assert sum(e.length for e in data) < SIZE / 2, key


@pytest.mark.parametrize("key", ["raw"] + IDS)
def test_open_guest_reads_the_guest_bytes(images, key):
    path, fmt = images[key]
    expected = open(images["raw"][0], "rb").read()
    with _disk.open_guest(path, fmt) as g:
        assert g.size == SIZE
        got = g.pread(SIZE, 0)  # > 32 MiB: split into NBD-sized requests
        assert got == expected
        assert g.pread(4096, 5 * MiB + 4096) == expected[5 * MiB + 4096 : 5 * MiB + 8192]
        extents = g.extents()
        assert sum(e.length for e in extents) == SIZE
        assert any(e.data and not e.zero and e.start <= 0 < e.start + e.length for e in extents)


def test_open_guest_write_then_read_back(images, tmp_path):
    dst = str(tmp_path / "w.qcow2")
    _disk.convert(images["raw"][0], "raw", dst, "qcow2")
    with _disk.open_guest(dst, "qcow2", writable=True) as g:
        g.pwrite(b"\xab" * 70000, 12345)
        g.flush()
    # read back by qemu-img itself, not by our reader
    out = str(tmp_path / "w.raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", dst, out], check=True)
    with open(out, "rb") as fh:
        fh.seek(12345)
        assert fh.read(70000) == b"\xab" * 70000


def test_corrupt_and_truncated_images_name_the_file(images, tmp_path, reliability):
    reliability(
        "engine",
        "truncated qcow2 and vhdx, a qcow2 of random bytes, an unknown format, an absent file",
        "DiskError naming the file ('corrupt' for the truncated qcow2, the format for the garbage one); "
        "'unknown disk format'",
        "the image only read",
    )
    q = str(tmp_path / "trunc.qcow2")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", images["raw"][0], q], check=True)
    os.truncate(q, 400000)
    with pytest.raises(DiskError) as err:
        _disk.info(q, "qcow2")
    assert q in str(err.value) and "corrupt" in str(err.value)

    v = str(tmp_path / "trunc.vhdx")
    with open(images["vhdx"][0], "rb") as fh:
        open(v, "wb").write(fh.read(200000))
    with pytest.raises(DiskError) as err:
        _disk.info(v, "vhdx")
    assert v in str(err.value)

    garbage = str(tmp_path / "garbage.qcow2")
    open(garbage, "wb").write(os.urandom(65536))
    with pytest.raises(DiskError) as err:
        _disk.info(garbage, "qcow2")
    assert garbage in str(err.value) and "qcow2" in str(err.value)
    with pytest.raises(DiskError) as err:
        _disk.open_guest(garbage, "qcow2")
    assert garbage in str(err.value)

    with pytest.raises(DiskError) as err:
        _disk.info(images["raw"][0], "floppy")
    assert "unknown disk format" in str(err.value)
    with pytest.raises(DiskError) as err:
        _disk.info(str(tmp_path / "absent.qcow2"), "qcow2")
    assert "absent.qcow2" in str(err.value)


def test_failed_convert_leaves_nothing(tmp_path, reliability):
    reliability(
        "engine",
        "converting a vhdx of random bytes",
        "DiskError naming the source file",
        "nothing left in the output dir",
    )
    garbage = str(tmp_path / "garbage.vhdx")
    open(garbage, "wb").write(os.urandom(65536))
    dst = str(tmp_path / "out" / "disk.qcow2")
    with pytest.raises(DiskError) as err:
        _disk.convert(garbage, "vhdx", dst, "qcow2")
    assert garbage in str(err.value)
    assert os.listdir(tmp_path / "out") == []


def test_create(tmp_path):
    for fmt, sub, suffix in FORMATS:
        path = str(tmp_path / ("new-%s.%s" % (sub or fmt, suffix)))
        _disk.create(path, fmt, 8 * MiB, subformat=sub)
        assert _disk.info(path, fmt)["virtual-size"] == 8 * MiB


def test_open_nbd_reads_a_dirty_bitmap(tmp_path):
    """An existing NBD export with a persistent dirty bitmap, as libvirt's pull backup offers."""
    img = str(tmp_path / "b.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, str(16 * MiB)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", img], check=True, capture_output=True)
    subprocess.run(["qemu-img", "bitmap", "--add", "-f", "qcow2", img, "b0"], check=True)
    # written after the bitmap was added: only this is dirty
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 4M 128k", img], check=True, capture_output=True)
    sock = str(tmp_path / "s")
    proc = subprocess.Popen(["qemu-nbd", "-k", sock, "-f", "qcow2", "--read-only", "-B", "b0", img])
    try:
        for _attempt in range(500):
            if os.path.exists(sock):
                break
            proc.wait(timeout=0.01) if proc.poll() is not None else __import__("time").sleep(0.01)
        with _disk.open_nbd("nbd+unix:///?socket=" + sock, "qemu:dirty-bitmap:b0") as r:
            assert r.size == 16 * MiB
            dirty = [e for e in r.extents("qemu:dirty-bitmap:b0") if e.data]
            assert len(dirty) == 1
            assert dirty[0].start <= 4 * MiB and dirty[0].start + dirty[0].length >= 4 * MiB + 128 * 1024
            assert dirty[0].length <= MiB  # bitmap granularity is 64k; not the whole disk
            assert r.pread(4, 4 * MiB) == b"\x02" * 4
            alloc = [e for e in r.extents() if e.data]
            assert alloc[0].start == 0
    finally:
        proc.terminate()
        proc.wait()


def test_write_refused_by_the_format_is_a_disk_error(images, tmp_path, reliability):
    reliability(
        "engine",
        "rewriting allocated data of a streamOptimized vmdk (qemu cannot)",
        "DiskError naming the file and 'streamOptimized' (not a raw nbd error)",
        "write refused",
    )
    """qemu cannot rewrite allocated clusters of a streamOptimized vmdk: a clear error, not nbd.Error."""
    path = str(tmp_path / "so.vmdk")
    _disk.convert(images["raw"][0], "raw", path, "vmdk", subformat="streamOptimized")
    with pytest.raises(DiskError) as err:
        with _disk.open_guest(path, "vmdk", writable=True) as g:
            g.pwrite(b"\x01" * 65536, 0)  # offset 0 holds data
            g.flush()
    assert path in str(err.value) and "streamOptimized" in str(err.value)


def test_open_guest_exports_a_persistent_dirty_bitmap(tmp_path):
    """qemu-nbd -B: the bitmap's extents are what was written after it was added, at its
    granularity, and qemu-img info (qcow2_bitmap) says it can be used."""
    path = str(tmp_path / "d.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "16M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 4M", path], check=True, capture_output=True)
    subprocess.run(["qemu-img", "bitmap", "--add", "--granularity", "65536", path, "chk1"], check=True)
    writes = ["write -P 2 1M 4k", "write -P 3 10M 64k", "write -P 4 12M 512"]
    subprocess.run(["qemu-io"] + [a for w in writes for a in ("-c", w)] + [path], check=True, capture_output=True)
    info = _disk.info(path, "qcow2")
    assert _disk.qcow2_bitmap(info, "chk1") is None
    assert "no dirty bitmap nope" in _disk.qcow2_bitmap(info, "nope")
    with _disk.open_guest(path, "qcow2", bitmap="chk1") as reader:
        dirty = [(e.start, e.length) for e in reader.extents(_disk.bitmap_context("chk1")) if e.data]
        assert reader.pread(4096, 1024 * 1024) == b"\x02" * 4096
    assert dirty == [(1024 * 1024, 65536), (10 * 1024 * 1024, 65536), (12 * 1024 * 1024, 65536)]


def test_qcow2_bitmap_refuses_an_in_use_bitmap_and_other_formats():
    info = {
        "format": "qcow2",
        "format-specific": {"data": {"bitmaps": [{"name": "chk1", "flags": ["in-use", "auto"]}]}},
    }
    assert "in-use" in _disk.qcow2_bitmap(info, "chk1")
    assert "not qcow2" in _disk.qcow2_bitmap({"format": "raw"}, "chk1")
    with pytest.raises(_disk.DiskError, match="only qcow2"):
        _disk.open_guest("/nonexistent.raw", "raw", bitmap="chk1")


def test_a_stalled_nbd_server_ends_the_read_with_a_clear_error(tmp_path, monkeypatch, reliability):
    reliability(
        "engine",
        "a hung NBD server (every read delayed 30 s), stall timeout 1 s",
        "DiskError 'answered no request for 1 s', naming the socket and VMIGRATE_NBD_TIMEOUT",
        "the read ends in under 10 s, never hangs",
    )
    """nbdkit's delay filter holds every read for 30 s (a hung endpoint): with a stall
    timeout of 1 s the read gives up in about that, naming the export and the fix."""
    import shutil
    import subprocess
    import time

    if not shutil.which("nbdkit"):
        pytest.skip("nbdkit is not installed (tests/lab/lab deps installs it)")
    mib = 1024 * 1024
    sock = str(tmp_path / "nbd.sock")
    server = subprocess.Popen(
        ["nbdkit", "--exit-with-parent", "-f", "-U", sock, "--filter=delay", "memory", "8M", "rdelay=30"]
    )
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        monkeypatch.setenv("VMIGRATE_NBD_TIMEOUT", "1")
        reader = _disk.open_nbd("nbd+unix:///?socket=" + sock)
        started = time.monotonic()
        with pytest.raises(DiskError) as err:
            for _chunk in reader.read_chunks([(0, mib), (mib, mib)], mib):
                pass
        assert time.monotonic() - started < 10
        msg = str(err.value)
        assert "answered no request for 1 s" in msg and sock in msg and "VMIGRATE_NBD_TIMEOUT" in msg, msg
        reader.close()
    finally:
        server.kill()
        server.wait()
