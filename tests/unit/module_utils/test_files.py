"""Atomic writes: the file appears whole or not at all."""

from __future__ import annotations

import os

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._files import atomic_file, part_path, publish


def test_atomic_file_publishes_on_success(tmp_path):
    path = str(tmp_path / "sub" / "f.json")
    with atomic_file(path, "w") as fh:
        fh.write("new")
        assert not os.path.exists(path) and os.path.exists(part_path(path))
    assert open(path).read() == "new" and not os.path.exists(part_path(path))


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path, reliability):
    reliability(
        "engine",
        "a write of a manifest/status file dying half-way (atomic_file)",
        "the error itself",
        "the old file intact, no .part file left",
    )
    path = str(tmp_path / "f")
    with open(path, "w") as fh:
        fh.write("old")
    with pytest.raises(RuntimeError), atomic_file(path, "w") as fh:
        fh.write("half")
        raise RuntimeError("died")
    assert open(path).read() == "old" and os.listdir(tmp_path) == ["f"]


def test_publish_renames_a_file_a_tool_wrote(tmp_path):
    tmp, path = str(tmp_path / "x.part"), str(tmp_path / "x")
    with open(tmp, "wb") as fh:
        fh.write(b"data")
    publish(tmp, path)
    assert open(path, "rb").read() == b"data" and os.listdir(tmp_path) == ["x"]
