# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vSphere as a source and a target, through pyvmomi.

VspherePlatform implements platforms/base.py's interface from its parts: connection.py
(login, TLS, tasks, the datastore file service), inventory.py (finding and describing
VMs, provenance), source.py (export: snapshots, CBT, deltas), target.py (import,
what verify reads, the boot check) and power.py (guest shutdown, power off).
"""

from __future__ import annotations

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import Platform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import (
    HAS_PYVMOMI,
    PYVMOMI_IMPORT_ERROR,
    Connection,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.connection import (
    tls_warning as _tls_warning,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.power import VspherePower
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.source import VsphereSource
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.target import VsphereTarget


class VspherePlatform(VsphereSource, VsphereTarget, VspherePower, Platform):
    """One vSphere connection (one datacenter); a source (export) and a target (import, verify)."""

    name = "vsphere"
    boot_check_starts_target = True
    shutdown_needs = "VMware Tools running in the guest"

    @classmethod
    def missing_library(cls):
        return None if HAS_PYVMOMI else ("pyvmomi", str(PYVMOMI_IMPORT_ERROR))

    @classmethod
    def tls_warning(cls, params):
        return _tls_warning(params)

    def __init__(self, params):
        super().__init__(params)
        self.conn = Connection(params)
        self.content = self.conn.content
        self.dc = self.conn.datacenter

    def close(self):
        self.conn.close()
