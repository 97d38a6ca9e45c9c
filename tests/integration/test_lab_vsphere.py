"""The lab's vCenter simulator: verified TLS, login, inventory and datastore file transfer."""

from __future__ import annotations

import hashlib
import os
import ssl
import uuid

import pytest
import requests
from pyVim.connect import SmartConnect
from pyVim.task import WaitForTask
from pyVmomi import vim


def _vm_names(si) -> set:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return {vm.name for vm in view.view}
    finally:
        view.Destroy()


def _datastore(si, lab):
    content = si.RetrieveContent()
    dc = next(e for e in content.rootFolder.childEntity if e.name == lab["vcsim"]["datacenter"])
    return dc, next(ds for ds in dc.datastore if ds.name == lab["vcsim"]["datastore"])


def _folder_url(lab, path: str) -> str:
    vc = lab["vcsim"]
    return f"https://{vc['hostname']}:{vc['port']}/folder/{path}?dcPath={vc['datacenter']}&dsName={vc['datastore']}"


def test_lists_the_simulator_inventory(vsphere_si):
    names = _vm_names(vsphere_si)
    assert {"DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"} <= names


def test_datastore_dir_is_the_datastore(vsphere_si, lab):
    _, ds = _datastore(vsphere_si, lab)
    assert os.path.realpath(ds.summary.url) == os.path.realpath(lab["vcsim"]["datastore_dir"])


def test_datastore_upload_download_roundtrip(vsphere_si, lab):
    data = os.urandom(3 * 1024 * 1024 + 12345)
    rel = f"vmigrate-lab-test/{uuid.uuid4().hex}.bin"
    url = _folder_url(lab, rel)
    session = requests.Session()
    session.headers["Cookie"] = vsphere_si._stub.cookie
    # Not session.verify: requests lets REQUESTS_CA_BUNDLE override that, not this.
    ca = lab["vcsim"]["ca_path"]

    put = session.put(url, data=data, headers={"Content-Type": "application/octet-stream"}, timeout=60, verify=ca)
    assert put.status_code in (200, 201), put.text

    got = session.get(url, timeout=60, verify=ca)
    assert got.status_code == 200
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(data).digest()

    # Range reads are how disks are read in place from a datastore.
    start = 1024 * 1024 + 7
    part = session.get(url, headers={"Range": f"bytes={start}-{start + 4095}"}, timeout=60, verify=ca)
    assert part.status_code == 206
    assert part.content == data[start : start + 4096]

    # Independent reader: the file on the datastore's disk directory.
    on_disk = os.path.join(lab["vcsim"]["datastore_dir"], rel)
    with open(on_disk, "rb") as f:
        assert f.read() == data

    # Removing it through the vSphere API removes it from disk.
    dc, _ = _datastore(vsphere_si, lab)
    fm = vsphere_si.RetrieveContent().fileManager
    WaitForTask(fm.DeleteDatastoreFile_Task(name=f"[{lab['vcsim']['datastore']}] {rel}", datacenter=dc))
    assert not os.path.exists(on_disk)


def test_untrusted_certificate_is_refused(lab):
    vc = lab["vcsim"]
    # The system CAs do not include the lab CA, so verification must fail.
    with pytest.raises(ssl.SSLCertVerificationError) as err:
        SmartConnect(
            host=vc["hostname"],
            port=vc["port"],
            user=vc["username"],
            pwd=vc["password"],
            sslContext=ssl.create_default_context(),
        )
    assert "certificate verify failed" in str(err.value)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(_folder_url(lab, "x"), timeout=10)


def test_wrong_password_is_refused(lab):
    vc = lab["vcsim"]
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(
            host=vc["hostname"],
            port=vc["port"],
            user=vc["username"],
            pwd=vc["password"] + "-wrong",
            sslContext=ssl.create_default_context(cafile=vc["ca_path"]),
        )
