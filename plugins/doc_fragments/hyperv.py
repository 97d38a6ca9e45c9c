# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the hyperv_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  hostname:
    description:
      - Name or address of the Hyper-V host, reached over WinRM (WS-Management).
      - If not set, the environment variable E(VMIGRATE_HYPERV_HOST) is used.
    type: str
    required: true
  port:
    description:
      - WinRM port. Defaults to V(5986) for O(scheme=https) and V(5985) for O(scheme=http).
      - If not set, the environment variable E(VMIGRATE_HYPERV_PORT) is used.
    type: int
  username:
    description:
      - User to log in with, a member of Hyper-V Administrators on the host. A local account as
        V(user) or V(HOST\\user); a domain account as V(DOMAIN\\user) or V(user@domain).
      - If not set, the environment variable E(VMIGRATE_HYPERV_USERNAME) is used.
    type: str
    required: true
    aliases: [user]
  password:
    description:
      - Password of O(username).
      - If not set, the environment variable E(VMIGRATE_HYPERV_PASSWORD) is used.
    type: str
    required: true
    aliases: [pass, pwd]
  transport:
    description:
      - WinRM authentication. V(ntlm) works with local and domain accounts; V(kerberos) needs
        a domain, a ticket and C(pywinrm[kerberos]); V(credssp) needs C(pywinrm[credssp]);
        V(basic) only works with local accounts and is refused over O(scheme=http).
      - If not set, the environment variable E(VMIGRATE_HYPERV_TRANSPORT) is used.
    type: str
    choices: [ntlm, kerberos, credssp, basic]
    default: ntlm
  scheme:
    description:
      - V(https) talks to WinRM's HTTPS listener, with the certificate checked
        (O(validate_certs), O(ca_path)). V(http) talks to the HTTP listener; the messages are
        then encrypted by the authentication (O(message_encryption)).
      - If not set, the environment variable E(VMIGRATE_HYPERV_SCHEME) is used.
    type: str
    choices: [https, http]
    default: https
  validate_certs:
    description:
      - Verify the HTTPS listener's certificate (chain and host name). Keep this true; to
        trust a private CA give O(ca_path).
      - If not set, the environment variable E(VMIGRATE_HYPERV_VALIDATE_CERTS) is used.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA (or bundle) that signed the listener's certificate, used instead of
        the system trust store.
      - If not set, the environment variables E(VMIGRATE_HYPERV_CA_PATH), then
        E(VMIGRATE_CA_PATH), are used.
    type: path
  message_encryption:
    description:
      - Encrypt WinRM messages with the authentication's session key. V(auto) encrypts over
        O(scheme=http) (TLS already protects https), V(always) encrypts on both, V(never)
        never does (a host with the default C(AllowUnencrypted=false) then refuses http).
      - Offered by V(ntlm), V(kerberos) and V(credssp); not by V(basic).
      - If not set, the environment variable E(VMIGRATE_HYPERV_MESSAGE_ENCRYPTION) is used.
    type: str
    choices: [auto, always, never]
    default: auto
  operation_timeout:
    description:
      - Seconds one WinRM operation may take before it fails.
    type: int
    default: 120
notes:
  - Every operation is one short PowerShell script with fixed text; names and other values
    are passed as JSON data, never as code. A cmdlet's failure comes back with its own
    message, category and error id.
  - A refused or reset connection is retried a few times with backoff; refused
    credentials and certificate failures fail at once with what to change.
requirements:
  - pywinrm (with requests-ntlm and pyspnego; C(pywinrm[kerberos]) or C(pywinrm[credssp]) for those transports)
"""
