# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one interface every hypervisor implements (see docs/architecture.md)."""

from __future__ import annotations


class Platform:
    """A connection to one hypervisor endpoint.

    Subclasses (_kvm.KvmPlatform, _vsphere.VspherePlatform, _hyperv.HypervPlatform)
    take the module's connection parameters and translate between their API and the
    neutral spec and bundle. Methods that change something take ``check_mode`` and,
    in check mode, report what they would do without doing it.
    """

    name = "abstract"

    def __init__(self, params):
        self.params = params

    def close(self):
        """Release the connection; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def list_vms(self):
        raise NotImplementedError

    def find_vm(self, ref):
        raise NotImplementedError

    def describe(self, handle):
        raise NotImplementedError

    def export(self, handle, bundle, mode="auto", check_mode=False, progress=None):
        raise NotImplementedError

    def import_vm(self, bundle, options, check_mode=False):
        raise NotImplementedError

    def verify(self, bundle, target_ref, options):
        raise NotImplementedError
