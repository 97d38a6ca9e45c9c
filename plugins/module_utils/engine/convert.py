# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The convert step: a bundle in, a bundle ready for a target platform out.

Disk formats are qemu-img's job; block digests are format-independent, so they are
carried over from the input, or computed while qemu-img converts (a second thread
reads the same source, which the page cache serves once). The output manifest says
`complete` only after every disk and descriptor is in place.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import threading
import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils._files import atomic_file
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import disk as _disk
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import guest as _guest
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps as _steps
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import vmx as _vmx
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.profiles import PROFILES

SUFFIX = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "vpc": "vhd"}


def translate(spec, target, network_map, storage_map):
    """The spec for the target and the list of changes (via spec.apply_maps)."""
    return _spec.apply_maps(spec, target, network_map or None, storage_map or None)


# Per-disk fields an incremental sync changes; the rest (and the spec) must stay equal
# for a refresh that carries new deltas without converting the disks again.
SYNC_FIELDS = ("digests_sha256", "blocks", "deltas", "checkpoint", "allocated", "files", "progress")


def base_key(manifest):
    """Fingerprint of what an incremental sync leaves alone, with the sync chain's id."""
    content = {k: v for k, v in manifest.items() if k not in _bundle.VOLATILE}
    content["disks"] = [{k: v for k, v in d.items() if k not in SYNC_FIELDS} for d in manifest.get("disks", [])]
    syncs = manifest.get("sync") or []
    content["chain"] = (syncs[0].get("chain") or syncs[0].get("at")) if syncs else None
    return hashlib.sha256(_bundle.canonical(content)).hexdigest()


def _delta_ids(disk):
    return [d.get("index") for d in disk.get("deltas") or []]


def _vmdk_subformat(path):
    data = _disk.info(path, "vmdk", check=False).get("format-specific", {}).get("data", {})
    return data.get("create-type")


class Converter:
    """Plans and runs one convert; ``run(check_mode)`` returns the module result."""

    def __init__(self, params):
        self.src = os.path.abspath(params["src"])
        self.dest = os.path.abspath(params["dest"])
        self.target = params["target_platform"]
        self.fmt = params.get("disk_format") or PROFILES[self.target]["disk_format"]
        self.subformat = params.get("disk_subformat")
        if self.fmt == "vmdk" and not self.subformat:
            self.subformat = PROFILES[self.target]["vmdk_subformat"]
        if self.subformat and self.fmt != "vmdk":
            raise InputError(
                "disk_subformat %s is only meaningful with disk_format vmdk" % self.subformat,
                "leave disk_subformat unset for %s" % self.fmt,
            )
        self.network_map = params.get("network_map") or {}
        self.storage_map = params.get("storage_map") or {}
        self.block_size = params.get("block_size") or _blocks.DEFAULT_BLOCK_SIZE
        self.force = bool(params.get("force"))
        # The module's default is auto; a caller of the engine that does not say (bench,
        # the data-path tests) reads nothing inside the guest.
        self.guest_mode = params.get("guest_conversion") or "skip"
        self.virtio_win = params.get("virtio_win") or None
        if self.src == self.dest:
            raise InputError("src and dest are the same directory %s" % self.src, "write the output to a new directory")

    def options(self):
        """What the output depends on besides the input; recorded to detect up-to-date output."""
        return json.loads(
            json.dumps(
                {
                    "target_platform": self.target,
                    "disk_format": self.fmt,
                    "disk_subformat": self.subformat,
                    "network_map": self.network_map,
                    "storage_map": self.storage_map,
                    "block_size": self.block_size,
                    "guest_conversion": self.guest_mode,
                    "virtio_win": self.virtio_win,
                },
                sort_keys=True,
            )
        )

    # -- planning --

    def plan(self, bundle):
        if not bundle.complete:
            raise InputError(
                "bundle %s is incomplete: the step that wrote it did not finish" % bundle.dir,
                "re-run the export that writes it",
            )
        plan = []
        for disk in bundle.disks:
            path = bundle.disk_path(disk)
            if not path:
                raise InputError(
                    "disk %s of bundle %s has no data file" % (disk["id"], bundle.dir),
                    "re-run the export so that it writes or references the disk",
                )
            if not os.path.exists(path):
                raise InputError(
                    "disk %s of bundle %s is missing: %s does not exist" % (disk["id"], bundle.dir, path),
                    "copy the disk file into place or re-run the export",
                )
            src_sub = _vmdk_subformat(path) if disk["format"] == "vmdk" else None
            same = disk["format"] == self.fmt and (self.fmt != "vmdk" or src_sub == self.subformat)
            name = "%s.%s" % (disk["id"], SUFFIX[self.fmt])
            plan.append(
                {
                    "id": disk["id"],
                    "src_path": path,
                    "src_format": disk["format"],
                    "src_subformat": src_sub,
                    "action": "reference" if same else "convert",
                    "path": path if same else os.path.join(self.dest, "disks", name),
                    "format": self.fmt,
                    "subformat": self.subformat,
                    "capacity": disk["capacity"],
                    "digests": "carry" if disk.get("digests") else "compute",
                }
            )
        return plan

    def up_to_date(self, input_fp):
        """The existing output bundle when it was made from this input with these options."""
        if self.force or not _bundle.Bundle.exists(self.dest):
            return None
        try:
            out = _bundle.Bundle.load(self.dest)
        except InputError:
            return None
        made = out.manifest.get("convert") or {}
        if not out.complete or made.get("input_fingerprint") != input_fp or made.get("options") != self.options():
            return None
        for disk in out.disks:
            for f in disk.get("files") or []:
                path = out.resolve(f["path"])
                if not os.path.exists(path) or os.path.getsize(path) != f["bytes"]:
                    return None
            if disk.get("digests"):
                try:
                    out.load_digests(disk)
                except InputError:
                    return None
        return out

    def refreshable(self, src):
        """The existing output when the input only gained deltas (an incremental sync).

        Then the converted disks still hold the base the deltas apply to, and only the
        records (deltas, digests, checkpoints, sync history) need to follow the input.
        """
        if self.force or not _bundle.Bundle.exists(self.dest):
            return None
        try:
            out = _bundle.Bundle.load(self.dest)
        except InputError:
            return None
        made = out.manifest.get("convert") or {}
        if not out.complete or made.get("options") != self.options() or made.get("base_key") != base_key(src.manifest):
            return None
        if [d["id"] for d in out.disks] != [d["id"] for d in src.disks]:
            return None
        for disk, old in zip(src.disks, out.disks, strict=True):
            new_ids, old_ids = _delta_ids(disk), _delta_ids(old)
            if new_ids[: len(old_ids)] != old_ids:
                return None  # a different chain of deltas
            if len(new_ids) == len(old_ids) and disk.get("digests_sha256") != old.get("digests_sha256"):
                return None  # the disk changed without a delta saying how
            for f in old.get("files") or []:
                path = out.resolve(f["path"])
                if not os.path.exists(path) or os.path.getsize(path) != f["bytes"]:
                    return None
        return out

    def refresh(self, src, out, input_fp, changes, check_mode):
        """Carry new deltas, digests and sync history into the output; no disk is converted
        again (a disk converted into the output gets the new deltas' bytes written in)."""
        new_deltas = []
        for disk, old in zip(src.disks, out.disks, strict=True):
            for delta in (disk.get("deltas") or [])[len(old.get("deltas") or []) :]:
                new_deltas.append({"disk": disk["id"], "index": delta.get("index"), "bytes": delta.get("bytes")})
        if check_mode:
            return new_deltas
        out.mark_incomplete()
        for disk, old in zip(src.disks, out.disks, strict=True):
            old["checkpoint"] = copy.deepcopy(disk.get("checkpoint"))
            deltas = self._absolute_deltas(src, disk)
            if not old.get("ref_stamp"):
                # A disk converted into this bundle holds the sync it was converted at: the
                # new deltas go into it too (their bytes only), so that like the export's
                # base it holds every delta it lists and a step that reads it whole (an
                # import rewriting a disk) reads the current data.
                written = self._patch(out.disk_path(old), old["format"], deltas[len(old.get("deltas") or []) :])
                for item in new_deltas:
                    if item["disk"] == disk["id"]:
                        item["bytes_written"] = written.get(item["index"], 0)
                for f in old.get("files") or []:
                    f["bytes"] = os.path.getsize(out.resolve(f["path"]))
            old["deltas"] = deltas
            old["action"] = "refresh"
            if old.get("ref_stamp"):
                old["ref_stamp"] = _bundle.file_stamp(out.disk_path(old))
            digests = src.load_digests(disk)
            if digests is not None:
                out.save_digests(old, digests)
        for key in ("sync", "created"):
            out.manifest[key] = copy.deepcopy(src.manifest.get(key, out.manifest.get(key)))
        out.manifest["convert"].update(input_fingerprint=input_fp, at=_bundle.now(), changes=changes)
        out.mark_complete()
        return new_deltas

    @staticmethod
    def _patch(path, fmt, deltas):
        """Write ``deltas`` into the converted disk ``path``; {delta index: bytes written}."""
        return {d.get("index"): _blocks.apply_delta_file(path, fmt, d["path"], d)["bytes_written"] for d in deltas}

    @staticmethod
    def _absolute_deltas(src, disk):
        deltas = copy.deepcopy(disk.get("deltas") or [])
        for delta in deltas:
            if delta.get("path"):  # deltas stay in the input bundle; name them absolutely
                delta["path"] = src.resolve(delta["path"])
        return deltas

    # -- running --

    def run(self, check_mode=False, planned=None):
        """The step; ``planned`` (check mode only) is a checked export's RV(planned): what its
        bundle would hold, read instead of the bundle in ``src`` that was not written."""
        started = time.monotonic()
        if planned:
            if not check_mode:
                raise InputError(
                    "planned (what a checked export would write) is only read in check mode",
                    "leave planned out: a real convert reads the bundle in src",
                )
            result = _steps.finish_step(self._run_planned(planned), started, "convert (planned)")
            result["summary"] = "would convert to %s %s: %s" % (self.target, self.dest, result["would"])
            return result
        result = self._run(check_mode)
        result["bytes_written"] = sum(int(p.get("bytes") or 0) for p in result.get("progress") or []) + sum(
            int(d.get("bytes_written") or 0) for d in result.get("deltas") or []
        )
        return _steps.finish_step(result, started, "convert to %s %s" % (self.target, self.dest))

    def _run(self, check_mode):
        src = _bundle.Bundle.load(self.src)
        spec_before = src.manifest["spec"]
        spec_after, changes = translate(spec_before, self.target, self.network_map, self.storage_map)
        input_fp = src.fingerprint()
        result = {
            "changed": False,
            "dest": self.dest,
            "spec": spec_after,
            "changes": changes,
            "diff": {"before": spec_before, "after": spec_after},
        }
        current = self.up_to_date(input_fp)
        if current is not None:
            self._as_made(result, current)
            result["disks"] = [self._disk_result(current, d) for d in current.disks]
            result["descriptors"] = current.manifest.get("descriptors") or {}
            result["progress"] = []
            return result
        previous = self.refreshable(src)
        if previous is not None:
            self._as_made(result, previous)
            result["changed"] = True
            result["deltas"] = self.refresh(src, previous, input_fp, result["changes"], check_mode)
            result["disks"] = [dict(self._disk_result(previous, d), action="refresh") for d in previous.disks]
            result["descriptors"] = previous.manifest.get("descriptors") or {}
            result["progress"] = []
            if not check_mode:
                result["fingerprint"] = previous.fingerprint()
            return result
        plan = self.plan(src)
        result["guest"] = self.guest(src, spec_after)
        changes.extend(result["guest"]["changes"])
        result["changed"] = True
        result["plan"] = plan
        if check_mode:
            result["disks"] = [
                {k: p[k] for k in ("id", "path", "format", "subformat", "capacity", "action")} for p in plan
            ]
            result["progress"] = []
            result["planned"] = self.planned_bundle(src.manifest, spec_after, plan)
            return result

        out = self._start_output(src, spec_after)
        summaries = []
        for step in plan:
            record, summary = self._disk(src, out, src.disk(step["id"]), step)
            out.set_disk(record)
            summaries.extend(summary)
            out.save()  # still incomplete: records what is done so far
        out.manifest["descriptors"] = self._descriptors(out, spec_after)
        out.manifest["guest"] = result["guest"]
        out.manifest["convert"] = {
            "input": self.src,
            "input_fingerprint": input_fp,
            "base_key": base_key(src.manifest),
            "options": self.options(),
            "changes": changes,
            "at": _bundle.now(),
        }
        remove_stale(out.dir, {f["path"] for d in out.disks for f in d.get("files") or []})
        out.mark_complete()
        result["disks"] = [self._disk_result(out, d) for d in out.disks]
        result["descriptors"] = out.manifest["descriptors"]
        result["progress"] = summaries
        result["fingerprint"] = out.fingerprint()
        return result

    @staticmethod
    def _as_made(result, out):
        """The spec, changes and guest record of an output made earlier (the guest's
        inspection is not repeated: its hardware choices are in that spec)."""
        made = out.manifest.get("convert") or {}
        result.update(spec=out.manifest["spec"], guest=out.manifest.get("guest"), changes=made.get("changes") or [])
        result["diff"]["after"] = out.manifest["spec"]

    def guest(self, src, spec):
        """Inspect the guest in the input's disks (unless guest_conversion=skip): hardware it
        can drive chosen into ``spec`` (changed in place), and whether it is converted on KVM
        after the import. Refuses here, before any disk is converted or imported, a guest
        that cannot boot on the target."""
        if self.guest_mode == "skip":
            return _guest.decide(None, spec, None, self.target, "skip")
        info = _guest.inspect([(src.disk_path(d), d["format"]) for d in src.disks])
        source_platform = (src.manifest.get("source") or {}).get("platform")
        return _guest.decide(info, spec, source_platform, self.target, self.guest_mode, self.virtio_win)

    # -- check mode on what earlier checked steps would have written --

    def plan_planned(self, planned):
        """Per disk of a planned input bundle: what convert would do (as plan() does for a
        written one, from the formats the export would leave)."""
        refreshable = _bundle.Bundle.exists(self.dest) and not self.force
        steps = []
        for disk in planned.get("disks") or []:
            src_format = disk.get("format") or "raw"
            # A vmdk's variant is known only once written: planned as converted.
            same = src_format == self.fmt and self.fmt != "vmdk"
            action = "reference" if same else "convert"
            if disk.get("method") == "delta" and refreshable:
                action = "refresh"  # the output's disks stay; the new delta is carried
            name = "%s.%s" % (disk["id"], SUFFIX[self.fmt])
            steps.append(
                {
                    "id": disk["id"],
                    "src_path": disk.get("path"),
                    "src_format": src_format,
                    "action": action,
                    "path": disk.get("path") if same else os.path.join(self.dest, "disks", name),
                    "format": self.fmt,
                    "subformat": self.subformat,
                    "capacity": disk.get("capacity"),
                }
            )
        return steps

    def planned_bundle(self, manifest, spec_after, steps):
        """The output bundle a checked convert would write, in the shape of a checked
        export's `planned` (source, spec, target_platform, sync, disks), for the import's
        option `planned`. Digests and deltas are the input's (None where unknown yet)."""
        records = {d["id"]: d for d in manifest.get("disks") or []}
        disks = []
        for step in steps:
            rec = records.get(step["id"], {})
            disk = {k: step.get(k) for k in ("id", "action", "path", "format", "subformat", "capacity")}
            disk["source_format"] = step.get("src_format")
            disk["allocated"] = rec.get("allocated")
            disk["digests_sha256"] = rec.get("digests_sha256")
            disk["deltas"] = copy.deepcopy(rec.get("deltas") or [])
            for key in ("target", "bus"):
                if rec.get(key) is not None:
                    disk[key] = rec[key]
            disks.append(disk)
        return {
            "bundle": self.dest,
            "source": copy.deepcopy(manifest.get("source") or {}),
            "spec": spec_after,
            "target_platform": self.target,
            "sync": copy.deepcopy(manifest.get("sync") or []),
            "disks": disks,
        }

    def _run_planned(self, planned):
        for key in ("source", "spec", "disks"):
            if not isinstance(planned.get(key), (dict, list)):
                raise InputError(
                    "planned has no %s: it is not what a checked export returns as planned" % key,
                    "pass the export's result key planned as it is",
                )
        spec_after, changes = translate(planned["spec"], self.target, self.network_map, self.storage_map)
        guest = {"mode": self.guest_mode, "action": "unknown" if self.guest_mode != "skip" else "none"}
        guest["reason"] = "not inspected: in check mode the export has not written the disks yet"
        steps = self.plan_planned(planned)
        disks = [{k: p[k] for k in ("id", "path", "format", "subformat", "capacity", "action")} for p in steps]
        kind = PROFILES[self.target]["descriptor"]
        descriptors = {"libvirt_xml": "domain.xml"} if kind == "libvirt_xml" else {}
        if kind == "vmx":
            descriptors["vmx"] = "%s.vmx" % (spec_after.get("name") or "vm")
        return {
            "changed": True,
            "dest": self.dest,
            "spec": spec_after,
            "changes": changes,
            "guest": guest,
            "diff": {"before": planned["spec"], "after": spec_after},
            "plan": steps,
            "disks": disks,
            "descriptors": descriptors,
            "progress": [],
            "would": "; ".join(
                "%s %s (%s bytes, %s -> %s%s)"
                % (
                    p["action"],
                    p["id"],
                    p["capacity"],
                    p["src_format"],
                    p["format"],
                    " " + p["subformat"] if p["subformat"] else "",
                )
                for p in steps
            ),
            "planned": self.planned_bundle(planned, spec_after, steps),
        }

    def _start_output(self, src, spec_after):
        """Create the output directory with a manifest that says incomplete before any disk is touched."""
        if os.path.exists(self.dest) and not os.path.isdir(self.dest):
            raise InputError("dest %s exists and is not a directory" % self.dest, "choose a directory path")
        if os.path.isdir(self.dest) and os.listdir(self.dest) and not _bundle.Bundle.exists(self.dest):
            raise InputError(
                "dest %s is a non-empty directory that is not a bundle" % self.dest,
                "choose an empty or new directory, or a bundle written by convert",
            )
        os.makedirs(os.path.join(self.dest, "disks"), exist_ok=True)
        source = copy.deepcopy(src.manifest["source"])
        out = _bundle.Bundle.create(self.dest, source, spec_after, target_platform=self.target, save=False)
        for key in ("sync", "created"):
            out.manifest[key] = copy.deepcopy(src.manifest.get(key, out.manifest[key]))
        out.save()
        return out

    def _disk(self, src, out, disk, step):
        """Convert (or reference) one disk and return its output record and progress summaries."""
        summaries = []
        digests = src.load_digests(disk)
        computed = {}
        worker = None
        if digests is None:
            # No digests in the input: hash the source's guest bytes while qemu-img works.
            def compute():
                try:
                    with _disk.open_guest(step["src_path"], step["src_format"]) as reader:
                        computed["digests"] = _blocks.digest_disk(reader, self.block_size)
                except Exception as exc:  # noqa: BLE001 - re-raised in the main thread
                    computed["error"] = exc

            worker = threading.Thread(target=compute, name="digest-%s" % disk["id"], daemon=True)
            worker.start()
        try:
            if step["action"] == "convert":
                progress = Progress("convert %s" % disk["id"], disk["capacity"])
                _disk.convert(
                    step["src_path"], step["src_format"], step["path"], self.fmt, self.subformat, progress=progress
                )
                summaries.append(progress.finish())
        finally:
            if worker is not None:
                worker.join()
        if worker is not None:
            if "error" in computed:
                raise computed["error"]
            digests = computed["digests"]

        info = _disk.info(step["path"], self.fmt)
        if info["virtual-size"] != disk["capacity"]:
            raise InputError(
                "disk %s: %s holds %d bytes, the manifest %s says %d"
                % (disk["id"], step["path"], info["virtual-size"], src.path, disk["capacity"]),
                "re-run the export; the bundle does not match its disk",
            )
        files = (
            _disk.image_files(step["path"], self.fmt, self.subformat) if step["action"] == "convert" else [step["path"]]
        )
        record = {
            "id": disk["id"],
            "path": os.path.relpath(step["path"], self.dest) if step["action"] == "convert" else step["path"],
            "format": self.fmt,
            "subformat": self.subformat,
            "capacity": disk["capacity"],
            "allocated": info.get("actual-size"),
            "checkpoint": copy.deepcopy(disk.get("checkpoint")),
            "source_path": step["src_path"],
            "action": step["action"],
            # A referenced disk is another bundle's file: import refuses it once written again.
            "ref_stamp": _bundle.file_stamp(step["path"]) if step["action"] == "reference" else None,
            "files": [{"path": self._rel(f), "bytes": os.path.getsize(f)} for f in files],
        }
        for key in ("target", "bus"):
            if disk.get(key) is not None:
                record[key] = copy.deepcopy(disk[key])
        if disk.get("deltas"):
            record["deltas"] = self._absolute_deltas(src, disk)
        out.save_digests(record, digests)
        return record, summaries

    def _rel(self, path):
        rel = os.path.relpath(path, self.dest)
        return path if rel.startswith("..") else rel

    def _disk_result(self, out, disk):
        return {
            "id": disk["id"],
            "path": out.disk_path(disk),
            "format": disk["format"],
            "subformat": disk.get("subformat"),
            "capacity": disk["capacity"],
            "bytes": disk.get("allocated"),
            "action": disk.get("action"),
            "digests_sha256": disk.get("digests_sha256"),
        }

    def _descriptors(self, out, spec):
        """Write the descriptor the target's profile names beside the disks (Hyper-V: none)."""
        written = {}
        kind = PROFILES[self.target]["descriptor"]
        disks = {d["id"]: {"path": out.disk_path(d), "format": d["format"]} for d in out.disks}
        if kind == "libvirt_xml":
            text = _libvirt_xml.libvirt_xml_from_spec(spec, disks)
            written["libvirt_xml"] = self._write_text(out, "domain.xml", text)
        elif kind == "vmx":
            files = {d["id"]: os.path.relpath(out.disk_path(d), out.dir) for d in out.disks}
            text = _vmx.vmx_from_spec(spec, files)
            written["vmx"] = self._write_text(out, "%s.vmx" % (spec.get("name") or "vm"), text)
        return written

    @staticmethod
    def _write_text(out, name, text):
        with atomic_file(os.path.join(out.dir, name), "w") as fh:
            fh.write(text)
        return name


def remove_stale(out_dir, keep):
    """Delete files under disks/ that no record names (left by an earlier convert)."""
    disks_dir = os.path.join(out_dir, "disks")
    for name in os.listdir(disks_dir) if os.path.isdir(disks_dir) else []:
        if os.path.join("disks", name) not in keep:
            path = os.path.join(disks_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
