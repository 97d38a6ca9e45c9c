# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connecting to libvirt: options, retries, and libvirt's errors in our words."""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ansible_collections.vmigrate.v2v.plugins.module_utils import _retry
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import MissingLibraryError, PlatformError

try:
    import libvirt

    HAS_LIBVIRT = True
    LIBVIRT_IMPORT_ERROR = None
except ImportError as exc:
    libvirt = None
    HAS_LIBVIRT = False
    LIBVIRT_IMPORT_ERROR = exc

DEFAULT_URI = "qemu:///system"
CONNECT_ATTEMPTS = 3
CONNECT_DELAY = 0.5


def argument_spec(**extra):
    """The connection options (doc fragment vmigrate.v2v.kvm) plus the module's own."""
    spec = dict(
        uri=dict(type="str"),
        username=dict(type="str"),
        password=dict(type="str", no_log=True),
    )
    spec.update(extra)
    return spec


def require_libvirt():
    if not HAS_LIBVIRT:
        raise MissingLibraryError(
            "the Python binding of libvirt (module libvirt) is not importable: %s" % LIBVIRT_IMPORT_ERROR,
            "pip install libvirt-python (needs libvirt-dev and pkg-config) or install python3-libvirt",
        )


def error_code(exc):
    try:
        return exc.get_error_code()
    except Exception:  # noqa: BLE001 - not a libvirtError
        return None


def error_message(exc):
    try:
        return exc.get_error_message() or str(exc)
    except Exception:  # noqa: BLE001
        return str(exc)


# --- connection --------------------------------------------------------------------


def connect(uri=None, username=None, password=None, attempts=CONNECT_ATTEMPTS, delay=CONNECT_DELAY):
    """Open a libvirt connection, retrying briefly: libvirtd may be restarting.

    Refused credentials, permission denials and bad URIs are not retried (they will not heal).
    """
    require_libvirt()
    uri = uri or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
    # libvirt prints every error on stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    fix = "check the URI and that libvirtd (or virtqemud) is running and reachable on the host it names"
    opener = _retry.retry(_connect_transient, "connecting to libvirt at %s" % uri, fix, attempts, delay)(_open)
    try:
        return opener(uri, username, password)
    except libvirt.libvirtError as exc:  # not transient: a URI libvirt does not support
        raise PlatformError("cannot connect to libvirt at %s: %s" % (uri, error_message(exc)), fix, uri=uri) from exc


def _connect_transient(exc):
    return isinstance(exc, libvirt.libvirtError) and error_code(exc) not in (
        libvirt.VIR_ERR_NO_SUPPORT,
        libvirt.VIR_ERR_INVALID_ARG,
    )


def _open(uri, username, password):
    """One attempt; errors that retrying cannot fix become PlatformErrors saying what to change."""
    try:
        if username or password:
            return libvirt.openAuth(uri, _auth(username, password), 0)
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        code = error_code(exc)
        if code in (libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_CANCELLED, libvirt.VIR_ERR_ACCESS_DENIED):
            raise PlatformError(
                "libvirt at %s refused the credentials: %s" % (uri, error_message(exc)),
                "check username/password, or that this user may use %s (polkit, unix socket group)" % uri,
                uri=uri,
            ) from exc
        if _denied(exc):
            raise PlatformError(
                "permission denied: libvirt at %s does not let this user (uid %d) connect: %s"
                % (uri, os.getuid(), error_message(exc)),
                "run as root or as a member of the group that owns the libvirt socket (often 'libvirt'), "
                "allow the user in a polkit rule (org.libvirt.unix.manage), or use a URI this user may "
                "open (qemu:///session)",
                uri=uri,
            ) from exc
        raise


def _denied(exc):
    """True when libvirt refused this user rather than failed to answer (not worth retrying).

    A unix socket without rights for us says "Permission denied"; with polkit access
    control (auth_unix_rw=polkit) a non-root client is checked over the system D-Bus,
    and a host without polkit or D-Bus refuses it with "Unable to get system bus
    connection" or a polkit message, which is an access decision too.
    """
    message = error_message(exc).lower()
    return any(word in message for word in ("permission denied", "polkit", "system bus", "not authorized"))


def _auth(username, password):
    def callback(creds, _opaque):
        for cred in creds:
            if cred[0] == libvirt.VIR_CRED_AUTHNAME:
                cred[4] = username or ""
            elif cred[0] == libvirt.VIR_CRED_PASSPHRASE:
                cred[4] = password or ""
            else:
                return -1
        return 0

    return [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], callback, None]


# --- pools ---------------------------------------------------------------------------

# libvirt refuses to refresh a pool while it builds a volume in it ("pool ... has
# asynchronous jobs running"): two imports into one pool at once (a wave) hit this.
# The build is short (creating a qcow2 or an empty raw volume), so wait and retry.
REFRESH_ATTEMPTS = 8
REFRESH_DELAY = 0.1  # doubles each time: up to ~13 s in all


def _pool_busy(exc):
    return (
        isinstance(exc, libvirt.libvirtError)
        and error_code(exc) == libvirt.VIR_ERR_INTERNAL_ERROR
        and "asynchronous jobs" in error_message(exc)
    )


def refresh_pool(pool, attempts=REFRESH_ATTEMPTS, delay=REFRESH_DELAY, sleep=None):
    """pool.refresh(0), retried while another client is building a volume in the pool."""
    kwargs = {"sleep": sleep} if sleep else {}
    refresh = _retry.retry(
        _pool_busy,
        lambda p: "refreshing storage pool %s (busy with another volume build)" % p.name(),
        "retry when the other import or volume creation in this pool has finished",
        attempts,
        delay,
        **kwargs,
    )(lambda p: p.refresh(0))
    return refresh(pool)


def is_local_uri(uri):
    """True when the hypervisor runs on this host, so its disk paths are ours to read."""
    parsed = urlparse(uri)
    return parsed.hostname in (None, "", "localhost", "127.0.0.1", "::1") and "+ssh" not in parsed.scheme
