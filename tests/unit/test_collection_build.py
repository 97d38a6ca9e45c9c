"""The built collection tarball carries the collection, not the lab's or the venv's files."""

import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GALAXY = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")


def test_build_leaves_out_lab_and_venv_artefacts(tmp_path):
    # Make sure artefacts exist to be left out, whatever state the checkout is in.
    marker = os.path.join(ROOT, "tests", "lab", "state", "build-test-marker")
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as fh:
        fh.write("lab artefact\n")
    try:
        subprocess.run(
            [GALAXY, "collection", "build", "--force", "--output-path", str(tmp_path), ROOT],
            check=True,
            capture_output=True,
            text=True,
        )
    finally:
        os.unlink(marker)
    (tarball,) = list(tmp_path.glob("vmigrate-v2v-*.tar.gz"))
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert "plugins/modules/convert.py" in names and "meta/runtime.yml" in names
    for bad in (".venv/", ".collections/", "tests/lab/state/", "tests/lab/build/", "bench/results/", ".git/"):
        assert not [n for n in names if n.startswith(bad)], bad
