"""A WS-Management (WinRM) endpoint on loopback for the lab, spoken to by the real pywinrm.

What it models, and why it matters for the collection:
- HTTP and HTTPS listeners (the certificate is signed by the lab CA, so the client's
  certificate validation is exercised, not switched off).
- Authentication as a Windows host answers it: Basic (only over HTTPS unless
  ``allow_unencrypted``, as WinRM's AllowUnencrypted=false does) and NTLM in the
  ``Negotiate`` scheme. NTLM is done by pyspnego's acceptor (users from the file named by
  NTLM_USER_FILE, lines ``DOMAIN:USER:PASSWORD``); nothing here implements NTLM itself.
  NTLM authenticates the TCP connection, so the context lives on the connection.
- Message encryption over HTTP (MS-WSMV 2.2.9.1.1): bodies are
  ``multipart/encrypted`` with NTLM sealing, which pywinrm uses with
  ``message_encryption='auto'`` on an http:// endpoint. An unencrypted body on HTTP is
  refused with HTTP 500, as WinRM does when AllowUnencrypted is false.
- The remote shell operations pywinrm's ``Session.run_ps`` uses: Create (shell),
  Command, Receive, Signal (terminate), Delete. A command must be
  ``powershell -encodedcommand <base64 UTF-16LE>``: the script goes to the Hyper-V host
  model (``host.HyperVHost.run_powershell``); anything else fails the way cmd.exe does.
- Errors as SOAP faults (HTTP 500) with a WSManFault code; refused credentials as a bare
  HTTP 401.
- Fault injection for the fault tests (tests/faults/lab): a file ``fault.json`` in the
  state directory, ``{"match": "Checkpoint-VM", "how": "drop"|"fault", "when":
  "before"|"after", "times": 1}``, makes the next ``times`` scripts whose text contains
  ``match`` fail: ``drop`` closes the TCP connection without an answer, ``fault`` answers
  with a WS-Management fault (by default the one WinRM sends when its service restarted:
  the shell is gone), ``before`` without running the script, ``after`` once it ran (the
  host did it, the client never hears). The file is removed when used up; each injected
  fault is logged in winrm.log (see ``inject_fault``).

Only the standard library and pyspnego (a pywinrm dependency) are used.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import http.server
import json
import os
import re
import socket
import ssl
import struct
import threading
import traceback
import uuid
import xml.etree.ElementTree as ET

import spnego
from spnego.channel_bindings import GssChannelBindings

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "delete",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Command": "command",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive": "receive",
    "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Signal": "signal",
}
STATE_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
ENC_PROTOCOL = b"application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"
# cmd.exe refuses longer command lines ("The command line is too long."); pywinrm runs
# powershell through it, so the collection's scripts must stay under this.
CMD_MAX = 8191

# WSManFault codes as Windows sends them (decimal forms of the HRESULTs).
FAULT_SHELL_NOT_FOUND = 2150858843
FAULT_ACTION_NOT_SUPPORTED = 2150858771
FAULT_BAD_REQUEST = 2150858774


class DropConnection(Exception):
    """Raised by an injected fault: the handler closes the connection without answering."""


class WSManFault(Exception):
    def __init__(self, code, subcode, reason, wsman_code):
        super().__init__(reason)
        self.code, self.subcode, self.reason, self.wsman_code = code, subcode, reason, wsman_code


def read_users(path):
    """{(DOMAIN upper, user lower): password} from a ``DOMAIN:USER:PASSWORD`` file (the
    format pyspnego's NTLM acceptor reads), so Basic and NTLM accept the same users."""
    users = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\r\n").split(":", 2)
            if len(parts) == 3:
                users[(parts[0].upper(), parts[1].lower())] = parts[2]
    return users


def _basic_ok(users, header_value):
    try:
        text = base64.b64decode(header_value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    name, _, password = text.partition(":")
    domain, _, user = name.rpartition("\\")
    for (dom, usr), pwd in users.items():
        # A local account: Windows accepts it with no domain, or with the host's name.
        if usr == user.lower() and pwd == password and (not domain or dom == domain.upper()):
            return True
    return False


# ---------------------------------------------------------------- encryption framing


def decrypt_body(ctx, body):
    """The SOAP text inside a ``multipart/encrypted`` request (MS-WSMV 2.2.9.1.1).

    Part 1 carries ``OriginalContent: ...;Length=N``; part 2 is the 4-byte little-endian
    signature length, the NTLM signature, then N sealed bytes (RC4 keeps the length).
    """
    m = re.search(rb"Length=(\d+)\r\n", body)
    start = body.find(b"\tContent-Type: application/octet-stream\r\n")
    if not m or start < 0:
        raise ValueError("not a multipart/encrypted WinRM body")
    length = int(m.group(1))
    data = body[start + len(b"\tContent-Type: application/octet-stream\r\n") :]
    (sig_len,) = struct.unpack("<I", data[:4])
    header = data[4 : 4 + sig_len]
    sealed = data[4 + sig_len : 4 + sig_len + length]
    plain = ctx.unwrap_winrm(header, sealed)
    if len(plain) != length:
        raise ValueError("encrypted length does not match OriginalContent")
    return plain


def encrypt_body(ctx, plain):
    """The ``multipart/encrypted`` response body for ``plain``, the inverse of the above."""
    wrapped = ctx.wrap_winrm(plain)
    return (
        BOUNDARY + b"\r\n"
        b"\tContent-Type: " + ENC_PROTOCOL + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(plain)).encode() + b"\r\n"
        + BOUNDARY + b"\r\n"
        b"\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<I", len(wrapped.header)) + wrapped.header + wrapped.data
        + BOUNDARY + b"--\r\n"
    )  # fmt: skip


# ---------------------------------------------------------------- SOAP


def _q(prefix, name):
    return "{%s}%s" % (NS[prefix], name)


def _envelope(action, relates_to, body_children=()):
    env = ET.Element(_q("s", "Envelope"))
    header = ET.SubElement(env, _q("s", "Header"))
    ET.SubElement(header, _q("a", "Action")).text = action
    ET.SubElement(header, _q("a", "MessageID")).text = "uuid:%s" % str(uuid.uuid4()).upper()
    ET.SubElement(header, _q("a", "To")).text = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
    if relates_to:
        ET.SubElement(header, _q("a", "RelatesTo")).text = relates_to
    body = ET.SubElement(env, _q("s", "Body"))
    for child in body_children:
        body.append(child)
    return ET.tostring(env, encoding="utf-8", xml_declaration=False)


def fault_envelope(fault, relates_to):
    f = ET.Element(_q("s", "Fault"))
    code = ET.SubElement(f, _q("s", "Code"))
    ET.SubElement(code, _q("s", "Value")).text = "s:" + fault.code
    sub = ET.SubElement(code, _q("s", "Subcode"))
    ET.SubElement(sub, _q("s", "Value")).text = fault.subcode
    reason = ET.SubElement(f, _q("s", "Reason"))
    text = ET.SubElement(reason, _q("s", "Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    text.text = fault.reason
    detail = ET.SubElement(f, _q("s", "Detail"))
    wf = ET.SubElement(detail, _q("f", "WSManFault"))
    wf.set("Code", str(fault.wsman_code))
    wf.set("Machine", "hyperv-lab")
    ET.SubElement(wf, _q("f", "Message")).text = fault.reason
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, [f])


class Shells:
    """The open remote shells and their commands; a command runs when it is created and
    its whole output is returned by the first Receive (our scripts are short)."""

    def __init__(self, host):
        self.host = host
        self.lock = threading.Lock()
        self.shells = {}  # shell id -> {command id -> (stdout, stderr, exit code)}

    def handle(self, action, root):
        """(response action, body children) for one request, or WSManFault."""
        header = root.find("s:Header", NS)
        body = root.find("s:Body", NS)
        if header is None or body is None:
            raise WSManFault("Sender", "w:SchemaValidationError", "The SOAP XML is not valid.", FAULT_BAD_REQUEST)
        resource = (header.findtext("w:ResourceURI", "", NS) or "").strip()
        if resource != SHELL_URI:
            raise WSManFault(
                "Sender",
                "w:DestinationUnreachable",
                "The WS-Management service cannot process the request. The resource URI %s is not served by "
                "the lab simulator (it serves only %s)." % (resource, SHELL_URI),
                FAULT_ACTION_NOT_SUPPORTED,
            )
        op = ACTIONS.get(action)
        if op is None:
            raise WSManFault(
                "Sender",
                "a:ActionNotSupported",
                "The action %s is not supported by the service." % action,
                FAULT_ACTION_NOT_SUPPORTED,
            )
        if op == "create":
            return self._create()
        shell_id = None
        for sel in header.findall("w:SelectorSet/w:Selector", NS):
            if sel.get("Name") == "ShellId":
                shell_id = (sel.text or "").strip()
        with self.lock:
            commands = self.shells.get(shell_id)
        if commands is None:
            raise WSManFault(
                "Sender",
                "w:InvalidSelectors",
                "The request for the Windows Remote Shell with ShellId %s failed because the shell was not "
                "found on the server. Possible causes are: the specified ShellId is incorrect or the shell no "
                "longer exists on the server. Provide the correct ShellId or create a new shell and retry the "
                "operation." % shell_id,
                FAULT_SHELL_NOT_FOUND,
            )
        return getattr(self, "_" + op)(shell_id, commands, body)

    def _create(self):
        shell_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.shells[shell_id] = {}
        created = ET.Element(_q("x", "ResourceCreated"))
        ET.SubElement(created, _q("a", "Address")).text = "http://127.0.0.1/wsman"
        ref = ET.SubElement(created, _q("a", "ReferenceParameters"))
        ET.SubElement(ref, _q("w", "ResourceURI")).text = SHELL_URI
        sel = ET.SubElement(ET.SubElement(ref, _q("w", "SelectorSet")), _q("w", "Selector"))
        sel.set("Name", "ShellId")
        sel.text = shell_id
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse", [created]

    def _delete(self, shell_id, commands, body):
        with self.lock:
            self.shells.pop(shell_id, None)
        return "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", []

    def _command(self, shell_id, commands, body):
        line = body.find("rsp:CommandLine", NS)
        command = (line.findtext("rsp:Command", "", NS) if line is not None else "").strip()
        args = (line.findtext("rsp:Arguments", "", NS) if line is not None else "").strip()
        full = (command + " " + args).strip()
        result = self.run(full)
        command_id = str(uuid.uuid4()).upper()
        with self.lock:
            commands[command_id] = result
        resp = ET.Element(_q("rsp", "CommandResponse"))
        ET.SubElement(resp, _q("rsp", "CommandId")).text = command_id
        return "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandResponse", [resp]

    def run(self, command_line):
        """(stdout bytes, stderr bytes, exit code) of one command line, as cmd.exe runs it."""
        if len(command_line) > CMD_MAX:
            return b"", b"The command line is too long.\r\n", 1
        m = re.fullmatch(r"(?i)powershell(?:\.exe)?\s+-(?:encodedcommand|enc|e)\s+([A-Za-z0-9+/=]+)", command_line)
        if not m:
            word = command_line.split()[0] if command_line.split() else command_line
            msg = "'%s' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n"
            msg += "(the lab's Hyper-V simulator runs only 'powershell -encodedcommand <base64 UTF-16LE>')\r\n"
            return b"", (msg % word).encode(), 1
        try:
            script = base64.b64decode(m.group(1), validate=True).decode("utf-16-le")
        except (binascii.Error, UnicodeDecodeError) as exc:
            return (
                b"",
                (
                    "Cannot process the command because the value of -EncodedCommand is not valid (%s).\r\n" % exc
                ).encode(),
                1,
            )
        fault = inject_fault(self.host.state_dir, script)
        if fault and fault["when"] == "before":
            raise_fault(fault)
        try:
            result = self.host.run_powershell(script)
        except Exception:  # noqa: BLE001 - a bug in the simulator must show, not drop the connection
            text = "the lab's Hyper-V simulator failed inside (a bug in tests/lab/hyperv):\r\n" + traceback.format_exc()
            result = b"", text.encode("utf-8"), 1
        if fault:
            raise_fault(fault)
        return result

    def _receive(self, shell_id, commands, body):
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS)
        command_id = stream.get("CommandId") if stream is not None else None
        with self.lock:
            result = commands.get(command_id)
        if result is None:
            raise WSManFault(
                "Sender",
                "w:InvalidSelectors",
                "The request for the Windows Remote Shell with CommandId %s failed because the command was not "
                "found on the server." % command_id,
                FAULT_SHELL_NOT_FOUND,
            )
        stdout, stderr, code = result
        resp = ET.Element(_q("rsp", "ReceiveResponse"))
        for name, data in (("stdout", stdout), ("stderr", stderr)):
            if data:
                s = ET.SubElement(resp, _q("rsp", "Stream"))
                s.set("Name", name)
                s.set("CommandId", command_id)
                s.text = base64.b64encode(data).decode("ascii")
            end = ET.SubElement(resp, _q("rsp", "Stream"))
            end.set("Name", name)
            end.set("CommandId", command_id)
            end.set("End", "true")
        state = ET.SubElement(resp, _q("rsp", "CommandState"))
        state.set("CommandId", command_id)
        state.set("State", STATE_DONE)
        ET.SubElement(state, _q("rsp", "ExitCode")).text = str(code)
        return "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/ReceiveResponse", [resp]

    def _signal(self, shell_id, commands, body):
        sig = body.find("rsp:Signal", NS)
        with self.lock:
            commands.pop(sig.get("CommandId") if sig is not None else None, None)
        return "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/SignalResponse", [
            ET.Element(_q("rsp", "SignalResponse"))
        ]


# ---------------------------------------------------------------- fault injection

FAULT_FILE = "fault.json"
_fault_lock = threading.Lock()


def inject_fault(state_dir, script):
    """The fault to inject for this script (consumed), or None: see the module's docstring."""
    path = os.path.join(state_dir, FAULT_FILE)
    with _fault_lock:
        try:
            with open(path, encoding="utf-8") as f:
                fault = json.load(f)
        except (OSError, ValueError):
            return None
        if fault.get("match", "").lower() not in script.lower():
            return None
        fault = dict({"how": "drop", "when": "before", "times": 1}, **fault)
        left = int(fault["times"]) - 1
        if left > 0:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(dict(fault, times=left), f)
        else:
            os.unlink(path)
        with open(os.path.join(state_dir, "winrm.log"), "a", encoding="utf-8") as log:
            log.write("injected fault %s\n" % json.dumps(fault, sort_keys=True))
        return fault


def raise_fault(fault):
    if fault["how"] == "drop":
        raise DropConnection()
    raise WSManFault(
        "Receiver",
        "w:InternalError",
        fault.get("reason")
        or "The request for the Windows Remote Shell failed because the shell was not found on the server: "
        "the WinRM service was restarted (injected by the lab's fault switch).",
        int(fault.get("code") or FAULT_SHELL_NOT_FOUND),
    )


# ---------------------------------------------------------------- HTTP


class Handler(http.server.BaseHTTPRequestHandler):
    # Keep-alive is required: NTLM authenticates the connection, not the request.
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""

    def setup(self):
        super().setup()
        self.ntlm = None  # the pyspnego acceptor of this connection, once started
        self.authenticated = False

    def log_message(self, fmt, *args):
        if self.server.log is not None:
            self.server.log.write("%s %s\n" % (self.address_string(), fmt % args))
            self.server.log.flush()

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _challenge(self):
        """401 naming the schemes this listener offers; the connection's NTLM state resets."""
        self.ntlm = None
        self.authenticated = False
        headers = [("WWW-Authenticate", "Negotiate")]
        if self.server.basic_allowed:
            headers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        self._send(401, b"", headers)

    def _channel_bindings(self):
        # What a client's NTLM binds to over HTTPS (RFC 5929 tls-server-end-point);
        # checked as WinRM's CbtHardeningLevel=Relaxed does when the client sends one.
        if not self.server.tls:
            return None
        digest = hashlib.sha256(self.server.cert_der).digest()  # the lab certificate is signed with SHA-256
        return GssChannelBindings(application_data=b"tls-server-end-point:" + digest)

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].rstrip("/").lower() != "/wsman":
            self._send(404)
            return
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            if not self.server.basic_allowed or not _basic_ok(self.server.users, token.strip()):
                self._challenge()
                return
            # Basic authenticates one request; the connection stays unauthenticated.
            self.ntlm, self.authenticated = None, False
            self._soap(body, basic=True)
            return
        if scheme in ("negotiate", "ntlm"):
            self._ntlm_step(token.strip(), body)
            return
        if not self.authenticated:
            self._challenge()
            return
        self._soap(body)

    def _ntlm_step(self, token, body):
        try:
            data = base64.b64decode(token, validate=True)
        except binascii.Error:
            self._challenge()
            return
        # An NTLM NEGOTIATE message (type 1) starts a new context on this connection.
        if data[:8] == b"NTLMSSP\x00" and data[8:12] == b"\x01\x00\x00\x00":
            self.ntlm = spnego.server(protocol="ntlm", channel_bindings=self._channel_bindings())
            self.authenticated = False
        if self.ntlm is None:
            self._challenge()
            return
        try:
            out = self.ntlm.step(data)
        except Exception:  # noqa: BLE001 - any refusal from the acceptor is a failed logon
            self._challenge()
            return
        if not self.ntlm.complete:
            self._send(401, b"", [("WWW-Authenticate", "Negotiate " + base64.b64encode(out or b"").decode())])
            return
        self.authenticated = True
        self._soap(body)

    def _soap(self, body, basic=False):
        ctype = self.headers.get("Content-Type", "")
        is_encrypted = ctype.lower().startswith("multipart/encrypted")
        if not body:
            # pywinrm's first, empty request only establishes the NTLM context.
            self._send(200)
            return
        if is_encrypted:
            if self.ntlm is None or not self.ntlm.complete:
                self._send(400)
                return
            try:
                body = decrypt_body(self.ntlm, body)
            except Exception:  # noqa: BLE001 - tampered or not ours: WinRM answers 400
                self._send(400)
                return
        elif not self.server.tls and not self.server.allow_unencrypted:
            # AllowUnencrypted=false: a readable SOAP body on HTTP is refused.
            self._send(500)
            return
        try:
            status, reply = self._dispatch(body)
        except DropConnection:
            # An injected fault: the connection goes away mid-operation, no answer at all.
            self.log_message("soap dropped the connection (injected fault)")
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        # Which protection each request had, for tests that check encryption really happened.
        self.log_message("soap auth=%s body=%s status=%d", "basic" if basic else "ntlm",
                         "ntlm-sealed" if is_encrypted else "tls" if self.server.tls else "plain", status)  # fmt: skip
        if is_encrypted:
            ctype_out = 'multipart/encrypted;protocol="%s";boundary="Encrypted Boundary"' % ENC_PROTOCOL.decode()
            reply = encrypt_body(self.ntlm, reply)
        else:
            ctype_out = "application/soap+xml;charset=UTF-8"
        self._send(status, reply, [("Content-Type", ctype_out)])

    def _dispatch(self, body):
        relates_to = None
        try:
            root = ET.fromstring(body)
            header = root.find("s:Header", NS)
            action = (header.findtext("a:Action", "", NS) if header is not None else "").strip()
            relates_to = (header.findtext("a:MessageID", "", NS) if header is not None else "").strip() or None
            out_action, children = self.server.shells.handle(action, root)
            return 200, _envelope(out_action, relates_to, children)
        except ET.ParseError:
            fault = WSManFault(
                "Sender", "w:SchemaValidationError", "The SOAP XML is not well formed.", FAULT_BAD_REQUEST
            )
            return 500, fault_envelope(fault, relates_to)
        except WSManFault as fault:
            return 500, fault_envelope(fault, relates_to)


class WinRMServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, host, users_file, tls=None, allow_unencrypted=False, basic=True, log=None):
        """``tls``: (certificate PEM, key PEM) for HTTPS, or None for HTTP.
        ``basic``: offer Basic (only honoured over HTTPS unless ``allow_unencrypted``)."""
        super().__init__(address, Handler)
        self.users_file = users_file
        self.users = read_users(users_file)
        # pyspnego's acceptor reads its users from this variable; the server owns its process.
        os.environ["NTLM_USER_FILE"] = users_file
        self.shells = Shells(host)
        self.tls = tls is not None
        self.allow_unencrypted = allow_unencrypted
        self.basic_allowed = basic and (self.tls or allow_unencrypted)
        self.log = log
        self.cert_der = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls[0], tls[1])
            with open(tls[0], encoding="ascii") as f:
                self.cert_der = ssl.PEM_cert_to_DER_cert(f.read())
            self.socket = ctx.wrap_socket(self.socket, server_side=True)
