"""bench/e2e.py counts source reads from strace's output; the parser, on lines strace 6 writes."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import e2e  # noqa: E402

TRACE = """\
101<python3> read(3</usr/lib/python3.11/os.py>, ""..., 4096) = 4096
202<qemu-nbd> pread64(9</pool/src.qcow2>, ""..., 65536, 0) = 65536
303<qemu-img> pread64(4</pool/src.qcow2>,  <unfinished ...>
304<qemu-img> preadv(4</pool/src.qcow2>, [{iov_base=""..., iov_len=1048576}], 1, 196608) = 1048576
303<qemu-img> <... pread64 resumed>""..., 8, 112) = 8
305<qemu-img> pread64(4</pool/other.qcow2>,  <unfinished ...>
305<qemu-img> <... pread64 resumed>""..., 512, 0) = 512
202<qemu-nbd> pread64(9</pool/src.qcow2>, 0x7f, 65536, 0) = -1 EINTR (Interrupted system call)
"""


def test_bytes_read_by_program(tmp_path):
    trace = tmp_path / "trace.txt"
    trace.write_text(TRACE)
    assert e2e.bytes_read_from(str(trace), "/pool/src.qcow2") == {"qemu-nbd": 65536, "qemu-img": 1048576 + 8}
