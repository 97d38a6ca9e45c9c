"""The simulator's WinRM endpoint (tests/lab/hyperv/winrm.py) in-process over HTTP, driven
by pywinrm's Protocol: the shell operations, NTLM sealing on the wire, and faults.
HTTPS with the lab CA is covered by tests/integration/test_hyperv_winrm.py."""

import os
import sys
import threading

import pytest
import requests
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMTransportError, WSManFaultError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "tests", "lab"))

from hyperv import simulator  # noqa: E402
from hyperv.host import HyperVHost  # noqa: E402
from hyperv.winrm import WinRMServer  # noqa: E402


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("NTLM_USER_FILE", "")  # restored afterwards: the server sets it for its acceptor
    host = HyperVHost.init(str(tmp_path / "state"), str(tmp_path / "share"))
    users = simulator.write_users(host.state_dir, {"u": "secret"})
    with open(tmp_path / "log", "w", encoding="utf-8") as log:
        srv = WinRMServer(("127.0.0.1", 0), host, users, log=log)
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield "http://127.0.0.1:%d/wsman" % srv.server_address[1], str(tmp_path / "log")
        finally:
            srv.shutdown()
            srv.server_close()


def protocol(url, password="secret", encryption="auto"):
    return winrm.Protocol(
        url,
        transport="ntlm",
        username="u",
        password=password,
        message_encryption=encryption,
        proxy=None,
        ca_trust_path=None,
    )


def test_shell_operations_with_ntlm_sealing(server):
    url, log = server
    p = protocol(url)
    shell = p.open_shell()
    command = p.run_command(shell, "powershell -encodedcommand " + "JwBoAGkAJwA=")  # 'hi' in UTF-16LE
    assert p.get_command_output(shell, command) == (b"hi\r\n", b"", 0)
    p.cleanup_command(shell, command)
    p.close_shell(shell)
    with open(log, encoding="utf-8") as f:
        soap = [line for line in f if " soap " in line]
    assert len(soap) == 5 and all("body=ntlm-sealed status=200" in line for line in soap)


def test_faults_and_refusals(server):
    url, _log = server
    p = protocol(url)
    shell = p.open_shell()
    p.close_shell(shell, close_session=False)
    with pytest.raises(WSManFaultError, match="shell was not found") as err:
        p.close_shell(shell)
    assert err.value.wsman_fault_code == 2150858843
    with pytest.raises(InvalidCredentialsError):
        protocol(url, password="wrong").open_shell()
    with pytest.raises(WinRMTransportError) as err:
        protocol(url, encryption="never").open_shell()  # AllowUnencrypted=false
    assert err.value.code == 500
    assert requests.get(url, timeout=5).status_code == 501  # WS-Management is POST only
