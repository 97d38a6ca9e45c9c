# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qemu-img layer and guest-visible readers/writers.

Every format question goes to qemu-img (info, map, check, convert, compare); nothing
here parses an image format. Guest bytes of raw files are read with os.pread; any other
format is exported by qemu-nbd on a private unix socket and read through libnbd.
"""

from __future__ import annotations

import collections
import ctypes
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, MissingLibraryError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import make_dirs, make_private, publish

try:
    import nbd

    HAS_NBD = True
    NBD_IMPORT_ERROR = None
except ImportError as exc:  # python3-libnbd is a distribution package, not on PyPI
    nbd = None
    HAS_NBD = False
    NBD_IMPORT_ERROR = exc

FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vpc")
VMDK_SUBFORMATS = ("monolithicSparse", "monolithicFlat", "streamOptimized")
# Formats `qemu-img check` can verify; for the others only `info` is asked.
CHECKABLE = ("qcow2", "vhdx", "vmdk", "qed", "vdi", "parallels")
# The NBD protocol lets servers refuse requests above 32 MiB.
MAX_REQUEST = 32 * 1024 * 1024
NBD_START_TIMEOUT = 30.0

Extent = collections.namedtuple("Extent", "start length data zero")

_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def _brief(text, keep=3):
    """qemu-img's error text shortened for a message: `qemu-img check` of a corrupt image
    prints one line per bad cluster (thousands), the first and last lines say what matters."""
    lines = [line for line in text.replace("qemu-img: ", "").splitlines() if line.strip()]
    if len(lines) > 2 * keep:
        lines = lines[:keep] + ["(%d more lines)" % (len(lines) - 2 * keep)] + lines[-keep:]
    return "; ".join(lines)


def _qemu_img(args, what, fix=None, ok_codes=(0,)):
    """Run qemu-img; a failure becomes a DiskError naming ``what`` and qemu-img's words."""
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        raise DiskError("qemu-img is not installed on the conversion host", "install qemu-utils (Debian) or qemu-img")
    proc = subprocess.run([qemu_img] + list(args), capture_output=True, check=False)
    if proc.returncode not in ok_codes:
        err = proc.stderr.decode("utf-8", "replace").strip() or proc.stdout.decode("utf-8", "replace").strip()
        raise DiskError(
            "%s: %s" % (what, _brief(err)),
            fix or "check that the file is a complete image in the stated format",
        )
    return proc


def _fmt_args(flag, fmt):
    if fmt and fmt not in FORMATS:
        raise DiskError("unknown disk format %r" % fmt, "use one of %s" % ", ".join(FORMATS))
    return [flag, fmt] if fmt else []


def _must_exist(path):
    if not os.path.exists(path):
        raise DiskError("disk image %s does not exist" % path, "check the path, or re-run the step that writes it")


def info(path, fmt=None, check=True):
    """qemu-img info as a dict; a corrupt, truncated or unknown image raises DiskError.

    For formats qemu-img can check (qcow2, vhdx, vmdk), `qemu-img check` also runs,
    because `info` only reads the header and accepts a file cut short after it.
    """
    _must_exist(path)
    proc = _qemu_img(
        ["info", "--output=json"] + _fmt_args("-f", fmt) + [path],
        "cannot read disk image %s%s" % (path, " as %s" % fmt if fmt else ""),
    )
    data = json.loads(proc.stdout)
    if check and data.get("format") in CHECKABLE:
        res = _qemu_img(
            ["check", "--output=json", "-f", data["format"], path],
            "disk image %s is corrupt" % path,
            "copy the image again from its source; `qemu-img check -f %s %s` shows the details"
            % (data["format"], path),
            ok_codes=(0, 2, 3),
        )
        report = json.loads(res.stdout or b"{}")
        if report.get("corruptions") or report.get("check-errors") or res.returncode == 2:
            raise DiskError(
                "disk image %s (%s) is corrupt or truncated: %d corruptions, %d check errors"
                % (path, data["format"], report.get("corruptions", 0), report.get("check-errors", 0)),
                "copy the image again from its source; `qemu-img check -f %s %s` shows the details"
                % (data["format"], path),
                path=path,
            )
    return data


def allocation_map(path, fmt):
    """Allocation of the guest-visible bytes: [Extent(start, length, data, zero)]."""
    _must_exist(path)
    proc = _qemu_img(
        ["map", "--output=json"] + _fmt_args("-f", fmt) + [path],
        "cannot map the allocation of disk image %s" % path,
    )
    return merge_extents(
        Extent(e["start"], e["length"], bool(e.get("data")), bool(e.get("zero"))) for e in json.loads(proc.stdout)
    )


def merge_extents(extents):
    """Join neighbours with the same data/zero flags (qemu-img map splits by host offset)."""
    out = []
    for e in extents:
        if out and out[-1].data == e.data and out[-1].zero == e.zero and out[-1].start + out[-1].length == e.start:
            prev = out.pop()
            e = Extent(prev.start, prev.length + e.length, e.data, e.zero)
        out.append(e)
    return out


def create_options(fmt, subformat=None):
    opts = []
    if fmt == "vmdk" and subformat:
        if subformat not in VMDK_SUBFORMATS:
            raise DiskError("unknown vmdk subformat %r" % subformat, "use one of %s" % ", ".join(VMDK_SUBFORMATS))
        opts.append("subformat=%s" % subformat)
    elif fmt == "vpc":
        # Without force_size qemu rounds a VHD's size to a CHS geometry and the guest
        # would see a different capacity.
        opts.append("force_size=on")
        if subformat:
            opts.append("subformat=%s" % subformat)
    elif subformat:
        opts.append("subformat=%s" % subformat)
    return ["-o", ",".join(opts)] if opts else []


def create(path, fmt, size, subformat=None):
    """Create an empty (sparse) image of ``size`` bytes."""
    _qemu_img(
        ["create", "-q"] + _fmt_args("-f", fmt) + create_options(fmt, subformat) + [path, str(int(size))],
        "cannot create disk image %s" % path,
        fix="check the directory exists and has free space",
    )
    make_private(path)  # qemu-img creates it with the umask's mode; it is still empty here


def image_files(path, fmt, subformat=None):
    """Files that make up one image: a monolithicFlat vmdk is a descriptor plus its extent."""
    if fmt == "vmdk" and subformat == "monolithicFlat":
        base, _ext = os.path.splitext(path)
        return [path, base + "-flat.vmdk"]
    return [path]


def convert(src, src_fmt, dst, dst_fmt, subformat=None, progress=None):
    """Convert ``src`` into ``dst`` with qemu-img, atomically.

    qemu-img writes into a private directory beside ``dst`` (``dst + '.part'`` for
    one-file formats); the result is renamed into place only when qemu-img succeeded,
    so a half-written file is never at a path a later step would take as complete.
    A monolithicFlat vmdk has two files; its extent is renamed first and the descriptor
    last, since the descriptor is what names the disk.
    """
    _must_exist(src)
    dst = os.path.abspath(dst)
    parent = os.path.dirname(dst)
    make_dirs(parent)
    # mkdtemp: 0700, so qemu-img's file in it (umask's mode) is private until publish fixes its mode.
    workdir = tempfile.mkdtemp(prefix=".%s.part." % os.path.basename(dst), dir=parent)
    try:
        tmp = os.path.join(workdir, os.path.basename(dst))
        # The result must be on disk before it is renamed into place; qemu-img's default
        # cache for convert ("unsafe") never flushes. O_DIRECT ("none", then a flush) costs
        # the least CPU, which the digest thread beside it needs, but sparse vmdk writes
        # small metadata pieces that O_DIRECT makes ~10x slower (measured); those, and
        # filesystems without O_DIRECT (tmpfs), are written cached and fsynced at the end.
        sparse_vmdk = dst_fmt == "vmdk" and subformat != "monolithicFlat"
        cache = "none" if not sparse_vmdk and _supports_direct_io(workdir) else "unsafe"
        args = (
            ["convert", "-p", "-t", cache]
            + _fmt_args("-f", src_fmt)
            + _fmt_args("-O", dst_fmt)
            + create_options(dst_fmt, subformat)
            + [src, tmp]
        )
        _run_with_progress(args, progress, "cannot convert %s (%s) to %s (%s)" % (src, src_fmt, dst, dst_fmt))
        for produced, final in reversed(
            list(zip(image_files(tmp, dst_fmt, subformat), image_files(dst, dst_fmt, subformat), strict=True))
        ):
            publish(produced, final)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return dst


def _supports_direct_io(directory):
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    probe = os.path.join(directory, ".direct-io-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | flag, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _run_with_progress(args, progress, what):
    """qemu-img convert -p prints `(NN.NN/100%)` lines ended by CR; turn them into bytes."""
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        raise DiskError("qemu-img is not installed on the conversion host", "install qemu-utils")
    proc = subprocess.Popen([qemu_img] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errbuf = []
    err_reader = threading.Thread(target=lambda: errbuf.append(proc.stderr.read()), daemon=True)
    err_reader.start()
    total = progress.total if progress is not None else 0
    reported = 0
    pending = b""
    while True:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        pending += chunk
        matches = list(_PROGRESS_RE.finditer(pending))
        if matches:
            pending = pending[matches[-1].end() :]
            if progress is not None:
                done = int(total * float(matches[-1].group(1)) / 100.0)
                if done > reported:
                    progress.advance(done - reported)
                    reported = done
    rc = proc.wait()
    err_reader.join()
    if rc != 0:
        err = _brief(b"".join(errbuf).decode("utf-8", "replace"))
        raise DiskError("%s: %s" % (what, err), "check the source image and free space at the destination")
    if progress is not None and total > reported:
        progress.advance(total - reported)


def compare(a, fmt_a, b, fmt_b):
    """True when the guest-visible bytes of two images are equal (qemu-img compare)."""
    proc = _qemu_img(
        ["compare", "-q"] + _fmt_args("-f", fmt_a) + _fmt_args("-F", fmt_b) + [a, b],
        "cannot compare %s with %s" % (a, b),
        ok_codes=(0, 1),
    )
    return proc.returncode == 0


# --- guest-visible readers and writers ---------------------------------------------

# os has no sync_file_range; libc's (Linux) is called through ctypes when it is there.
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range():
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_sync_file_range = _load_sync_file_range()


class RawFile:
    """Guest bytes of a raw image or block device, read with pread."""

    zero_copy = True  # readinto() fills the caller's buffer without a copy
    preferred_chunk = MAX_REQUEST

    def __init__(self, path, writable=False):
        self.path = path
        self.writable = writable
        self.fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0))
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def extents(self, meta_context=None):
        return allocation_map(self.path, "raw")

    def pread(self, length, offset):
        data = os.pread(self.fd, length, offset)
        if len(data) != length:
            raise DiskError("short read from %s at offset %d" % (self.path, offset), "check the file is not truncated")
        return data

    def readinto(self, buf, offset):
        """Fill ``buf`` (a writable buffer) from ``offset``; avoids a copy on hot paths."""
        n = os.preadv(self.fd, [buf], offset)
        if n != len(buf):
            raise DiskError("short read from %s at offset %d" % (self.path, offset), "check the file is not truncated")
        return n

    def pwrite(self, data, offset):
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def start_writeback(self, offset, length):
        """Start writing the range to disk now (sync_file_range, not waiting): a long copy
        then overlaps its writes to disk with its reads instead of paying them all in the
        final fsync (measured: 0.5 s of 1.7 s for 1 GiB). Without it, nothing is done."""
        if _sync_file_range is not None:
            _sync_file_range(self.fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    def flush(self):
        os.fsync(self.fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Seconds without any completed NBD read before read_chunks gives up (see NbdReader).
NBD_STALL_TIMEOUT = 300


class StalledRead(Exception):
    """No NBD request completed within the stall timeout."""


class NbdReader:
    """Guest bytes through an NBD connection (libnbd)."""

    path = None
    writable = False
    # read_chunks keeps 4 requests of 1 MiB in flight: a chunk is received, hashed and
    # written while it is still in the core's L2 cache (measured on 1 GiB from qemu-nbd:
    # 1 MiB took 1.4 s and 1.0 s CPU, 4 MiB 2-3 s and 1.3-1.9 s CPU; 32 MiB preads
    # were ~2x slower again, as each returned a new bytes object).
    preferred_chunk = 1024 * 1024

    def __init__(self, handle, name):
        self.h = handle
        self.name = name
        self.size = handle.get_size()
        self._min_block = None
        # A server that stops answering must not hang the copy forever: read_chunks gives
        # up when no request completes for this long (VMIGRATE_NBD_TIMEOUT, seconds).
        self.stall_timeout = float(os.environ.get("VMIGRATE_NBD_TIMEOUT") or NBD_STALL_TIMEOUT)

    def extents(self, meta_context=None):
        """Extents from NBD block status.

        With ``base:allocation`` (default) ``data``/``zero`` mean what qemu-img map says.
        With a dirty bitmap (``qemu:dirty-bitmap:<name>``) ``data`` means dirty.
        """
        ctx = meta_context or "base:allocation"
        if not self.h.can_meta_context(ctx):
            raise DiskError(
                "the NBD export %s does not offer %s" % (self.name, ctx),
                "export the disk with that bitmap or allocation context enabled",
            )
        out = []
        offset = 0
        found = []

        def callback(metacontext, off, entries, err):
            if metacontext == ctx:
                found.append(list(entries))
            return 0

        while offset < self.size:
            del found[:]
            try:
                self.h.block_status(min(self.size - offset, 1 << 30), offset, callback)
            except nbd.Error as exc:
                self._fail("block status of", offset, exc)
            if not found or not found[0]:
                raise DiskError("NBD export %s returned no %s status at %d" % (self.name, ctx, offset), None)
            entries = found[0]
            for i in range(0, len(entries), 2):
                length = min(entries[i], self.size - offset)
                flags = entries[i + 1]
                if ctx == "base:allocation":
                    ext = Extent(offset, length, not flags & nbd.STATE_HOLE, bool(flags & nbd.STATE_ZERO))
                else:
                    ext = Extent(offset, length, bool(flags & 1), False)
                out.append(ext)
                offset += length
                if offset >= self.size:
                    break
        return merge_extents(out)

    def pread(self, length, offset):
        start, end = self._aligned(offset, length)
        if (start, end) != (offset, offset + length):
            return self._pread(end - start, start)[offset - start : offset - start + length]
        return self._pread(length, offset)

    def _fail(self, what, offset, exc):
        raise DiskError(
            "%s %s at offset %d failed: %s" % (what, self.name, offset, exc),
            "check the image is complete and, for writes, that its format can be written in place "
            "(a streamOptimized vmdk cannot)",
        ) from exc

    def _pread(self, length, offset):
        try:
            return self._pread_nbd(length, offset)
        except nbd.Error as exc:
            self._fail("reading", offset, exc)

    def _pread_nbd(self, length, offset):
        if length <= MAX_REQUEST:
            return self.h.pread(length, offset)
        return b"".join(
            self.h.pread(min(MAX_REQUEST, length - done), offset + done) for done in range(0, length, MAX_REQUEST)
        )

    def readinto(self, buf, offset):
        view = memoryview(buf)
        done = 0
        while done < len(view):
            n = min(MAX_REQUEST, len(view) - done)
            view[done : done + n] = self.pread(n, offset + done)
            done += n
        return done

    def read_chunks(self, items, chunk, depth=4, keep=0):
        """Yield (offset, buffer, length) for each (offset, length) of ``items``, in order.

        One request at a time leaves the server idle while a reply is handled: a thread
        keeps ``depth`` aio_pread requests in flight on this handle, each into a
        preallocated buffer (no bytes object per read). A yielded buffer is reused once
        the caller has asked for ``keep + 1`` more items; it must be done with it by then.
        ``chunk`` (at most MAX_REQUEST) is the largest length in ``items``; every offset
        and length must be aligned to the server's minimum block size.
        """
        items = list(items)
        if any(self._aligned(off, length) != (off, off + length) for off, length in items):
            # The server would refuse these requests; pread reads around them.
            for off, length in items:
                yield off, self.pread(length, off), length
            return
        buffers = [bytearray(chunk) for _slot in range(depth + 2 + keep)]
        free = queue.Queue()
        for b in range(len(buffers)):
            free.put(b)
        ready = queue.Queue()
        stop = threading.Event()

        def io_loop():
            inflight = {}  # cookie -> (item index, buffer index)
            done = {}
            nxt = emit = 0
            failed_at = 0
            try:
                while emit < len(items) and not stop.is_set():
                    while nxt < len(items) and len(inflight) < depth:
                        try:
                            b = free.get(block=not inflight)
                        except queue.Empty:
                            break
                        if b is None:  # the caller stopped
                            return
                        off, length = items[nxt]
                        view = memoryview(buffers[b])[:length]
                        failed_at = off
                        inflight[self.h.aio_pread(nbd.Buffer.from_buffer(view), off)] = (nxt, b)
                        nxt += 1
                    if inflight and self.h.poll(int(self.stall_timeout * 1000)) == 0:
                        raise StalledRead(self.stall_timeout)
                    for cookie, (i, b) in list(inflight.items()):
                        failed_at = items[i][0]
                        if self.h.aio_command_completed(cookie):
                            del inflight[cookie]
                            done[i] = b
                    while emit in done:
                        ready.put((emit, done.pop(emit)))
                        emit += 1
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
                ready.put((failed_at, exc))
            finally:
                # Let no request write into a buffer after this thread is gone (a stalled
                # server gets no more waiting: the caller closes the handle, which ends them).
                while inflight:
                    try:
                        if self.h.poll(int(self.stall_timeout * 1000)) == 0:
                            break
                    except nbd.Error:
                        break
                    for cookie in list(inflight):
                        try:
                            finished = self.h.aio_command_completed(cookie)
                        except nbd.Error:
                            finished = True
                        if finished:
                            del inflight[cookie]

        thread = threading.Thread(target=io_loop, name="nbd-read", daemon=True)
        thread.start()
        held = collections.deque()
        try:
            for _item in range(len(items)):
                i, got = ready.get()
                if isinstance(got, nbd.Error):
                    self._fail("reading", i, got)
                if isinstance(got, StalledRead):
                    raise DiskError(
                        "reading %s at offset %d: the NBD server answered no request for %d s"
                        % (self.name, i, self.stall_timeout),
                        "check the host serving the disk and its storage, then run again (nothing was "
                        "left half-written); set VMIGRATE_NBD_TIMEOUT (seconds) for storage that is this slow",
                    )
                if isinstance(got, Exception):
                    raise got
                if len(held) > keep:
                    free.put(held.popleft())
                held.append(got)
                yield items[i][0], buffers[got], items[i][1]
        finally:
            stop.set()
            free.put(None)
            thread.join()

    def _aligned(self, offset, length):
        """The range rounded out to the server's minimum block size (vhdx exports ask 4 KiB)."""
        if self._min_block is None:
            self._min_block = max(1, self.h.get_block_size(nbd.SIZE_MINIMUM))
        m = self._min_block
        return (offset // m) * m, min(-(-(offset + length) // m) * m, self.size)

    def pwrite(self, data, offset):
        view = memoryview(data)
        start, end = self._aligned(offset, len(view))
        if (start, end) != (offset, offset + len(view)):
            # read-modify-write of the partial blocks at either end; the server
            # would reject an unaligned request
            buf = bytearray(self.pread(end - start, start))
            buf[offset - start : offset - start + len(view)] = view
            view, offset = memoryview(buf), start
        try:
            for done in range(0, len(view), MAX_REQUEST):
                self.h.pwrite(view[done : done + MAX_REQUEST], offset + done)
        except nbd.Error as exc:
            self._fail("writing", offset, exc)

    def flush(self):
        try:
            self.h.flush()
        except nbd.Error as exc:
            self._fail("flushing", 0, exc)

    def close(self):
        if self.h is not None:
            try:
                self.h.shutdown()
            except Exception:  # noqa: BLE001 - the server may already be gone
                pass
            _close_handle(self.h)
            self.h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _close_handle(h):
    # libnbd < 1.16 has no close(): the handle closes when the object is freed.
    close = getattr(h, "close", None)
    if close is not None:
        close()


def _require_nbd():
    if not HAS_NBD:
        raise MissingLibraryError(
            "the Python binding of libnbd (module nbd) is not importable: %s" % NBD_IMPORT_ERROR,
            "install python3-libnbd (Debian/Ubuntu) or libnbd-python (Fedora/RHEL) and use a Python "
            "that sees system packages",
        )


class QemuNbdImage(NbdReader):
    """An image of any format exported by a private qemu-nbd on a unix socket."""

    def __init__(self, path, fmt, writable=False, bitmap=None):
        _require_nbd()
        _must_exist(path)
        qemu_nbd = shutil.which("qemu-nbd")
        if not qemu_nbd:
            raise DiskError("qemu-nbd is not installed on the conversion host", "install qemu-utils")
        self.path = path
        self.writable = writable
        self.tmpdir = tempfile.mkdtemp(prefix="vmigrate-nbd-")
        sock = os.path.join(self.tmpdir, "nbd.sock")
        cmd = [qemu_nbd, "--socket=" + sock, "--format=" + fmt, "--shared=1", "--aio=threads"]
        # writeback cache + an explicit flush at the end; zero writes become holes so a
        # written target stays sparse.
        cmd += ["--read-only"] if not writable else ["--cache=writeback", "--discard=unmap", "--detect-zeroes=unmap"]
        # -B exports a persistent qcow2 dirty bitmap as the meta context qemu:dirty-bitmap:<name>
        # (an enabled bitmap only on a read-only export).
        cmd += ["--bitmap=" + bitmap] if bitmap else []
        contexts = ["base:allocation"] + (["qemu:dirty-bitmap:" + bitmap] if bitmap else [])
        self.proc = subprocess.Popen(
            cmd + [path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        h = nbd.NBD()
        for ctx in contexts:
            h.add_meta_context(ctx)
        deadline = time.monotonic() + NBD_START_TIMEOUT
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode("utf-8", "replace").strip()
                    raise DiskError(
                        "cannot open disk image %s as %s: %s" % (path, fmt, err.replace("qemu-nbd: ", "")),
                        "check that the file is a complete %s image%s"
                        % (fmt, "" if not writable else " and that this format can be written in place"),
                    )
                if os.path.exists(sock):
                    try:
                        h.connect_unix(sock)
                        break
                    except nbd.Error:
                        _close_handle(h)
                        h = nbd.NBD()
                        for ctx in contexts:
                            h.add_meta_context(ctx)
                if time.monotonic() > deadline:
                    raise DiskError("qemu-nbd did not start for %s within %ds" % (path, NBD_START_TIMEOUT), None)
                time.sleep(0.01)
        except BaseException:
            self._stop()
            raise
        super().__init__(h, path)

    def close(self):
        super().close()
        self._stop()

    def _stop(self):
        # Without --persistent qemu-nbd exits when its one client disconnects.
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            rc = self.proc.returncode
            err = self.proc.stderr.read().decode("utf-8", "replace").strip()
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc = None
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            if rc not in (0, -15) and err:
                raise DiskError("qemu-nbd failed on %s: %s" % (self.path, err), None)


def open_guest(path, fmt, writable=False, bitmap=None):
    """A reader (and writer when ``writable``) of an image's guest-visible bytes.

    ``bitmap`` names a persistent dirty bitmap of a qcow2 image to export too:
    ``extents(bitmap_context(bitmap))`` then lists what was written since it was made.
    """
    if fmt not in FORMATS:
        raise DiskError("unknown disk format %r for %s" % (fmt, path), "use one of %s" % ", ".join(FORMATS))
    if bitmap and fmt != "qcow2":
        raise DiskError(
            "disk image %s is %s: only qcow2 images hold dirty bitmaps (%s)" % (path, fmt, bitmap),
            "compare block digests instead",
        )
    if fmt == "raw":
        _must_exist(path)
        return RawFile(path, writable)
    return QemuNbdImage(path, fmt, writable, bitmap)


def bitmap_context(name):
    """The NBD meta context qemu-nbd (-B) and QEMU export a dirty bitmap under."""
    return "qemu:dirty-bitmap:" + name


def qcow2_bitmap(info_data, name):
    """Why the qcow2 image (its ``info`` dict) cannot give bitmap ``name``'s dirty extents, or None.

    The bitmap must be there and consistent: QEMU marks a bitmap in-use while it runs
    and clears the flag when it stores it at shut-down, so a bitmap still in-use was not
    stored (QEMU was killed) and may have missed writes.
    """
    if info_data.get("format") != "qcow2":
        return "the image is %s, not qcow2 (no persistent dirty bitmaps)" % info_data.get("format")
    bitmaps = ((info_data.get("format-specific") or {}).get("data") or {}).get("bitmaps") or []
    for bm in bitmaps:
        if bm.get("name") == name:
            if "in-use" in (bm.get("flags") or []):
                return "its dirty bitmap %s is marked in-use (QEMU did not store it at shut-down)" % name
            return None
    return "it has no dirty bitmap %s (the checkpoint was deleted, or the image was replaced)" % name


def open_nbd(uri, meta_context=None):
    """A reader on an existing NBD export, e.g. libvirt's backup pull mode.

    ``meta_context`` (e.g. ``qemu:dirty-bitmap:backup-disk0``) is requested besides
    ``base:allocation`` so that ``extents(meta_context)`` can list dirty extents.
    """
    _require_nbd()
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    if meta_context:
        h.add_meta_context(meta_context)
    try:
        h.connect_uri(uri)
    except nbd.Error as exc:
        _close_handle(h)
        raise DiskError("cannot connect to NBD export %s: %s" % (uri, exc), "check the export is running") from exc
    return NbdReader(h, uri)
