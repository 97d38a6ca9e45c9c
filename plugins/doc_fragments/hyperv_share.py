# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The share options of the hyperv_* modules that read or write VHDX files."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  share:
    description:
      - Local directory on the conversion host where the Hyper-V host's share is mounted (an SMB
        share mounted with C(mount -t cifs)). VHDX files are read and written there.
      - The module checks that it is a readable (for an import, writable) directory and says how to
        mount it when it is not.
      - If not set, the environment variable E(VMIGRATE_HYPERV_SHARE) is used.
    type: path
    required: true
  share_windows:
    description:
      - The same directory as the Hyper-V host names it - a local path such as V(C:\\VMs) or a UNC path
        such as V(\\\\hv01\\VMs). Every disk a VM uses must lie under it; an import writes its VHDX files
        directly in it.
      - If not set, the environment variable E(VMIGRATE_HYPERV_SHARE_WINDOWS) is used.
    type: str
    required: true
"""
