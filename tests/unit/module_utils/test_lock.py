"""_lock.bundle_lock: one writer per bundle, across processes; released when its holder
exits, even killed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils._lock import bundle_lock, lock_path

HOLD = textwrap.dedent(
    """
    import sys, time
    from ansible_collections.vmigrate.v2v.plugins.module_utils._lock import bundle_lock
    with bundle_lock(sys.argv[1], "export of web01"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def holder(bundle):
    """Another process holding the lock of ``bundle`` (as another run's module would)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, bundle],
        stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert proc.stdout.readline().strip() == b"held"
    return proc


def test_a_second_writer_is_refused_naming_the_first(tmp_path, reliability):
    reliability(
        "engine",
        "two writers of one bundle at once (another process holds its lock)",
        "InputError naming the bundle, 'export of web01 pid N' and the fix 'wait for that run ...'",
        "the second writer does nothing; once the holder is killed (SIGKILL) the next run takes the lock, "
        "no clean-up needed",
    )
    bundle = str(tmp_path / "work" / "export")
    proc = holder(bundle)
    try:
        with pytest.raises(InputError) as err:
            with bundle_lock(bundle, "export of web01"):
                pass
        msg = str(err.value)
        assert bundle in msg and "export of web01 pid %d" % proc.pid in msg and "wait for that run" in msg, msg
    finally:
        proc.kill()
        proc.wait()
    # Killed: the kernel dropped its lock; the next run takes it without any clean-up.
    with bundle_lock(bundle, "export of web01"):
        assert os.path.exists(lock_path(bundle))


def test_check_mode_takes_no_lock_and_writes_nothing(tmp_path):
    bundle = str(tmp_path / "work" / "export")
    with bundle_lock(bundle, "export", check_mode=True):
        pass
    assert not (tmp_path / "work").exists()


def test_the_lock_is_per_bundle_and_reentrant_across_runs(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    with bundle_lock(a, "export"), bundle_lock(b, "convert"):
        pass
    with bundle_lock(a, "export"):  # released at the end of the block
        pass


def test_keys_lock_apart(tmp_path):
    """Imports of one bundle into two names run side by side; the same name twice does not."""
    bundle = str(tmp_path / "convert")
    with bundle_lock(bundle, "import of a", key="import-a"), bundle_lock(bundle, "import of b", key="import-b"):
        pass
    assert lock_path(bundle, "import-a/../x") == str(tmp_path / ".convert.import-a_.._x.lock")
