# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the vsphere_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - vCenter or ESXi host name or address.
      - If not set, the environment variable E(VMWARE_HOST) is used.
    type: str
    required: true
  username:
    description:
      - User name to log in with.
      - If not set, the environment variable E(VMWARE_USER) is used.
    type: str
    required: true
    aliases: [user]
  password:
    description:
      - Password of O(username).
      - If not set, the environment variable E(VMWARE_PASSWORD) is used.
    type: str
    required: true
    aliases: [pass, pwd]
  port:
    description:
      - HTTPS port of the vSphere API and of the datastore file service.
      - If not set, the environment variable E(VMWARE_PORT) is used.
    type: int
    default: 443
  validate_certs:
    description:
      - Verify the server's TLS certificate (chain and host name).
      - Keep this true; to trust a private CA give O(ca_path), to trust one
        certificate give O(thumbprint).
      - If not set, the environment variable E(VMWARE_VALIDATE_CERTS) is used.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA (or CA bundle) that signed the server certificate, used
        instead of the system trust store.
      - If not set, the environment variable E(VMIGRATE_CA_PATH) is used.
    type: path
  thumbprint:
    description:
      - SHA-256 (or SHA-1) fingerprint of the server certificate, hex with or without
        colons. When set the connection is refused unless the server presents exactly
        this certificate; with O(validate_certs=false) it is the only check.
    type: str
  datacenter:
    description:
      - Datacenter to work in. Defaults to the only (or first) datacenter.
      - If not set, the environment variable E(VMWARE_DATACENTER) is used.
    type: str
  timeout:
    description:
      - Seconds to wait for one vSphere task (snapshot, create, reconfigure) before
        failing.
    type: int
    default: 3600
  io_timeout:
    description:
      - Seconds one network wait may last (connecting, the TLS handshake, the answer
        to one API call, one read or write of a disk transfer) before the step fails
        with a timeout, so a server that stops answering never hangs the run. A
        timeout is retried a few times like other transient faults.
      - If not set, the environment variable E(VMIGRATE_VSPHERE_IO_TIMEOUT) is used.
    type: int
    default: 300
notes:
  - Transient faults (connection reset, C(TaskInProgress), C(HostCommunication)) are
    retried a few times with backoff; other faults fail at once with vSphere's error text.
requirements:
  - pyvmomi
"""
