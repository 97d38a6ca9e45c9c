"""vmigrate.v2v.descriptor_info run by `ansible` itself, on descriptors with real disk images."""

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import ovf as _ovf
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import read as _descriptor_read

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MiB = 1 << 20

VMX = """\
.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "web01"
guestOS = "ubuntu-64"
memSize = "1024"
numvcpus = "2"
firmware = "efi"
scsi0.present = "TRUE"
scsi0.virtualDev = "pvscsi"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "web01.vmdk"
scsi0:1.present = "TRUE"
scsi0:1.fileName = "web01_1.vmdk"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.networkName = "VM Network"
ethernet0.addressType = "generated"
ethernet0.generatedAddress = "00:0c:29:11:22:33"
"""


def run(path, check=False):
    """`ansible localhost -m vmigrate.v2v.descriptor_info -a path=...`; (ok, result dict)."""
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, ".collections"),
        ANSIBLE_DEPRECATION_WARNINGS="false",
    )
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "ansible"),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-o",  # one line per host: "localhost | SUCCESS => {json}"
        "-e",
        "ansible_python_interpreter=%s" % sys.executable,
        "-m",
        "vmigrate.v2v.descriptor_info",
        "-a",
        json.dumps({"path": str(path)}),
    ] + (["--check"] if check else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("localhost | ")), None)
    assert line, "no result from ansible:\n%s\n%s" % (proc.stdout, proc.stderr)
    status, payload = line.split(" => ", 1)
    return "SUCCESS" in status, json.loads(payload)


def snapshot(directory):
    """Names, sizes and mtimes of everything under ``directory``."""
    state = {}
    for base, dirs, files in os.walk(directory):
        for name in dirs + files:
            full = os.path.join(base, name)
            st = os.stat(full)
            state[os.path.relpath(full, directory)] = (st.st_size, st.st_mtime_ns)
    return state


@pytest.fixture
def vm_dir(tmp_path):
    (tmp_path / "web01.vmx").write_text(VMX)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "vmdk", str(tmp_path / "web01.vmdk"), "64M"], check=True
    )  # web01_1.vmdk is absent
    return tmp_path


def test_vmx_with_a_missing_disk(vm_dir):
    before = snapshot(vm_dir)
    ok, res = run(vm_dir / "web01.vmx")
    assert ok, res
    assert res["changed"] is False
    assert res["format"] == "vmx"
    assert res["missing_disks"] == [str(vm_dir / "web01_1.vmdk")]
    spec = res["spec"]
    _spec.validate(spec)
    assert spec["name"] == "web01" and spec["firmware"]["type"] == "uefi"
    assert spec["guest_os"]["id"] == "ubuntu64Guest"
    assert [(d["bus"], d["controller"], d["capacity"]) for d in spec["disks"]] == [
        ("scsi", "pvscsi", 64 * MiB),
        ("scsi", "pvscsi", None),
    ]
    assert spec["nics"][0]["mac"] == "00:0c:29:11:22:33"
    assert spec["origin"] == {"platform": "vmx", "ref": str(vm_dir / "web01.vmx")}
    assert snapshot(vm_dir) == before

    ok, checked = run(vm_dir / "web01.vmx", check=True)
    assert ok and checked["changed"] is False and checked["spec"] == spec
    assert snapshot(vm_dir) == before


def test_ova_is_read_in_place(vm_dir, tmp_path_factory):
    spec = _descriptor_read.read_descriptor(str(vm_dir / "web01.vmx"))[0]
    spec["disks"] = spec["disks"][:1]
    out = tmp_path_factory.mktemp("ova")
    disk = str(vm_dir / "web01.vmdk")
    ovf = _ovf.ovf_from_spec(spec, {"disk0": disk})
    _ovf.write_ova(str(out / "web01.ova"), ovf, [disk])
    before = snapshot(out)
    ok, res = run(out / "web01.ova")
    assert ok, res
    assert res["format"] == "ova" and res["missing_disks"] == [] and res["changed"] is False
    assert res["spec"]["disks"][0]["capacity"] == 64 * MiB
    assert res["spec"]["disks"][0]["source"] == {"ova": str(out / "web01.ova"), "member": "web01.vmdk"}
    assert snapshot(out) == before


def test_malformed_descriptor_fails_naming_the_file(tmp_path, reliability):
    reliability(
        "readers",
        "a truncated OVF given to descriptor_info",
        "the module fails (error_kind input): 'OVF descriptor <file> is not well-formed XML', line 4, and a 'Fix:'",
        "nothing written",
    )
    bad = tmp_path / "broken.ovf"
    bad.write_text('<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">\n<Disk>\n')
    ok, res = run(bad)
    assert not ok
    assert res["error_kind"] == "input"
    assert "OVF descriptor %s is not well-formed XML" % bad in res["msg"] and "line 4" in res["msg"]
    assert "Fix:" in res["msg"]
