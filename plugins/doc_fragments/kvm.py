# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the kvm_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  uri:
    description:
      - libvirt connection URI, for example V(qemu:///system) or V(qemu+ssh://root@host/system).
      - If not set, the environment variable E(LIBVIRT_DEFAULT_URI) is used, then V(qemu:///system).
    type: str
  username:
    description:
      - User name for libvirt authentication (SASL, TLS with passwords), when the URI needs one.
      - When O(username) or O(password) is set the connection is opened with C(virConnectOpenAuth).
    type: str
  password:
    description:
      - Password of O(username).
    type: str
notes:
  - Connecting is retried a few times with backoff (libvirtd may be restarting); refused
    credentials, permission denials (socket rights, polkit) and bad URIs fail at once with
    libvirt's error text and what to change.
  - Disks are read and written on the host that runs the module (the conversion host). For a
    remote URI, storage volumes are streamed (C(virStorageVolDownload), C(virStorageVolUpload)).
requirements:
  - libvirt-python
  - qemu-img and qemu-nbd (Debian package qemu-utils)
  - the Python binding of libnbd (Debian package python3-libnbd)
"""
