"""No secret anywhere (issue 14, security): a plan migration KVM -> vSphere (vcsim) run
with -vvv and Ansible's log file on, then its report; the lab's vCenter password, its
base64 and the base64 of user:password (HTTP Basic) must appear in none of: the
playbooks' output, the Ansible log, any file under the plan's work directory (bundles,
status and progress files, the report), and the argument lists of the processes that ran
meanwhile (sampled from /proc while the playbook runs)."""

from __future__ import annotations

import base64
import os
import threading

import pytest
from plan_lab import PLAYBOOKS, SourceDomains, target_of, write_vsphere_plan


@pytest.fixture
def sources(lab, libvirt_conn):
    domains = SourceDomains(lab, libvirt_conn, "lab-nosecret")
    yield domains
    domains.cleanup()


class ArgvSampler:
    """Every process's argument list, sampled from /proc every 50 ms while running."""

    def __init__(self):
        self.seen = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open("/proc/%s/cmdline" % pid, "rb") as fh:
                            self.seen.add(fh.read())
                    except OSError:
                        pass
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_no_secret_in_output_logs_files_or_argv(lab, vsphere_si, sources, run_playbook, tmp_path, reliability):
    reliability(
        "security",
        "secrets: the vCenter password in a -vvv plan migration KVM -> vSphere and its report",
        "neither the password nor base64 of it or of user:password in playbook output, ansible log, work dir "
        "files (bundles, status, progress, report) or sampled process argv",
        "migration complete (the target VM exists)",
    )
    from test_vsphere_import import destroy, find_vm

    vc = lab["vcsim"]
    name, _disk = sources.make("vs", mib=8)
    target = target_of(name)
    work = tmp_path / "work"
    plan = write_vsphere_plan(lab, tmp_path, name, target, "mode: full")
    log = tmp_path / "ansible.log"
    env = {
        "ANSIBLE_INVENTORY": str(plan),
        "LAB_VC_PASSWORD": vc["password"],
        "ANSIBLE_VERBOSITY": "3",
        "ANSIBLE_LOG_PATH": str(log),
    }
    password = vc["password"]
    secrets = {
        "password": password.encode(),
        "base64(password)": base64.b64encode(password.encode()),
        "base64(user:password)": base64.b64encode(("%s:%s" % (vc["username"], password)).encode()),
    }
    try:
        outputs = []
        with ArgvSampler() as argv:
            for playbook in ("migrate.yml", "report.yml"):
                proc = run_playbook(os.path.join(PLAYBOOKS, playbook), env=env, timeout=1200)
                assert proc.returncode == 0, proc.stdout[-5000:]
                outputs.append(("%s output" % playbook, (proc.stdout + proc.stderr).encode()))
        assert find_vm(vsphere_si, target) is not None  # the migration really ran, with the password
        assert b"vsphere_import" in log.read_bytes()  # -vvv logged the module's run
        places = outputs + [("ansible log", log.read_bytes())]
        # The work directory and the report beside the plan (roles/report: <plan dir>/report).
        files = [p for top in (work, tmp_path / "report") for p in top.rglob("*") if p.is_file()]
        assert any(p.name == "report.html" for p in files), [str(p) for p in files]
        for path in files:
            with open(path, "rb") as fh:
                places.append((str(path), fh.read()))
        places += [("argv of a process", b" ".join(cmdline.split(b"\0"))) for cmdline in argv.seen]
        assert len(argv.seen) > 10  # the sampler saw the run's processes
        leaks = [(where, what) for where, data in places for what, secret in secrets.items() if secret in data]
        # The test's own process environment holds the password (LAB_VC_PASSWORD), but
        # environments are not argument lists: nothing here reads /proc/*/environ.
        assert not leaks, leaks
    finally:
        destroy(vsphere_si, target)
