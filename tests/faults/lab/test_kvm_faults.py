"""Faults injected into real KVM migrations (issue 14), through the modules kvm_export,
convert, kvm_import and kvm_verify against the lab's libvirtd.

Already covered elsewhere, not repeated here:
- the pool refused up front when its free space is below the disks' size (8 MiB tmpfs):
  tests/integration/test_kvm_bad_input.py::test_pool_full;
- a truncated or garbled source disk: ::test_unreadable_source_disk;
- a manifest's digests_sha256 or capacity edited, refused by import: ::test_hand_edited_bundle_is_refused;
- an import failing after volumes were made: ::test_import_fails_midway_then_resumes.

Here:
1. the target pool's filesystem (a 24 MiB tmpfs) fills up mid-copy: a compressed source
   image is small on disk (the up-front check passes) but 32 MiB once written;
2. corrupt input: a bit-flipped qcow2 header; a bundle's digest file or manifest edited
   (convert and import refuse, naming the file);
3. the source changed behind the tool between warm syncs: the checkpoint deleted, the
   disk resized;
4. the conversion host's work dir deleted between runs.
Domains, volumes and pools are named lab-fk-*; nothing here boots a guest to its OS.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid

import libvirt
import pytest
from test_kvm_bad_input import tmpfs_pool
from test_kvm_migrate import sha256

MIB = 1024 * 1024
NS = "https://vmigrate.example/v2v/1"


def same_disk(a, a_fmt, b, b_fmt):
    """The independent reader: qemu-img compare (guest-visible bytes)."""
    proc = subprocess.run(["qemu-img", "compare", "-U", "-f", a_fmt, "-F", b_fmt, a, b], capture_output=True, text=True)
    return proc.returncode == 0


def manifest(bundle):
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)


def pool_volumes(conn, pool_name, prefix):
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    return sorted(v.name() for v in pool.listAllVolumes(0) if v.name().startswith(prefix))


def domain_exists(conn, name):
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


def provenance(dom):
    return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)


def target_disk(conn, pool_name, dst):
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    return pool.storageVolLookupByName("%s-disk0.qcow2" % dst).path()


@pytest.fixture
def fk(lab, libvirt_conn):
    """make(disk_writer, size_mib) defines a shut-off domain lab-fk-<tag> with one qcow2
    disk in the source pool; every lab-fk-<tag>* domain, volume and file goes afterwards."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    tag = uuid.uuid4().hex[:6]
    src_dir = lab["pool_paths"][lab["pools"]["source"]]
    state = {"tag": tag, "src": "lab-fk-%s" % tag, "dst": "lab-fk-%s-dst" % tag}
    state["disk"] = os.path.join(src_dir, "%s-disk0.qcow2" % state["src"])

    def make(writer, size_mib=32):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", state["disk"], "%dM" % size_mib], check=True)
        writer(state["disk"])
        spec = _spec.new_spec(
            name=state["src"],
            memory_mib=128,
            disks=[_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=size_mib * MIB)],
            nics=[],
        )
        xml = _libvirt_xml.libvirt_xml_from_spec(
            spec, {"disk0": {"path": state["disk"], "format": "qcow2"}}, domain_type=lab["domain_type"]
        )
        return libvirt_conn.defineXML(xml.replace(' mode="host-passthrough"', ""))

    state["make"] = make
    yield state
    for dom in libvirt_conn.listAllDomains(0):
        if dom.name().startswith("lab-fk-%s" % tag):
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(
                libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
            )
    for pool_name in (lab["pools"]["target"], lab["pools"]["source"]):
        pool = libvirt_conn.storagePoolLookupByName(pool_name)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith("lab-fk-%s" % tag):
                vol.delete(0)


def compressed_pattern(path):
    """32 MiB of one byte value, stored compressed: tiny on disk, 32 MiB once written out."""
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".raw") as raw:
        raw.write(b"\xa7" * (32 * MIB))
        raw.flush()
        subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", raw.name, path], check=True)


def pattern(mib, byte=0x3C):
    def writer(path):
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P %d 0 %dM" % (byte, mib), path], check=True, capture_output=True
        )

    return writer


def import_args(lab, bundle, dst, pool=None):
    return {
        "bundle": bundle,
        "name": dst,
        "pool": pool or lab["pools"]["target"],
        "cpu_mode": "default",
        "domain_type": lab["domain_type"],
    }


# --- 1. the target pool's filesystem fills up mid-copy --------------------------------------


@pytest.fixture
def small_pool(libvirt_conn, fk):
    """A dir pool on a 24 MiB tmpfs under /var/lib/vmigrate-lab; gone afterwards."""
    with tmpfs_pool(libvirt_conn, "lab-fk-small-%s" % fk["tag"], 24) as pool:
        yield pool


@pytest.mark.parametrize("transfer", ["path", "stream"])
def test_pool_fills_up_mid_copy(lab, libvirt_conn, fk, small_pool, run_module, tmp_path, reliability, transfer):
    reliability(
        "kvm",
        "target pool's filesystem full mid-import, transfer=%s (compressed source passes the free-space check)"
        % transfer,
        "import fails: '... No space left on device: the file system of storage pool(s) P is full' and the fix",
        "no target domain, the partial volume removed, pool space back; a re-run into a pool with room "
        "completes, disks equal by qemu-img compare",
    )
    pool_name, pool_path = small_pool
    dom = fk["make"](compressed_pattern)
    src_sum = sha256(fk["disk"])
    assert os.stat(fk["disk"]).st_blocks * 512 < 4 * MIB  # small on disk: the up-front check passes
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    free = os.statvfs(pool_path).f_bavail

    r = run_module("kvm_import", dict(import_args(lab, bundle, fk["dst"], pool_name), transfer=transfer))
    assert r["failed"] and r["error_kind"] == "disk", r
    msg = r["msg"]
    if transfer == "path":
        assert "cannot copy %s into volume %s-disk0.qcow2 in pool %s" % (fk["disk"], fk["dst"], pool_name) in msg
    assert "No space left on device" in msg, msg
    full = "the file system of storage pool(s) %s is full. Fix: free space in the pool or import into" % pool_name
    assert full in msg, msg
    assert "the volumes this import made were removed and no domain was defined" in msg, msg
    # Nothing left behind: no domain, no volume, no file, the space given back.
    assert not domain_exists(libvirt_conn, fk["dst"])
    assert pool_volumes(libvirt_conn, pool_name, "") == [] and os.listdir(pool_path) == []
    assert os.statvfs(pool_path).f_bavail == free
    assert sha256(fk["disk"]) == src_sum and dom.listAllCheckpoints(0) == []

    # The same import into a pool with room completes.
    r = run_module("kvm_import", dict(import_args(lab, bundle, fk["dst"]), transfer=transfer))
    assert not r.get("failed") and r["action"] == "create", r
    assert same_disk(fk["disk"], "qcow2", target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"]), "qcow2")
    assert 'state="complete"' in provenance(libvirt_conn.lookupByName(fk["dst"]))
    assert sha256(fk["disk"]) == src_sum


# --- 2. corrupt input ------------------------------------------------------------------------


def flip_l1_bit(path):
    """One bit of the first L1 entry: the L2 table it points at moves past the file's end."""
    with open(path, "r+b") as fh:
        fh.seek(40)
        l1 = int.from_bytes(fh.read(8), "big")
        fh.seek(l1)
        entry = int.from_bytes(fh.read(8), "big")
        fh.seek(l1)
        fh.write((entry ^ (1 << 40)).to_bytes(8, "big"))


def flip_data_bit(path, fmt, guest_offset):
    """One bit of the guest data at ``guest_offset``, in the file (qcow2 has no checksums)."""
    out = subprocess.run(
        ["qemu-img", "map", "--output=json", "-f", fmt, path], check=True, capture_output=True, text=True
    ).stdout
    (ext,) = [e for e in json.loads(out) if e["start"] <= guest_offset < e["start"] + e["length"] and e["data"]]
    at = ext["offset"] + guest_offset - ext["start"]
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)[0]
        fh.seek(at)
        fh.write(bytes([byte ^ 0x10]))


def test_bit_flipped_source_qcow2(lab, libvirt_conn, fk, run_module, tmp_path, reliability):
    reliability(
        "kvm",
        "source qcow2 with one bit flipped in its L1 table",
        "export fails: 'disk vda of domain D cannot be read: <file> is corrupt' and the qemu-img check fix",
        "disk file untouched by the tool, bundle marked incomplete, import refuses it, no checkpoint; "
        "with the bit restored a re-run exports and imports, disks equal by qemu-img compare",
    )
    dom = fk["make"](pattern(6))
    with open(fk["disk"], "rb") as fh:
        original = fh.read()
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed") and manifest(bundle)["state"] == "complete", r

    flip_l1_bit(fk["disk"])
    flipped = sha256(fk["disk"])
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert r["failed"] and r["error_kind"] == "disk", r
    assert "disk vda of domain %s cannot be read" % dom.name() in r["msg"] and fk["disk"] in r["msg"], r["msg"]
    assert "qemu-img check -f qcow2 %s" % fk["disk"] in r["msg"], r["msg"]
    assert sha256(fk["disk"]) == flipped and dom.listAllCheckpoints(0) == []
    assert manifest(bundle)["state"] == "incomplete"
    r = run_module("kvm_import", import_args(lab, bundle, fk["dst"]))
    assert r["failed"] and "bundle %s is incomplete" % bundle in r["msg"], r
    assert not domain_exists(libvirt_conn, fk["dst"])
    assert pool_volumes(libvirt_conn, lab["pools"]["target"], fk["dst"]) == []

    # The image copied again from its origin: the plain re-run finishes the job.
    with open(fk["disk"], "wb") as fh:
        fh.write(original)
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed") and manifest(bundle)["state"] == "complete", r
    r = run_module("kvm_import", import_args(lab, bundle, fk["dst"]))
    assert not r.get("failed") and r["action"] == "create", r
    assert same_disk(fk["disk"], "qcow2", target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"]), "qcow2")


@pytest.mark.parametrize("transfer", ["path", "stream"])
def test_bit_flipped_bundle_disk(lab, libvirt_conn, fk, run_module, tmp_path, reliability, transfer):
    reliability(
        "kvm",
        "bundle's disk file with one data bit flipped (qcow2 has no checksums), import transfer=%s" % transfer,
        "import fails: 'the data in <file> does not match the bundle's block digests (1 of 512 blocks differ, "
        "first at byte B): the file is damaged' and the fix",
        "no target domain, no volume; the source untouched; with the file copied again the re-run imports, "
        "disks equal by qemu-img compare",
    )
    dom = fk["make"](pattern(6))
    src_sum = sha256(fk["disk"])
    bundle = str(tmp_path / "export")
    # A streamed export holds its own copy of the disk: the file a transfer could damage.
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle, "transfer": "stream"})
    assert not r.get("failed"), r
    copy = os.path.join(bundle, "disks", "disk0.qcow2")
    shutil.copyfile(copy, copy + ".good")
    flip_data_bit(copy, "qcow2", 3 * MIB + 12345)
    imp = dict(import_args(lab, bundle, fk["dst"]), transfer=transfer)

    r = run_module("kvm_import", imp)
    assert r["failed"] and r["error_kind"] == "disk", r
    msg = r["msg"]
    assert "bundle %s, disk disk0: the data in %s does not match the bundle's block digests" % (bundle, copy) in msg
    assert "(1 of 512 blocks differ, first at byte %d): the file is damaged" % (3 * MIB) in msg, msg
    assert "Fix: copy the bundle again, or re-run the export (and convert) that wrote it" in msg, msg
    assert not domain_exists(libvirt_conn, fk["dst"])
    assert pool_volumes(libvirt_conn, lab["pools"]["target"], fk["dst"]) == []
    assert not [f for f in os.listdir(lab["pool_paths"][lab["pools"]["target"]]) if f.startswith(fk["dst"])]
    assert not [f for f in os.listdir(bundle) if f.startswith(".upload.")]

    os.replace(copy + ".good", copy)
    r = run_module("kvm_import", imp)
    assert not r.get("failed") and r["action"] == "create", r
    assert same_disk(fk["disk"], "qcow2", target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"]), "qcow2")
    assert sha256(fk["disk"]) == src_sum and dom.listAllCheckpoints(0) == []


def edit_digest_file(bundle):
    path = os.path.join(bundle, manifest(bundle)["disks"][0]["digests"])
    with open(path, "r+b") as fh:
        fh.seek(5)
        byte = fh.read(1)[0]
        fh.seek(5)
        fh.write(bytes([byte ^ 1]))
    return path


def edit_manifest(bundle):
    path = os.path.join(bundle, "manifest.json")
    m = manifest(bundle)
    m["disks"][0]["capacity"] += MIB
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(m, fh, indent=2)
    return path


def test_edited_bundle(lab, libvirt_conn, fk, run_module, tmp_path, reliability):
    # (edit, what convert says, what import says), each naming the edited file or field
    cases = [
        (
            edit_digest_file,
            "digest file {path} does not match digests_sha256 in the manifest",
            "bundle {bundle}, disk disk0: field disks[0].digests_sha256 is {sha}, but the digest file {path} hashes to",
        ),
        (
            edit_manifest,
            "disk disk0: {disk} holds 33554432 bytes, the manifest {path} says 34603008",
            "bundle {bundle}, disk disk0: field disks[0].capacity is 34603008 bytes",
        ),
    ]
    for what, (_edit, convert_says, _import_says) in zip(("digest file", "manifest.json"), cases, strict=True):
        reliability(
            "kvm",
            "bundle's %s edited after the export" % what,
            "convert and import fail naming it: '%s'" % convert_says.split(" {")[0],
            "convert's output left incomplete, no target domain or volume; a re-run of the export "
            "rewrites the bundle and convert + import complete, disks equal by qemu-img compare",
        )
    dom = fk["make"](pattern(6))
    bundle = str(tmp_path / "export")
    conv = str(tmp_path / "kvm")
    export = {"name": dom.name(), "bundle": bundle, "transfer": "stream"}
    r = run_module("kvm_export", export)
    assert not r.get("failed"), r
    sha = manifest(bundle)["disks"][0]["digests_sha256"]
    for edit, convert_says, import_says in cases:
        path = edit(bundle)
        words = {"path": path, "bundle": bundle, "sha": sha, "disk": os.path.join(bundle, "disks", "disk0.qcow2")}
        r = run_module("convert", {"src": bundle, "dest": conv, "target_platform": "kvm"})
        assert r["failed"] and r["error_kind"] == "input", r
        assert convert_says.format(**words) in r["msg"], r["msg"]
        assert not os.path.exists(os.path.join(conv, "manifest.json")) or manifest(conv)["state"] != "complete"
        r = run_module("kvm_import", import_args(lab, bundle, fk["dst"]))
        assert r["failed"] and r["error_kind"] == "input", r
        assert import_says.format(**words) in r["msg"], r["msg"]
        assert not domain_exists(libvirt_conn, fk["dst"])
        assert pool_volumes(libvirt_conn, lab["pools"]["target"], fk["dst"]) == []
        # The plain re-run of the export writes the bundle again.
        r = run_module("kvm_export", export)
        assert not r.get("failed") and manifest(bundle)["state"] == "complete", r

    r = run_module("convert", {"src": bundle, "dest": conv, "target_platform": "kvm"})
    assert not r.get("failed"), r
    r = run_module("kvm_import", import_args(lab, conv, fk["dst"]))
    assert not r.get("failed") and r["action"] == "create", r
    assert same_disk(fk["disk"], "qcow2", target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"]), "qcow2")


# --- 3. the source changed behind the tool between warm syncs ------------------------------


def bitmaps(path):
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True, text=True
    ).stdout
    return [b["name"] for b in (json.loads(out).get("format-specific", {}).get("data", {}).get("bitmaps") or [])]


def sync(run_module, lab, dom, bundle, conv, dst, **extra):
    """export, convert, import: one sync through to the target. Without ``conv`` the
    import reads the export's bundle (a KVM source's qcow2/raw disks need no convert)."""
    exp = run_module("kvm_export", dict({"name": dom.name(), "bundle": bundle}, **extra))
    assert not exp.get("failed"), exp
    if conv:
        r = run_module("convert", {"src": bundle, "dest": conv, "target_platform": "kvm"})
        assert not r.get("failed"), r
    return exp, run_module("kvm_import", import_args(lab, conv or bundle, dst))


def test_checkpoint_deleted_between_syncs(lab, libvirt_conn, fk, run_module, tmp_path, reliability):
    from test_kvm_migrate import guest_writes

    reliability(
        "kvm",
        "the checkpoint the bundle records deleted between warm syncs (checkpoint-delete --metadata)",
        "export runs an incremental by digest comparison; fallback_reason: 'checkpoint C of the last sync "
        "no longer exists on domain D, so block digests were compared (the whole disk read)'",
        "target brought up to date by deltas, verified, equal to the source by qemu-img compare; "
        "no checkpoint and no bitmap (the orphaned one included) left on the source after the final sync",
    )
    dom = fk["make"](pattern(4))
    bundle, conv = str(tmp_path / "export"), None
    dom.create()  # QEMU runs (no OS on the disk): the writes below go through its block layer
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"])
    assert exp["kind"] == "full" and not imp.get("failed") and imp["action"] == "create", (exp, imp)
    guest_writes(dom, [5 * MIB, 20 * MIB], 0x11)
    (cp,) = dom.listAllCheckpoints(0)
    gone = cp.getName()
    cp.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)

    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"])
    assert exp["kind"] == "incremental", exp
    assert (
        "checkpoint %s of the last sync no longer exists on domain %s, so block digests were compared "
        "(the whole disk read)" % (gone, dom.name()) in exp["fallback_reason"]
    ), exp
    assert not imp.get("failed") and imp["action"] == "deltas", imp
    assert [c.getName() for c in dom.listAllCheckpoints(0)] == [exp["checkpoint"]["id"]]

    # The cutover: more writes, the source off, the final sync from the new checkpoint.
    guest_writes(dom, [7 * MIB], 0x22)
    dom.destroy()
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"], cleanup_checkpoints=True)
    assert exp["kind"] == "incremental" and exp["fallback_reason"] is None, exp
    assert not imp.get("failed") and imp["action"] == "deltas" and imp["deltas_applied"], imp
    dst_disk = target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"])
    assert same_disk(fk["disk"], "qcow2", dst_disk, "qcow2")
    assert 'state="complete"' in provenance(libvirt_conn.lookupByName(fk["dst"]))
    assert run_module("kvm_verify", {"bundle": bundle, "name": fk["dst"]})["ok"]
    # No reference point left on the source: no checkpoint, no persistent bitmap.
    assert dom.listAllCheckpoints(0) == [] and bitmaps(fk["disk"]) == []


def test_disk_resized_between_syncs(lab, libvirt_conn, fk, run_module, tmp_path, reliability):
    from test_kvm_migrate import guest_writes

    reliability(
        "kvm",
        "the source disk resized between warm syncs (blockResize 32 -> 48 MiB)",
        "export makes a new full copy; fallback_reason: 'the VM's disks changed since the last sync "
        "(disk0 33554432 B, now disk0 50331648 B): a new full copy'; import refuses the old target: "
        "'... holds 33554432 bytes, the bundle's disk 50331648' and 'import with replace=true'",
        "no delta applied: the old target untouched (still its last complete sync); "
        "replace=true makes it again, equal to the source by qemu-img compare",
    )
    dom = fk["make"](pattern(4))
    bundle, conv = str(tmp_path / "export"), None
    dom.create()
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"])
    assert exp["kind"] == "full" and not imp.get("failed"), (exp, imp)
    dst_disk = target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"])
    before = sha256(dst_disk)
    prov_before = provenance(libvirt_conn.lookupByName(fk["dst"]))
    dom.blockResize("vda", 48 * MIB, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
    guest_writes(dom, [3 * MIB, 40 * MIB], 0x33)

    dom.destroy()
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"], cleanup_checkpoints=True)
    assert exp["kind"] == "full", exp
    assert (
        "the VM's disks changed since the last sync (disk0 33554432 B, now disk0 50331648 B): a new full copy"
        in exp["fallback_reason"]
    ), exp
    assert imp["failed"] and imp["error_kind"] == "input", imp
    assert "disk vda of target domain %s holds 33554432 bytes, the bundle's disk 50331648" % fk["dst"] in imp["msg"]
    assert "Fix: import with replace=true to make the target again at the new size" in imp["msg"], imp
    # Never a delta on the wrong base: the target's disk and provenance are as they were.
    assert sha256(dst_disk) == before
    assert provenance(libvirt_conn.lookupByName(fk["dst"])) == prov_before

    r = run_module("kvm_import", dict(import_args(lab, bundle, fk["dst"]), replace=True))
    assert not r.get("failed") and r["action"] == "replace", r
    dst_disk = target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"])
    assert same_disk(fk["disk"], "qcow2", dst_disk, "qcow2")
    assert dom.listAllCheckpoints(0) == [] and bitmaps(fk["disk"]) == []


# --- 4. the conversion host's work dir deleted between runs --------------------------------


def test_work_dir_deleted_between_runs(lab, libvirt_conn, fk, run_module, tmp_path, reliability):
    from test_kvm_migrate import guest_writes

    reliability(
        "kvm",
        "the conversion host's work dir (export and convert bundles) deleted after an import, source changed",
        "the re-run exports a new chain; import says action 'rewrite': 'the content of disk0 changed and no "
        "delta chain leads there' (a clean restart of that disk)",
        "the new chain's delta is not applied on the old chain's target; the disk written whole, equal to "
        "the source by qemu-img compare; the old chain's checkpoint removed by the final sync's cleanup",
    )
    reliability(
        "kvm",
        "a delta whose base is not what the target holds (another chain's incremental)",
        "import rewrites the disk instead: action 'rewrite', no deltas_applied",
        "target equal to the source by qemu-img compare; provenance complete at the new chain",
    )
    reliability(
        "kvm",
        "the conversion host's work dir deleted after an import, source unchanged",
        "the re-run's import says action 'record': 'same content; provenance moves to this bundle's sync' "
        "(resumed from the target's provenance)",
        "target disk not written (sha256 unchanged), provenance at the new chain",
    )
    dom = fk["make"](pattern(4))
    bundle, conv = str(tmp_path / "export"), str(tmp_path / "kvm")
    dom.create()
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"])
    assert exp["kind"] == "full" and imp["action"] == "create", (exp, imp)
    old_chain = manifest(conv)["sync"][-1]["chain"]

    # The work dir goes; the source keeps running and writing; a new chain of two syncs.
    shutil.rmtree(bundle)
    shutil.rmtree(conv)
    guest_writes(dom, [2 * MIB], 0x44)
    exp = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not exp.get("failed") and exp["kind"] == "full", exp
    guest_writes(dom, [9 * MIB], 0x55)
    dom.destroy()
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"], cleanup_checkpoints=True)
    assert exp["kind"] == "incremental", exp
    chain = manifest(conv)["sync"][-1]["chain"]
    assert chain != old_chain and manifest(conv)["disks"][0]["deltas"], manifest(conv)["disks"][0]
    # The bundle's delta starts from its own first sync, which the target never held.
    assert not imp.get("failed") and imp["action"] == "rewrite", imp
    assert "the content of disk0 changed and no delta chain leads there" in imp["reason"], imp
    assert imp["deltas_applied"] == [] or all(d["disk"] == "disk0" for d in imp["deltas_applied"]), imp
    dst = libvirt_conn.lookupByName(fk["dst"])
    dst_disk = target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"])
    assert same_disk(fk["disk"], "qcow2", dst_disk, "qcow2")
    assert 'state="complete"' in provenance(dst) and chain in provenance(dst)

    # Gone again, nothing changed since: the re-run resumes from the target's provenance.
    shutil.rmtree(bundle)
    shutil.rmtree(conv)
    before = sha256(dst_disk)
    exp, imp = sync(run_module, lab, dom, bundle, conv, fk["dst"])
    assert exp["kind"] == "full", exp
    assert not imp.get("failed") and imp["action"] == "record", imp
    assert "same content; provenance moves to this bundle's sync" in imp["reason"], imp
    assert sha256(dst_disk) == before
    assert manifest(conv)["sync"][-1]["chain"] in provenance(dst)
    assert dom.listAllCheckpoints(0) == [] and bitmaps(fk["disk"]) == []


def test_damaged_delta_on_an_existing_target(lab, libvirt_conn, fk, run_module, tmp_path, reliability):
    """A bit flipped in a delta file (no checksum of its own) applied to an existing target:
    what the delta wrote is checked against the bundle's block digests as it is written."""
    from test_kvm_migrate import guest_writes

    reliability(
        "kvm",
        "a bit flipped in a warm sync's delta file, imported onto the existing target",
        "import fails: 'after its deltas (<delta file>) the disk of <target> (<path>) differs from the bundle's "
        "block digests in 1 blocks, first at byte B: a delta file is damaged' and the fix",
        "target never started, provenance state incomplete; the source untouched; with the delta file copied "
        "again the re-run applies the deltas again, target equal to the source by qemu-img compare, verified",
    )
    dom = fk["make"](pattern(4))
    bundle = str(tmp_path / "export")
    dom.create()  # QEMU runs (no OS on the disk): the writes below go through its block layer
    exp, imp = sync(run_module, lab, dom, bundle, None, fk["dst"])
    assert exp["kind"] == "full" and imp["action"] == "create", (exp, imp)
    guest_writes(dom, [6 * MIB, 21 * MIB], 0x5A)
    dom.destroy()
    exp = run_module("kvm_export", {"name": dom.name(), "bundle": bundle, "cleanup_checkpoints": True})
    assert exp["kind"] == "incremental" and not exp.get("failed"), exp
    (delta,) = manifest(bundle)["disks"][0]["deltas"]
    delta_file = os.path.join(bundle, delta["path"])
    shutil.copyfile(delta_file, str(tmp_path / "delta.good"))
    start, _length = delta["extents"][-1]
    with open(delta_file, "r+b") as fh:  # one bit in the data of its last extent
        fh.seek(start + 777)
        byte = fh.read(1)[0]
        fh.seek(start + 777)
        fh.write(bytes([byte ^ 0x10]))
    source_sum = sha256(fk["disk"])

    r = run_module("kvm_import", import_args(lab, bundle, fk["dst"]))
    assert r["failed"] and r["error_kind"] == "disk", r
    assert "after its deltas (%s) the disk of %s" % (delta_file, fk["dst"]) in r["msg"], r["msg"]
    assert "differs from the bundle's block digests in 1 blocks" in r["msg"], r["msg"]
    assert "a delta file is damaged" in r["msg"] and "Fix: copy the bundle again" in r["msg"], r["msg"]
    target = libvirt_conn.lookupByName(fk["dst"])
    assert not target.isActive() and 'state="incomplete"' in provenance(target)
    dst_disk = target_disk(libvirt_conn, lab["pools"]["target"], fk["dst"])
    assert not same_disk(fk["disk"], "qcow2", dst_disk, "qcow2")  # written, and visibly not done
    assert sha256(fk["disk"]) == source_sum

    shutil.copyfile(str(tmp_path / "delta.good"), delta_file)
    r = run_module("kvm_import", import_args(lab, bundle, fk["dst"]))
    assert not r.get("failed") and r["action"] == "deltas" and r["deltas_applied"], r
    assert same_disk(fk["disk"], "qcow2", dst_disk, "qcow2")
    assert 'state="complete"' in provenance(libvirt_conn.lookupByName(fk["dst"]))
    assert run_module("kvm_verify", {"bundle": bundle, "name": fk["dst"]})["ok"]
    assert sha256(fk["disk"]) == source_sum
