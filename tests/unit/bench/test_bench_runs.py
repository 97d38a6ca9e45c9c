"""bench/run.py still runs end to end on tiny sizes. Its timings are printed, never asserted."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_bench_runs_on_tiny_sizes(tmp_path):
    args = ["--size-mib", "8", "--sparse-gib", "1", "--sparse-data-mib", "4", "--repeat", "1"]
    args += ["--dir", str(tmp_path / "work"), "--results", str(tmp_path / "latest.txt")]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "run.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for part in ("(a) convert", "(b) ", "(c) "):
        assert part in proc.stdout, proc.stdout
    assert (tmp_path / "latest.txt").read_text().strip()
