"""engine/export.py's delta writing: the bytes of exact extents go into the delta and the
base copy, and every digest block they touch is re-hashed (partly dirty ones from the base).
The export's decisions are tested against a fake platform in platforms/test_contract.py."""

from __future__ import annotations

import os
import random

from blake3 import blake3  # an independent BLAKE3 implementation, not the code under test

from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import export as _export
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.bundle import Bundle


def _progress():
    return Progress("test", 0)


class BytesReader:
    def __init__(self, data):
        self.data = data
        self.size = len(data)

    def pread(self, length, offset):
        return self.data[offset : offset + length]


def test_write_delta_holds_changed_blocks_and_updates_digests(tmp_path):
    bs = 4096
    data = bytearray(8 * bs)
    data[bs : 2 * bs] = b"a" * bs
    data[5 * bs : 5 * bs + 10] = b"b" * 10
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(len(data)))
    drec = {"id": "disk0", "path": str(base), "format": "raw"}
    digests = _blocks.DigestList.for_size(len(data), bs)
    runs = [[bs, 2 * bs], [5 * bs, bs]]
    delta = _bundle.DeltaFile(str(tmp_path), "disk0", 2, len(data))
    stats = _export._write_delta(
        Bundle(str(tmp_path), {}), drec, BytesReader(bytes(data)), runs, delta, digests, _progress()
    )
    record = {"id": "disk0"}
    delta.finish(record, runs)
    path = str(tmp_path / record["deltas"][0]["path"])
    assert stats == {"bytes_read": 3 * bs, "bytes_written": 3 * bs}  # one piece, not all zeros
    assert os.path.getsize(path) == len(data)
    assert digests[1] == blake3(bytes(data[bs : 2 * bs])).digest()
    assert digests[2] == _blocks.ZERO_DIGEST
    assert digests[5] == blake3(bytes(data[5 * bs : 6 * bs])).digest()
    assert base.read_bytes() == bytes(data)  # the base is the disk as of this sync
    pieces = list(_bundle.delta_pieces(path, runs))
    assert b"".join(p for _o, p in pieces) == bytes(data[bs : 3 * bs]) + bytes(data[5 * bs : 6 * bs])


def test_write_delta_of_exact_extents_hashes_partly_dirty_blocks_from_the_base(tmp_path):
    """Dirty extents smaller than a digest block: the delta holds only them, and each
    block's digest (new bytes + the base's unchanged bytes) equals the digest of the
    whole new block."""
    bs = 64 * 1024
    rng = random.Random(7)
    old = bytearray(rng.randbytes(6 * bs))
    old[4 * bs : 5 * bs] = bytes(bs)  # a zero block that becomes partly dirty
    new = bytearray(old)
    extents = [[512, 4096], [bs + 60 * 1024, 8192], [3 * bs, bs], [4 * bs + 1024, 512], [6 * bs - 512, 512]]
    for start, length in extents:
        new[start : start + length] = rng.randbytes(length)
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(old))
    drec = {"id": "disk0", "path": str(base), "format": "raw"}
    digests = _blocks.DigestList.for_size(len(old), bs)
    for i in range(6):
        blk = bytes(old[i * bs : (i + 1) * bs])
        digests[i] = _blocks.ZERO_DIGEST if blk == bytes(bs) else blake3(blk).digest()
    delta = _bundle.DeltaFile(str(tmp_path), "disk0", 2, len(new))
    stats = _export._write_delta(
        Bundle(str(tmp_path), {}), drec, BytesReader(bytes(new)), extents, delta, digests, _progress()
    )
    record = {"id": "disk0"}
    delta.finish(record, extents)
    path = str(tmp_path / record["deltas"][0]["path"])
    dirty = sum(e[1] for e in extents)
    assert stats == {"bytes_read": dirty, "bytes_written": dirty}
    assert os.stat(path).st_blocks * 512 <= dirty + 8 * 4096  # file-system blocks round up
    for i in range(6):
        assert digests[i] == blake3(bytes(new[i * bs : (i + 1) * bs])).digest(), i
    assert base.read_bytes() == bytes(new)
    # Applied to a copy of the old disk, the delta gives the new one.
    target = tmp_path / "target.raw"
    target.write_bytes(bytes(old))
    _blocks.apply_delta(str(target), "raw", _bundle.delta_pieces(path, extents))
    assert target.read_bytes() == bytes(new)


def test_bring_base_current_applies_deltas_not_in_the_base(tmp_path):
    size = 4 * 4096
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(size))
    drec = {"id": "disk0", "path": "base.raw", "format": "raw", "deltas": []}
    for index, (off, fill) in enumerate([(0, b"x"), (4096, b"y")], start=2):
        delta = _bundle.DeltaFile(str(tmp_path), "disk0", index, size)
        delta.write(off, fill * 1024)
        delta.finish(drec, [[off, 1024]])
    drec["deltas"][0]["in_base"] = True  # already there: must not be applied again
    base.write_bytes(b"z" * 1024 + bytes(size - 1024))
    assert _export._bring_base_current(Bundle(str(tmp_path), {}), drec) == 1024
    got = base.read_bytes()
    assert got[:1024] == b"z" * 1024 and got[4096 : 4096 + 1024] == b"y" * 1024
    assert all(d["in_base"] for d in drec["deltas"])


def test_digest_blocks_follow_the_capacity():
    gib = 1024**3
    assert _blocks.auto_block_size(4 * gib) == 64 * 1024  # the dirty bitmap's granularity
    assert _blocks.auto_block_size(64 * gib) == 64 * 1024  # 2^20 digests, a 32 MiB list
    assert _blocks.auto_block_size(64 * gib + 1) == 128 * 1024
    assert _blocks.auto_block_size(1024 * gib) == 1024 * 1024
    for capacity in (1, 10 * gib, 3000 * gib):
        assert _blocks.block_count(capacity, _blocks.auto_block_size(capacity)) <= _blocks.MAX_DIGESTS
