"""KVM platform on bad input, against the lab's libvirtd (issue 4, "Bad input").

- permission denied: the modules run as `nobody` against qemu:///system; the error names
  the URI and the fix, nothing is written.
- pool full: a dir pool on an 8 MiB tmpfs; an import of a 32 MiB disk is refused before
  any volume is made.
- a source disk qemu-img cannot read (truncated, or garbage after the header): the export
  fails naming the file, the disk is not modified, the bundle is not left complete.
- transfer=stream on the local URI: export downloads the volume, import uploads it; the
  target equals the source per qemu-img compare; re-runs change nothing.
- an import failing after volumes were made (the second disk's tables are garbage): no
  domain, no volume left; the re-run with the file back succeeds.
- a hand-edited bundle (digests_sha256, a capacity, a capacity and the spec's) or a missing
  disk file: import (and check mode) refuses naming the field, before any volume is made.
- a raw disk of 300 MiB + 512 bytes arrives with exactly that capacity (libvirt makes
  qcow2 volumes in whole KiB), over both transfers and both volume formats; a domain
  name with '/' is refused before anything is made.

The missing pool is covered by test_kvm_migrate.py::test_bad_input.
Every disk here is 16-32 MiB and no guest is booted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
import xml.etree.ElementTree as ET

import bundle_edits  # tests/integration/bundle_edits.py
import libvirt
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
MIB = 1024 * 1024
MODULES = "ansible_collections.vmigrate.v2v.plugins.modules."


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def volumes(conn, pool_name):
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    return sorted(v.name() for v in pool.listAllVolumes(0))


def domain_names(conn):
    return sorted(d.name() for d in conn.listAllDomains(0))


def domain_exists(conn, name):
    return name in domain_names(conn)


def qemu_img_compare(a, a_fmt, b, b_fmt):
    return subprocess.run(["qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, a, b], capture_output=True, text=True)


def manifest(bundle):
    path = os.path.join(bundle, "manifest.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture
def tag():
    return uuid.uuid4().hex[:6]


@pytest.fixture
def domains(lab, libvirt_conn, tag):
    """make(name_suffix, disks) defines a shut-off domain whose qcow2 disks sit in the source pool.

    ``disks`` is a list of (size_mib, writer) where writer(path) fills the image; every
    domain, disk file and target volume named after the test's tag is removed afterwards.
    """
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    made = {"domains": [], "files": []}
    src_dir = lab["pool_paths"][lab["pools"]["source"]]

    def make(suffix, disks, fmt="qcow2", unit=MIB):
        name = "lab-bad-%s-%s" % (suffix, tag)
        spec_disks, paths = [], {}
        for i, (size, writer) in enumerate(disks):
            path = os.path.join(src_dir, "%s-disk%d.%s" % (name, i, fmt))
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, str(size * unit)], check=True)
            made["files"].append(path)
            if writer:
                writer(path)
            spec_disks.append(_spec.new_disk(id="disk%d" % i, bus="virtio", format=fmt, capacity=size * unit))
            paths["disk%d" % i] = {"path": path, "format": fmt}
        spec = _spec.new_spec(name=name, memory_mib=128, disks=spec_disks, nics=[])
        xml = _libvirt_xml.libvirt_xml_from_spec(spec, paths, domain_type=lab["domain_type"])
        xml = xml.replace(' mode="host-passthrough"', "")
        dom = libvirt_conn.defineXML(xml)
        made["domains"].append(name)
        return dom, [paths["disk%d" % i]["path"] for i in range(len(disks))]

    yield make
    for name in made["domains"] + ["lab-bad-dst-%s" % tag]:
        if not domain_exists(libvirt_conn, name):
            continue
        dom = libvirt_conn.lookupByName(name)
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    for path in made["files"]:
        for p in (path, path + ".away"):
            if os.path.exists(p):
                os.unlink(p)
    pool = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"])
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith("lab-bad-dst-%s" % tag):
            vol.delete(0)
    libvirt_conn.storagePoolLookupByName(lab["pools"]["source"]).refresh(0)


def write_pattern(mib, pattern=0xAB):
    def writer(path):
        subprocess.run(
            ["qemu-io", "-f", "qcow2", "-c", "write -P %d 0 %dM" % (pattern, mib), path],
            check=True,
            capture_output=True,
        )

    return writer


def write_random(mib):
    """Incompressible data, so the image really holds ``mib`` MiB."""

    def writer(path):
        with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".raw") as raw:
            raw.write(os.urandom(mib * MIB))
            raw.flush()
            subprocess.run(
                ["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", raw.name, path],
                check=True,
                capture_output=True,
            )

    return writer


# --- permission denied ------------------------------------------------------------------


def run_as_nobody(module, args):
    """Run a module's main() as user nobody, the way Ansible would (arguments in a JSON file)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    os.chmod(fh.name, 0o644)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, ".collections"), HOME="/tmp")
    env.pop("LIBVIRT_DEFAULT_URI", None)
    try:
        proc = subprocess.run(
            ["runuser", "-u", "nobody", "--", PYTHON, "-m", MODULES + module, fh.name],
            cwd="/tmp",
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        os.unlink(fh.name)
    return proc


def test_permission_denied(lab, libvirt_conn, domains, reliability):
    reliability(
        "kvm",
        "libvirt refuses the user (kvm_vm_info, kvm_export run as nobody)",
        "'permission denied: libvirt at <uri> does not let this user ...' and 'Fix: run as root or as a member of "
        "the group that owns the libvirt socket' (polkit, qemu:///session named); no traceback",
        "nothing written: bundle dir empty; source XML, checkpoints and disk (sha256) unchanged",
    )
    uri = lab["libvirt_uri"]
    dom, (disk,) = domains("perm", [(16, write_pattern(4))])
    before = {"domains": domain_names(libvirt_conn), "xml": dom.XMLDesc(0), "disk": sha256(disk)}
    # A bundle directory nobody may write: only the connection can stop the export.
    bundle = tempfile.mkdtemp(prefix="vmigrate-nobody-")
    os.chmod(bundle, 0o777)
    try:
        for module, args in (
            ("kvm_vm_info", {"uri": uri}),
            ("kvm_export", {"uri": uri, "name": dom.name(), "bundle": os.path.join(bundle, "b")}),
        ):
            proc = run_as_nobody(module, args)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert "Traceback" not in proc.stdout + proc.stderr
            result = json.loads(proc.stdout)
            assert result["failed"] and result["error_kind"] == "platform", result
            assert "exception" not in result, result
            msg = result["msg"]
            assert "permission denied: libvirt at %s does not let this user" % uri in msg, msg
            assert "Fix: run as root or as a member of the group that owns the libvirt socket" in msg, msg
            assert "polkit" in msg and "qemu:///session" in msg, msg
        assert os.listdir(bundle) == []
    finally:
        shutil.rmtree(bundle)
    assert domain_names(libvirt_conn) == before["domains"]
    assert dom.XMLDesc(0) == before["xml"] and dom.listAllCheckpoints(0) == []
    assert sha256(disk) == before["disk"]


# --- pool full ----------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs_pool(libvirt_conn, name, size_mib):
    """A dir pool on a tmpfs of ``size_mib`` MiB under /var/lib/vmigrate-lab: (name, path);
    destroyed, undefined and unmounted afterwards."""
    path = "/var/lib/vmigrate-lab/%s" % name
    os.makedirs(path)
    pool = None
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % size_mib, "tmpfs", path], check=True)
        pool = libvirt_conn.storagePoolDefineXML(
            "<pool type='dir'><name>%s</name><target><path>%s</path></target></pool>" % (name, path), 0
        )
        pool.create(0)
        yield name, path
    finally:
        if pool is not None:
            if pool.isActive():
                pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                pool.destroy()
            pool.undefine()
        subprocess.run(["umount", path], check=False)
        os.rmdir(path)


@pytest.fixture
def tiny_pool(libvirt_conn, tag):
    """A pool on an 8 MiB tmpfs."""
    with tmpfs_pool(libvirt_conn, "lab-tinypool-%s" % tag, 8) as pool:
        yield pool


def test_pool_full(lab, libvirt_conn, domains, run_module, tiny_pool, tmp_path, tag, reliability):
    reliability(
        "kvm",
        "target pool too small for the disks (8 MiB tmpfs pool, 32 MiB of data)",
        "import refused: 'storage pool P has 8.0 MiB free, the disks need up to 32.' and "
        "'Fix: free space in the pool or import into another pool'",
        "refused up front: no volume, no domain, the pool's free space unchanged",
    )
    pool_name, pool_path = tiny_pool
    dom, (disk,) = domains("full", [(32, write_random(32))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    free = os.statvfs(pool_path).f_bavail
    r = run_module("kvm_import", {"bundle": bundle, "name": "lab-bad-dst-%s" % tag, "pool": pool_name})
    assert r["failed"] and r["error_kind"] == "input", r
    assert "storage pool %s has 8.0 MiB free, the disks need up to 32." % pool_name in r["msg"], r["msg"]
    assert "Fix: free space in the pool or import into another pool" in r["msg"], r["msg"]
    assert volumes(libvirt_conn, pool_name) == [] and os.listdir(pool_path) == []
    assert os.statvfs(pool_path).f_bavail == free
    assert not domain_exists(libvirt_conn, "lab-bad-dst-%s" % tag)


# --- a source disk qemu-img cannot read ---------------------------------------------------------


def truncate(path):
    """A copy cut short: the header and tables are there, most data clusters are not."""
    os.truncate(path, 2 * MIB)


def garble(path):
    """A valid qcow2 header, garbage after it (L1 and refcount tables included)."""
    with open(path, "r+b") as fh:
        fh.seek(512)
        fh.write(os.urandom(2 * MIB - 512))


@pytest.mark.parametrize("damage", [truncate, garble], ids=["truncated", "garbage"])
def test_unreadable_source_disk(libvirt_conn, domains, run_module, tmp_path, damage, reliability):
    reliability(
        "kvm",
        "source qcow2 %s (%s)"
        % (damage.__name__, "cut to 2 MiB" if damage is truncate else "garbage after the header"),
        "export fails: 'disk vda of domain D cannot be read', the file named as corrupt or truncated, and "
        "'Fix: copy the image again from its source; `qemu-img check -f qcow2 <file>`' (under 3000 chars)",
        "disk only read (sha256 unchanged), no checkpoint; the existing bundle marked incomplete and import "
        "refuses it ('bundle B is incomplete'); a fresh bundle is never written",
    )
    dom, (disk,) = domains(damage.__name__, [(16, write_pattern(12))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed") and manifest(bundle)["state"] == "complete", r

    damage(disk)
    damaged = sha256(disk)
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert r["failed"] and r["error_kind"] == "disk", r
    msg = r["msg"]
    assert "disk vda of domain %s cannot be read" % dom.name() in msg, msg
    assert disk in msg and ("corrupt" in msg or "truncated" in msg), msg
    assert "Fix: copy the image again from its source; `qemu-img check -f qcow2 %s`" % disk in msg, msg
    assert len(msg) < 3000, "qemu-img's per-cluster lines must be cut: %d chars" % len(msg)
    # The disk was only read, and the bundle no longer claims to be complete.
    assert sha256(disk) == damaged
    assert manifest(bundle)["state"] == "incomplete"
    assert dom.listAllCheckpoints(0) == []
    r = run_module("kvm_import", {"bundle": bundle, "name": dom.name() + "-x", "pool": "vmigrate-target"})
    assert r["failed"] and "bundle %s is incomplete" % bundle in r["msg"], r
    assert not domain_exists(libvirt_conn, dom.name() + "-x")

    # A fresh bundle for the damaged disk is never written at all.
    fresh = str(tmp_path / "fresh")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": fresh})
    assert r["failed"] and disk in r["msg"], r
    assert manifest(fresh) is None
    assert sha256(disk) == damaged


# --- transfer: stream on the local URI ------------------------------------------------------


def test_stream_transfer(lab, libvirt_conn, domains, run_module, tmp_path, tag):
    # The disk file is made by qemu-img, not libvirt: the export must refresh the pool to
    # find it as a volume.
    dom, (disk,) = domains("stream", [(16, write_pattern(6, 0x5A))])
    disk_sum = sha256(disk)
    bundle = str(tmp_path / "export")
    args = {"name": dom.name(), "bundle": bundle, "transfer": "stream"}
    r = run_module("kvm_export", args)
    assert not r.get("failed") and r["changed"] and r["kind"] == "full" and r["mode"] == "cold", r
    m = manifest(bundle)
    assert m["state"] == "complete" and m["disks"][0]["path"] == "disks/disk0.qcow2", m["disks"]
    copy = os.path.join(bundle, "disks", "disk0.qcow2")
    assert 6 * MIB <= r["bytes_written"] <= 7 * MIB, r  # the data, sparse: not the 16 MiB capacity
    assert qemu_img_compare(disk, "qcow2", copy, "qcow2").returncode == 0
    assert not [f for f in os.listdir(os.path.join(bundle, "disks")) if f.endswith(".part")]

    again = run_module("kvm_export", args)
    assert not again.get("failed") and again["changed"] is False and again["_recap_changed"] == 0, again
    assert manifest(bundle)["sync"] == m["sync"]  # the same chain: an imported target stays current

    dst = "lab-bad-dst-%s" % tag
    target_pool = lab["pools"]["target"]
    imp = {"bundle": bundle, "name": dst, "pool": target_pool, "transfer": "stream", "cpu_mode": "default"}
    imp["domain_type"] = lab["domain_type"]
    r = run_module("kvm_import", imp)
    assert not r.get("failed") and r["changed"], r
    assert r["transfer"] == "stream", r
    vol = libvirt_conn.storagePoolLookupByName(target_pool).storageVolLookupByName("%s-disk0.qcow2" % dst)
    cmp = qemu_img_compare(disk, "qcow2", vol.path(), "qcow2")
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert not [f for f in os.listdir(bundle) if f.startswith(".upload.")]
    target = libvirt_conn.lookupByName(dst)
    assert not target.isActive()
    prov = target.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "https://vmigrate.example/v2v/1", 0)
    assert 'state="complete"' in prov and dom.UUIDString() in prov

    again = run_module("kvm_import", imp)
    assert not again.get("failed") and again["changed"] is False and again["_recap_changed"] == 0, again
    assert sha256(disk) == disk_sum


# --- an import that fails after making volumes --------------------------------------------------


def test_import_fails_midway_then_resumes(lab, libvirt_conn, domains, run_module, tmp_path, tag, reliability):
    reliability(
        "kvm",
        "bundle's second disk file missing",
        "import refused: 'disk disk1: field disks[1].path names <file>, which does not exist'",
        "refused before any volume: no domain, no volume",
    )
    reliability(
        "kvm",
        "bundle's second disk with garbage tables (header intact), found after the first disk was written",
        "import fails: 'cannot copy <file> into volume <vm>-disk1.qcow2' or 'the data in <file> does not match "
        "the bundle's block digests', and a 'Fix: '",
        "no domain, no volume left (disk0's removed); with the file back the re-run imports, disks equal by "
        "qemu-img compare, a third run changes nothing",
    )
    dom, disks = domains("midway", [(16, write_pattern(4, 0x11)), (16, write_pattern(4, 0x22))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    dst = "lab-bad-dst-%s" % tag
    target_pool = lab["pools"]["target"]
    imp = {"bundle": bundle, "name": dst, "pool": target_pool, "cpu_mode": "default"}
    imp["domain_type"] = lab["domain_type"]

    # The second disk's file is gone: the bundle's own check refuses before any volume.
    os.rename(disks[1], disks[1] + ".away")
    r = run_module("kvm_import", imp)
    assert r["failed"] and r["error_kind"] == "input", r
    assert "disk disk1: field disks[1].path names %s, which does not exist" % disks[1] in r["msg"], r["msg"]
    assert not domain_exists(libvirt_conn, dst)
    # Only this test's names: other tests may use the lab's target pool at the same time.
    assert [v for v in volumes(libvirt_conn, target_pool) if v.startswith(dst)] == []
    os.rename(disks[1] + ".away", disks[1])

    # The second disk's header is intact but its tables are garbage: the bundle's check
    # (which reads headers only) passes, disk0's volume is made and filled, then disk1 fails:
    # qemu-img refuses the tables, or (random L1 entries that happen to read) the copy's
    # check against the bundle's digests refuses the data. Either way it names the file.
    shutil.copyfile(disks[1], disks[1] + ".away")
    garble(disks[1])
    r = run_module("kvm_import", imp)
    assert r["failed"] and r["error_kind"] == "disk", r
    copy_failed = "cannot copy %s into volume %s-disk1.qcow2" % (disks[1], dst)
    data_refused = "the data in %s does not match the bundle's block digests" % disks[1]
    assert copy_failed in r["msg"] or data_refused in r["msg"], r["msg"]
    assert "Fix: " in r["msg"]
    assert not domain_exists(libvirt_conn, dst)
    assert [v for v in volumes(libvirt_conn, target_pool) if v.startswith(dst)] == []

    os.rename(disks[1] + ".away", disks[1])
    r = run_module("kvm_import", imp)
    assert not r.get("failed") and r["changed"], r
    pool = libvirt_conn.storagePoolLookupByName(target_pool)
    for i, src in enumerate(disks):
        vol = pool.storageVolLookupByName("%s-disk%d.qcow2" % (dst, i))
        assert qemu_img_compare(src, "qcow2", vol.path(), "qcow2").returncode == 0
    assert domain_exists(libvirt_conn, dst)
    again = run_module("kvm_import", imp)
    assert again["changed"] is False and again["_recap_changed"] == 0, again


# --- a hand-edited bundle -----------------------------------------------------------------------


@pytest.mark.parametrize("edit,field", bundle_edits.EDITS, ids=bundle_edits.IDS)
def test_hand_edited_bundle_is_refused(lab, libvirt_conn, domains, run_module, tmp_path, tag, edit, field, reliability):
    reliability(
        "kvm",
        "hand-edited bundle manifest: %s changed" % field,
        "import (and --check) refused: 'bundle B, disk disk0: field %s ...' and "
        "'Fix: re-run the export/convert that wrote this bundle'" % field,
        "refused before anything is made: no domain, no volume, no upload file; the unedited bundle imports",
    )
    dom, (disk,) = domains("edit", [(16, write_pattern(4, 0x33))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    path = os.path.join(bundle, "manifest.json")
    with open(path, encoding="utf-8") as fh:
        original = fh.read()
    m = json.loads(original)
    edit(m)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(m, fh, indent=2)

    dst = "lab-bad-dst-%s" % tag
    target_pool = lab["pools"]["target"]
    imp = {"bundle": bundle, "name": dst, "pool": target_pool, "cpu_mode": "default"}
    imp["domain_type"] = lab["domain_type"]
    for check in (True, False):
        r = run_module("kvm_import", imp, check=check)
        assert r["failed"] and r["error_kind"] == "input", r
        msg = r["msg"]
        assert "bundle %s, disk disk0: field %s " % (bundle, field) in msg, msg
        assert "Fix: re-run the export/convert that wrote this bundle" in msg, msg
        assert not domain_exists(libvirt_conn, dst)
        assert [v for v in volumes(libvirt_conn, target_pool) if v.startswith(dst)] == []
        assert not [f for f in os.listdir(lab["pool_paths"][target_pool]) if f.startswith(dst)]
    assert not [f for f in os.listdir(bundle) if f.startswith(".upload.")]

    # The same bundle unedited imports: the refusal came from the edit alone.
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(original)
    r = run_module("kvm_import", imp)
    assert not r.get("failed") and r["changed"], r
    vol = libvirt_conn.storagePoolLookupByName(target_pool).storageVolLookupByName("%s-disk0.qcow2" % dst)
    assert vol.info()[1] == 16 * MIB  # the capacity the disk really has
    assert qemu_img_compare(disk, "qcow2", vol.path(), "qcow2").returncode == 0


# --- exact capacity: 300 MiB + 512 bytes ------------------------------------------------------

ODD_SIZE = 300 * MIB + 512  # a multiple of 512, not of 1 KiB


def write_head_and_tail(path):
    """Random data at the start and in the last 512 bytes, which a KiB-rounded copy moves off the end."""
    with open(path, "r+b") as fh:
        fh.write(os.urandom(MIB))
        fh.seek(ODD_SIZE - 512)
        fh.write(os.urandom(512))
    assert os.path.getsize(path) == ODD_SIZE


def qemu_img_info(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", "-U", path], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("transfer", ["path", "stream"])
@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_exact_capacity(lab, libvirt_conn, domains, run_module, tmp_path, tag, transfer, fmt):
    dom, (disk,) = domains("exact", [(ODD_SIZE, write_head_and_tail)], fmt="raw", unit=1)
    disk_sum = sha256(disk)
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    assert manifest(bundle)["disks"][0]["capacity"] == ODD_SIZE

    dst = "lab-bad-dst-%s" % tag
    target_pool = lab["pools"]["target"]
    imp = {"bundle": bundle, "name": dst, "pool": target_pool, "transfer": transfer, "volume_format": fmt}
    imp.update(cpu_mode="default", domain_type=lab["domain_type"])
    r = run_module("kvm_import", imp)
    assert not r.get("failed") and r["changed"] and r["transfer"] == transfer, r

    vol = libvirt_conn.storagePoolLookupByName(target_pool).storageVolLookupByName("%s-disk0.%s" % (dst, fmt))
    info = qemu_img_info(vol.path())
    assert info["format"] == fmt and info["virtual-size"] == ODD_SIZE, info
    assert vol.info()[1] == ODD_SIZE
    cmp = qemu_img_compare(disk, "raw", vol.path(), fmt)
    assert cmp.returncode == 0 and "Images are identical" in cmp.stdout, cmp.stdout + cmp.stderr
    # libvirt's own view of the domain's disk: the same byte count the guest will see.
    target = libvirt_conn.lookupByName(dst)
    assert target.blockInfo("vda", 0)[0] == ODD_SIZE

    verified = run_module("kvm_verify", {"bundle": bundle, "name": dst})
    assert not verified.get("failed") and verified["ok"], verified
    assert [d["capacity"] for d in verified["disks"]] == [ODD_SIZE], verified["disks"]
    assert sha256(disk) == disk_sum


def test_domain_name_with_slash_is_refused_up_front(lab, libvirt_conn, domains, run_module, tmp_path, tag, reliability):
    reliability(
        "kvm",
        "target VM name with '/' (libvirt refuses it)",
        "import refused: \"the VM name '...' contains '/', which is not allowed in a libvirt domain name\" and "
        "'Fix: give another name (option name), e.g. ...-x'",
        "refused up front: no volume, no domain",
    )
    dom, _disks = domains("slash", [(16, write_pattern(2))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"name": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    target_pool = lab["pools"]["target"]
    dst = "lab-bad-dst-%s/x" % tag
    r = run_module("kvm_import", {"bundle": bundle, "name": dst, "pool": target_pool})
    assert r["failed"] and r["error_kind"] == "input", r
    assert (
        "the VM name %r contains '/', which is not allowed in a libvirt domain name (libvirt refuses it)" % dst
        in r["msg"]
    ), r["msg"]
    assert "Fix: give another name (option name), e.g. 'lab-bad-dst-%s-x'" % tag in r["msg"], r["msg"]
    # Only this test's names: other tests may use the lab's target pool at the same time.
    assert [v for v in volumes(libvirt_conn, target_pool) if v.startswith("lab-bad-dst-%s" % tag)] == []
    assert not [d for d in domain_names(libvirt_conn) if d.startswith("lab-bad-dst-%s" % tag)]


def test_storage_map_puts_each_disk_in_its_pool(lab, libvirt_conn, domains, run_module, tmp_path, tag):
    # Two disks in the source pool's directory; storage_map sends them to the target pool
    # although the import's `pool` names the source pool.
    dom, disks = domains("smap", [(16, write_pattern(3, 0x21)), (16, write_pattern(2, 0x42))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"vm": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    src_dir = lab["pool_paths"][lab["pools"]["source"]]
    target_pool = lab["pools"]["target"]
    dst = "lab-bad-dst-%s" % tag
    imp = {"bundle": bundle, "name": dst, "pool": lab["pools"]["source"], "storage_map": {src_dir: target_pool}}
    imp.update(cpu_mode="default", domain_type=lab["domain_type"])
    r = run_module("kvm_import", imp)
    assert not r.get("failed") and r["action"] == "create", r
    assert [c["to"] for c in r["spec_changes"] if c["reason"] == "storage_map"] == [target_pool, target_pool]
    pool = libvirt_conn.storagePoolLookupByName(target_pool)
    pool.refresh(0)
    for i, disk in enumerate(disks):
        vol = pool.storageVolLookupByName("%s-disk%d.qcow2" % (dst, i))
        assert qemu_img_compare(disk, "qcow2", vol.path(), "qcow2").returncode == 0
    source_pool = libvirt_conn.storagePoolLookupByName(lab["pools"]["source"])
    source_pool.refresh(0)
    assert not [v.name() for v in source_pool.listAllVolumes(0) if v.name().startswith(dst)]
    # A re-run changes nothing.
    again = run_module("kvm_import", imp)
    assert again["changed"] is False and again["action"] == "none", again


# --- several imports into one pool at once (a wave with Ansible forks) ---------------------------


WAVE_PLAY = """\
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.add_host: {name: "{{ item }}", groups: wave, ansible_connection: local,
                                 ansible_python_interpreter: "{{ ansible_playbook_python }}"}
      loop: "{{ names }}"
- hosts: wave
  gather_facts: false
  tasks:
    - vmigrate.v2v.kvm_import: "{{ imp | combine({'name': inventory_hostname}) }}"
      register: r
      ignore_errors: true
    - ansible.builtin.copy: {content: "{{ r | to_json }}", dest: "{{ out }}/{{ inventory_hostname }}.json"}
"""


@pytest.mark.parametrize("transfer", ["path", "stream"])
def test_concurrent_imports_into_one_pool(
    lab, libvirt_conn, domains, run_module, run_playbook, tmp_path, tag, transfer, reliability
):
    reliability(
        "kvm",
        "eight imports into one pool at once (forks: libvirt refuses a pool refresh during a volume build), "
        "transfer=%s" % transfer,
        "every import succeeds (action create)",
        "eight domains, each disk equal to the source by qemu-img compare",
    )
    # libvirt refuses a pool refresh while another client builds a volume in that pool
    # ("has asynchronous jobs running"); import refreshes the pool, so imports started
    # together (one playbook, one host per VM, forks: the tasks start at once) failed now
    # and then. Eight at once, each must land whole.
    dom, (disk,) = domains("wave", [(16, write_pattern(3, 0x5A))])
    bundle = str(tmp_path / "export")
    r = run_module("kvm_export", {"vm": dom.name(), "bundle": bundle})
    assert not r.get("failed"), r
    names = ["lab-bad-dst-%s-%d" % (tag, i) for i in range(8)]
    imp = {"bundle": bundle, "pool": lab["pools"]["target"], "transfer": transfer, "cpu_mode": "default"}
    imp["domain_type"] = lab["domain_type"]
    out = tmp_path / "results"
    out.mkdir()
    try:
        proc = run_playbook(WAVE_PLAY, {"names": names, "imp": imp, "out": str(out)}, env={"ANSIBLE_FORKS": "8"})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        for name in names:
            r = json.loads((out / ("%s.json" % name)).read_text())
            assert not r.get("failed") and r["action"] == "create", r
            xml = ET.fromstring(libvirt_conn.lookupByName(name).XMLDesc(0))
            (path,) = [d.get("file") for d in xml.iterfind("devices/disk/source")]
            assert qemu_img_compare(disk, "qcow2", path, "qcow2").returncode == 0, name
    finally:
        for name in names:
            if domain_exists(libvirt_conn, name):
                libvirt_conn.lookupByName(name).undefine()
