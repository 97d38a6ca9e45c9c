"""Block digests, in-flight hashing and apply_delta on real images in every format."""

import hashlib
import os
import subprocess

import pytest
from blake3 import blake3  # an independent BLAKE3 implementation, not the code under test

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk

MiB = 1024 * 1024
SIZE = 40 * MiB + 192 * 1024  # the last 1 MiB block is short
BS = MiB
FORMATS = [
    ("qcow2", None, "qcow2"),
    ("vmdk", "monolithicSparse", "vmdk"),
    ("vmdk", "monolithicFlat", "vmdk"),
    ("vmdk", "streamOptimized", "vmdk"),
    ("vhdx", None, "vhdx"),
    ("vpc", None, "vhd"),
]
IDS = ["%s-%s" % (f[0], f[1]) if f[1] else f[0] for f in FORMATS]


def make_raw(path):
    pieces = {
        0: os.urandom(MiB),
        5 * MiB + 4096: os.urandom(3 * MiB + 512),
        20 * MiB: bytes(2 * MiB),  # allocated zeros: must digest as ZERO_DIGEST
        30 * MiB + 1000: os.urandom(300000),
        SIZE - 100000: os.urandom(100000),
    }
    with open(path, "wb") as fh:
        fh.truncate(SIZE)
        for off, data in pieces.items():
            fh.seek(off)
            fh.write(data)


def to_format(raw, path, fmt, sub):
    opts = ["-o", "subformat=%s" % sub] if sub else (["-o", "force_size=on"] if fmt == "vpc" else [])
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt] + opts + [raw, path], check=True)


def independent_digests(path, fmt, tmp_path, block_size=BS):
    """Digests computed here without the project's readers: qemu-img writes raw, we hash it."""
    out = str(tmp_path / ("independent-%s.raw" % os.path.basename(path)))
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, out], check=True)
    digests = bytearray()
    with open(out, "rb") as fh:
        while True:
            block = fh.read(block_size)
            if not block:
                break
            digests += bytes(32) if block == bytes(len(block)) else blake3(block).digest()
    os.unlink(out)
    return bytes(digests)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("blk")
    raw = str(d / "base.raw")
    make_raw(raw)
    made = {"raw": (raw, "raw")}
    for (fmt, sub, suffix), key in zip(FORMATS, IDS, strict=True):
        path = str(d / ("base-%s.%s" % (key, suffix)))
        to_format(raw, path, fmt, sub)
        made[key] = (path, fmt)
    return made


def test_digests_match_an_independent_reader_and_every_format(images, tmp_path):
    raw = images["raw"][0]
    expected = independent_digests(raw, "raw", tmp_path)
    assert len(expected) == 32 * 41
    for key, (path, fmt) in images.items():
        with _disk.open_guest(path, fmt) as g:
            dl = _blocks.digest_disk(g, BS)
        assert bytes(dl.digests) == expected, key
        if fmt not in ("vhdx", "vpc"):  # these allocate in 2-32 MiB blocks
            assert dl.bytes_read < SIZE / 2, key  # holes are not read
    dl = _blocks.DigestList(BS, digests=expected)
    assert dl[20] == _blocks.ZERO_DIGEST and dl[21] == _blocks.ZERO_DIGEST  # allocated zeros
    assert dl[0] != _blocks.ZERO_DIGEST and dl[40] != _blocks.ZERO_DIGEST  # short last block
    assert dl[10] == _blocks.ZERO_DIGEST  # never written


def test_other_block_sizes(images, tmp_path):
    path, fmt = images["qcow2"]
    for bs in (64 * 1024, 4 * MiB):
        with _disk.open_guest(path, fmt) as g:
            dl = _blocks.digest_disk(g, bs, chunk=5 * bs, workers=3)  # uneven split among threads
        assert bytes(dl.digests) == independent_digests(path, fmt, tmp_path, bs)


def test_block_hasher_assembles_unaligned_feeds(images):
    raw = images["raw"][0]
    data = open(raw, "rb").read()
    with _disk.open_guest(raw, "raw") as g:
        whole = _blocks.digest_disk(g, BS)
    h = _blocks.BlockHasher(SIZE, BS)
    pos = 0
    step = 777777  # feeds straddle block boundaries
    while pos < SIZE:
        h.feed(pos, data[pos : pos + step])
        pos += step
    assert h.finish() == whole
    # only the data blocks are fed; the rest is taken as zeros
    h = _blocks.BlockHasher(SIZE, BS)
    h.feed(5 * MiB + 4096, data[5 * MiB + 4096 : 8 * MiB + 4608])
    h.feed(0, memoryview(data)[: 2 * MiB])
    h.feed(30 * MiB, data[30 * MiB : 31 * MiB])
    h.feed(SIZE - 100000, data[SIZE - 100000 :])
    assert h.finish() == whole


def test_save_load_fingerprint_and_hash_diff(images, tmp_path):
    raw = images["raw"][0]
    with _disk.open_guest(raw, "raw") as g:
        dl = _blocks.digest_disk(g, BS)
    path = str(tmp_path / "digests" / "disk0.blocks")
    fp = dl.save(path)
    assert fp == hashlib.sha256(open(path, "rb").read()).hexdigest() == dl.fingerprint()
    assert os.path.getsize(path) == 32 * len(dl)
    back = _blocks.DigestList.load(path, BS, expected_sha256=fp, count=len(dl))
    assert back == dl
    with pytest.raises(InputError) as err:
        _blocks.DigestList.load(path, BS, expected_sha256="0" * 64)
    assert path in str(err.value)
    open(path, "ab").write(b"xx")
    with pytest.raises(InputError) as err:
        _blocks.DigestList.load(path, BS)
    assert "truncated" in str(err.value)

    other = _blocks.DigestList(BS, digests=dl.digests)
    assert dl.changed_blocks(other) == []
    other[3] = blake3(b"x").digest()
    other[4] = blake3(b"y").digest()
    other[40] = _blocks.ZERO_DIGEST
    assert dl.changed_blocks(other) == [3, 4, 40]
    assert dl.changed_extents(other, SIZE) == [(3 * MiB, 2 * MiB), (40 * MiB, 192 * 1024)]
    with pytest.raises(InputError):
        dl.changed_blocks(_blocks.DigestList(4096, len(dl)))


WRITABLE = [f for f in FORMATS if f[1] != "streamOptimized"]  # written by qemu-img convert only


@pytest.mark.parametrize("fmt,sub,suffix", [("raw", None, "raw")] + WRITABLE, ids=str)
def test_copy_with_digests(images, tmp_path, fmt, sub, suffix):
    """Read the source once, write a new sparse image, digests in flight."""
    src, src_fmt = images["raw"]  # holds allocated zeros, which must not be written
    dst = str(tmp_path / ("copy." + suffix))
    _disk.create(dst, fmt, SIZE, subformat=sub)
    with _disk.open_guest(src, src_fmt) as r, _disk.open_guest(dst, fmt, writable=True) as w:
        dl, stats = _blocks.copy_with_digests(r, w, BS)
    assert _disk.compare(src, src_fmt, dst, fmt)
    assert bytes(dl.digests) == independent_digests(src, src_fmt, tmp_path)
    assert stats["bytes_read"] < SIZE / 2
    assert stats["bytes_written"] < stats["bytes_read"]  # the 2 MiB of zeros are not written


def changed_source(raw, path):
    """The source after the guest wrote: returns the pieces a delta would carry."""
    data = bytearray(open(raw, "rb").read())
    pieces = [
        (0, os.urandom(4096)),  # inside a data block
        (10 * MiB, os.urandom(2 * MiB)),  # whole blocks in a hole
        (20 * MiB + 512, os.urandom(1000)),  # into allocated zeros
        (5 * MiB + 4096, bytes(3 * MiB + 512)),  # data becomes zeros
        (SIZE - 4096, os.urandom(4096)),  # the short last block
    ]
    for off, chunk in pieces:
        data[off : off + len(chunk)] = chunk
    open(path, "wb").write(data)
    return pieces


@pytest.mark.parametrize("fmt,sub,suffix", [("raw", None, "raw")] + FORMATS, ids=["raw"] + IDS)
def test_apply_delta_makes_target_equal(images, tmp_path, fmt, sub, suffix):
    raw = images["raw"][0]
    target = str(tmp_path / ("target." + suffix))
    if fmt == "raw":
        open(target, "wb").write(open(raw, "rb").read())
    else:
        to_format(raw, target, fmt, sub)
    with _disk.open_guest(target, fmt) as g:
        digests = _blocks.digest_disk(g, BS)
    source = str(tmp_path / "source.raw")
    pieces = changed_source(raw, source)
    assert not _disk.compare(source, "raw", target, fmt)

    stats = _blocks.apply_delta(target, fmt, iter(pieces), digests=digests)
    assert stats["pieces"] == len(pieces)
    assert stats["bytes_written"] == sum(len(piece[1]) for piece in pieces)
    assert _disk.compare(source, "raw", target, fmt)
    _disk.info(target, fmt)  # still a valid image
    if sub:
        info = _disk.info(target, fmt)
        assert info["format-specific"]["data"]["create-type"] == sub
    # the updated digests are those of the new content, read independently
    assert bytes(digests.digests) == independent_digests(source, "raw", tmp_path)


def _whole_digests(data, bs):
    out = _blocks.DigestList.for_size(len(data), bs)
    for i in range(len(out)):
        blk = bytes(data[i * bs : (i + 1) * bs])
        out[i] = _blocks.ZERO_DIGEST if blk == bytes(len(blk)) else blake3(blk).digest()
    return out


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_write_with_digests_updates_partly_written_blocks_from_the_target(tmp_path, fmt):
    """Pieces smaller than a block, across block edges, a block covered by two pieces, a
    block zeroed whole, the short last block: every digest equals that of the whole new
    block (blake3 of the bytes read back), and untouched blocks keep their digest."""
    bs = 64 * 1024
    size = 10 * bs + 4096  # a short last block
    old = bytearray(os.urandom(size))
    old[7 * bs : 8 * bs] = bytes(bs)
    raw = tmp_path / "old.raw"
    raw.write_bytes(bytes(old))
    path = str(raw)
    if fmt == "qcow2":
        path = str(tmp_path / "old.qcow2")
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), path], check=True)
    digests = _whole_digests(old, bs)
    pieces = [
        (512, os.urandom(4096)),  # inside block 0
        (2 * bs - 1024, os.urandom(2048)),  # across blocks 1 and 2
        (3 * bs, os.urandom(bs // 2)),  # block 3 in two pieces: first half
        (3 * bs + bs // 2, os.urandom(bs // 2)),  # ... second half
        (5 * bs, bytes(bs)),  # block 5 zeroed whole
        (7 * bs + 8192, os.urandom(512)),  # a zero block becomes partly dirty
        (10 * bs + 512, os.urandom(1024)),  # the short last block
    ]
    new = bytearray(old)
    for off, data in pieces:
        new[off : off + len(data)] = data
    with _disk.open_guest(path, fmt, writable=True) as target:
        stats = _blocks.write_with_digests(target, iter(pieces), digests, chunk=2 * bs)
        target.flush()
    assert stats["bytes_written"] == sum(len(d) for _o, d in pieces)
    assert stats["blocks_reread"] == 6  # blocks 0, 1, 2, 3 (two halves), 7, 10
    assert digests == _whole_digests(new, bs)
    assert digests[5] == _blocks.ZERO_DIGEST
    with _disk.open_guest(path, fmt) as reader:
        assert reader.pread(size, 0) == bytes(new)


def test_write_with_digests_refuses_a_piece_outside_the_disk(tmp_path):
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(8192))
    digests = _blocks.DigestList.for_size(8192, 4096)
    with _disk.open_guest(str(path), "raw", writable=True) as target:
        with pytest.raises(_disk.DiskError, match="outside"):
            _blocks.write_with_digests(target, [(8192 - 512, bytes(1024))], digests)


@pytest.mark.parametrize("chunk", [MiB, 4 * MiB], ids=["1MiB", "4MiB"])
def test_copy_with_digests_from_nbd(images, tmp_path, chunk):
    """An NBD source (qemu-nbd, several aio reads in flight into a ring of buffers) copied
    into a sparse raw file: the digests are digest_disk's, the bytes the source's, and
    zeros and holes are not written."""
    src, src_fmt = images["qcow2"]
    dst = str(tmp_path / "copy.raw")
    _disk.create(dst, "raw", SIZE)
    ticks = []

    class Progress:
        total = SIZE

        def advance(self, n):
            ticks.append(n)

    # The second pass reads the whole disk as data: zero blocks must still not be written.
    for bs, extents in ((BS, None), (64 * 1024, [_disk.Extent(0, SIZE, True, False)])):
        with _disk.open_guest(src, src_fmt) as r:
            expected = _blocks.digest_disk(r, bs)
        os.unlink(dst)
        _disk.create(dst, "raw", SIZE)
        del ticks[:]
        with _disk.open_guest(src, src_fmt) as r, _disk.open_guest(dst, "raw", writable=True) as w:
            assert hasattr(r, "read_chunks")
            dl, stats = _blocks.copy_with_digests(r, w, bs, progress=Progress(), extents=extents, chunk=chunk)
        assert dl == expected
        assert bytes(dl.digests) == independent_digests(src, src_fmt, tmp_path, bs)
        assert _disk.compare(src, src_fmt, dst, "raw")
        assert sum(ticks) == SIZE and len(ticks) > 2
        nonzero = sum(min(bs, SIZE - i * bs) for i in range(len(dl)) if dl[i] != _blocks.ZERO_DIGEST)
        assert stats["bytes_written"] == nonzero
        allocated = sum(e.length for e in _disk.allocation_map(dst, "raw") if e.data)
        assert allocated <= nonzero + 4096  # holes stay holes
        if extents:
            assert stats["bytes_read"] == SIZE


def test_nbd_read_chunks_keeps_buffers_until_asked(images):
    """read_chunks yields the bytes at each offset in order; with keep=1 the buffer yielded
    before stays untouched while the caller holds the next one."""
    raw, _fmt = images["raw"]
    src, src_fmt = images["qcow2"]
    data = open(raw, "rb").read()
    items = [(off, min(MiB, SIZE - off)) for off in range(0, SIZE, MiB)]
    with _disk.open_guest(src, src_fmt) as r:
        prev = None
        for (off, length), (got_off, buf, got_len) in zip(items, r.read_chunks(items, MiB, keep=1), strict=True):
            assert (got_off, got_len) == (off, length)
            assert bytes(buf[:length]) == data[off : off + length]
            if prev is not None:
                assert bytes(prev[1][: prev[2]]) == data[prev[0] : prev[0] + prev[2]]
            prev = (got_off, buf, got_len)
        # A caller that stops early leaves the handle usable.
        gen = r.read_chunks(items, MiB)
        next(gen)
        gen.close()
        assert r.pread(4096, 0) == data[:4096]


def test_nbd_read_chunks_reads_around_unaligned_requests(images):
    """A vhdx export asks 4 KiB requests; items aligned to 512 bytes only are read with pread."""
    raw, _fmt = images["raw"]
    src, src_fmt = images["vhdx"]
    data = open(raw, "rb").read()
    items = [(5 * MiB + 512, 3 * MiB), (SIZE - 1536, 1536)]
    with _disk.open_guest(src, src_fmt) as r:
        got = [(off, bytes(buf[:n]), n) for off, buf, n in r.read_chunks(items, 3 * MiB)]
    assert got == [(off, data[off : off + n], n) for off, n in items]


def test_nbd_read_chunks_reports_a_failed_read(images):
    """A request the export refuses becomes a DiskError naming the export and the offset."""
    src, src_fmt = images["qcow2"]
    items = [(0, MiB), (MiB, MiB), (SIZE, MiB)]  # the last lies past the end
    with _disk.open_guest(src, src_fmt) as r:
        with pytest.raises(DiskError, match="reading %s at offset %d" % (src, SIZE)):
            for _item in r.read_chunks(items, MiB):
                pass
        assert r.pread(4096, MiB) == open(images["raw"][0], "rb").read(2 * MiB)[MiB : MiB + 4096]


def test_apply_deltas_checked_catches_a_flipped_bit_in_a_delta(tmp_path):
    """Two deltas (a sparse file each, data at its disk offsets) brought onto an old image:
    with intact files nothing differs; one bit flipped in the second file is reported as
    the block it lands in, found from the delta's data alone (plus the blocks it touches in
    part, read back), not by reading the whole disk."""
    bs = 64 * 1024
    size = 16 * bs
    old = bytearray(os.urandom(size))
    new = bytearray(old)
    deltas = []
    for index, extents in enumerate([[(bs, 2 * bs)], [(5 * bs + 100, 300), (9 * bs, bs)]], start=1):
        path = tmp_path / ("delta%d" % index)
        with open(path, "wb") as fh:
            fh.truncate(size)
            for start, length in extents:
                data = os.urandom(length)
                new[start : start + length] = data
                fh.seek(start)
                fh.write(data)
        deltas.append({"index": index, "path": str(path), "extents": extents, "bytes": sum(n for _s, n in extents)})
    expected = _whole_digests(new, bs)

    def run():
        target = tmp_path / "target.raw"
        target.write_bytes(bytes(old))
        return target, _blocks.apply_deltas_checked(str(target), "raw", deltas, str, expected)

    target, (stats, bad) = run()
    assert bad == [] and target.read_bytes() == bytes(new)
    assert [s["bytes_written"] for s in stats] == [2 * bs, 300 + bs]

    with open(deltas[1]["path"], "r+b") as fh:  # one bit of the second delta's 9th block
        fh.seek(9 * bs + 1234)
        byte = fh.read(1)[0]
        fh.seek(9 * bs + 1234)
        fh.write(bytes([byte ^ 0x04]))
    target, (_stats, bad) = run()
    assert bad == [9]
    assert target.read_bytes() != bytes(new)  # it was written: the caller marks the target incomplete


def test_check_disk_data_names_bundle_disk_files_and_fix(tmp_path):
    """The imports' shared check: a bit flipped in a bundle's vmdk (descriptor + flat file)
    is refused naming both files and how many blocks differ; the intact image passes."""
    raw = tmp_path / "src.raw"
    raw.write_bytes(os.urandom(4 * MiB))
    bundle = tmp_path / "b"
    (bundle / "digests").mkdir(parents=True)
    vmdk = bundle / "disk0.vmdk"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
                    str(raw), str(vmdk)], check=True)  # fmt: skip
    with _disk.open_guest(str(raw), "raw") as reader:
        want = _blocks.digest_disk(reader, MiB)
    disk = {"id": "disk0", "path": "disk0.vmdk", "digests": "digests/disk0.blocks", "block_size": MiB,
            "digests_sha256": want.save(str(bundle / "digests" / "disk0.blocks")), "blocks": len(want),
            "files": [{"path": "disk0.vmdk"}, {"path": "disk0-flat.vmdk"}]}  # fmt: skip
    _blocks.check_disk_data(str(bundle), disk, str(vmdk), "vmdk", "vm1")
    flat = bundle / "disk0-flat.vmdk"
    with open(flat, "r+b") as fh:
        fh.seek(2 * MiB + 9)
        byte = fh.read(1)[0]
        fh.seek(2 * MiB + 9)
        fh.write(bytes([byte ^ 1]))
    with pytest.raises(DiskError) as exc:
        _blocks.check_disk_data(str(bundle), disk, str(vmdk), "vmdk", "vm1", left="no VM left")
    msg = exc.value.message
    assert "bundle %s, disk disk0: the data in %s (with %s) does not match" % (bundle, vmdk, flat) in msg, msg
    assert "(1 of 4 blocks differ, first at byte %d): the file is damaged" % (2 * MiB) in msg, msg
    assert msg.endswith("re-run the export (and convert) that wrote it; vm1 was not imported (no VM left)"), msg
