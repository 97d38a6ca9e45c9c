# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The boot check on KVM: a transient twin of the target boots to the guest's serial marker."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.base import BOOT_TIMEOUT
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import (
    error_message,
    is_local_uri,
    libvirt,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import KvmInventory, domain_disks


class KvmBoot(KvmInventory):
    """The boot check (a part of KvmPlatform)."""

    def boot_check(self, vm, options):
        """Boot a twin of the target to the guest's serial marker (see _boot_twin)."""
        return self._boot_twin(vm, options.get("boot_marker"), options.get("boot_timeout") or BOOT_TIMEOUT)

    def _boot_twin(self, dom, marker=None, timeout=BOOT_TIMEOUT):
        """Boot the target's disks and wait for ``marker`` on the serial console.

        The boot runs in a transient twin of the domain whose disks are qcow2 overlays
        backed by the target's (kept beside them, removed afterwards) and whose NICs get
        new MACs: the target's disks stay byte-identical, so digests still verify, and
        the target's own power state is never touched.
        """
        if self._is_running(dom):
            return {"ok": True, "checked": False, "reason": "target is already running"}
        root = ET.fromstring(self.config_xml(dom))
        twin = "%s-vmigrate-bootcheck" % dom.name()
        root.find("name").text = twin
        for tag in ("uuid", "metadata", "title", "description"):
            el = root.find(tag)
            if el is not None:
                root.remove(el)
        overlays = []
        devices = root.find("devices")
        for iface in devices.findall("interface"):
            mac = iface.find("mac")
            if mac is not None:
                iface.remove(mac)
        for nv in root.findall("os/nvram"):
            root.find("os").remove(nv)
        try:
            for disk, rec in zip(
                [d for d in devices.findall("disk") if d.get("device", "disk") == "disk"],
                domain_disks(self.config_xml(dom), self.conn),
                strict=True,
            ):
                overlay = "%s.bootcheck-%s.qcow2" % (rec["path"], uuidlib.uuid4().hex[:8])
                _disk._qemu_img(
                    ["create", "-q", "-f", "qcow2", "-b", rec["path"], "-F", rec["format"] or "raw", overlay],
                    "cannot create a boot-check overlay for %s" % rec["path"],
                )
                overlays.append(overlay)
                for child in list(disk):
                    if child.tag in ("source", "driver", "backingStore"):
                        disk.remove(child)
                disk.set("type", "file")
                ET.SubElement(disk, "driver", name="qemu", type="qcow2")
                ET.SubElement(disk, "source", file=overlay)
            # The serial console goes to a file (written by virtlogd) that we poll: no
            # console stream to hold open, and nothing printed before we look is lost.
            log = "/var/log/libvirt/qemu/%s-serial.log" % twin
            for el in devices.findall("serial") + devices.findall("console"):
                devices.remove(el)
            serial = ET.SubElement(devices, "serial", type="pty")
            ET.SubElement(serial, "log", file=log, append="off")
            ET.SubElement(serial, "target", port="0")
            console = ET.SubElement(devices, "console", type="pty")
            ET.SubElement(console, "target", type="serial", port="0")
            return self._boot_and_watch(ET.tostring(root, encoding="unicode"), twin, log, marker, timeout)
        finally:
            for path in overlays:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _boot_and_watch(self, xml, twin, log, marker, timeout):
        if not is_local_uri(self.uri):
            return {"ok": False, "checked": False, "reason": "the boot check reads the serial log: local URIs only"}
        started = time.monotonic()
        stale = self.lookup(twin)
        if stale is not None:  # left by a run that was killed
            stale.destroy()
        try:
            tdom = self.conn.createXML(xml, 0)
        except libvirt.libvirtError as exc:
            return {"ok": False, "checked": True, "reason": "the target does not start: %s" % error_message(exc)}
        output = b""
        found = False
        want = marker.encode() if marker else None
        try:
            while time.monotonic() - started < timeout:
                time.sleep(0.5)
                try:
                    with open(log, "rb") as fh:
                        output = fh.read()
                except OSError:
                    continue
                if want and want in output:
                    found = True
                    break
                if not tdom.isActive():
                    break
                if not want and time.monotonic() - started > 10:
                    found = True  # no marker asked for: running for 10 s counts as booted
                    break
        finally:
            try:
                tdom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                os.unlink(log)
            except OSError:
                pass
        tail = output.decode("utf-8", "replace")[-2000:]
        seconds = round(time.monotonic() - started, 1)
        if found:
            return {"ok": True, "checked": True, "marker": marker, "seconds": seconds, "console_tail": tail}
        return {
            "ok": False,
            "checked": True,
            "marker": marker,
            "seconds": seconds,
            "reason": "marker %r not seen on the serial console within %d s" % (marker, timeout),
            "console_tail": tail,
        }
