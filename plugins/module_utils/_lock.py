# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One writer per bundle and per target: a step that writes a bundle (export, convert)
holds an exclusive lock on it, and an import one on its bundle and target name, so two
runs of the same plan or VM at once cannot interleave their writes; the second one stops
with a message naming the first. Imports of one bundle into different names (a wave
fanning one image out) run side by side: the bundle is only read.

The lock is flock(2) on ``.<bundle name>[.<key>].lock`` beside the bundle directory: the
kernel drops it when its holder exits, also when it is killed, so no stale lock is ever
left to clean up. The file holds who took it (pid, step, since) for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import make_dirs, open_private, private_umask


def lock_path(bundle_dir, key=None):
    bundle_dir = os.path.abspath(bundle_dir)
    name = os.path.basename(bundle_dir) + ("." + re.sub(r"[^A-Za-z0-9_.-]", "_", key) if key else "")
    return os.path.join(os.path.dirname(bundle_dir), ".%s.lock" % name)


@contextlib.contextmanager
def bundle_lock(bundle_dir, step, check_mode=False, key=None):
    """Hold the lock of ``bundle_dir`` (with ``key``, e.g. an import's target name: one
    lock per key) for ``step``; InputError if another run holds it.

    A writer's lock (no ``key``: export, convert) also holds a private umask
    (_files.private_umask), so whatever the step makes in the bundle, also through
    qemu-img or a plain os.makedirs, is not for others. An import only reads the bundle;
    what it makes is the target's, which keeps the process umask.

    Check mode writes nothing, so it takes no lock (and makes no lock file)."""
    if check_mode:
        yield
        return
    path = lock_path(bundle_dir, key)
    make_dirs(os.path.dirname(path))
    fd = open_private(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                "bundle %s%s is being written by another run (%s)"
                % (bundle_dir, " (%s)" % key if key else "", _holder(fd)),
                "wait for that run to finish (or stop it), then run again; two runs of the same plan "
                "or VM must not write one bundle or target at once",
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "step": step, "since": int(time.time())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        with private_umask() if key is None else contextlib.nullcontext():
            yield
    finally:
        os.close(fd)  # releases the lock


def _holder(fd):
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return "%s pid %s on %s since %s" % (
            info.get("step", "a step"),
            info.get("pid", "?"),
            info.get("host", "?"),
            time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(info["since"])) if info.get("since") else "?",
        )
    except (OSError, ValueError):
        return "holder unknown"
