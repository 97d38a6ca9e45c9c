"""Bundle manifests: validation naming the field, atomic saves, fingerprints, digests."""

import hashlib
import json
import os

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk

MiB = 1024 * 1024
SPEC = {"schema": 1, "name": "web01", "disks": [{"id": "disk0", "capacity": 4 * MiB}], "nics": []}


def make(tmp_path, **disk):
    record = {"id": "disk0", "path": "disks/disk0.raw", "format": "raw", "capacity": 4 * MiB}
    record.update(disk)
    return _bundle.Bundle.create(
        str(tmp_path / "b"), {"platform": "kvm", "id": "6f1e", "name": "web01"}, SPEC, disks=[record]
    )


def test_create_load_round_trip(tmp_path):
    b = make(tmp_path)
    assert not b.complete
    b.add_sync("full", bytes_read=10, bytes_written=5, checkpoint={"kind": "libvirt", "id": "c1"})
    b.record_created("checkpoints", "c1")
    b.mark_complete()
    again = _bundle.Bundle.load(b.dir)
    assert again.manifest == b.manifest
    assert again.complete and again.manifest["sync"][0]["bytes_read"] == 10
    assert again.disk_path("disk0") == os.path.join(b.dir, "disks/disk0.raw")
    assert sorted(os.listdir(b.dir)) == ["manifest.json"]  # no tmp left behind
    with open(b.path) as fh:
        assert json.load(fh)["state"] == "complete"


@pytest.mark.parametrize(
    "change,field",
    [
        ({"version": 2}, "version"),
        ({"kind": "other"}, "kind"),
        ({"state": "done"}, "state"),
        ({"source": {"platform": "xen"}}, "source.platform"),
        ({"target_platform": "xen"}, "target_platform"),
        ({"spec": None}, "spec"),
        ({"disks": {}}, "disks"),
        ({"sync": {}}, "sync"),
    ],
)
def test_validator_names_the_field(tmp_path, change, field, reliability):
    reliability(
        "engine",
        "bundle manifest: field %s invalid" % field,
        "InputError naming manifest.json and 'field %s ...'" % field,
        "refused as the bundle loads: nothing read or written",
    )
    b = make(tmp_path)
    b.manifest.update(change)
    with open(b.path, "w") as fh:
        json.dump(b.manifest, fh)
    with pytest.raises(InputError) as err:
        _bundle.Bundle.load(b.dir)
    assert b.path in str(err.value) and "field %s " % field in str(err.value)


@pytest.mark.parametrize(
    "disk,field",
    [
        ({"format": "ext4"}, "disks[0].format"),
        ({"path": "../../etc/passwd"}, "disks[0].path"),
        ({"capacity": None}, "disks[0].capacity"),
        ({"capacity": -1}, "disks[0].capacity"),
        ({"id": "../x"}, "disks[0].id"),
        ({"digests": "digests/disk0.sha256", "block_size": MiB, "digests_sha256": "xyz"}, "disks[0].digests_sha256"),
        ({"digests": "digests/disk0.sha256", "digests_sha256": "0" * 64}, "disks[0].block_size"),
        ({"checkpoint": "c1"}, "disks[0].checkpoint"),
    ],
)
def test_disk_validator_names_the_field(tmp_path, disk, field, reliability):
    reliability(
        "engine",
        "bundle disk record: field %s invalid%s"
        % (field, " (a path out of the bundle)" if field == "disks[0].path" else ""),
        "InputError 'field %s ...'" % field,
        "the invalid manifest never written",
    )
    with pytest.raises(InputError) as err:
        make(tmp_path, **disk)
    assert "field %s " % field in str(err.value)
    assert not os.path.exists(tmp_path / "b" / "manifest.json")  # an invalid manifest is never written


def test_digests_may_be_pending_while_incomplete(tmp_path):
    b = make(tmp_path, digests="digests/disk0.sha256", block_size=MiB, digests_sha256=None)
    with pytest.raises(InputError) as err:
        b.mark_complete()
    assert "field disks[0].digests_sha256 " in str(err.value)


def test_not_a_bundle(tmp_path, reliability):
    reliability(
        "engine",
        "a bundle dir without manifest.json, or with one that is not JSON",
        "InputError 'manifest.json does not exist'; one naming <dir>/manifest.json",
        "nothing read",
    )
    with pytest.raises(InputError) as err:
        _bundle.Bundle.load(str(tmp_path))
    assert "manifest.json does not exist" in str(err.value)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError) as err:
        _bundle.Bundle.load(str(tmp_path))
    assert str(tmp_path / "manifest.json") in str(err.value)


def test_fingerprint_ignores_run_state_but_not_content(tmp_path):
    b = make(tmp_path, digests="digests/disk0.sha256", block_size=MiB, digests_sha256="a" * 64)
    fp = b.fingerprint()
    b.add_sync("full")
    b.mark_complete()
    b.disks[0]["allocated"] = 12345
    assert b.fingerprint() == fp
    b.disks[0]["digests_sha256"] = "b" * 64
    assert b.fingerprint() != fp
    b.disks[0]["digests_sha256"] = "a" * 64
    b.manifest["spec"] = dict(SPEC, memory_mib=4096)
    assert b.fingerprint() != fp


def test_digests_saved_and_checked(tmp_path, reliability):
    reliability(
        "engine",
        "a bundle's digest file tampered with (one byte)",
        "InputError 'does not match digests_sha256'",
        "digests not used",
    )
    b = make(tmp_path)
    raw = b.disk_path("disk0")
    os.makedirs(os.path.dirname(raw))
    with open(raw, "wb") as fh:
        fh.truncate(4 * MiB)
        fh.seek(MiB)
        fh.write(os.urandom(100000))
    with _disk.open_guest(raw, "raw") as g:
        dl = _blocks.digest_disk(g)
    b.save_digests(b.disk("disk0"), dl)
    b.save()
    again = _bundle.Bundle.load(b.dir)
    assert again.disks[0]["blocks"] == 4 and again.disks[0]["block_size"] == MiB
    assert again.load_digests("disk0") == dl
    with open(again.digest_path("disk0"), "r+b") as fh:
        fh.write(b"\x01")  # tampered
    with pytest.raises(InputError) as err:
        again.load_digests("disk0")
    assert "does not match digests_sha256" in str(err.value)


def test_save_manifest_helper(tmp_path):
    b = make(tmp_path)
    m = b.copy_manifest()
    m["state"] = "complete"
    _bundle.save_manifest(b.dir, m)
    assert _bundle.load_manifest(b.dir)["state"] == "complete"


# --- check_integrity: the bundle against itself -------------------------------------------


def intact(tmp_path, in_place=False):
    """A complete bundle: a 4 MiB raw disk with data, its digests, one delta file.

    ``in_place``: the disk's data is referenced in place (an absolute path outside).
    """
    directory = tmp_path / "b"
    raw = str(tmp_path / "source.raw") if in_place else str(directory / "disks" / "disk0.raw")
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    with open(raw, "wb") as fh:
        fh.truncate(4 * MiB)
        fh.seek(MiB)
        fh.write(os.urandom(100000))
    delta = directory / "disks" / "disk0.delta-2.raw"
    os.makedirs(delta.parent, exist_ok=True)
    delta.write_bytes(b"x" * 512)
    record = {
        "id": "disk0",
        "path": raw if in_place else "disks/disk0.raw",
        "format": "raw",
        "capacity": 4 * MiB,
        "deltas": [{"index": 2, "path": "disks/disk0.delta-2.raw", "format": "raw", "extents": [[0, 512]]}],
    }
    b = _bundle.Bundle.create(str(directory), {"platform": "kvm", "id": "6f1e", "name": "web01"}, SPEC, save=False)
    with _disk.open_guest(raw, "raw") as g:
        b.save_digests(record, _blocks.digest_disk(g))
    b.set_disk(record)
    b.add_sync("full")
    b.mark_complete()
    return b


def edit_manifest(b, change):
    """Hand-edit manifest.json the way a user would, and load it again."""
    with open(b.path) as fh:
        m = json.load(fh)
    change(m)
    with open(b.path, "w") as fh:
        json.dump(m, fh)
    return _bundle.Bundle.load(b.dir)


def _set(path, value):
    def change(m):
        obj = m
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value

    return change


def _both(*changes):
    def change(m):
        for c in changes:
            c(m)

    return change


def _rm(b, rel):
    os.unlink(os.path.join(b.dir, rel))


@pytest.mark.parametrize("in_place", [False, True], ids=["in-bundle", "in-place"])
def test_intact_bundle_passes(tmp_path, in_place):
    b = intact(tmp_path, in_place)
    assert b.check_integrity() is b
    assert _bundle.Bundle.load(b.dir).check_integrity()


@pytest.mark.parametrize(
    "edit,field",
    [
        (_set(["disks", 0, "digests_sha256"], "0" * 64), "disks[0].digests_sha256"),
        (_set(["disks", 0, "capacity"], 5 * MiB), "disks[0].capacity"),
        (
            _both(_set(["disks", 0, "capacity"], 5 * MiB), _set(["spec", "disks", 0, "capacity"], 5 * MiB)),
            "disks[0].capacity",
        ),
        # One byte less keeps the block count: the image's own size tells.
        (_set(["disks", 0, "capacity"], 4 * MiB - 512), "disks[0].capacity"),
        (_set(["spec", "disks", 0, "capacity"], 5 * MiB), "spec.disks[0].capacity"),
        (_set(["disks", 0, "blocks"], 5), "disks[0].blocks"),
        (_set(["disks", 0, "digests"], "digests/other.blocks"), "disks[0].digests"),
        (_set(["disks", 0, "path"], "disks/other.raw"), "disks[0].path"),
        (_set(["disks", 0, "deltas", 0, "path"], "disks/disk0.delta-3.raw"), "disks[0].deltas[0].path"),
        (_set(["disks", 0, "id"], "disk1"), "spec.disks[0].id"),
        (_set(["spec", "disks"], SPEC["disks"] + [{"id": "disk1", "capacity": MiB}]), "spec.disks[1].id"),
    ],
)
def test_hand_edited_manifest_is_refused(tmp_path, edit, field, reliability):
    reliability(
        "engine",
        "hand-edited bundle manifest: %s changed (integrity check)" % field,
        "InputError 'bundle B, disk ... field %s ...' and 'Fix: re-run the export/convert that wrote this "
        "bundle'" % field,
        "refused before any use of the bundle",
    )
    b = edit_manifest(intact(tmp_path), edit)
    with pytest.raises(InputError) as err:
        b.check_integrity()
    msg = str(err.value)
    assert "bundle %s, disk " % b.dir in msg and "field %s " % field in msg, msg
    assert "Fix: re-run the export/convert that wrote this bundle" in msg, msg


def test_record_without_digests_is_refused(tmp_path, reliability):
    reliability(
        "engine",
        "bundle disk record without its digests",
        "InputError 'disk disk0: field disks[0].digests is missing'",
        "refused before any use of the bundle",
    )
    b = intact(tmp_path)
    del b.disks[0]["digests"], b.disks[0]["digests_sha256"]
    with pytest.raises(InputError) as err:
        b.check_integrity()
    assert "disk disk0: field disks[0].digests is missing" in str(err.value)


@pytest.mark.parametrize(
    "damage,field",
    [
        (lambda b: _rm(b, "digests/disk0.blocks"), "disks[0].digests"),
        (lambda b: _rm(b, "disks/disk0.raw"), "disks[0].path"),
        (lambda b: _rm(b, "disks/disk0.delta-2.raw"), "disks[0].deltas[0].path"),
        (lambda b: os.truncate(b.disk_path("disk0"), 5 * MiB), "disks[0].capacity"),
        (lambda b: open(b.digest_path("disk0"), "ab").write(b"\0" * 32), "disks[0].digests_sha256"),
    ],
    ids=["digest-file-gone", "disk-gone", "delta-gone", "disk-grown", "digest-file-appended"],
)
def test_damaged_files_are_refused(tmp_path, damage, field, reliability, request):
    reliability(
        "engine",
        "bundle file damaged: %s" % request.node.callspec.id.replace("-", " "),
        "InputError 'disk disk0: field %s ...'" % field,
        "refused before any use of the bundle",
    )
    b = intact(tmp_path)
    damage(b)
    with pytest.raises(InputError) as err:
        b.check_integrity()
    assert "disk disk0: field %s " % field in str(err.value), str(err.value)


def test_digest_file_cut_with_matching_sha_is_refused_by_block_count(tmp_path, reliability):
    reliability(
        "engine",
        "bundle digest file cut short, its sha256 in the manifest edited to match",
        "InputError 'field disks[0].capacity is 4194304 bytes, 4 blocks ... holds 3'",
        "refused before any use of the bundle",
    )
    b = intact(tmp_path)
    path = b.digest_path("disk0")
    with open(path, "rb") as fh:
        data = fh.read()[:-32]
    with open(path, "wb") as fh:
        fh.write(data)
    b = edit_manifest(b, _set(["disks", 0, "digests_sha256"], hashlib.sha256(data).hexdigest()))
    with pytest.raises(InputError) as err:
        b.check_integrity()
    assert "field disks[0].capacity is 4194304 bytes, 4 blocks" in str(err.value)
    assert "holds 3" in str(err.value)


def test_source_referenced_in_place_is_checked(tmp_path, reliability):
    reliability(
        "engine",
        "a source disk referenced in place grew after the export",
        "InputError 'field disks[0].capacity is 4194304 bytes, but the disk image <file> ...'",
        "refused before any use of the bundle",
    )
    b = intact(tmp_path, in_place=True)
    os.truncate(b.disk_path("disk0"), 6 * MiB)  # the source disk grew after the export
    with pytest.raises(InputError) as err:
        b.check_integrity()
    assert "field disks[0].capacity is 4194304 bytes, but the disk image %s" % b.disk_path("disk0") in str(err.value)


def test_wrong_format_names_the_disk(tmp_path, reliability):
    reliability(
        "engine",
        "bundle manifest naming the wrong disk format (qcow2 for a raw file)",
        "DiskError 'bundle B, disk disk0 (fields disks[0].path, disks[0].format)'",
        "refused before any use of the bundle",
    )
    b = edit_manifest(intact(tmp_path), _set(["disks", 0, "format"], "qcow2"))
    with pytest.raises(DiskError) as err:
        b.check_integrity()
    assert "bundle %s, disk disk0 (fields disks[0].path, disks[0].format)" % b.dir in str(err.value)


def test_delta_file_keeps_only_changed_ranges(tmp_path):
    record = {"id": "disk0"}
    delta = _bundle.DeltaFile(str(tmp_path), "disk0", 2, 4 * MiB)
    pieces = [(65536, b"a" * 100), (3 * MiB, b"b" * 4096)]
    assert list(delta.tee(iter(pieces))) == pieces
    entry = delta.finish(record, [[65536, 100], [3 * MiB, 4096]])
    assert record["deltas"] == [entry]
    assert entry["index"] == 2 and entry["path"] == "disks/disk0.delta-2.raw" and entry["bytes"] == 4196
    path = tmp_path / entry["path"]
    assert os.path.getsize(path) == 4 * MiB and not os.path.exists(str(path) + ".part")
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[65536 : 65536 + 100] == b"a" * 100 and data[:65536] == bytes(65536)

    empty = {"id": "disk0"}
    assert _bundle.DeltaFile(str(tmp_path), "disk0", 3, 1024).finish(empty, []) is None
    assert "deltas" not in empty and sorted(os.listdir(tmp_path / "disks")) == ["disk0.delta-2.raw"]
