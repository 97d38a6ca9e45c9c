"""The lab's Hyper-V simulator: set-up helpers, the server process, and a small CLI.

    PYTHONPATH=tests/lab python3 -m hyperv.simulator init   --state-dir D --share DIR
    PYTHONPATH=tests/lab python3 -m hyperv.simulator users  --state-dir D --user NAME --password PW
    PYTHONPATH=tests/lab python3 -m hyperv.simulator cert   --state-dir D --ca-cert ca.pem --ca-key ca.key
    PYTHONPATH=tests/lab python3 -m hyperv.simulator new-vm --state-dir D --name web01 --disk 1G ...
    PYTHONPATH=tests/lab python3 -m hyperv.simulator serve  --state-dir D --http-port 5985 --https-port 5986
    PYTHONPATH=tests/lab python3 -m hyperv.simulator up     --state-dir D --share DIR --ca-cert ca.pem --ca-key ca.key
    PYTHONPATH=tests/lab python3 -m hyperv.simulator down   --state-dir D

(``tests/lab/hyperv/hvsim`` is the same with the path set.) ``start()`` runs ``serve`` as a
child process and waits until both ports answer: the tests' fixture and ``lab up`` use it.
Everything the server needs is in the state directory: hyperv.json (the host model),
users (``DOMAIN:USER:PASSWORD``, pyspnego's NTLM_USER_FILE format), winrm.pem/winrm.key
(the HTTPS certificate, signed by the lab CA). Fault injection for tests: a ``fault.json``
written there makes the next scripts naming a cmdlet drop the connection or answer with a
WS-Management fault (see winrm.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

LAB_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_size(text):
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    text = str(text).strip().lower().rstrip("b").rstrip("i")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def write_users(state_dir, users, domain="HVLAB01"):
    """The users file: each user with no domain and with the host's name as domain (how a
    local Windows account is given: ``user`` or ``HVLAB01\\user``)."""
    path = os.path.join(state_dir, "users")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for user, password in users.items():
            if ":" in user or ":" in password:
                raise ValueError("user names and passwords in the lab cannot contain ':'")
            f.write(":%s:%s\n%s:%s:%s\n" % (user, password, domain, user, password))
    return path


def make_certificate(state_dir, ca_cert, ca_key, names=("localhost",), ips=("127.0.0.1",)):
    """winrm.pem/winrm.key for the HTTPS listener, signed by the lab CA with openssl (as
    tests/lab/lab signs vcsim's). Writes nothing beside the CA: the serial is random."""
    pem, key = os.path.join(state_dir, "winrm.pem"), os.path.join(state_dir, "winrm.key")
    if os.path.exists(pem) and os.path.exists(key):
        return pem, key
    san = ",".join(["DNS:%s" % n for n in names] + ["IP:%s" % i for i in ips])
    with tempfile.TemporaryDirectory() as tmp:
        ext = os.path.join(tmp, "ext")
        with open(ext, "w", encoding="ascii") as f:
            f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
            f.write("extendedKeyUsage=serverAuth\nsubjectAltName=%s\n" % san)
        csr = os.path.join(tmp, "csr")
        subprocess.run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=%s" % names[0],
                        "-keyout", key, "-out", csr], check=True, capture_output=True)  # fmt: skip
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                        "-set_serial", "0x" + os.urandom(16).hex(), "-days", "3650", "-sha256",
                        "-extfile", ext, "-out", pem], check=True, capture_output=True)  # fmt: skip
    os.chmod(key, 0o600)
    return pem, key


def serve(state_dir, http_port=None, https_port=None, bind="127.0.0.1", allow_unencrypted=False):
    """Run the listeners in this process until it is killed."""
    from hyperv.host import HyperVHost
    from hyperv.winrm import WinRMServer

    host = HyperVHost(state_dir)
    users = os.path.join(state_dir, "users")
    log = open(os.path.join(state_dir, "winrm.log"), "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    servers = []
    if http_port is not None:
        servers.append(WinRMServer((bind, http_port), host, users, allow_unencrypted=allow_unencrypted, log=log))
    if https_port is not None:
        tls = (os.path.join(state_dir, "winrm.pem"), os.path.join(state_dir, "winrm.key"))
        servers.append(WinRMServer((bind, https_port), host, users, tls=tls, log=log))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(state_dir, http_port, https_port, python=sys.executable, timeout=15):
    """Start ``serve`` as a child process; return the Popen once both ports accept."""
    env = dict(os.environ, PYTHONPATH=LAB_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
    err = open(os.path.join(state_dir, "server.err"), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [python, "-m", "hyperv.simulator", "serve", "--state-dir", state_dir,
         "--http-port", str(http_port), "--https-port", str(https_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
    )  # fmt: skip
    err.close()
    deadline = time.monotonic() + timeout
    for port in (http_port, https_port):
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the Hyper-V simulator exited (see %s/server.err)" % state_dir)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(
                        "the Hyper-V simulator did not listen on port %d in %d s" % (port, timeout)
                    ) from None
                time.sleep(0.05)
    with open(os.path.join(state_dir, "server.pid"), "w", encoding="ascii") as f:
        f.write("%d\n" % proc.pid)
    return proc


def _pid_alive(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        return False
    # Only our server: a recycled pid of another process must not count, nor be killed.
    return b"hyperv.simulator" in cmdline and b"serve" in cmdline


def running_pid(state_dir):
    try:
        with open(os.path.join(state_dir, "server.pid"), encoding="ascii") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def tls_ok(port, ca_cert):
    """The HTTPS listener answers with a certificate the lab CA verifies for 127.0.0.1."""
    ctx = ssl.create_default_context(cafile=ca_cert)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return True
    except (OSError, ssl.SSLError):
        return False


def down(state_dir):
    """Stop the server this state directory started (by its pid file, nothing else)."""
    pid = running_pid(state_dir)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _pid_alive(pid):
                break
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(state_dir, "server.pid"))


def up(state_dir, share, ca_cert, ca_key, http_port=5985, https_port=5986, user="vmigrate"):
    """What ``lab up`` needs, idempotent: the host model, a users file with a password made
    once (state_dir/password), the certificate, and a server answering on both ports
    (restarted when it is not, or listens elsewhere). Returns the connection facts."""
    from hyperv.host import HyperVHost

    host = HyperVHost.init(state_dir, share)
    pw_file = os.path.join(state_dir, "password")
    if not os.path.exists(pw_file):
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(16))
    with open(pw_file, encoding="ascii") as f:
        password = f.read().strip()
    write_users(state_dir, {user: password})
    pem, _key = make_certificate(state_dir, ca_cert, ca_key)
    stamp = os.path.join(state_dir, "server.ports")
    want = "%d %d" % (http_port, https_port)
    pid = running_pid(state_dir)
    same = os.path.exists(stamp) and open(stamp, encoding="ascii").read().strip() == want  # noqa: SIM115
    if pid is None or not same or not tls_ok(https_port, ca_cert):
        down(state_dir)
        pid = start(state_dir, http_port, https_port).pid
        with open(stamp, "w", encoding="ascii") as f:
            f.write(want + "\n")
    state = host.load()
    return {
        "hostname": "127.0.0.1",
        "http_port": http_port,
        "https_port": https_port,
        "username": user,
        "password": password,
        "ca_path": ca_cert,
        "certificate": pem,
        "state_dir": state_dir,
        "share_local": state["share_local"],
        "share_windows": state["share_windows"],
        "pid": pid,
    }


def main(argv=None):
    from hyperv.host import HyperVHost

    ap = argparse.ArgumentParser(prog="hvsim", description="the lab's Hyper-V simulator")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create the host model")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--share", required=True, help="local directory that stands in for the SMB share")
    p.add_argument("--share-windows", default="C:\\VMs", help="the share's path as Hyper-V sees it")
    p = sub.add_parser("users", help="write the users file")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p = sub.add_parser("cert", help="sign the HTTPS certificate with the lab CA")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--ca-key", required=True)
    p = sub.add_parser("new-vm", help="add a VM to the model")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--generation", type=int, default=2, choices=(1, 2))
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--memory-mib", type=int, default=1024)
    p.add_argument("--dynamic-memory", action="store_true")
    p.add_argument("--secure-boot", choices=("on", "off"))
    p.add_argument("--disk", action="append", default=[], help="SIZE[,controller=IDE|SCSI][,type=Dynamic|Fixed]")
    p.add_argument("--nic", action="append", default=[], help="switch=NAME[,mac=00155D...][,vlan=N]")
    p.add_argument("--state", default="Off")
    p.add_argument("--notes", default="")
    p = sub.add_parser("up", help="everything lab up needs, idempotent; prints the facts as JSON")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--share", required=True)
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--ca-key", required=True)
    p.add_argument("--http-port", type=int, default=5985)
    p.add_argument("--https-port", type=int, default=5986)
    p.add_argument("--user", default="vmigrate")
    p = sub.add_parser("down", help="stop the server of this state directory")
    p.add_argument("--state-dir", required=True)
    p = sub.add_parser("serve", help="run the WinRM listeners")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--http-port", type=int)
    p.add_argument("--https-port", type=int)
    p.add_argument("--allow-unencrypted", action="store_true", help="accept Basic and plain bodies over HTTP")
    args = ap.parse_args(argv)

    if args.cmd == "init":
        HyperVHost.init(args.state_dir, args.share, args.share_windows)
    elif args.cmd == "users":
        write_users(args.state_dir, {args.user: args.password})
    elif args.cmd == "cert":
        make_certificate(args.state_dir, args.ca_cert, args.ca_key)
    elif args.cmd == "new-vm":

        def kv(text, first):
            parts = text.split(",")
            out = {first: parts[0]} if "=" not in parts[0] else {}
            for part in parts[1 if out else 0 :]:
                k, _, v = part.partition("=")
                out[k] = v
            return out

        disks = []
        for d in args.disk:
            spec = kv(d, "size")
            disks.append(
                {
                    "size": parse_size(spec["size"]),
                    "controller": spec.get("controller"),
                    "type": spec.get("type", "Dynamic"),
                }
            )
        nics = [
            dict(kv(n, "switch"), vlan=int(kv(n, "switch")["vlan"]) if "vlan" in kv(n, "switch") else None)
            for n in args.nic
        ]
        vm_id = HyperVHost(args.state_dir).new_vm(
            args.name, generation=args.generation, cpus=args.cpus, memory_mib=args.memory_mib,
            dynamic_memory=args.dynamic_memory,
            secure_boot=None if args.secure_boot is None else args.secure_boot == "on",
            disks=disks, nics=nics, state=args.state, notes=args.notes,
        )  # fmt: skip
        print(vm_id)
    elif args.cmd == "up":
        facts = up(args.state_dir, args.share, args.ca_cert, args.ca_key, args.http_port, args.https_port, args.user)
        print(json.dumps(facts, indent=2))
    elif args.cmd == "down":
        down(args.state_dir)
    elif args.cmd == "serve":
        if args.http_port is None and args.https_port is None:
            ap.error("give --http-port, --https-port or both")
        serve(args.state_dir, args.http_port, args.https_port, allow_unencrypted=args.allow_unencrypted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
