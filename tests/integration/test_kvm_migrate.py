"""KVM -> KVM through the lab's libvirtd, with the lab's bootable guest.

- cold: playbooks/kvm_to_kvm.yml moves a shut-off domain to a new one in another pool;
  qemu-img compare says the disks are equal, the source disk is byte-identical before
  and after, the verify step booted the target's twin to the guest's serial marker, a
  second run changes nothing and check mode makes nothing.
- warm: full copy while the guest writes, two incrementals, cutover; the target holds
  every line the guest wrote, and each incremental moved little.
- bad input: clear errors, nothing left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET

import libvirt
import libvirt_qemu
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(ROOT, "playbooks", "kvm_to_kvm.yml")
MIB = 1024 * 1024
DATA_START, DATA_END = 15 * MIB, 32 * MIB  # the guest's ext4 data partition (tests/lab/guest/build)


def domain_type(lab):
    # The lab's facts say kvm when /dev/kvm opens; some nested hosts still fail to run
    # guests under KVM, so a run can ask for TCG.
    return os.environ.get("VMIGRATE_KVM_DOMAIN_TYPE") or lab["domain_type"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def guest_log(path, fmt, tmp_path):
    """The guest's data file (/data/v2v-guest.log) read from a disk image with e2fsprogs."""
    raw = tmp_path / ("read-%s.raw" % uuid.uuid4().hex)
    part = tmp_path / ("part-%s.img" % uuid.uuid4().hex)
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", path, str(raw)], check=True)
    with open(raw, "rb") as src, open(part, "wb") as dst:
        src.seek(DATA_START)
        dst.write(src.read(DATA_END - DATA_START))
    out = subprocess.run(
        ["debugfs", "-R", "cat /v2v-guest.log", str(part)], check=True, capture_output=True, text=True
    ).stdout
    raw.unlink()
    part.unlink()
    return [line for line in out.splitlines() if line.strip()]


def guest_writes(dom, offsets, pattern, length=4096):
    """Writes through the guest's own block backend (qemu-io in QEMU), so dirty bitmaps see them.

    Addressing the node name instead fails with a permission conflict, and HMP
    qemu-io reports errors in the reply, so any reply other than the report fails.
    """
    alias = ET.fromstring(dom.XMLDesc(0)).find("devices/disk/alias").get("name")
    for off in offsets:
        reply = libvirt_qemu.qemuMonitorCommand(
            dom,
            'qemu-io -d /machine/peripheral/%s/virtio-backend "write -P 0x%x %d %d"' % (alias, pattern, off, length),
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
        )
        assert not reply.strip() or "wrote %d/%d bytes" % (length, length) in reply, reply


def dirty_count(dom, bitmap):
    """What QEMU's dirty bitmap ``bitmap`` counts (bytes, at its granularity), and its granularity."""
    reply = libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-named-block-nodes"}', 0)
    for node in json.loads(reply)["return"]:
        for bm in node.get("dirty-bitmaps") or []:
            if bm.get("name") == bitmap:
                return bm["count"], bm["granularity"]
    raise AssertionError("no dirty bitmap %s on %s" % (bitmap, dom.name()))


def undefine(conn, name):
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)


def delete_volumes(conn, pool_name, prefix):
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(prefix):
            vol.delete(0)


def volumes(conn, pool_name, prefix=""):
    """Volume names in a pool; with ``prefix``, only this test's (other tests share the pool)."""
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    return sorted(v.name() for v in pool.listAllVolumes(0) if v.name().startswith(prefix))


@pytest.fixture
def names(lab, libvirt_conn, tmp_path):
    tag = uuid.uuid4().hex[:6]
    n = {
        "tag": tag,
        # The playbook's default UUID belongs to the demo's own source domain.
        "src_uuid": str(uuid.uuid4()),
        "src": "lab-src-%s" % tag,
        "dst": "lab-dst-%s" % tag,
        "work": str(tmp_path / "work"),
        "src_disk": os.path.join(lab["pool_paths"][lab["pools"]["source"]], "lab-src-%s.qcow2" % tag),
    }
    yield n
    for name in (n["src"], n["dst"], n["dst"] + "-check"):
        undefine(libvirt_conn, name)
    delete_volumes(libvirt_conn, lab["pools"]["target"], "lab-dst-%s" % tag)
    if os.path.exists(n["src_disk"]):
        os.unlink(n["src_disk"])


def play_vars(lab, n, **extra):
    v = {
        "demo_src": n["src"],
        "demo_src_uuid": n["src_uuid"],
        "demo_dst": n["dst"],
        "demo_work": n["work"],
        "demo_domain_type": domain_type(lab),
    }
    v.update(extra)
    return v


def test_cold_kvm_to_kvm(lab, libvirt_conn, names, run_playbook):
    before = volumes(libvirt_conn, lab["pools"]["target"])
    first = run_playbook(PLAYBOOK, play_vars(lab, names))
    assert first.returncode == 0, first.stdout + first.stderr
    src_sum = sha256(names["src_disk"])
    target = libvirt_conn.lookupByName(names["dst"])
    assert not target.isActive()
    vol = "%s-disk0.qcow2" % names["dst"]
    assert vol in volumes(libvirt_conn, lab["pools"]["target"])
    assert vol not in before
    vol_path = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(vol).path()
    cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", names["src_disk"], vol_path])
    assert cmp.returncode == 0
    assert "OK (1 disk(s) equal, booted)" in first.stdout
    assert "bytes copied into the target: " in first.stdout
    prov = target.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "https://vmigrate.example/v2v/1", 0)
    assert libvirt_conn.lookupByName(names["src"]).UUIDString() in prov and 'state="complete"' in prov

    again = run_playbook(PLAYBOOK, play_vars(lab, names))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.changed == 0, again.stdout
    # The source disk was only read.
    assert sha256(names["src_disk"]) == src_sum

    # Check mode towards another target name: no domain, no volume.
    vols = volumes(libvirt_conn, lab["pools"]["target"], "lab-dst-" + names["tag"])
    check = run_playbook(PLAYBOOK, play_vars(lab, names, demo_dst=names["dst"] + "-check"), check=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert volumes(libvirt_conn, lab["pools"]["target"], "lab-dst-" + names["tag"]) == vols
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(names["dst"] + "-check")


def make_source(lab, conn, names):
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", lab["guest_image"], names["src_disk"]], check=True
    )
    spec = _spec.new_spec(
        name=names["src"],
        memory_mib=256,
        disks=[_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=32 * MIB)],
        nics=[_spec.new_nic(mac="52:54:00:76:6d:02", network=lab["network"], model="virtio")],
    )
    xml = _libvirt_xml.libvirt_xml_from_spec(
        spec, {"disk0": {"path": names["src_disk"], "format": "qcow2"}}, domain_type=domain_type(lab)
    )
    xml = xml.replace(' mode="host-passthrough"', "")
    return conn.defineXML(xml)


def test_bad_input(lab, libvirt_conn, names, run_module, tmp_path, reliability):
    reliability(
        "kvm",
        "export of a domain the source does not have",
        "\"domain 'lab-no-such-domain' does not exist\"",
        "fails (state not checked by this test)",
    )
    reliability(
        "kvm",
        "unreachable libvirt endpoint (qemu+tcp://127.0.0.1:1)",
        "'connecting to libvirt at <uri> failed 3 times'",
        "fails (state not checked by this test)",
    )
    reliability(
        "kvm",
        "import into a storage pool that does not exist",
        "\"storage pool 'lab-no-such-pool' does not exist\"",
        "no target domain, no volume made",
    )
    reliability(
        "kvm",
        "import onto a domain name taken by a VM not made from this source",
        "'already exists' and the fix 'replace=true'",
        "the existing domain kept; no volume made",
    )
    r = run_module("kvm_export", {"name": "lab-no-such-domain", "bundle": str(tmp_path / "b")})
    assert r["failed"] and "domain 'lab-no-such-domain' does not exist" in r["msg"]
    r = run_module("kvm_vm_info", {"uri": "qemu+tcp://127.0.0.1:1/system"})
    assert r["failed"] and "connecting to libvirt at qemu+tcp://127.0.0.1:1/system failed 3 times" in r["msg"]
    make_source(lab, libvirt_conn, names)
    bundle = str(tmp_path / "export")
    assert not run_module("kvm_export", {"name": names["src"], "bundle": bundle}).get("failed")
    vols = volumes(libvirt_conn, lab["pools"]["target"], "lab-dst-" + names["tag"])
    r = run_module("kvm_import", {"bundle": bundle, "name": names["dst"], "pool": "lab-no-such-pool"})
    assert r["failed"] and "storage pool 'lab-no-such-pool' does not exist" in r["msg"]
    # A same-named domain that did not come from this source is refused, and kept.
    r = run_module("kvm_import", {"bundle": bundle, "name": names["src"], "pool": lab["pools"]["target"]})
    assert r["failed"] and "already exists" in r["msg"] and "replace=true" in r["msg"]
    assert libvirt_conn.lookupByName(names["src"])
    assert volumes(libvirt_conn, lab["pools"]["target"], "lab-dst-" + names["tag"]) == vols
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(names["dst"])


def wait_off(dom, seconds):
    end = time.monotonic() + seconds
    while dom.isActive() and time.monotonic() < end:
        time.sleep(1)
    return not dom.isActive()


def test_warm_kvm_to_kvm(lab, libvirt_conn, names, run_module, tmp_path):
    src = make_source(lab, libvirt_conn, names)
    src.create()
    time.sleep(30)  # boot (TCG takes ~20 s) and a few ticks
    export = str(tmp_path / "export")
    conv = str(tmp_path / "kvm")
    args = {"name": names["src"], "bundle": export}

    # Check mode makes no checkpoint and no bundle.
    r = run_module("kvm_export", args, check=True)
    assert r["changed"] and r["kind"] == "full"
    assert src.listAllCheckpoints(0) == [] and not os.path.exists(os.path.join(export, "manifest.json"))

    full = run_module("kvm_export", args)
    assert not full.get("failed"), full
    assert full["kind"] == "full" and full["frozen"] is False
    assert [c.getName() for c in src.listAllCheckpoints(0)] == [full["checkpoint"]["id"]]
    incrementals = []
    for _ in range(2):
        time.sleep(8)
        inc = run_module("kvm_export", args)
        assert not inc.get("failed"), inc
        assert inc["kind"] == "incremental" and inc["changed"]
        incrementals.append(inc)
        # Only the newest checkpoint is kept.
        assert [c.getName() for c in src.listAllCheckpoints(0)] == [inc["checkpoint"]["id"]]
    for inc in incrementals:
        # Ticks touch a few blocks of a 32 MiB disk: the incremental moves little.
        assert 0 < inc["bytes_written"] <= 4 * MIB, inc
        assert inc["disks"][0]["last_delta"]["bytes"] <= 4 * MIB

    # Scattered 4 KiB writes, one per 256 KiB in the unused end of the boot partition
    # (12-15 MiB): 12 dirty 64 KiB chunks in 3 digest blocks of 1 MiB. The delta holds
    # the dirty bitmap's extents, not the 3 MiB of whole digest blocks.
    writes = [12 * MIB + k * 256 * 1024 for k in range(12)]
    guest_writes(src, writes, 0x5A)
    dirty, gran = dirty_count(src, incrementals[-1]["checkpoint"]["id"])
    scattered = run_module("kvm_export", args)
    assert not scattered.get("failed") and scattered["kind"] == "incremental", scattered
    delta = scattered["disks"][0]["last_delta"]
    with open(os.path.join(export, "manifest.json")) as fh:
        record = json.load(fh)["disks"][0]["deltas"][-1]
    extents = record["extents"]
    held = sum(n for _o, n in extents)
    # The guest's ticks keep writing between the count and the backup job: allow 1 MiB.
    assert held == delta["bytes"] and held <= 1.1 * dirty + MIB, (held, dirty)
    assert held < 3 * MIB and all(n % gran == 0 for _o, n in extents), extents
    for off in writes:
        assert any(o <= off and off + 4096 <= o + n for o, n in extents), off
    allocated = os.stat(os.path.join(export, record["path"])).st_blocks * 512
    assert allocated <= held + 64 * 1024, (allocated, held)  # + the file system's own blocks
    with open(os.path.join(export, record["path"]), "rb") as fh:
        assert all(os.pread(fh.fileno(), 4096, off) == b"\x5a" * 4096 for off in writes)

    # An earlier target: import what is there now.
    assert not run_module("convert", {"src": export, "dest": conv, "target_platform": "kvm"}).get("failed")
    imp_args = {
        "bundle": conv,
        "name": names["dst"],
        "pool": lab["pools"]["target"],
        "domain_type": domain_type(lab),
        "cpu_mode": "default",
    }
    first = run_module("kvm_import", imp_args)
    assert not first.get("failed"), first

    # Cutover: the guest stops, the final sync reads what changed, the target catches up.
    src.shutdown()
    if not wait_off(src, 60):
        src.destroy()  # the guest syncs after every write: a hard stop loses no line
    final = run_module("kvm_export", dict(args, cleanup_checkpoints=True))
    assert not final.get("failed"), final
    assert final["kind"] == "incremental" and final["changed"]
    # The last checkpoint's persistent bitmap said what changed: the whole disk was not read.
    assert final["fallback_reason"] is None, final
    assert final["bytes_read"] < 8 * MIB, final
    assert src.listAllCheckpoints(0) == []
    again = run_module("kvm_export", args)
    assert again["changed"] is False and again["_recap_changed"] == 0
    assert not run_module("convert", {"src": export, "dest": conv, "target_platform": "kvm"}).get("failed")
    caught_up = run_module("kvm_import", imp_args)
    assert caught_up["changed"] and caught_up["deltas_applied"], caught_up
    assert run_module("kvm_import", imp_args)["_recap_changed"] == 0
    verified = run_module("kvm_verify", {"bundle": conv, "name": names["dst"]})
    assert not verified.get("failed") and verified["ok"], verified

    source_lines = guest_log(names["src_disk"], "qcow2", tmp_path)
    vol = libvirt_conn.storagePoolLookupByName(lab["pools"]["target"]).storageVolLookupByName(
        "%s-disk0.qcow2" % names["dst"]
    )
    target_lines = guest_log(vol.path(), "qcow2", tmp_path)
    assert any(line.startswith("tick ") for line in source_lines)
    assert target_lines == source_lines
    # An independent reader: the target disk holds the source disk's bytes.
    cmp = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", names["src_disk"], vol.path()])
    assert cmp.returncode == 0
