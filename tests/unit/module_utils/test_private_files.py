"""What the collection creates in a bundle or work directory is not for others:
directories 0750 or tighter, files 0640 or tighter, whatever the umask (a loose one,
0002, here), also what qemu-img writes. One test per writer; the real export + convert
into a bundle is tests/integration/test_private_bundle.py."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils import _files
from ansible_collections.vmigrate.v2v.plugins.module_utils._lock import bundle_lock, lock_path
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf

MIB = 1024 * 1024


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_private(top):
    """Every directory under ``top`` (and it) 0750 or tighter, every file 0640 or tighter."""
    seen = 0
    for root, _dirs, files in os.walk(top):
        assert mode(root) & ~0o750 == 0, "%s is %o" % (root, mode(root))
        for name in files:
            path = os.path.join(root, name)
            assert mode(path) & ~0o640 == 0, "%s is %o" % (path, mode(path))
            seen += 1
    return seen


@pytest.fixture(autouse=True)
def loose_umask():
    """The loosest usual umask: without our modes everything would be group-writable and world-readable."""
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_make_dirs_makes_every_missing_directory_private(tmp_path):
    (tmp_path / "kept").mkdir(mode=0o755)
    os.chmod(tmp_path / "kept", 0o755)
    made = _files.make_dirs(str(tmp_path / "kept" / "a" / "b" / "c"))
    assert os.path.isdir(made)
    assert [mode(tmp_path / "kept" / p) for p in ("a", "a/b", "a/b/c")] == [0o750] * 3
    assert mode(tmp_path / "kept") == 0o755  # not ours: left as it was
    assert _files.make_dirs(made) == made  # there already: fine


def test_atomic_file_is_private_also_over_a_stale_part(tmp_path, reliability):
    reliability(
        "security",
        "file permissions: a world-readable (0666) .part a crash left, under umask 0002",
        "nothing",
        "the file written over it is 0640",
    )
    path = str(tmp_path / "new" / "manifest.json")
    os.makedirs(os.path.dirname(path))
    with open(_files.part_path(path), "w") as fh:  # a crash left a world-readable .part
        fh.write("old")
    os.chmod(_files.part_path(path), 0o666)
    with _files.atomic_file(path, "w") as fh:
        fh.write("{}")
    assert mode(path) == 0o640 and open(path).read() == "{}"


def test_publish_takes_others_bits_from_a_tool_file(tmp_path):
    tmp, path = str(tmp_path / "d.part"), str(tmp_path / "d")
    with open(tmp, "wb") as fh:
        fh.write(b"x")
    os.chmod(tmp, 0o777)
    _files.publish(tmp, path)
    assert mode(path) == 0o640
    os.chmod(path, 0o600)
    os.rename(path, tmp)
    _files.publish(tmp, path)
    assert mode(path) == 0o600  # tighter stays tighter


def test_private_umask_covers_code_and_tools_that_use_the_umask(tmp_path):
    with _files.private_umask():
        os.makedirs(str(tmp_path / "x" / "y"))
        with open(str(tmp_path / "x" / "y" / "f"), "w") as fh:
            fh.write("1")
    assert os.umask(0o002) == 0o002  # put back
    assert assert_private(str(tmp_path / "x")) == 1


def test_bundle_manifest_digests_and_delta_are_private(tmp_path):
    top = str(tmp_path / "bundles" / "web01")
    b = _bundle.Bundle.create(top, {"platform": "kvm", "id": "u", "name": "web01"}, {"name": "web01"})
    record = {"id": "disk0"}
    digests = _blocks.DigestList.for_size(4 * MIB, MIB)
    b.save_digests(record, digests)  # digests/disk0.blocks
    delta = _bundle.DeltaFile(top, "disk0", 2, 4 * MIB)
    assert mode(delta.tmp) == 0o600  # guest data, while it is written too
    delta.write(MIB, b"z" * 4096)
    delta.finish(record, [[MIB, 4096]])
    assert sorted(os.listdir(top)) == ["digests", "disks", "manifest.json"]
    assert assert_private(str(tmp_path / "bundles")) == 3
    assert mode(os.path.join(top, "disks", "disk0.delta-2.raw")) == 0o600


def test_qemu_img_create_and_convert_outputs_are_private(tmp_path, reliability):
    reliability(
        "security",
        "file permissions: disks qemu-img creates and converts (qcow2, vmdk descriptor and extent), umask 0002",
        "nothing",
        "dirs <= 0750, files <= 0640; qemu-img still reads them",
    )
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as fh:
        fh.truncate(MIB)
    out = str(tmp_path / "bundle" / "disks")
    created = os.path.join(out, "copy.qcow2")
    _files.make_dirs(out)
    _disk.create(created, "qcow2", MIB)
    _disk.convert(src, "raw", os.path.join(out, "disk0.qcow2"), "qcow2")
    _disk.convert(src, "raw", os.path.join(str(tmp_path / "bundle2" / "disks"), "d.vmdk"), "vmdk", "monolithicFlat")
    assert sorted(os.listdir(out)) == ["copy.qcow2", "disk0.qcow2"]
    assert assert_private(str(tmp_path / "bundle")) == 2
    assert assert_private(str(tmp_path / "bundle2")) == 2  # the descriptor and its -flat extent
    assert _disk.info(os.path.join(out, "disk0.qcow2"))["virtual-size"] == MIB  # qemu-img still reads it


def test_progress_file_is_private(tmp_path):
    sink = str(tmp_path / "progress.jsonl")
    p = Progress("copy web01 disk0", 10, sink=sink, interval=0)
    p.advance(5)
    p.finish()
    assert mode(sink) == 0o640 and len(open(sink).read().splitlines()) == 2


def test_lock_file_is_private_and_a_writer_holds_a_private_umask(tmp_path, reliability):
    reliability(
        "security",
        "file permissions: lock files, and code writing under the lock that sets no modes, umask 0002",
        "nothing",
        "lock files 0640; dirs made under the lock <= 0750; the caller's umask put back",
    )
    top = str(tmp_path / "work" / "web01")
    with bundle_lock(top, "export of web01"):
        assert os.umask(0o002) & 0o027 == 0o027  # the writer's umask while the lock is held
        os.umask(0o027)
        os.makedirs(os.path.join(top, "disks"))  # as code that knows nothing of modes does
    assert os.umask(0o002) == 0o002  # back to the caller's
    with bundle_lock(top, "import of web01", key="import-web01"):
        assert os.umask(0o002) == 0o002  # an import's files are the target's: umask as it was
    assert mode(lock_path(top)) == 0o640 and mode(lock_path(top, "import-web01")) == 0o640
    assert assert_private(str(tmp_path / "work")) == 2


def test_ova_extraction_is_private(tmp_path, reliability):
    reliability(
        "security",
        "file permissions: an OVA written, and one extracted, under umask 0002",
        "nothing",
        "the OVA 0640; extracted dirs <= 0750, files <= 0640",
    )
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

    disk = str(tmp_path / "d.vmdk")
    _disk.create(disk, "vmdk", MIB, "streamOptimized")
    spec = _spec.new_spec(
        name="web01",
        disks=[{"id": "disk0", "bus": "scsi", "controller": "pvscsi", "capacity": MIB, "format": "vmdk"}],
        nics=[],
    )
    ova = str(tmp_path / "vm.ova")
    _ovf.write_ova(ova, _ovf.ovf_from_spec(spec, {"disk0": disk}), [disk])
    assert mode(ova) == 0o640
    _ovf.read_ova(ova, extract_dir=str(tmp_path / "x" / "extract"))
    assert assert_private(str(tmp_path / "x")) >= 2


def test_a_fake_export_writes_a_private_bundle(tmp_path, reliability):
    reliability(
        "security",
        "file permissions: an export's full copy then incremental (fake platform), umask 0002",
        "nothing",
        "manifest, digests, copy and delta: dirs <= 0750, files <= 0640",
    )
    """engine/export.py's full copy then an incremental (delta), through the fake platform."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "platforms"))
    import test_contract as contract

    platform = contract._source()
    out = str(tmp_path / "exports" / "b")
    assert platform.export("src", out, "auto", options={"block_size": MIB})["changed"]
    contract._write(platform, 512, b"x" * 1024)
    assert platform.export("src", out, "auto", options={"block_size": MIB})["kind"] == "incremental"
    names = sorted(os.listdir(os.path.join(out, "disks")))
    assert len(names) == 2 and any(".delta-" in n for n in names), names
    assert assert_private(str(tmp_path / "exports")) == 4  # manifest, digests, copy, delta
    assert json.load(open(os.path.join(out, "manifest.json")))["state"] == "complete"
