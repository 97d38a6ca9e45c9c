"""Unit tests of the libvirt-independent parts of _kvm (XML, provenance, deltas)."""

from __future__ import annotations

import os
import random
import xml.etree.ElementTree as ET

import pytest
from blake3 import blake3  # an independent BLAKE3 implementation, not the code under test

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import connection as _connection
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import inventory as _inventory
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import source as _source
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import target as _target

DOMAIN = """<domain type='kvm'><name>web01</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/var/lib/libvirt/images/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
<disk type='block' device='disk'><driver name='qemu' type='raw'/>
<source dev='/dev/vg/data'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"""


def test_domain_disks_skips_removable_and_keeps_order():
    disks = _inventory.domain_disks(DOMAIN)
    assert [(d["id"], d["target"], d["path"], d["format"]) for d in disks] == [
        ("disk0", "vda", "/var/lib/libvirt/images/web01.qcow2", "qcow2"),
        ("disk1", "vdb", "/dev/vg/data", "raw"),
    ]


def test_backup_xml_pull_mode_incremental():
    root = ET.fromstring(_source.backup_xml("/run/s.sock", ["vda", "vdb"], "/tmp/x", incremental="vmigrate-1"))
    assert root.get("mode") == "pull"
    assert root.findtext("incremental") == "vmigrate-1"
    assert root.find("server").attrib == {"transport": "unix", "socket": "/run/s.sock"}
    assert [d.find("scratch").get("file") for d in root.findall("disks/disk")] == [
        "/tmp/x/vda.scratch",
        "/tmp/x/vdb.scratch",
    ]
    full = ET.fromstring(_source.backup_xml("/run/s.sock", ["vda"], "/tmp/x"))
    assert full.find("incremental") is None


def test_checkpoint_xml_bitmaps():
    root = ET.fromstring(_source.checkpoint_xml("vmigrate-2", ["vda"]))
    assert root.findtext("name") == "vmigrate-2"
    assert root.find("disks/disk").attrib == {"name": "vda", "checkpoint": "bitmap"}


def test_provenance_round_trip_attributes_and_children():
    prov = {"source_id": "abc", "sync_index": 3, "state": "complete", "checkpoint": None, "disks": {"disk0": "f"}}
    parsed = _inventory.parse_provenance(_inventory.provenance_xml(prov))
    assert parsed == {"source_id": "abc", "sync_index": 3, "state": "complete", "disks": {"disk0": "f"}}
    # The form engine/descriptors writes into a defined domain reads the same.
    text = '<v2v:provenance xmlns:v2v="%s" source_id="abc"><v2v:sync_index>3</v2v:sync_index></v2v:provenance>'
    assert _inventory.parse_provenance(text % _inventory.NS) == {"source_id": "abc", "sync_index": 3}
    # Older targets wrote every value as an attribute string.
    assert _inventory.parse_provenance('<provenance source_id="abc" sync_index="3"/>') == {
        "source_id": "abc",
        "sync_index": "3",
    }
    assert _inventory.parse_provenance("") is None


def test_with_cpu_mode():
    xml = "<domain><cpu mode='host-passthrough' check='none'><topology sockets='1'/></cpu></domain>"
    cpu = ET.fromstring(_target.with_cpu_mode(xml, "default")).find("cpu")
    assert "mode" not in cpu.attrib and cpu.find("topology") is not None
    assert ET.fromstring(_target.with_cpu_mode(xml, "host-model")).find("cpu").get("mode") == "host-model"
    assert _target.with_cpu_mode(xml, None) == xml


@pytest.mark.parametrize(
    "uri,local",
    [
        ("qemu:///system", True),
        ("qemu+tcp://127.0.0.1:1/system", True),
        ("qemu+ssh://root@kvm1/system", False),
        ("qemu+tls://kvm2.example/system", False),
    ],
)
def test_is_local_uri(uri, local):
    assert _connection.is_local_uri(uri) is local


def test_merge_runs_clips_to_size():
    assert _source._merge_runs({0, 1, 3, 4}, 1024, 4 * 1024 + 100) == [[0, 2048], [3072, 1124]]


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
    runs = _source._merge_runs({1, 2, 5}, bs, len(data))
    delta = _bundle.DeltaFile(str(tmp_path), "disk0", 2, len(data))
    stats = _source._write_delta(str(tmp_path), drec, BytesReader(bytes(data)), runs, delta, digests)
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
    stats = _source._write_delta(str(tmp_path), drec, BytesReader(bytes(new)), extents, delta, digests)
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
    assert _source._bring_base_current(str(tmp_path), drec) == 1024
    got = base.read_bytes()
    assert got[:1024] == b"z" * 1024 and got[4096 : 4096 + 1024] == b"y" * 1024
    assert all(d["in_base"] for d in drec["deltas"])


def _libvirt_error(code, message):
    libvirt = _connection.libvirt
    exc = libvirt.libvirtError(message)
    exc.err = (code, libvirt.VIR_FROM_STORAGE, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


class _BusyPool:
    """A pool that is busy (another client builds a volume in it) for ``busy`` refreshes."""

    def __init__(self, busy, error=None):
        self.busy, self.refreshed, self.error = busy, 0, error

    def name(self):
        return "target"

    def refresh(self, flags):
        if self.busy:
            self.busy -= 1
            raise self.error or _libvirt_error(
                _connection.libvirt.VIR_ERR_INTERNAL_ERROR,
                "internal error: pool 'target' has asynchronous jobs running.",
            )
        self.refreshed += 1
        return 0


def test_refresh_pool_waits_for_another_volume_build():
    waits = []
    pool = _BusyPool(busy=3)
    _connection.refresh_pool(pool, sleep=waits.append)
    assert pool.refreshed == 1
    assert waits == [0.1, 0.2, 0.4]


def test_refresh_pool_gives_up_naming_the_pool():
    pool = _BusyPool(busy=10)
    with pytest.raises(PlatformError) as err:
        _connection.refresh_pool(pool, attempts=3, sleep=lambda _s: None)
    assert "storage pool target" in str(err.value) and pool.refreshed == 0


def test_refresh_pool_does_not_retry_other_errors():
    other = _libvirt_error(_connection.libvirt.VIR_ERR_NO_STORAGE_POOL, "pool not found")
    pool = _BusyPool(busy=1, error=other)
    with pytest.raises(_connection.libvirt.libvirtError):
        _connection.refresh_pool(pool, sleep=lambda _s: None)
