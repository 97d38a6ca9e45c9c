"""vSphere transfers cost data, not capacity: vsphere_import sends a sparse disk as a
streamOptimized VMDK through an import lease, and vsphere_verify reads back only what
changed block tracking reports allocated.

Independent witnesses: the lab vcsim's own byte counts (GET /lab/nfc-stats, tests/lab/
vcsim/nfc.go: request bytes received per upload, response bytes served per datastore
file), the stored disk compared with the source by qemu-img, and the allocation of the
stored flat file (st_blocks).
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request

from pyVim.task import WaitForTask
from pyVmomi import vim
from test_vsphere_import import conn_vars, find_vm, make_bundle, vm_name  # noqa: F401 - vm_name is a fixture

MIB = 1024 * 1024
CAPACITY = 256 * MIB
# 8 MiB of random data in 1 MiB pieces at scattered MiB offsets (whole digest blocks,
# so what verify reads back can be compared with the data exactly), plus 4 MiB of
# zeros written explicitly: allocated in the source file, but nothing to send.
PIECES = [0, 3, 17, 64, 65, 130, 200, 255]
ZEROS_AT = 100 * MIB


def sparse_disk(path):
    with open(path, "wb") as fh:
        fh.truncate(CAPACITY)
        for mib in PIECES:
            fh.seek(mib * MIB)
            fh.write(os.urandom(MIB))
        fh.seek(ZEROS_AT)
        fh.write(bytes(4 * MIB))
    return path


def vcsim_stats(lab):
    """What the lab vcsim itself counted (tests/lab/vcsim/nfc.go)."""
    vc = lab["vcsim"]
    ctx = ssl.create_default_context(cafile=vc["ca_path"])
    url = "https://%s:%d/lab/nfc-stats" % (vc["hostname"], vc["port"])
    with urllib.request.urlopen(url, context=ctx, timeout=30) as resp:
        return json.load(resp)


def test_sparse_disk_costs_its_data(lab, vsphere_si, run_module, tmp_path, vm_name):  # noqa: F811
    data = len(PIECES) * MIB
    image = sparse_disk(str(tmp_path / "sparse.raw"))
    bundle = make_bundle(str(tmp_path / "b"), image, vm_name)
    ds = lab["vcsim"]["datastore"]
    disk = "[%s] %s/%s.vmdk" % (ds, vm_name, vm_name)
    res = run_module(
        "vsphere_import", conn_vars(lab, bundle=bundle.dir, datastore=ds, network_map={"lab-net": "VM Network"})
    )
    assert not res.get("failed") and res["action"] == "create", res

    # What vcsim received for this disk: the module's count, and about the data only.
    uploads = [u for u in vcsim_stats(lab)["uploads"] if u["file"] == disk]
    assert len(uploads) == 1 and not uploads[0].get("error"), uploads
    received = uploads[0]["bytes_received"]
    assert received == res["bytes_sent"] == res["transfer"][0]["bytes_sent"], (uploads, res)
    assert received <= 1.1 * data, (received, data)  # random data does not compress
    assert uploads[0]["bytes_written"] == data and uploads[0]["capacity"] == CAPACITY, uploads

    # The datastore holds a thin disk with the source's bytes.
    vm_dir = os.path.join(lab["vcsim"]["datastore_dir"], vm_name)
    flat = os.path.join(vm_dir, vm_name + "-flat.vmdk")
    assert os.path.getsize(flat) == CAPACITY
    assert os.stat(flat).st_blocks * 512 <= data + MIB, os.stat(flat).st_blocks
    cmp = subprocess.run(
        ["qemu-img", "compare", "-q", "-f", "raw", image, os.path.join(vm_dir, vm_name + ".vmdk")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    vm = find_vm(vsphere_si, vm_name)
    assert vm.config.changeTrackingEnabled is True
    assert not os.path.exists(os.path.join(vm_dir, "vmigrate.partial"))

    # verify reads back the allocated areas only, and vcsim served just that.
    before = vcsim_stats(lab)["folder_reads"].get("[%s] %s/%s-flat.vmdk" % (ds, vm_name, vm_name), 0)
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir, vm=vm_name))
    assert not res.get("failed") and res["disks"][0]["mismatched"] == 0, res
    assert res["disks"][0]["allocation"].startswith("changed block tracking"), res
    served = vcsim_stats(lab)["folder_reads"]["[%s] %s/%s-flat.vmdk" % (ds, vm_name, vm_name)] - before
    assert served == res["bytes_read"] == data, (served, res["bytes_read"])

    # A changed byte inside an allocated area is found...
    with open(flat, "r+b") as fh:
        fh.seek(PIECES[3] * MIB + 7)
        old = fh.read(1)
        fh.seek(PIECES[3] * MIB + 7)
        fh.write(bytes([old[0] ^ 0xFF]))
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir, vm=vm_name))
    assert res.get("failed") and "first at byte %d" % (PIECES[3] * MIB) in res["msg"], res
    with open(flat, "r+b") as fh:
        fh.seek(PIECES[3] * MIB + 7)
        fh.write(old)
    # ... and so is data where the source has a hole: tracking reports it allocated.
    with open(flat, "r+b") as fh:
        fh.seek(150 * MIB)
        fh.write(b"\x01")
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir, vm=vm_name))
    assert res.get("failed") and "first at byte %d" % (150 * MIB) in res["msg"], res
    with open(flat, "r+b") as fh:
        fh.seek(150 * MIB)
        fh.write(b"\x00")

    # Without changed block tracking the target cannot say: verify reads everything, and says so.
    WaitForTask(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
    res = run_module("vsphere_verify", conn_vars(lab, bundle=bundle.dir, vm=vm_name))
    assert not res.get("failed") and res["disks"][0]["mismatched"] == 0, res
    assert res["disks"][0]["allocation"].startswith("unknown (changed block tracking is off)"), res
    assert res["bytes_read"] == CAPACITY, res
