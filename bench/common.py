"""Helpers shared by bench/run.py and bench/e2e.py: output, timing, test data."""

from __future__ import annotations

import os
import subprocess
import time

MiB = 1024 * 1024
GiB = 1024 * MiB
LINES = []  # everything said, written to the results file at the end


def say(text=""):
    print(text, flush=True)
    LINES.append(text)


def fill_random(path, size, data_ranges):
    """A sparse raw file of ``size`` with random bytes in ``data_ranges`` [(offset, length)]."""
    with open(path, "wb") as fh:
        fh.truncate(size)
        for off, length in data_ranges:
            fh.seek(off)
            for done in range(0, length, 16 * MiB):
                fh.write(os.urandom(min(16 * MiB, length - done)))
        fh.flush()
        os.fsync(fh.fileno())


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def settle():
    """Write back dirty pages left by the previous run so they do not slow the next one."""
    subprocess.run(["sync"], check=True)
