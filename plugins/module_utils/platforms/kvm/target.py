# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM as a target: import into storage volumes and a domain (create, bring up to
date, rewrite, replace), and the primitives verify reads the target with."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError, PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import atomic_file
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress, human_bytes
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.connection import (
    error_message,
    is_local_uri,
    libvirt,
    refresh_pool,
)
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.inventory import (
    KvmInventory,
    domain_disks,
    find_pool,
    write_provenance,
)


def domain_type_for(conn):
    """'kvm' when the host offers hardware virtualisation to libvirt, else 'qemu' (TCG)."""
    caps = ET.fromstring(conn.getCapabilities())
    for guest in caps.findall("./guest"):
        arch = guest.find("arch")
        if arch is not None and arch.get("name") == "x86_64":
            if any(d.get("type") == "kvm" for d in arch.findall("domain")):
                return "kvm"
    return "qemu"


def with_cpu_mode(xml_text, mode):
    """Set the <cpu> mode; 'default' leaves the model to QEMU (qemu64 with KVM).

    Some hosts (nested KVM on AMD among them) cannot start host-passthrough or
    host-model guests ("failed to set MSR 0x10a"), so the choice is the user's.
    """
    if not mode:
        return xml_text
    root = ET.fromstring(xml_text)
    cpu = root.find("cpu")
    if cpu is None:
        cpu = ET.SubElement(root, "cpu")
    for attr in ("mode", "check", "migratable", "match"):
        cpu.attrib.pop(attr, None)
    for model in cpu.findall("model"):
        cpu.remove(model)
    if mode != "default":
        cpu.set("mode", mode)
    return ET.tostring(root, encoding="unicode")


def _bundle_path(bundle_dir, rel):
    return rel if os.path.isabs(rel) else os.path.join(bundle_dir, rel)


def _check_data(bundle_dir, disk, path, fmt, name):
    """Refuse a bundle whose disk data does not match its own block digests (a bit flipped
    in a disk or delta file): the image just written at ``path`` (a new volume, or the file
    about to be uploaded) is read back and hashed, before the domain is defined. The check
    is the engine's, shared with the vSphere and Hyper-V imports."""
    _blocks.check_disk_data(bundle_dir, disk, path, fmt, name, left="no volume or domain left")


def _xml_from_spec(spec, disks, provenance, domain_type):
    return _libvirt_xml.libvirt_xml_from_spec(spec, disks, provenance=provenance, domain_type=domain_type)


class _VolumeJournal:
    """The volumes an import is making, in a file of the bundle directory until the
    domain that owns them is defined. An import killed half-way (no except clause runs)
    leaves volumes and no domain; the next import of the same bundle and name finds them
    here and makes them again instead of refusing them as someone else's."""

    def __init__(self, bundle_dir, name):
        self.path = os.path.join(bundle_dir, ".import-%s.volumes.json" % name)
        try:
            with open(self.path) as fh:
                self.volumes = {tuple(v) for v in json.load(fh)}
        except (OSError, ValueError):
            self.volumes = set()

    def holds(self, pool_name, vname):
        return (pool_name, vname) in self.volumes

    def write(self, volumes):
        with atomic_file(self.path, mode="w") as fh:
            json.dump(sorted(set(volumes) | self.volumes), fh)

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class KvmTarget(KvmInventory):
    """KVM as a target: import, and what verify reads (a part of KvmPlatform)."""

    # -- the target primitives engine/steps.run_import uses --

    def create_vm(self, name, spec, bundle, prov, options, check_mode):
        """Volumes first, filled and with the deltas applied, then the domain (see _create)."""
        pools = self._pools(spec, options)
        return self._create(bundle.manifest, bundle.dir, spec, name, prov, dict(options, pools=pools), check_mode)

    def remove_vm(self, vm, spec, options, check_mode):
        return self._remove_domain(vm, set(self._pools(spec, options).values()), check_mode)

    def update_disks(self, vm, spec, bundle, plan, options, check_mode):
        if plan.action == "deltas":
            return self._apply_deltas(vm, bundle, plan, check_mode)
        return self._rewrite_disks(vm, bundle.manifest, bundle.dir, plan, options, check_mode)

    def start_vm(self, vm):
        try:
            vm.create()
        except libvirt.libvirtError as exc:
            raise PlatformError(
                "domain %s does not start: %s" % (vm.name(), error_message(exc)),
                "see the libvirt log (/var/log/libvirt/qemu/%s.log)" % vm.name(),
            ) from exc

    # -- the power primitives engine/power.run_power uses --

    def request_shutdown(self, vm, check_mode):
        """Press the ACPI power button; None for a domain without ACPI (nothing to press).
        A guest that ignores the press shows up as the engine's timeout."""
        if ET.fromstring(vm.XMLDesc(0)).find("./features/acpi") is None:
            return None
        if not check_mode:
            try:
                vm.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except libvirt.libvirtError as exc:
                if self.power_state(vm) == "off":  # it stopped meanwhile: what was asked
                    return "acpi"
                raise PlatformError(
                    "cannot send an ACPI shutdown to domain %s: %s" % (vm.name(), error_message(exc)),
                    "use state=off to power it off hard",
                ) from exc
        return "acpi"

    def power_off(self, vm):
        try:
            vm.destroy()
        except libvirt.libvirtError as exc:
            if self.power_state(vm) == "off":
                return
            raise PlatformError(
                "cannot power off domain %s: %s" % (vm.name(), error_message(exc)),
                "see the libvirt log (/var/log/libvirt/qemu/%s.log)" % vm.name(),
            ) from exc

    @staticmethod
    def _pools(spec, options):
        """{disk id: pool}: the pool storage_map maps a disk's storage to, else ``pool``."""
        mapped = set((options.get("storage_map") or {}).values())
        default = options.get("pool") or "default"
        return {d["id"]: d["storage"] if d.get("storage") in mapped else default for d in spec["disks"]}

    def _volume_name(self, name, disk, fmt):
        return "%s-%s.%s" % (name, disk["id"], fmt)

    def _remove_domain(self, dom, pool_names, check_mode):
        """Remove a domain being replaced, and its volumes in the pools the import writes to."""
        name = dom.name()
        paths = [r["path"] for r in domain_disks(self.config_xml(dom), self.conn) if r["path"]]
        if check_mode:
            return {"name": name, "volumes": paths}
        if self._is_running(dom):
            dom.destroy()
        flags = libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        dom.undefineFlags(flags)
        removed = []
        for path in paths:
            try:
                vol = self.conn.storageVolLookupByPath(path)
            except libvirt.libvirtError:
                continue
            if vol.storagePoolLookupByVolume().name() in pool_names:
                vol.delete(0)
                removed.append(path)
        return {"name": name, "volumes": removed}

    def _create(self, manifest, bundle, spec, name, want, options, check_mode):
        fmt = options.get("volume_format") or "qcow2"
        if fmt not in ("qcow2", "raw"):
            raise InputError("volume_format %r is not supported on kvm" % fmt, "use qcow2 or raw")
        pools = {}
        for pool_name in sorted(set(options["pools"].values())):
            pools[pool_name] = find_pool(self.conn, pool_name)
            refresh_pool(pools[pool_name])
        plan = []
        need = {}
        journal = _VolumeJournal(bundle, name)
        for disk in manifest["disks"]:
            pool = pools[options["pools"][disk["id"]]]
            vname = self._volume_name(name, disk, fmt)
            try:
                pool.storageVolLookupByName(vname)
                exists = True
            except libvirt.libvirtError:
                exists = False
            # A volume an earlier import of this bundle was making when it was killed is
            # made again; any other volume of that name is someone's.
            if exists and not options.get("replace") and not journal.holds(pool.name(), vname):
                raise InputError(
                    "storage volume %s already exists in pool %s" % (vname, pool.name()),
                    "remove it, choose another name, or set replace=true",
                )
            plan.append({"disk": disk, "volume": vname, "exists": exists, "pool": pool})
            need[pool.name()] = need.get(pool.name(), 0) + int(disk.get("allocated") or disk["capacity"])
        for pool_name, bytes_needed in need.items():
            available = pools[pool_name].info()[3]
            if bytes_needed > available:
                raise InputError(
                    "storage pool %s has %s free, the disks need up to %s"
                    % (pool_name, human_bytes(available), human_bytes(bytes_needed)),
                    "free space in the pool or import into another pool (pool, storage_map)",
                    pool=pool_name,
                )
        local = is_local_uri(self.uri)
        transfer = options.get("transfer") or "auto"
        if transfer == "path" and not local:
            raise InputError(
                "transfer=path writes the volumes' files on this host, but %s is remote" % self.uri,
                "use transfer=stream (or auto) for remote libvirt",
            )
        stream = transfer == "stream" or (transfer == "auto" and not local)
        result = {
            "changed": True,
            "volumes": [{"pool": p["pool"].name(), "name": p["volume"], "format": fmt} for p in plan],
            "bytes_written": 0,
            "deltas_applied": [],
            "transfer": "stream" if stream else "path",
        }
        if check_mode:
            return result
        made = []
        dom = None
        journal.write([(p["pool"].name(), p["volume"]) for p in plan])
        try:
            disks_map = {}
            for item in plan:
                disk, pool = item["disk"], item["pool"]
                if item["exists"]:
                    pool.storageVolLookupByName(item["volume"]).delete(0)
                src = _bundle_path(bundle, disk["path"])
                deltas = [d for d in disk.get("deltas") or [] if d["index"] <= want["sync_index"]]
                progress = Progress("import %s %s" % (name, disk["id"]), disk["capacity"])
                if stream:
                    path, written, applied = self._upload(
                        pool, item["volume"], disk, src, fmt, bundle, deltas, made, check_data=name
                    )
                else:
                    vol = pool.createXML(self._volume_xml(item["volume"], disk["capacity"], fmt), 0)
                    made.append(vol)
                    self._exact_capacity(vol, disk["capacity"])
                    path = vol.path()
                    _disk._run_with_progress(
                        ["convert", "-p", "-n", "--target-is-zero", "-f", disk["format"], "-O", fmt, src, path],
                        progress,
                        "cannot copy %s into volume %s in pool %s" % (src, item["volume"], pool.name()),
                    )
                    written = (vol.info()[2]) or 0
                    applied = [(delta, self._apply_one(path, fmt, bundle, delta)) for delta in deltas]
                    _check_data(bundle, disk, path, fmt, name)
                result["bytes_written"] += written
                for delta, st in applied:
                    result["bytes_written"] += st["bytes_written"]
                    result["deltas_applied"].append({"disk": disk["id"], "index": delta["index"], **st})
                disks_map[disk["id"]] = {"path": path, "format": fmt}
                progress.finish()
            if stream:
                for pool in pools.values():
                    refresh_pool(pool)  # libvirt made the volumes raw; let it see the uploaded format
            # Defined marked incomplete, marked complete last: a run killed while libvirt
            # defines the domain leaves a target that says it is not finished.
            pending = dict(want, state="incomplete")
            xml = _xml_from_spec(spec, disks_map, pending, options.get("domain_type") or domain_type_for(self.conn))
            dom = self.conn.defineXML(with_cpu_mode(xml, options.get("cpu_mode")))
            write_provenance(dom, want)
            journal.remove()  # the domain owns its volumes now
        except BaseException as exc:
            # Leave nothing half-made behind: the domain and the volumes we created.
            if dom is not None:
                try:
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                except libvirt.libvirtError:
                    pass
            left = []
            for vol in made:
                try:
                    vol.delete(0)
                except libvirt.libvirtError:
                    left.append(vol.name())
            if not left:
                journal.remove()
            # else the journal stays: a re-run of this import makes those volumes again
            # (e.g. libvirtd restarted under the import, so they could not be deleted now).
            if isinstance(exc, (DiskError, libvirt.libvirtError)) and "No space left on device" in str(exc):
                # The free-space check counts the bundle's files; compressed or sparse-unaware
                # sources take more once written. Say which pool filled up, and that it is clean.
                raise DiskError(
                    "%s: the file system of storage pool(s) %s is full"
                    % (
                        getattr(exc, "problem", None) or "cannot import %s: %s" % (name, error_message(exc)),
                        ", ".join(pools),
                    ),
                    "free space in the pool or import into another pool (pool, storage_map); "
                    "the volumes this import made were removed and no domain was defined",
                    pool=", ".join(pools),
                ) from exc
            if isinstance(exc, libvirt.libvirtError):
                problem = "cannot import %s into pool(s) %s: %s" % (name, ", ".join(pools), error_message(exc))
                fix = "check the pool and the domain definition; nothing was left behind"
                if not self._alive():
                    problem += " (the connection to %s was lost: libvirtd stopped or restarted)" % self.uri
                    fix = "wait until libvirtd answers (virsh -c %s uri), then run the import again" % self.uri
                if left:
                    fix += "; it makes the volume(s) left behind again: %s" % ", ".join(left)
                raise PlatformError(problem, fix) from exc
            raise
        result["provenance"] = want
        return result

    def _alive(self):
        try:
            return self.conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    @staticmethod
    def _exact_capacity(vol, capacity):
        """Give a new, still empty volume exactly ``capacity`` bytes before it is filled.

        libvirt asks qemu-img for qcow2 volumes in whole KiB, so a disk of 300 MiB + 512
        bytes would come out 512 bytes bigger (and ``qemu-img convert -n`` keeps the
        target's size). virStorageVolResize passes bytes through.
        """
        have = vol.info()[1]
        if have == capacity:
            return
        vol.resize(capacity, libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK if have > capacity else 0)
        have = vol.info()[1]
        if have != capacity:
            raise PlatformError(
                "volume %s has %d bytes after resizing to %d" % (vol.name(), have, capacity),
                "check that libvirt and qemu-img on the host can resize %s volumes" % vol.name().rsplit(".", 1)[-1],
            )

    @staticmethod
    def _volume_xml(name, capacity, fmt):
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity", unit="bytes").text = str(int(capacity))
        ET.SubElement(root, "allocation", unit="bytes").text = "0"
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "format", type=fmt)
        return ET.tostring(root, encoding="unicode")

    def _upload(self, pool, vname, disk, src, fmt, bundle, deltas, made, check_data=None):
        """Make the volume's file here with qemu-img (deltas applied), then stream it up.

        The volume is created as an empty raw file of the image file's size and the image
        is written over it with a sparse upload: holes in the upload leave zeros, which is
        what the image holds there (a volume created as qcow2 by libvirt would keep its own
        header and tables wherever the upload has a hole). Returns the volume's path,
        bytes sent and the applied deltas.
        """
        tmpdir = tempfile.mkdtemp(prefix=".upload.", dir=bundle)
        try:
            tmp = os.path.join(tmpdir, "volume.%s" % fmt)
            _disk.convert(src, disk["format"], tmp, fmt)
            applied = [(delta, self._apply_one(tmp, fmt, bundle, delta)) for delta in deltas]
            if check_data:  # the domain's name: a new import checks the data before the upload
                _check_data(bundle, disk, tmp, fmt, check_data)
            size = os.path.getsize(tmp)
            vol = pool.createXML(self._volume_xml(vname, size, "raw"), 0)
            made.append(vol)
            sent = self._send_file(vol, tmp, size)
            return vol.path(), sent, applied
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def _send_file(self, vol, path, size):
        """virStorageVolUpload of a local file, sending its holes as holes."""
        fd = os.open(path, os.O_RDONLY)
        # One position of our own: os.lseek(SEEK_DATA/SEEK_HOLE) moves the fd's offset, so
        # reads use pread at ``pos`` rather than the fd's offset.
        pos = [0]
        sent = [0]

        def section(_st, _opaque):
            if pos[0] >= size:
                return [True, 0]  # the data handler then reads nothing: the end
            try:
                data_at = os.lseek(fd, pos[0], os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole up to the end
                data_at = size
            if data_at > pos[0]:
                return [False, data_at - pos[0]]
            return [True, os.lseek(fd, pos[0], os.SEEK_HOLE) - pos[0]]

        def data(_st, nbytes, _opaque):
            chunk = os.pread(fd, nbytes, pos[0])
            pos[0] += len(chunk)
            sent[0] += len(chunk)
            return chunk

        def skip(_st, length, _opaque):
            pos[0] += length
            return 0

        try:
            st = self.conn.newStream(0)
            vol.upload(st, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            try:
                st.sparseSendAll(data, section, skip, None)
                st.finish()
            except BaseException:
                try:
                    st.abort()
                except libvirt.libvirtError:
                    pass
                raise
        finally:
            os.close(fd)
        return sent[0]

    @staticmethod
    def _apply_one(path, fmt, bundle, delta):
        return _blocks.apply_delta_file(path, fmt, _bundle_path(bundle, delta["path"]), delta)

    def _target_disks(self, dom, manifest, bundle):
        """The target domain's disks paired with the bundle's, by position."""
        disks = domain_disks(self.config_xml(dom), self.conn)
        if len(disks) != len(manifest["disks"]):
            raise InputError(
                "target domain %s has %d disks, bundle %s has %d"
                % (dom.name(), len(disks), bundle, len(manifest["disks"])),
                "import with replace=true to make the target again",
            )
        return list(zip(disks, manifest["disks"], strict=True))

    def _begin_update(self, dom, plan):
        """Refuse a running target; mark the disks about to change as unknown.

        The mark is the provenance with state incomplete and those disks' fingerprints
        cleared: a run that dies half-way leaves a target that a re-run finishes and that
        never looks complete.
        """
        if self._is_running(dom):
            raise InputError(
                "target domain %s is running; its disks can only be updated while it is shut off" % dom.name(),
                "shut the target down, then import again",
            )
        write_provenance(dom, _steps.mark_updating(plan))

    def _apply_deltas(self, dom, bundle, plan, check_mode):
        """Bring an existing target from its recorded sync to the bundle's last one."""
        pairs = [(t, d) for t, d in self._target_disks(dom, bundle.manifest, bundle.dir) if plan.deltas.get(d["id"])]
        todo = [(d, x) for _t, d in pairs for x in plan.deltas[d["id"]]]
        result = {
            "deltas_applied": [{"disk": d["id"], "index": x["index"], "bytes": x["bytes"]} for d, x in todo],
            "bytes_written": 0,
        }
        if check_mode:
            return result
        self._begin_update(dom, plan)
        applied = []
        for tdisk, disk in pairs:
            deltas = plan.deltas[disk["id"]]
            stats = _steps.apply_deltas(tdisk["path"], tdisk["format"] or "raw", bundle, disk, deltas, dom.name())
            for delta, st in zip(deltas, stats, strict=True):
                result["bytes_written"] += st["bytes_written"]
                applied.append({"disk": disk["id"], "index": delta["index"], **st})
        result["deltas_applied"] = applied
        write_provenance(dom, plan.want)
        return result

    def _rewrite_disks(self, dom, manifest, bundle, plan, options, check_mode):
        """Write the changed disks again, whole, into the target's own volumes."""
        pairs = [(t, d) for t, d in self._target_disks(dom, manifest, bundle) if d["id"] in plan.disks]
        result = {"rewritten": [d["id"] for _t, d in pairs], "bytes_written": 0, "deltas_applied": []}
        for tdisk, disk in pairs:
            size = _disk.info(tdisk["path"], tdisk["format"], check=False)["virtual-size"]
            if size != disk["capacity"]:
                raise InputError(
                    "disk %s of target domain %s holds %d bytes, the bundle's disk %d"
                    % (tdisk["target"], dom.name(), size, disk["capacity"]),
                    "import with replace=true to make the target again at the new size",
                )
        if check_mode:
            return result
        self._begin_update(dom, plan)
        local = is_local_uri(self.uri) and (options.get("transfer") or "auto") != "stream"
        for tdisk, disk in pairs:
            src = _bundle_path(bundle, disk["path"])
            fmt = tdisk["format"] or "raw"
            deltas = [d for d in disk.get("deltas") or [] if d["index"] <= plan.want["sync_index"]]
            if local:
                # No --target-is-zero: every byte of the volume is written, zeros included.
                progress = Progress("rewrite %s %s" % (dom.name(), disk["id"]), disk["capacity"])
                _disk._run_with_progress(
                    ["convert", "-p", "-n", "-f", disk["format"], "-O", fmt, src, tdisk["path"]],
                    progress,
                    "cannot copy %s into %s" % (src, tdisk["path"]),
                )
                progress.finish()
                result["bytes_written"] += disk["capacity"]
                for delta in deltas:
                    result["bytes_written"] += self._apply_one(tdisk["path"], fmt, bundle, delta)["bytes_written"]
                _blocks.check_disk_data(bundle, disk, tdisk["path"], fmt, dom.name(), left=_blocks.REWRITE_LEFT)
            else:
                # A sparse upload over old data would keep it in the holes: make the
                # volume again under the same name (and path), then upload.
                vol = self.conn.storageVolLookupByPath(tdisk["path"])
                pool, vname = vol.storagePoolLookupByVolume(), vol.name()
                vol.delete(0)
                _path, sent, applied = self._upload(pool, vname, disk, src, fmt, bundle, deltas, [])
                refresh_pool(pool)
                result["bytes_written"] += sent + sum(st["bytes_written"] for _d, st in applied)
        write_provenance(dom, plan.want)
        return result

    def guest_xml(self, vm):
        return self.config_xml(vm)

    # -- the target primitives run_verify uses --

    def target_disks(self, vm):
        return [dict(r, where=r["path"]) for r in domain_disks(self.config_xml(vm), self.conn)]

    @staticmethod
    def open_disk(vm, tdisk):
        fmt = tdisk["format"] or _disk.info(tdisk["path"], check=False)["format"]
        return _disk.open_guest(tdisk["path"], fmt)
