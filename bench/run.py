#!/usr/bin/env python3
"""Benchmarks of the engine, printed as ratios measured side by side in one run.

(a) convert with digests in flight vs plain `qemu-img convert`, same input and output
(b) a large sparse disk holding little data vs a small disk full of the same data
(c) digest throughput per core vs the disk's own sequential read/write speed (dd)
(e) end to end on the lab (bench/e2e.py): not in the default parts; --only e, or make bench

Nothing here is asserted; the figures go to stdout and bench/results/latest.txt.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from functools import partial

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, ".collections"))

import e2e  # noqa: E402
from common import LINES, GiB, MiB, fill_random, say, settle, timed  # noqa: E402

from ansible_collections.vmigrate.v2v.plugins.module_utils import _files  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk  # noqa: E402
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.convert import Converter  # noqa: E402


def bundle_with(raw, workdir, name, size, digests=False):
    """A complete input bundle that references ``raw`` in place (with or without digests)."""
    from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

    spec = _spec.new_spec(
        name=name,
        disks=[{"id": "disk0", "bus": "virtio", "capacity": size, "format": "raw"}],
        origin={"platform": "kvm", "ref": name},
    )
    b = _bundle.Bundle.create(
        os.path.join(workdir, name + "-in"),
        {"platform": "kvm", "id": name, "name": name},
        spec,
        disks=[{"id": "disk0", "path": os.path.abspath(raw), "format": "raw", "capacity": size}],
    )
    if digests:
        with _disk.open_guest(raw, "raw") as g:
            b.save_digests(b.disks[0], _blocks.digest_disk(g))
    b.mark_complete()
    return b.dir


def qemu_img_convert(src, dst, fmt, sub, cache="unsafe", fsync=False):
    opts = ["-o", "subformat=" + sub] if sub else []
    subprocess.run(["qemu-img", "convert", "-t", cache, "-f", "raw", "-O", fmt] + opts + [src, dst], check=True)
    if fsync:
        for path in _disk.image_files(dst, fmt, sub):
            _files.fsync_path(path)


def durable_mode(workdir, fmt, sub):
    """The cache mode _disk.convert picks, and whether it fsyncs afterwards."""
    if (fmt == "vmdk" and sub != "monolithicFlat") or not _disk._supports_direct_io(workdir):
        return "unsafe", True
    return "none", False


def project_convert(src_bundle, dest, target, fmt, sub):
    params = {"src": src_bundle, "dest": dest, "target_platform": target, "disk_format": fmt, "disk_subformat": sub}
    Converter(params).run()


def clean(path):
    for p in (path, path.replace(".vmdk", "-flat.vmdk")):
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.unlink(p)


def bench_convert(workdir, raw, size, repeat):
    say(
        "(a) convert with digests in flight vs plain qemu-img convert (%d MiB of data, median of %d)"
        % (size // MiB, repeat)
    )
    src_bundle = bundle_with(raw, workdir, "a", size)
    carried_bundle = bundle_with(raw, workdir, "carried", size, digests=True)
    say("    qemu-img: its default (-t unsafe, never flushed); durable: the flushed mode vmigrate uses for that format")
    for target, fmt, sub in (("kvm", "qcow2", None), ("vsphere", "vmdk", "monolithicFlat"), ("kvm", "vmdk", None)):
        plain_out = os.path.join(workdir, "plain." + fmt)
        dest = os.path.join(workdir, "out-a")
        cache, fsync = durable_mode(workdir, fmt, sub)
        plain, durable, ours, carried = [], [], [], []
        for _ in range(repeat):  # alternate so that all see the same cache state
            for mode, sync_after, times in (("unsafe", False, plain), (cache, fsync, durable)):
                clean(plain_out)
                settle()
                times.append(timed(partial(qemu_img_convert, raw, plain_out, fmt, sub, mode, sync_after)))
            shutil.rmtree(dest, ignore_errors=True)  # a fresh output each time, removed untimed
            settle()
            ours.append(timed(partial(project_convert, src_bundle, dest, target, fmt, sub)))
            shutil.rmtree(dest, ignore_errors=True)
            settle()
            carried.append(timed(partial(project_convert, carried_bundle, dest, target, fmt, sub)))
        p, d, o = statistics.median(plain), statistics.median(durable), statistics.median(ours)
        c = statistics.median(carried)
        label = "raw -> %s%s" % (fmt, " " + sub if sub else "")
        durable_label = "-t %s%s" % (cache, "+fsync" if fsync else "")
        say("    %s" % label)
        say("        qemu-img %.2f s | qemu-img durable (%s) %.2f s" % (p, durable_label, d))
        say(
            "        vmigrate, digests in flight %.2f s: %.2fx qemu-img, %.2fx durable (goal <= 1.10x)"
            % (o, o / p, o / d)
        )
        say("        vmigrate, digests carried   %.2f s: %.2fx qemu-img, %.2fx durable" % (c, c / p, c / d))
        clean(plain_out)
        shutil.rmtree(dest, ignore_errors=True)
    return src_bundle


def bench_sparse(workdir, data_size, capacity, repeat):
    say(
        "(b) cost grows with data, not capacity: %d GiB disk with %d MiB data vs %d MiB disk full"
        % (capacity // GiB, data_size // MiB, data_size // MiB)
    )
    sparse = os.path.join(workdir, "sparse.raw")
    full = os.path.join(workdir, "full.raw")
    pieces = 64
    step = capacity // pieces
    piece = data_size // pieces
    fill_random(sparse, capacity, [(i * step, piece) for i in range(pieces)])
    fill_random(full, data_size, [(0, data_size)])
    b_sparse = bundle_with(sparse, workdir, "sparse", capacity)
    b_full = bundle_with(full, workdir, "full", data_size)
    dest = os.path.join(workdir, "out-b")
    t_sparse, t_full = [], []
    for _ in range(repeat):
        shutil.rmtree(dest, ignore_errors=True)
        settle()
        t_full.append(timed(partial(project_convert, b_full, dest, "kvm", "qcow2", None)))
        shutil.rmtree(dest, ignore_errors=True)
        settle()
        t_sparse.append(timed(partial(project_convert, b_sparse, dest, "kvm", "qcow2", None)))
    s, f = statistics.median(t_sparse), statistics.median(t_full)
    say("    -> qcow2 with digests      full %6.2f s   sparse %6.2f s   ratio %.2fx (goal <= 2x)" % (f, s, s / f))
    shutil.rmtree(dest, ignore_errors=True)
    for p in (sparse, full):
        os.unlink(p)


def bench_digest(workdir, raw, size):
    say("(c) digest throughput on data (one core) vs the disk's sequential speed (dd)")
    buf = os.urandom(64 * MiB)
    view = memoryview(buf)
    # The ceilings: the block hash in use, and hashlib's SHA-256 for comparison.
    for label, digest in (("blake3", _blocks.block_digest), ("hashlib sha256", lambda b: hashlib.sha256(b).digest())):
        start = time.perf_counter()
        for _ in range(8):
            for off in range(0, len(buf), MiB):
                digest(view[off : off + MiB])
        rate = 8 * len(buf) / (time.perf_counter() - start)
        say("    %-15s 1 MiB blocks in memory       %6.2f GiB/s" % (label + ",", rate / GiB))
    with _disk.open_guest(raw, "raw") as g:
        start = time.perf_counter()
        cpu0 = time.process_time()
        dl = _blocks.digest_disk(g)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    say(
        "    digest_disk, raw file in page cache       %6.2f GiB/s wall, %.2f GiB/s per CPU-second (%d blocks)"
        % (dl.bytes_read / wall / GiB, dl.bytes_read / cpu / GiB, len(dl))
    )
    qcow = os.path.join(workdir, "digest.qcow2")
    qemu_img_convert(raw, qcow, "qcow2", None)
    with _disk.open_guest(qcow, "qcow2") as g:
        start = time.perf_counter()
        dl2 = _blocks.digest_disk(g)
        wall = time.perf_counter() - start
    say(
        "    digest_disk, qcow2 through qemu-nbd       %6.2f GiB/s wall (same digests: %s)"
        % (dl2.bytes_read / wall / GiB, dl2 == dl)
    )
    os.unlink(qcow)
    count = size // (4 * MiB)
    ddfile = os.path.join(workdir, "dd.out")
    w = timed(
        lambda: subprocess.run(
            ["dd", "if=/dev/zero", "of=" + ddfile, "bs=4M", "count=%d" % count, "oflag=direct", "conv=fsync"],
            check=True,
            capture_output=True,
        )
    )
    r = timed(
        lambda: subprocess.run(
            ["dd", "if=" + ddfile, "of=/dev/null", "bs=4M", "iflag=direct"], check=True, capture_output=True
        )
    )
    os.unlink(ddfile)
    say("    dd write (O_DIRECT, fsync)                %6.2f GiB/s" % (count * 4 * MiB / w / GiB))
    say("    dd read  (O_DIRECT)                       %6.2f GiB/s" % (count * 4 * MiB / r / GiB))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="data in (a) and (c) (default 1024)")
    ap.add_argument("--sparse-gib", type=int, default=16, help="capacity of the sparse disk in (b) (default 16)")
    ap.add_argument("--sparse-data-mib", type=int, default=256, help="data in the sparse disk (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is shown")
    ap.add_argument("--dir", default="/var/tmp/vmigrate-bench", help="work directory (on the disk to measure)")
    ap.add_argument(
        "--results", default=os.path.join(ROOT, "bench", "results", "latest.txt"), help="where to write the figures"
    )
    ap.add_argument(
        "--only", choices=["a", "b", "c", "e"], action="append", help="run only these parts (e: end to end, the lab)"
    )
    e2e.add_arguments(ap)
    args = ap.parse_args()
    parts = args.only or ["a", "b", "c"]
    workdir = os.path.abspath(args.dir)
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    qver = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    say(
        "vmigrate.v2v bench  %s  %s, %d CPUs, %s, Python %s"
        % (time.strftime("%Y-%m-%d %H:%M"), platform.machine(), os.cpu_count(), qver, platform.python_version())
    )
    say("command: python bench/run.py %s" % " ".join(sys.argv[1:]))
    say("load average at start: %.2f %.2f %.2f (other work on the machine skews every figure)" % os.getloadavg())
    size = args.size_mib * MiB
    raw = os.path.join(workdir, "data.raw")
    try:
        if "a" in parts or "c" in parts:
            fill_random(raw, size, [(0, size)])
        if "a" in parts:
            bench_convert(workdir, raw, size, args.repeat)
        if "b" in parts:
            bench_sparse(workdir, args.sparse_data_mib * MiB, args.sparse_gib * GiB, args.repeat)
        if "c" in parts:
            bench_digest(workdir, raw, size)
        if "e" in parts:
            e2e.run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    say("load average at end: %.2f %.2f %.2f" % os.getloadavg())
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as fh:
        fh.write("\n".join(LINES) + "\n")


if __name__ == "__main__":
    main()
