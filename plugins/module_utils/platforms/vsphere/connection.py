# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connecting to vSphere through pyvmomi: options, TLS (CA file or pinned thumbprint),
retries of transient faults, tasks, and the datastore file service.

Disk bytes travel over HTTPS and need no extra library: a new VM's disks are POSTed as
streamOptimized VMDKs to the device URLs of an ImportVApp lease (``upload_to_lease``);
other reads and writes use the datastore file service (``/folder/<path>?dcPath=&dsName=``):
GET with Range to read (only the allocated areas ``allocated_areas`` gives, where it
can), PUT to write whole files. NBD through nbdkit's VDDK plugin would write ranges on
real vSphere but needs VMware's proprietary VDDK, which users must provide themselves.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import time
import urllib.parse

from ansible_collections.vmigrate.v2v.plugins.module_utils import _retry
from ansible_collections.vmigrate.v2v.plugins.module_utils._args import with_env_fallback
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError, MissingLibraryError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.disk import Extent

try:
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim, vmodl

    HAS_PYVMOMI = True
    PYVMOMI_IMPORT_ERROR = None
except ImportError as exc:
    vim = vmodl = SmartConnect = Disconnect = None
    HAS_PYVMOMI = False
    PYVMOMI_IMPORT_ERROR = exc

HTTP_CHUNK = 4 * 1024 * 1024
RETRY_ATTEMPTS = 4
RETRY_DELAY = 0.5

CONNECTION_ARGS = dict(
    hostname=dict(type="str", required=True, fallback=("env_fallback", ["VMWARE_HOST"])),
    username=dict(type="str", required=True, aliases=["user"], fallback=("env_fallback", ["VMWARE_USER"])),
    password=dict(
        type="str", required=True, no_log=True, aliases=["pass", "pwd"], fallback=("env_fallback", ["VMWARE_PASSWORD"])
    ),
    port=dict(type="int", default=443, fallback=("env_fallback", ["VMWARE_PORT"])),
    validate_certs=dict(type="bool", default=True, fallback=("env_fallback", ["VMWARE_VALIDATE_CERTS"])),
    ca_path=dict(type="path", fallback=("env_fallback", ["VMIGRATE_CA_PATH"])),
    thumbprint=dict(type="str"),
    datacenter=dict(type="str", fallback=("env_fallback", ["VMWARE_DATACENTER"])),
    timeout=dict(type="int", default=3600),
    io_timeout=dict(type="int", default=300, fallback=("env_fallback", ["VMIGRATE_VSPHERE_IO_TIMEOUT"])),
)


def argument_spec(**extra):
    """The connection options (doc fragment vmigrate.v2v.vsphere) plus the module's own."""
    return with_env_fallback(CONNECTION_ARGS, extra)


def require_pyvmomi():
    if not HAS_PYVMOMI:
        raise MissingLibraryError(
            "the Python library pyvmomi is not installed on the conversion host (%s)" % PYVMOMI_IMPORT_ERROR,
            "pip install pyvmomi",
        )


# ---------------------------------------------------------------- retries and tasks


def _transient(exc):
    """Faults worth another try: the network blinked or vSphere was busy."""
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ConnectionRefusedError)):
        return True
    # A connection that ended without TLS close_notify or mid-body: the peer went away.
    if isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead, ssl.SSLEOFError)):
        return True
    if isinstance(exc, socket.timeout):
        return True
    if HAS_PYVMOMI and isinstance(exc, (vim.fault.TaskInProgress, vmodl.fault.HostCommunication)):
        return True
    return False


def retry(what, attempts=RETRY_ATTEMPTS, delay=RETRY_DELAY, sleep=time.sleep):
    """_retry.retry with vSphere's transient faults and advice."""
    fix = "check that vSphere is reachable and not overloaded, then re-run"
    return _retry.retry(_transient, what, fix, attempts=attempts, delay=delay, sleep=sleep)


def fault_text(fault):
    """vSphere's own words for a fault: its message, else its type."""
    if fault is None:
        return "unknown error"
    name = type(fault).__name__
    msg = getattr(fault, "msg", None) or getattr(fault, "localizedMessage", None) or ""
    if not msg and getattr(fault, "faultMessage", None):
        msg = "; ".join(m.message for m in fault.faultMessage if getattr(m, "message", None))
    return "%s (%s)" % (msg, name) if msg and msg != name else name


def get_props(obj, paths):
    """Properties of one managed object through the PropertyCollector: {path: value}.

    Unset properties are simply absent. Used instead of pyvmomi's attribute access for
    properties that may be unset (vm.snapshot), which the simulator's Fetch fails on,
    and for task state (the simulator's FileManager tasks name a non-entity as entity,
    which pyvmomi refuses when it reads the whole TaskInfo).
    """
    pc = vim.PropertyCollector("propertyCollector", obj._stub)
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths))],
    )
    props = {}
    for item in pc.RetrieveContents([spec]) or []:
        for prop in item.propSet:
            props[prop.name] = prop.val
    return props


def _task_state(task):
    props = get_props(task, ["info.state", "info.error", "info.result"])
    return props.get("info.state"), props.get("info.error"), props.get("info.result")


def wait_task(task, what, timeout=3600, poll=0.1, clock=time.monotonic, sleep=time.sleep):
    """Wait for a vSphere task; return its result or raise PlatformError with its error text."""
    deadline = clock() + timeout
    while True:
        state, error, result = _task_state(task)
        if state == vim.TaskInfo.State.success:
            return result
        if state == vim.TaskInfo.State.error:
            raise PlatformError(
                "vSphere task %s failed: %s" % (what, fault_text(error)),
                "read the error above; the task is %s in vCenter's task list" % task._moId,
                fault=type(error).__name__,
            )
        if clock() > deadline:
            raise PlatformError(
                "vSphere task %s did not finish in %d s (state %s)" % (what, timeout, state),
                "raise the timeout option or look at task %s in vCenter" % task._moId,
            )
        sleep(poll)
        poll = min(poll * 2, 2.0)


# ---------------------------------------------------------------- connection


def _norm_thumbprint(text):
    return re.sub(r"[^0-9a-f]", "", (text or "").lower())


def tls_warning(params):
    """The warning a module returns when certificate checks are off, else None. One text
    per host, with no secret in it: Ansible shows an identical warning once per run."""
    if params.get("validate_certs", True) or params.get("thumbprint"):
        return None  # a pinned thumbprint is the check (doc fragment vmigrate.v2v.vsphere)
    return (
        "TLS certificate verification is off for vSphere %s (validate_certs=false): anyone on the "
        "network path can pose as the server and read the password and the disk data sent to it. "
        "Fix: set validate_certs=true and give ca_path (the PEM CA that signed the server certificate), "
        "or pin the server certificate with thumbprint" % params.get("hostname")
    )


class PinnedContext(ssl.SSLContext):
    """An SSL context that checks the server certificate against a pinned thumbprint in
    every handshake, before a byte of HTTP is sent. pyVmomi's SOAP connections (the one
    that logs in included) and our datastore transfers all wrap their sockets with it,
    so the password never goes to a server that does not hold the pinned certificate.
    (pyVmomi's own thumbprint argument is checked only when CA verification fails, so
    with validate_certs=false it would not be checked at all.)"""

    pin = None
    pin_host = None

    def wrap_socket(self, sock, *args, **kwargs):
        tls = super().wrap_socket(sock, *args, **kwargs)
        try:
            check_thumbprint(tls.getpeercert(binary_form=True), self.pin, self.pin_host)
        except Exception:
            tls.close()
            raise
        return tls


def ssl_context(validate_certs=True, ca_path=None, thumbprint=None, host=None):
    if thumbprint:
        _norm_pin(thumbprint)  # refuse a malformed pin before connecting
        ctx = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.pin, ctx.pin_host = thumbprint, host
        if validate_certs:
            ctx.load_default_certs() if not ca_path else _load_ca(ctx, ca_path)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if not validate_certs:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_path and not os.path.exists(ca_path):
        raise InputError(
            "ca_path %s does not exist" % ca_path, "give the PEM file of the CA that signed vCenter's certificate"
        )
    try:
        return ssl.create_default_context(cafile=ca_path)
    except ssl.SSLError as exc:
        raise InputError("ca_path %s is not a PEM CA file: %s" % (ca_path, exc), "give a PEM file") from exc


def _load_ca(ctx, ca_path):
    if not os.path.exists(ca_path):
        raise InputError(
            "ca_path %s does not exist" % ca_path, "give the PEM file of the CA that signed vCenter's certificate"
        )
    try:
        ctx.load_verify_locations(cafile=ca_path)
    except ssl.SSLError as exc:
        raise InputError("ca_path %s is not a PEM CA file: %s" % (ca_path, exc), "give a PEM file") from exc


def _norm_pin(expected):
    want = _norm_thumbprint(expected)
    if len(want) not in (40, 64):
        raise InputError("thumbprint %r is neither SHA-256 nor SHA-1 hex" % expected, "give 64 (or 40) hex digits")
    return want


def check_thumbprint(der_cert, expected, host):
    """Compare the server certificate with a pinned SHA-256 or SHA-1 fingerprint."""
    want = _norm_pin(expected)
    algo = hashlib.sha1 if len(want) == 40 else hashlib.sha256
    got = algo(der_cert).hexdigest()
    if got != want:
        raise PlatformError(
            "the certificate of %s has fingerprint %s, not the pinned thumbprint" % (host, got),
            "check you reach the right server; update thumbprint only if its certificate was really replaced",
        )


def _tls_error(host, port, exc):
    return PlatformError(
        "TLS verification of %s:%s failed: %s" % (host, port, getattr(exc, "verify_message", None) or exc),
        "give ca_path (the PEM CA that signed the server certificate) or thumbprint; "
        "validate_certs=false disables verification and is unsafe",
    )


class Connection:
    """A logged-in ServiceInstance plus the HTTPS settings for datastore transfers."""

    def __init__(self, params):
        require_pyvmomi()
        self.host = params["hostname"]
        self.port = int(params.get("port") or 443)
        self.user = params["username"]
        self.timeout = int(params.get("timeout") or 3600)
        # Bounds every wait on the network (connect, TLS handshake, a SOAP answer, an HTTP
        # read or write): a server that accepts and never answers ends the step.
        self.io_timeout = int(params.get("io_timeout") or os.environ.get("VMIGRATE_VSPHERE_IO_TIMEOUT") or 300)
        self.thumbprint = params.get("thumbprint")
        self.ssl = ssl_context(
            params.get("validate_certs", True), params.get("ca_path") or None, self.thumbprint, self.host
        )
        self.si = None
        self.si = self._login(params["password"])
        self.content = self.si.RetrieveContent()
        self.datacenter = self._datacenter(params.get("datacenter"))

    @retry("connecting to vSphere")
    def _login(self, password):
        # SmartConnect's version discovery opens HTTPS connections without a timeout: the
        # default socket timeout bounds them (a module is one single-threaded process).
        before = socket.getdefaulttimeout()
        socket.setdefaulttimeout(self.io_timeout)
        try:
            return SmartConnect(
                host=self.host,
                port=self.port,
                user=self.user,
                pwd=password,
                sslContext=self.ssl,
                httpConnectionTimeout=self.io_timeout,
                connectionPoolTimeout=-1,
            )
        except TimeoutError as exc:  # not retried: a hung server would only hang longer
            raise PlatformError(
                "vSphere at %s:%s did not answer in %d s (io_timeout) while connecting"
                % (self.host, self.port, self.io_timeout),
                "check the server is up and answering (not hung or overloaded); raise io_timeout "
                "(or VMIGRATE_VSPHERE_IO_TIMEOUT) for a slow link",
            ) from exc
        except vim.fault.InvalidLogin as exc:
            raise PlatformError(
                "vSphere login failed for user %s at %s: check username/password" % (self.user, self.host),
                "give the right username and password (or VMWARE_USER / VMWARE_PASSWORD)",
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise _tls_error(self.host, self.port, exc) from exc
        except (ConnectionRefusedError, socket.gaierror) as exc:
            raise PlatformError(
                "cannot reach vSphere at %s:%s: %s" % (self.host, self.port, exc),
                "check hostname and port, and that the server is up",
            ) from exc
        finally:
            socket.setdefaulttimeout(before)

    def _datacenter(self, name):
        dcs = [e for e in self.content.rootFolder.childEntity if isinstance(e, vim.Datacenter)]
        if name:
            for dc in dcs:
                if dc.name == name:
                    return dc
            raise InputError(
                "datacenter %r not found at %s" % (name, self.host),
                "use one of: %s" % ", ".join(dc.name for dc in dcs),
            )
        if not dcs:
            raise PlatformError("%s has no datacenter" % self.host, "create one or connect to another vCenter")
        return dcs[0]

    def close(self):
        if self.si is not None:
            try:
                Disconnect(self.si)
            except Exception:  # closing must not hide the error that got us here
                pass
            self.si = None

    # -- datastore file service

    def datastore(self, name):
        for ds in self.datacenter.datastore:
            if ds.name == name:
                return ds
        raise InputError(
            "datastore %r not found in datacenter %s" % (name, self.datacenter.name),
            "use one of: %s" % ", ".join(ds.name for ds in self.datacenter.datastore),
        )

    def folder_url(self, ds_name, path):
        query = urllib.parse.urlencode({"dcPath": self.datacenter.name, "dsName": ds_name})
        return "/folder/%s?%s" % (urllib.parse.quote(path), query)

    def http(self):
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl, timeout=self.io_timeout)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise _tls_error(self.host, self.port, exc) from exc
        if self.thumbprint:
            check_thumbprint(conn.sock.getpeercert(binary_form=True), self.thumbprint, self.host)
        return conn

    def _headers(self, extra=None):
        # pyvmomi's session cookie authorises the datastore file service too.
        headers = {"Cookie": self.si._stub.cookie}
        headers.update(extra or {})
        return headers


def split_ds_path(path):
    """'[ds] dir/file.vmdk' -> ('ds', 'dir/file.vmdk')."""
    m = re.match(r"^\[([^\]]+)\]\s*(.*)$", path or "")
    if not m:
        raise InputError("%r is not a datastore path like '[datastore] dir/file'" % (path,), "give a datastore path")
    return m.group(1), m.group(2)


def flat_name(vmdk_path):
    """The extent of a monolithicFlat descriptor: 'x.vmdk' -> 'x-flat.vmdk'."""
    return re.sub(r"\.vmdk$", "", vmdk_path) + "-flat.vmdk"


class DatastoreFile:
    """Random-access reads of one datastore file over HTTPS Range requests.

    Presents the guest-reader shape the engine uses (.size, .extents(), .pread(),
    .readinto()), so the engine's digest and copy code reads vSphere disks too.
    ``bytes_read`` counts what really came over the wire. ``allocated`` ([(start,
    length)], from vSphere's changed block tracking) makes extents() give only those
    ranges as data and the rest as zeros; ``allocation`` says where the extents came from.
    """

    zero_copy = False

    def __init__(self, conn, ds_name, path, size=None, allocated=None, allocation=None):
        self.conn = conn
        self.ds_name = ds_name
        self.path = "[%s] %s" % (ds_name, path)
        self.url = conn.folder_url(ds_name, path)
        self._http = None
        self.bytes_read = 0
        self.size = size if size is not None else self._head()
        self.allocated = allocated
        self.allocation = allocation

    def _client(self):
        if self._http is None:
            self._http = self.conn.http()
        return self._http

    def _request(self, method, headers):
        try:
            client = self._client()
            client.request(method, self.url, headers=self.conn._headers(headers))
            return client.getresponse()
        except (http.client.HTTPException, OSError):
            self.close()  # a broken keep-alive connection is not reused
            raise

    def where(self):
        """The file and the host it is read from, for error messages."""
        return "%s from %s:%s" % (self.path, self.conn.host, self.conn.port)

    @retry(lambda self, *a: "reading the size of " + self.where())
    def _head(self):
        resp = self._request("HEAD", {})
        resp.read()
        if resp.status == 404:
            raise PlatformError("datastore file %s does not exist" % self.path, "check the VM's disk backing")
        if resp.status != 200:
            raise PlatformError("HEAD %s answered HTTP %d" % (self.path, resp.status), "check the datastore")
        return int(resp.getheader("Content-Length") or 0)

    data_end = None  # set when the file is shorter than the disk: zeros after it

    def extents(self, meta_context=None):
        """The allocated ranges as data, the rest zeros; without them one data extent
        (the file service does not tell holes from data)."""
        if self.allocated is not None:
            return areas_to_extents(self.allocated, self.size)
        end = self.size if self.data_end is None else self.data_end
        out = [Extent(0, end, True, False)] if end else []
        if end < self.size:
            out.append(Extent(end, self.size - end, False, True))
        return out

    def pread(self, length, offset):
        try:
            if self.data_end is not None and offset + length > self.data_end:
                inside = max(0, self.data_end - offset)
                return (self._get(inside, offset) if inside else b"") + bytes(length - inside)
            return self._get(length, offset)
        except (http.client.HTTPException, OSError) as exc:  # not transient, so not retried
            raise PlatformError(
                "reading %s at byte %d failed: %s: %s" % (self.where(), offset, type(exc).__name__, exc),
                "check that vSphere is up and reachable, then re-run",
            ) from exc

    @retry(lambda self, length, offset: "reading %s at byte %d" % (self.where(), offset))
    def _get(self, length, offset):
        if length <= 0:
            return b""
        resp = self._request("GET", {"Range": "bytes=%d-%d" % (offset, offset + length - 1)})
        try:
            data = resp.read()
        except (http.client.HTTPException, OSError):
            self.close()  # a body cut or timed out leaves the connection unusable for the retry
            raise
        if resp.status not in (200, 206):
            raise PlatformError(
                "reading %s at %d answered HTTP %d" % (self.path, offset, resp.status),
                "check the file exists and the session is valid",
            )
        if resp.status == 200:  # server ignored Range: take our slice
            data = data[offset : offset + length]
        if len(data) != length:
            raise PlatformError(
                "short read of %s at %d: %d of %d bytes" % (self.path, offset, len(data), length),
                "re-run; if it persists, check the datastore",
            )
        self.bytes_read += len(data)
        return data

    def readinto(self, buf, offset):
        data = self.pread(len(buf), offset)
        buf[: len(data)] = data
        return len(data)

    def close(self):
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def put_file(conn, ds_name, path, source, size, progress=None):
    """PUT ``size`` bytes to a datastore file, streamed in chunks.

    ``source`` is a bytes object, a local file path, or a callable(offset, length) ->
    bytes. The file service has no partial write, so a file is always sent whole.
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)

        def source(off, n):  # noqa: F811 - the bytes become a reader
            return data[off : off + n]

    elif isinstance(source, str):
        local = source

        def source(off, n):  # noqa: F811
            with open(local, "rb") as fh:
                fh.seek(off)
                return fh.read(n)

    url = conn.folder_url(ds_name, path)
    client = None
    sent = 0
    try:
        client = conn.http()
        client.putrequest("PUT", url)
        for key, value in conn._headers(
            {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        ).items():
            client.putheader(key, value)
        client.endheaders()
        while sent < size:
            n = min(HTTP_CHUNK, size - sent)
            chunk = source(sent, n)
            if len(chunk) != n:
                raise PlatformError("the source of %s gave %d bytes at %d, not %d" % (path, len(chunk), sent, n))
            client.send(chunk)
            sent += n
            if progress is not None:
                progress.advance(n)
        resp = client.getresponse()
        body = resp.read()
    except (http.client.HTTPException, OSError) as exc:
        # The file service cannot resume a PUT, so this is not retried here: the caller
        # cleans up and a re-run sends the file again.
        raise PlatformError(
            "upload of [%s] %s to %s:%s failed after %d of %d bytes: %s: %s"
            % (ds_name, path, conn.host, conn.port, sent, size, type(exc).__name__, exc),
            "check vSphere is up and the datastore has space, then re-run (the upload starts again)",
        ) from exc
    finally:
        if client is not None:
            client.close()
    if resp.status not in (200, 201, 204):
        raise PlatformError(
            "upload of [%s] %s answered HTTP %d: %s"
            % (ds_name, path, resp.status, body[:200].decode("utf-8", "replace")),
            "check the datastore exists, has free space, and the user may write to it",
        )
    return sent


def get_file(conn, ds_name, path):
    """A small datastore file's bytes, or None when it does not exist."""
    client = conn.http()
    try:
        client.request("GET", conn.folder_url(ds_name, path), headers=conn._headers())
        resp = client.getresponse()
        body = resp.read()
    finally:
        client.close()
    if resp.status == 404:
        return None
    if resp.status != 200:
        raise PlatformError("reading [%s] %s answered HTTP %d" % (ds_name, path, resp.status), "check the datastore")
    return body


def delete_file(conn, ds_path, ignore_missing=True):
    fm = conn.content.fileManager
    try:
        wait_task(
            fm.DeleteDatastoreFile_Task(name=ds_path, datacenter=conn.datacenter), "delete " + ds_path, conn.timeout
        )
    except PlatformError as exc:
        if not (ignore_missing and exc.details.get("fault") == "vim.fault.FileNotFound"):
            raise


def datastore_dir_exists(conn, ds_name, path):
    """Whether the directory ``[ds_name] path`` exists (the datastore browser lists it)."""
    ds = conn.datastore(ds_name)
    ds_path = "[%s] %s" % (ds_name, path)
    spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*"])
    try:
        task = ds.browser.SearchDatastore_Task(datastorePath=ds_path, searchSpec=spec)
        wait_task(task, "list " + ds_path, conn.timeout)
    except PlatformError as exc:
        if exc.details.get("fault") == "vim.fault.FileNotFound":
            return False
        raise
    return True


def areas_to_extents(areas, size):
    """[(start, length)] data ranges (sorted, may touch) -> Extents covering 0..size, the
    gaps as zero extents; ranges past ``size`` are cut."""
    out = []
    pos = 0
    for start, length in sorted(areas):
        start, end = max(start, pos), min(start + length, size)
        if end <= start:
            continue
        if start > pos:
            out.append(Extent(pos, start - pos, False, True))
        if out and out[-1].data and out[-1].start + out[-1].length == start:
            out[-1] = Extent(out[-1].start, end - out[-1].start, True, False)
        else:
            out.append(Extent(start, end - start, True, False))
        pos = end
    if pos < size:
        out.append(Extent(pos, size - pos, False, True))
    return out


def allocated_areas(vm, device_key, capacity):
    """The allocated areas of a powered-off VM's disk: QueryChangedDiskAreas with changeId
    "*" and no snapshot (vSphere allows that for a powered-off VM with changed block
    tracking on), paged through the disk. Raises vmodl.MethodFault when vSphere cannot say.
    """
    areas = []
    offset = 0
    while offset < capacity:
        info = vm.QueryChangedDiskAreas(snapshot=None, deviceKey=device_key, startOffset=offset, changeId="*")
        areas.extend((a.start, a.length) for a in info.changedArea or [])
        if info.length <= 0:
            break
        offset = info.startOffset + info.length
    return areas


STREAM_VMDK_TYPE = "application/x-vnd.vmware-streamVmdk"
LEASE_PROGRESS_EVERY = 30  # seconds; vSphere ends an import lease left without news for ~5 min


def upload_to_lease(conn, device_url, local, what, lease=None, progress=None, total=None, done=0, clock=time.monotonic):
    """POST a streamOptimized VMDK file (the disk ``what``, a datastore path) to an import
    lease's device URL; return the bytes sent.

    The URL names the ESXi host that writes the disk; '*' stands for the host we are
    connected to. Another host is trusted by the lease's SHA-1 thumbprint of its
    certificate (vCenter vouches for it), as ovftool and govc do. ``lease`` gets
    HttpNfcLeaseProgress (percent of ``total`` bytes, ``done`` before this file) so
    vSphere keeps it open during long uploads.
    """
    url = urllib.parse.urlsplit(device_url.url)
    host, port = url.hostname, url.port or 443
    if host == "*" or (host == conn.host and port == conn.port):
        client = conn.http()
        host, port = conn.host, conn.port
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if not device_url.sslThumbprint:
            ctx = conn.ssl
        client = http.client.HTTPSConnection(host, port, context=ctx, timeout=conn.io_timeout)
        client.connect()
        if device_url.sslThumbprint:
            check_thumbprint(client.sock.getpeercert(binary_form=True), device_url.sslThumbprint, host)
    target = url.path + ("?" + url.query if url.query else "")
    size = os.path.getsize(local)
    sent = 0
    told = clock()
    try:
        client.putrequest("POST", target)
        for key, value in conn._headers({"Content-Type": STREAM_VMDK_TYPE, "Content-Length": str(size)}).items():
            client.putheader(key, value)
        client.endheaders()
        with open(local, "rb") as fh:
            while True:
                chunk = fh.read(HTTP_CHUNK)
                if not chunk:
                    break
                client.send(chunk)
                sent += len(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
                if lease is not None and total and clock() - told >= LEASE_PROGRESS_EVERY:
                    lease.HttpNfcLeaseProgress(percent=min(99, int(100 * (done + sent) / total)))
                    told = clock()
        resp = client.getresponse()
        body = resp.read()
    except (http.client.HTTPException, OSError) as exc:
        raise PlatformError(
            "upload of disk %s to %s:%s failed after %d of %d bytes: %s: %s"
            % (what, host, port, sent, size, type(exc).__name__, exc),
            "check vSphere is up and the datastore has space, then re-run (the import starts again)",
        ) from exc
    finally:
        client.close()
    if resp.status not in (200, 201, 204):
        raise PlatformError(
            "upload of disk %s to %s:%s answered HTTP %d: %s"
            % (what, host, port, resp.status, body[:200].decode("utf-8", "replace").strip()),
            "check the datastore has space and the user may import VMs (VApp.Import privilege)",
        )
    return sent


def wait_lease(lease, what, timeout=3600, poll=0.1, clock=time.monotonic, sleep=time.sleep):
    """Wait until an HttpNfcLease is ready; return its info, or raise with its error."""
    deadline = clock() + timeout
    while True:
        props = get_props(lease, ["state", "error", "info"])
        state = props.get("state")
        if state == vim.HttpNfcLease.State.ready:
            return props.get("info")
        if state == vim.HttpNfcLease.State.error:
            raise PlatformError(
                "vSphere could not start %s: %s" % (what, fault_text(props.get("error"))),
                "read the error above (free space, permissions, the VM's configuration)",
            )
        if state == vim.HttpNfcLease.State.done:
            raise PlatformError("the import lease of %s ended before any upload" % what, "re-run the import")
        if clock() > deadline:
            raise PlatformError(
                "the import lease of %s was not ready in %d s (state %s)" % (what, timeout, state),
                "raise the timeout option or look at the task in vCenter",
            )
        sleep(poll)
        poll = min(poll * 2, 2.0)
