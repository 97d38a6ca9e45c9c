# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The share: where the conversion host reads and writes the Hyper-V host's VHDX files.

Hyper-V names a disk by a Windows path (``C:\\VMs\\web01.vhdx`` or
``\\\\hv01\\VMs\\web01.vhdx``); the conversion host reaches the same directory as a local
mount point (an SMB share mounted with cifs). ``share_windows`` is the Windows path of
the directory the mount point ``share`` shows; every disk must lie under it.
"""

from __future__ import annotations

import ntpath
import os
import re
import tempfile

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError

SHARE_ARGS = dict(
    share=dict(type="path", required=True, fallback=("env_fallback", ["VMIGRATE_HYPERV_SHARE"])),
    share_windows=dict(type="str", required=True, fallback=("env_fallback", ["VMIGRATE_HYPERV_SHARE_WINDOWS"])),
)


def share_args(required=True):
    """SHARE_ARGS with Ansible's env_fallback (doc fragment vmigrate.v2v.hyperv_share).
    Modules that touch no disk take them optional (and ignore them), so one connection
    dict serves every step (plugins/action/step.py)."""
    from ansible.module_utils.basic import env_fallback

    return {k: dict(v, fallback=(env_fallback, v["fallback"][1]), required=required) for k, v in SHARE_ARGS.items()}


def safe_file_name(name):
    """A VM name as a Windows file name: characters Windows refuses in names become '_', and
    so do '[' ']' '`', which PowerShell's -Path parameters read as wildcards and escapes
    (only -LiteralPath takes them as they are)."""
    return re.sub(r'[\\/:*?"<>|\[\]`\x00-\x1f]', "_", name).strip(" .") or "vm"


class Share:
    def __init__(self, local, windows, host):
        self.local = local
        self.windows = (windows or "").rstrip("\\")
        self.host = host

    def mount_hint(self, write=False):
        unc = self.windows if self.windows.startswith("\\\\") else "\\\\%s\\<share of %s>" % (self.host, self.windows)
        return (
            "mount the SMB share that holds %s on %s%s, e.g. mount -t cifs //%s %s -o username=USER,domain=DOMAIN "
            "(cifs-utils), or correct the options share / share_windows"
            % (self.windows, self.local, " read-write" if write else "", unc.strip("\\").replace("\\", "/"), self.local)
        )

    def check(self, write=False):
        """The mount point is there and readable (and writable when ``write``)."""
        if not self.windows:
            raise InputError("share_windows is empty", "give the Windows path of the share, e.g. C:\\VMs")
        if not os.path.isdir(self.local) or not os.access(self.local, os.R_OK | os.X_OK):
            raise InputError(
                "the share %s (Hyper-V's %s) is not a readable directory on the conversion host"
                % (self.local, self.windows),
                self.mount_hint(write),
            )
        if write:
            try:
                with tempfile.NamedTemporaryFile(dir=self.local, prefix=".vmigrate-write-test-"):
                    pass
            except OSError as exc:
                raise InputError(
                    "the share %s (Hyper-V's %s) is not writable from the conversion host: %s"
                    % (self.local, self.windows, exc.strerror or exc),
                    self.mount_hint(write=True),
                ) from exc

    def to_local(self, win_path, what):
        """The local file of a Windows path under the share; InputError naming ``what``
        (a VM's disk) when it lies elsewhere."""
        root = self.windows.lower() + "\\"
        if not win_path or not win_path.lower().startswith(root):
            raise InputError(
                "%s is %s, not under the share %s" % (what, win_path, self.windows),
                "give share_windows (and share, its mount point) for the directory that holds it",
            )
        parts = [p for p in win_path[len(root) :].split("\\") if p]
        if any(p in (".", "..") for p in parts):
            raise InputError("%s has the path %s, which leaves the share" % (what, win_path), "move the disk")
        return os.path.join(self.local, *parts)

    def to_windows(self, file_name):
        return ntpath.join(self.windows, file_name)
