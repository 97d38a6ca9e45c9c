# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM/libvirt as a source and a target, through libvirt-python only.

KvmPlatform implements platforms/base.py's interface from its parts: connection.py
(connecting), inventory.py (finding and describing domains, provenance), source.py
(export: checkpoints, the backup API, deltas), target.py (import, and what verify
reads) and boot.py (the boot check). The target is the journal: import records
provenance in the domain's <metadata>, which makes every step idempotent.
"""

from __future__ import annotations

import os

from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import Platform
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.boot import KvmBoot
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import (
    DEFAULT_URI,
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    connect,
    libvirt,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.source import KvmSource
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.target import KvmTarget


class KvmPlatform(KvmSource, KvmTarget, KvmBoot, Platform):
    """One libvirt connection; a source (export) and a target (import, verify)."""

    name = "kvm"
    shutdown_needs = "an <acpi/> feature in the domain and a guest that acts on the ACPI power button"

    @classmethod
    def missing_library(cls):
        return None if HAS_LIBVIRT else ("libvirt-python", str(LIBVIRT_IMPORT_ERROR))

    def __init__(self, params):
        super().__init__(params)
        self.uri = params.get("uri") or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI
        self.conn = connect(self.uri, params.get("username"), params.get("password"))

    def close(self):
        if getattr(self, "conn", None) is not None:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass
            self.conn = None
