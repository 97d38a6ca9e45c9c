"""vmigrate.v2v.convert run through ansible (the real module wrapper), on real images."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from blake3 import blake3  # an independent BLAKE3 implementation, not the code under test

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MiB = 1024 * 1024
SIZE = 24 * MiB


def run_module(args, check=False, diff=False, tmp=None):
    """Run vmigrate.v2v.convert in a one-task playbook; return the registered result.

    A playbook (not `ansible -m`) because ansible-core's own callbacks have no JSON
    output for ad-hoc runs; the result is written by a second task that ignores check mode.
    """
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
        # These disks hold no guest (random data): the guest's tests are in
        # tests/unit/module_utils/engine/test_guest.py and tests/integration.
        VMIGRATE_GUEST_CONVERSION="skip",
    )
    workdir = tempfile.mkdtemp(prefix="convert-test-")
    out = os.path.join(workdir, "result.json")
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [
                {
                    "vmigrate.v2v.convert": args,
                    "register": "r",
                    "ignore_errors": True,
                    "diff": diff,
                },
                {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": out}, "check_mode": False},
            ],
        }
    ]
    playbook = os.path.join(workdir, "play.yml")
    with open(playbook, "w") as fh:
        json.dump(play, fh)  # JSON is YAML
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        "ansible_python_interpreter=%s" % sys.executable,
        playbook,
    ]
    cmd += ["--check"] if check else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert os.path.exists(out), proc.stdout + proc.stderr
    with open(out) as fh:
        result = json.load(fh)
    shutil.rmtree(workdir)
    return result


def digests_of(raw_path, block_size=MiB):
    out = bytearray()
    with open(raw_path, "rb") as fh:
        while block := fh.read(block_size):
            out += bytes(32) if block == bytes(len(block)) else blake3(block).digest()
    return bytes(out)


def spec():
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

    s = _spec.new_spec(
        name="web01",
        uuid="6f1e0c2a-1111-4222-8333-444455556666",
        disks=[{"id": "disk0", "bus": "scsi", "controller": "pvscsi", "capacity": SIZE, "format": "raw"}],
        nics=[{"mac": "00:50:56:12:34:56", "network": "VM Network", "model": "vmxnet3"}],
        origin={"platform": "vsphere", "ref": "vm-42"},
    )
    _spec.validate(s)
    return s


@pytest.fixture
def src_bundle(tmp_path):
    """An exported bundle: a sparse raw disk with data at known offsets, no digests."""
    b = _bundle.Bundle.create(
        str(tmp_path / "export"),
        {"platform": "vsphere", "id": "vm-42", "name": "web01"},
        spec(),
        disks=[{"id": "disk0", "path": "disks/disk0.raw", "format": "raw", "capacity": SIZE}],
    )
    raw = b.disk_path("disk0")
    os.makedirs(os.path.dirname(raw))
    with open(raw, "wb") as fh:
        fh.truncate(SIZE)
        for off in (0, 7 * MiB + 12345, SIZE - 5000):
            fh.seek(off)
            fh.write(os.urandom(5000 if off == SIZE - 5000 else 300000))
    b.mark_complete()
    return b


def test_convert_to_kvm_then_rerun_is_unchanged(src_bundle, tmp_path):
    dest = str(tmp_path / "kvm")
    raw = src_bundle.disk_path("disk0")
    args = {"src": src_bundle.dir, "dest": dest, "target_platform": "kvm", "network_map": {"VM Network": "default"}}
    res = run_module(args, diff=True)
    assert res.get("failed") is not True, res.get("msg")
    assert res["changed"] is True
    disk = res["disks"][0]
    assert disk["format"] == "qcow2" and disk["action"] == "convert"
    assert disk["path"] == os.path.join(dest, "disks", "disk0.qcow2")
    assert _disk.compare(raw, "raw", disk["path"], "qcow2")
    changes = {c["field"]: c for c in res["changes"]}
    assert changes["nics[0].model"]["from"] == "vmxnet3" and changes["nics[0].model"]["to"] == "virtio"
    assert changes["nics[0].network"]["to"] == "default"
    assert res["diff"]["before"]["nics"][0]["model"] == "vmxnet3"
    assert res["diff"]["after"]["nics"][0]["model"] == "virtio"

    out = _bundle.Bundle.load(dest)
    assert out.complete and out.manifest["target_platform"] == "kvm"
    out.check_integrity()  # what an import checks first
    assert out.manifest["spec"]["nics"][0]["model"] == "virtio"
    # digests computed in flight equal digests of the raw bytes read here
    assert bytes(out.load_digests("disk0").digests) == digests_of(raw)
    # the libvirt XML written beside the disk names it and carries the translated spec
    xml_name = out.manifest["descriptors"]["libvirt_xml"]
    with open(os.path.join(dest, xml_name)) as fh:
        xml_text = fh.read()
    assert disk["path"] in xml_text
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    described = _libvirt_xml.spec_from_libvirt_xml(xml_text)
    assert described["nics"][0]["model"] == "virtio" and described["nics"][0]["mac"] == "00:50:56:12:34:56"
    assert described["disks"][0]["capacity"] in (None, SIZE)

    again = run_module(args)
    assert again["changed"] is False
    assert again["disks"][0]["digests_sha256"] == disk["digests_sha256"]

    forced = run_module(dict(args, force=True))
    assert forced["changed"] is True
    assert _disk.compare(raw, "raw", disk["path"], "qcow2")

    # a changed option makes the output stale
    other = run_module(dict(args, network_map={"VM Network": "br0"}))
    assert other["changed"] is True
    assert _bundle.Bundle.load(dest).manifest["spec"]["nics"][0]["network"] == "br0"


def test_convert_writes_a_private_bundle_under_a_loose_umask(src_bundle, tmp_path):
    """The module holds the bundle's writer lock, and with it a private umask: the output
    directory, disks/, qemu-img's disk, the digests, the XML and the manifest are not for
    others although this run's umask (0002) would make them world-readable."""
    old = os.umask(0o002)
    try:
        for target in ("kvm", "vsphere"):  # qcow2; monolithicFlat vmdk (descriptor + extent)
            dest = str(tmp_path / "out" / target)
            res = run_module({"src": src_bundle.dir, "dest": dest, "target_platform": target})
            assert res.get("failed") is not True, res.get("msg")
    finally:
        os.umask(old)
    checked = 0
    for root, _dirs, files in os.walk(str(tmp_path / "out")):
        assert os.stat(root).st_mode & 0o7027 == 0, "%s is %o" % (root, os.stat(root).st_mode)
        for name in files:
            path = os.path.join(root, name)
            assert os.stat(path).st_mode & 0o7137 == 0, "%s is %o" % (path, os.stat(path).st_mode)
            checked += 1
    assert checked >= 9  # per target: manifest, digests, disk (+ flat extent), descriptor, and the locks


def test_check_mode_writes_nothing(src_bundle, tmp_path):
    dest = str(tmp_path / "planned")
    res = run_module({"src": src_bundle.dir, "dest": dest, "target_platform": "vsphere"}, check=True, diff=True)
    assert res["changed"] is True
    assert not os.path.exists(dest)
    assert res["disks"][0]["format"] == "vmdk" and res["disks"][0]["subformat"] == "monolithicFlat"
    assert res["plan"][0]["digests"] == "compute"
    assert res["diff"]["after"]["nics"][0]["model"] == "vmxnet3"


def test_vsphere_monolithic_flat_then_hyperv_carries_digests(src_bundle, tmp_path):
    raw = src_bundle.disk_path("disk0")
    vs = str(tmp_path / "vsphere")
    res = run_module({"src": src_bundle.dir, "dest": vs, "target_platform": "vsphere"})
    assert res["changed"] is True, res.get("msg")
    path = res["disks"][0]["path"]
    assert sorted(os.listdir(os.path.join(vs, "disks"))) == ["disk0-flat.vmdk", "disk0.vmdk"]
    assert _disk.info(path, "vmdk")["format-specific"]["data"]["create-type"] == "monolithicFlat"
    assert _disk.compare(raw, "raw", path, "vmdk")
    vmx = os.path.join(vs, res["descriptors"]["vmx"])
    with open(vmx) as fh:
        vmx_text = fh.read()
    assert "disks/disk0.vmdk" in vmx_text and 'ethernet0.virtualDev = "vmxnet3"' in vmx_text

    # the vSphere bundle as input: its digests are carried, not recomputed
    hv = str(tmp_path / "hyperv")
    res2 = run_module({"src": vs, "dest": hv, "target_platform": "hyperv"})
    assert res2["changed"] is True, res2.get("msg")
    assert res2["plan"][0]["digests"] == "carry"
    assert res2["disks"][0]["format"] == "vhdx"
    assert res2["disks"][0]["digests_sha256"] == res["disks"][0]["digests_sha256"]
    assert _disk.compare(raw, "raw", res2["disks"][0]["path"], "vhdx")
    assert res2["spec"]["nics"][0]["model"] == "hyperv"
    _bundle.Bundle.load(vs).check_integrity()
    _bundle.Bundle.load(hv).check_integrity()


def test_same_format_is_referenced_not_copied(src_bundle, tmp_path):
    dest = str(tmp_path / "rawkvm")
    res = run_module({"src": src_bundle.dir, "dest": dest, "target_platform": "kvm", "disk_format": "raw"})
    assert res["changed"] is True, res.get("msg")
    assert res["disks"][0]["action"] == "reference"
    assert res["disks"][0]["path"] == src_bundle.disk_path("disk0")
    assert os.listdir(os.path.join(dest, "disks")) == []
    _bundle.Bundle.load(dest).check_integrity()  # the data referenced in place
    # The export's next sync writes its disk in place: this bundle no longer describes it.
    with open(src_bundle.disk_path("disk0"), "r+b") as fh:
        fh.write(b"x")
    with pytest.raises(InputError, match=r"field disks\[0\]\.ref_stamp .* has been written since"):
        _bundle.Bundle.load(dest).check_integrity()


def test_missing_disk_is_refused(src_bundle, tmp_path, reliability):
    reliability(
        "engine",
        "convert of a bundle whose disk file is gone",
        "fails naming 'disk disk0', the file and 'missing'",
        "no output bundle (dest not made)",
    )
    os.unlink(src_bundle.disk_path("disk0"))
    dest = str(tmp_path / "out")
    res = run_module({"src": src_bundle.dir, "dest": dest, "target_platform": "kvm"})
    assert res["failed"] is True
    assert "disk disk0" in res["msg"] and src_bundle.disk_path("disk0") in res["msg"] and "missing" in res["msg"]
    assert not os.path.exists(dest)


def test_incomplete_input_is_refused(src_bundle, tmp_path, reliability):
    reliability(
        "engine",
        "convert of a bundle marked incomplete (an export that did not finish)",
        "fails: 'incomplete'",
        "fails (output not checked)",
    )
    src_bundle.mark_incomplete()
    res = run_module({"src": src_bundle.dir, "dest": str(tmp_path / "o"), "target_platform": "kvm"})
    assert res["failed"] is True and "incomplete" in res["msg"]


def test_incremental_sync_refreshes_without_converting_again(src_bundle, tmp_path):
    """After an incremental export the output gains the new delta, digests and history only."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks

    raw = src_bundle.disk_path("disk0")
    base_copy = str(tmp_path / "base.raw")
    shutil.copyfile(raw, base_copy)
    with _disk.open_guest(raw, "raw") as g:
        src_bundle.save_digests(src_bundle.disks[0], _blocks.digest_disk(g))
    src_bundle.add_sync("full", chain="c1", index=1)
    src_bundle.save()
    dest = str(tmp_path / "kvm")
    args = {"src": src_bundle.dir, "dest": dest, "target_platform": "kvm"}
    first = run_module(args)
    assert first["changed"] is True, first.get("msg")
    out_disk = first["disks"][0]["path"]
    inode = os.stat(out_disk).st_ino

    # the guest wrote 2 MiB at 3 MiB: the export records that as delta 2 (a sparse raw file)
    new = os.urandom(2 * MiB)
    with open(raw, "r+b") as fh:
        fh.seek(3 * MiB)
        fh.write(new)
    rel = "disks/disk0.delta-2.raw"
    with open(os.path.join(src_bundle.dir, rel), "wb") as fh:
        fh.truncate(SIZE)
        fh.seek(3 * MiB)
        fh.write(new)
    disk = src_bundle.disks[0]
    disk["deltas"] = [{"index": 2, "path": rel, "format": "raw", "extents": [[3 * MiB, 2 * MiB]], "bytes": 2 * MiB}]
    with _disk.open_guest(raw, "raw") as g:
        src_bundle.save_digests(disk, _blocks.digest_disk(g))
    src_bundle.add_sync("incremental", chain="c1", index=2)
    src_bundle.save()

    planned = run_module(args, check=True)
    assert planned["changed"] is True and planned["deltas"] == [{"disk": "disk0", "index": 2, "bytes": 2 * MiB}]
    second = run_module(args)
    assert second["changed"] is True, second.get("msg")
    assert second["disks"][0]["action"] == "refresh"
    # Not converted again: the delta's bytes were written into the converted disk.
    assert second["deltas"] == [{"disk": "disk0", "index": 2, "bytes": 2 * MiB, "bytes_written": 2 * MiB}]
    assert second["bytes_written"] == 2 * MiB
    assert os.stat(out_disk).st_ino == inode
    out = _bundle.Bundle.load(dest)
    assert out.manifest["sync"][-1]["index"] == 2
    assert out.disks[0]["digests_sha256"] == disk["digests_sha256"]
    delta = out.disks[0]["deltas"][0]
    assert delta["path"] == os.path.join(src_bundle.dir, rel)
    out.check_integrity()  # the base disk, the new digests and the delta agree
    assert run_module(args)["changed"] is False

    # The converted disk holds the source now, as a step reading it whole needs; a target
    # made from the first convert (the old base) plus the delta holds it too.
    assert _disk.compare(raw, "raw", out_disk, "qcow2")
    target = str(tmp_path / "target.qcow2")
    _disk.convert(base_copy, "raw", target, "qcow2")
    with open(delta["path"], "rb") as fh:
        pieces = [(s, os.pread(fh.fileno(), n, s)) for s, n in delta["extents"]]
    _blocks.apply_delta(target, "qcow2", pieces)
    assert _disk.compare(raw, "raw", target, "qcow2")
