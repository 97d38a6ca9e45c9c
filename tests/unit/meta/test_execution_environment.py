"""meta/execution-environment.yml: `ansible-builder create` makes a build context (no
image is built: that needs a registry) whose requirement files carry what the modules
import and run. create needs no network: it only writes files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILDER = os.path.join(os.path.dirname(sys.executable), "ansible-builder")
EE = os.path.join(ROOT, "meta", "execution-environment.yml")


def lines(path):
    """Non-comment lines of a requirements or bindep file, inline comments cut."""
    with open(path, encoding="utf-8") as fh:
        return [ln.split("#", 1)[0].strip() for ln in fh if ln.split("#", 1)[0].strip()]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    if not os.path.exists(BUILDER):
        pytest.fail("ansible-builder is not installed in the venv: pip install -r requirements.txt", pytrace=False)
    ctx = tmp_path_factory.mktemp("ee") / "context"
    proc = subprocess.run(
        [BUILDER, "create", "-f", EE, "--context", str(ctx), "--output-filename", "Containerfile"],
        cwd=str(tmp_path_factory.mktemp("cwd")),  # the EE file's paths resolve from its own directory
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return ctx


def test_build_context_has_a_containerfile_with_our_base_and_ansible(context):
    text = (context / "Containerfile").read_text()
    assert 'EE_BASE_IMAGE="quay.io/fedora/fedora:41"' in text
    assert "ansible-core>=2.19,<2.20" in text and "ansible-runner>=2.4,<2.5" in text
    assert "COPY _build/requirements.txt" in text and "COPY _build/bindep.txt" in text


def test_python_requirements_are_copied_and_cover_the_imports(context):
    got = lines(context / "_build" / "requirements.txt")
    assert got == lines(os.path.join(ROOT, "meta", "ee-requirements.txt"))
    names = {r.split(">")[0].split("<")[0].split("=")[0] for r in got}
    # libvirt (kvm_*), pyVmomi (vsphere_*), blake3 (engine digests); nbd comes from the system
    assert {"libvirt-python", "pyvmomi", "blake3"} <= names
    # and the ranges are requirements.txt's
    pinned = lines(os.path.join(ROOT, "requirements.txt"))
    for req in got:
        assert req in pinned, "%s differs from requirements.txt" % req


def test_bindep_is_copied_with_runtime_and_build_packages(context):
    got = lines(context / "_build" / "bindep.txt")
    assert got == lines(os.path.join(ROOT, "meta", "ee-bindep.txt"))
    for entry in (
        "qemu-img [platform:rpm]",  # qemu-img and qemu-nbd
        "qemu-utils [platform:dpkg]",
        "python3-libnbd [platform:rpm]",  # import nbd
        "python3-libnbd [platform:dpkg]",
        "libvirt-libs [platform:rpm]",
        "libvirt-devel [platform:rpm compile]",  # pip builds libvirt-python
        "python3-devel [platform:rpm compile]",
        "gcc [compile]",
    ):
        assert entry in got, entry


def test_the_collection_goes_in_as_docs_awx_md_says(tmp_path):
    """docs/awx.md's EE addition (galaxy + additional_build_files), on a real tarball."""
    import re

    import yaml

    with open(os.path.join(ROOT, "docs", "awx.md"), encoding="utf-8") as fh:
        blocks = re.findall(r"```yaml\n(.*?)```", fh.read(), re.S)
    (addition,) = [yaml.safe_load(b) for b in blocks if "additional_build_files" in b]
    with open(os.path.join(ROOT, "galaxy.yml"), encoding="utf-8") as fh:
        version = yaml.safe_load(fh)["version"]
    tarball = "vmigrate-v2v-%s.tar.gz" % version
    assert addition["additional_build_files"][0]["src"] == "../" + tarball, "docs/awx.md names another version"

    # the repository's layout in tmp: meta/ with the EE files, the tarball at the root
    galaxy = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    build = [galaxy, "collection", "build", "--force", "--output-path", str(tmp_path), ROOT]
    subprocess.run(build, check=True, capture_output=True, text=True)
    (tmp_path / "meta").mkdir()
    with open(EE, encoding="utf-8") as fh:
        ee = yaml.safe_load(fh)
    for name in ("ee-requirements.txt", "ee-bindep.txt"):
        (tmp_path / "meta" / name).write_text(open(os.path.join(ROOT, "meta", name), encoding="utf-8").read())
    ee["dependencies"]["galaxy"] = addition["dependencies"]["galaxy"]
    ee["additional_build_files"] = addition["additional_build_files"]
    (tmp_path / "meta" / "execution-environment.yml").write_text(yaml.safe_dump(ee))

    ctx = tmp_path / "context"
    cmd = [BUILDER, "create", "-f", str(tmp_path / "meta" / "execution-environment.yml"), "--context", str(ctx)]
    cmd += ["--output-filename", "Containerfile"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ctx / "_build" / "collection" / tarball).stat().st_size > 0
    reqs = yaml.safe_load((ctx / "_build" / "requirements.yml").read_text())
    assert reqs["collections"] == [{"name": "/build/collection/" + tarball, "type": "file"}]
    text = (ctx / "Containerfile").read_text()
    assert "COPY _build /build" in text and "ansible-galaxy collection install" in text
