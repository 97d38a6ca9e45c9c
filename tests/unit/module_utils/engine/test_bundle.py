"""Bundle manifests: validation naming the field, atomic saves, fingerprints, digests."""

import json
import os

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
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
def test_validator_names_the_field(tmp_path, change, field):
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
def test_disk_validator_names_the_field(tmp_path, disk, field):
    with pytest.raises(InputError) as err:
        make(tmp_path, **disk)
    assert "field %s " % field in str(err.value)
    assert not os.path.exists(tmp_path / "b" / "manifest.json")  # an invalid manifest is never written


def test_digests_may_be_pending_while_incomplete(tmp_path):
    b = make(tmp_path, digests="digests/disk0.sha256", block_size=MiB, digests_sha256=None)
    with pytest.raises(InputError) as err:
        b.mark_complete()
    assert "field disks[0].digests_sha256 " in str(err.value)


def test_not_a_bundle(tmp_path):
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


def test_digests_saved_and_checked(tmp_path):
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
