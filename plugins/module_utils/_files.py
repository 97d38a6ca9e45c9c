# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable, all-or-nothing file writes: the one place that does tmp, fsync, rename.

A reader (or a re-run after a crash) sees the old file or the new one, never half of
one: the data is written under ``<path>.part``, flushed to disk, renamed into place,
and the directory is flushed so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os


def fsync_path(path):
    """fsync a file, or a directory so that a rename in it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_path(path):
    """Where a file is written before it is published under ``path``."""
    return path + ".part"


def publish(tmp, path):
    """Make ``tmp`` (written by us or by a tool such as qemu-img) durable as ``path``."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_file(path, mode="wb"):
    """``with atomic_file(path) as fh:`` write; ``path`` appears only if the block ends well."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = part_path(path)
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
