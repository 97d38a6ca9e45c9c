# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durable, all-or-nothing, private file writes: the one place that does tmp, fsync,
rename, and the modes of what the collection creates.

A reader (or a re-run after a crash) sees the old file or the new one, never half of
one: the data is written under ``<path>.part``, flushed to disk, renamed into place,
and the directory is flushed so the rename itself survives a power cut.

Bundles and work directories hold whole guest disks (and so the guests' secrets): what
is created here is for its owner and group only (directories DIR_MODE, files FILE_MODE),
whatever the process umask says.
"""

from __future__ import annotations

import contextlib
import os
import stat

DIR_MODE = 0o750
FILE_MODE = 0o640


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


def make_dirs(path, mode=DIR_MODE):
    """os.makedirs(path, exist_ok=True) where every directory made is ``mode``: os.makedirs
    gives the parents it makes the umask's mode (often world-readable), and the umask can
    loosen the leaf too. Directories that exist already are left as they are."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(path)
    if parent != path:
        make_dirs(parent, mode)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
        return path
    os.chmod(path, mode)  # mkdir's mode passes through the umask; this one does not
    return path


def make_private(path):
    """Take from a file we made every bit FILE_MODE does not have (others', the group's
    write), e.g. from one qemu-img created with the umask's mode."""
    current = stat.S_IMODE(os.stat(path).st_mode)
    if current & ~FILE_MODE:
        os.chmod(path, current & FILE_MODE)


def open_private(path, flags, mode=FILE_MODE):
    """os.open(path, flags | O_CREAT, mode) whose file ends up ``mode`` even when it
    existed before (a .part left by a crash) or the umask is loose."""
    fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    except OSError:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def private_umask():
    """While inside, files and directories made by this process or the tools it runs
    (qemu-img, code that calls os.makedirs) get no bits for others and no group write."""
    old = os.umask(0o027)
    os.umask(old | 0o027)
    try:
        yield
    finally:
        os.umask(old)


def publish(tmp, path):
    """Make ``tmp`` (written by us or by a tool such as qemu-img) durable and private as ``path``."""
    make_private(tmp)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_file(path, mode="wb", perm=FILE_MODE):
    """``with atomic_file(path) as fh:`` write; ``path`` appears only if the block ends well."""
    make_dirs(os.path.dirname(os.path.abspath(path)))
    tmp = part_path(path)
    try:
        with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC, perm), mode) as fh:
            yield fh
            fh.flush()
        publish(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
