# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The decisions every platform shares, written once (see docs/architecture.md).

A platform only talks to its hypervisor; what a migration decides lives here and is
unit-tested without a lab: the provenance a target carries, what an import does with
an existing target (create, nothing, apply deltas, rewrite disks, replace, refuse),
and the verify comparison.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import DiskError, InputError, V2VError, VerifyError
from ansible_collections.vmigrate.v2v.plugins.module_utils._progress import Progress, human_bytes
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import blocks as _blocks
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms import profiles as _profiles

# The one provenance shape every target carries (libvirt <metadata>, vSphere
# extraConfig, Hyper-V Notes). `fingerprint` is the content: the digest lists of the
# disks, so two bundles of the same bytes agree whatever else their manifests say.
# `verified` is the fingerprint a verify last compared the target's disks with and found
# equal: a target running since (booted by the check) is not read again. `rolled_back` is
# when a rollback marked the target (engine/rollback.py; state is then rolled-back).
# `guest_converted` is what the guest conversion did (engine/guest.py run_conversion):
# the bundle fingerprint its data equalled before, and the disks' digests after.
PROVENANCE_KEYS = (
    "source_id",
    "source_platform",
    "source_name",
    "chain",
    "sync_index",
    "checkpoint",
    "fingerprint",
    "disks",
    "state",
    "verified",
    "rolled_back",
    "guest_converted",
)


def new_chain_id():
    """Identifies one chain of syncs: a full copy and the incrementals on top of it."""
    return uuid.uuid4().hex


def chain_id(manifest):
    """The chain of a manifest's syncs (older bundles: the first sync's time), or None."""
    syncs = manifest.get("sync") or []
    return (syncs[0].get("chain") or syncs[0].get("at")) if syncs else None


def disk_fingerprints(manifest):
    """{disk id: SHA-256 of its digest list}: what each disk holds."""
    return {d["id"]: d.get("digests_sha256") for d in manifest.get("disks") or []}


def content_fingerprint(manifest):
    """One fingerprint for the content of all disks, in order."""
    data = [[d["id"], d.get("digests_sha256")] for d in manifest.get("disks") or []]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def provenance(manifest, state="complete"):
    """What a target made from ``manifest`` records about where it came from."""
    syncs = manifest.get("sync") or []
    last = syncs[-1] if syncs else {}
    source = manifest.get("source") or {}
    return {
        "source_id": source.get("id"),
        "source_platform": source.get("platform"),
        "source_name": source.get("name"),
        "chain": chain_id(manifest),
        "sync_index": int(last.get("index") or len(syncs) or 1),
        "checkpoint": last.get("checkpoint"),
        "fingerprint": content_fingerprint(manifest),
        "disks": disk_fingerprints(manifest),
        "state": state,
        "verified": None,
        "rolled_back": None,
        "guest_converted": None,
    }


def read_provenance(raw):
    """A provenance as read back from a target (any age of this collection), normalised.

    Older targets wrote every value as a string, or called the fingerprint
    `bundle_fingerprint` (over other fields): such a fingerprint is dropped, so the
    target is compared disk by disk rather than trusted.
    """
    if not isinstance(raw, dict) or not raw.get("source_id"):
        return None
    out = {k: raw.get(k) for k in PROVENANCE_KEYS}
    try:
        out["sync_index"] = int(out["sync_index"] or 0)
    except (TypeError, ValueError):
        out["sync_index"] = 0
    if not isinstance(out["disks"], dict):
        out["disks"] = {}
    out["state"] = out["state"] or "complete"  # vSphere targets before `state` existed
    return out


def _delta_indices(manifest, first, last):
    """{disk id: [delta records with first <= index <= last]}."""
    return {
        d["id"]: [x for x in d.get("deltas") or [] if first <= int(x["index"]) <= last]
        for d in manifest.get("disks") or []
    }


class ImportPlan:
    """What an import does with the target. ``action`` is one of:

    create   no target of that name: make it
    replace  a target exists and replace=true: remove it, then create
    none     the target already holds this bundle's content and provenance
    record   same content, newer sync or chain: only the provenance is rewritten
    deltas   same chain, target behind: apply ``deltas`` ({disk id: [delta records]})
    rewrite  same source, content differs and deltas cannot bring it there: write the
             disks in ``disks`` again, whole
    """

    def __init__(self, action, want, found=None, disks=None, deltas=None, reason=""):
        self.action = action
        self.want = want
        self.found = found
        self.disks = list(disks or [])
        self.deltas = deltas or {}
        self.reason = reason

    @property
    def changes(self):
        return self.action != "none"


def run_import(platform, bundle, options, check_mode=False):
    """The import step, the same on every platform: check the bundle against itself,
    translate the spec for the target, check the name and capacities it can hold, then
    do what plan_import decides with the platform's target primitives (create_vm,
    remove_vm, update_disks, write_provenance, start_vm)."""
    started = time.monotonic()
    require_complete(bundle)
    # A hand-edited or damaged bundle is refused before anything is looked up or made.
    bundle.check_integrity()
    manifest = bundle.manifest
    if manifest.get("target_platform") not in (None, platform.name):
        raise InputError(
            "bundle %s was converted for %s, not %s" % (bundle.dir, manifest["target_platform"], platform.name),
            "convert the export bundle again with target_platform %s" % platform.name,
        )
    network_map = options.get("network_map") or None
    spec, changes = _spec.apply_maps(
        manifest["spec"], platform.name, network_map, options.get("storage_map") or None, strict=bool(network_map)
    )
    name = options.get("name") or spec["name"]
    # A name the platform refuses, or a capacity its disks cannot hold exactly: say so now.
    _profiles.check_target(platform.name, name, [bundle.disk(d["id"]) for d in spec["disks"]])
    spec["name"] = name
    spec["uuid"] = None  # a new VM: the source keeps its identity
    vm = platform.lookup(name)
    found = platform.read_provenance(vm) if vm is not None else None
    plan = plan_import(manifest, name, vm is not None, found, bool(options.get("replace")))
    result = import_result(plan, name, changes)
    if plan.action == "record" and not check_mode:
        platform.write_provenance(vm, plan.want)
    elif plan.action in ("deltas", "rewrite"):
        result.update(platform.update_disks(vm, spec, bundle, plan, options, check_mode))
    elif plan.action in ("create", "replace"):
        if plan.action == "replace":
            result["replaced"] = platform.remove_vm(vm, spec, options, check_mode)
        result.update(platform.create_vm(name, spec, bundle, plan.want, options, check_mode))
        vm = None if check_mode else platform.lookup(name)
    if options.get("start") and vm is not None and platform.power_state(vm) == "off":
        if not check_mode:
            platform.start_vm(vm)
        result.update(changed=True, started=True)
    return finish_step(result, started, "import %s (%s)" % (name, plan.action))


def run_import_planned(platform, planned, options):
    """The import step in check mode on what earlier checked steps would have written
    (a checked convert's `planned`): the same name, capacity and collision checks and the
    same decision (plan_import) as run_import, from the planned bundle instead of a
    written one; nothing is looked up but the target's name, nothing is made. A target of
    that name that did not come from this source is refused as a real run would."""
    started = time.monotonic()
    for key in ("source", "spec", "disks"):
        if not isinstance(planned.get(key), (dict, list)):
            raise InputError(
                "planned has no %s: it is not what a checked convert returns as planned" % key,
                "pass the convert's result key planned as it is",
            )
    if planned.get("target_platform") not in (None, platform.name):
        raise InputError(
            "the planned bundle %s would be converted for %s, not %s"
            % (planned.get("bundle"), planned["target_platform"], platform.name),
            "convert for target_platform %s" % platform.name,
        )
    network_map = options.get("network_map") or None
    spec, changes = _spec.apply_maps(
        planned["spec"], platform.name, network_map, options.get("storage_map") or None, strict=bool(network_map)
    )
    name = options.get("name") or spec["name"]
    _profiles.check_target(platform.name, name, planned["disks"])
    vm = platform.lookup(name)
    found = platform.read_provenance(vm) if vm is not None else None
    plan = plan_import(planned, name, vm is not None, found, bool(options.get("replace")))
    result = import_result(plan, name, changes)
    result["planned"] = True
    result["would"] = planned_import_summary(plan, name, platform.name, spec, planned["disks"])
    if plan.action in ("create", "replace"):
        result["would_create"] = would_create(name, platform.name, spec, planned["disks"])
    if options.get("start"):
        result["started"] = True
    finish_step(result, started, "import %s (%s, planned)" % (name, plan.action))
    result["summary"] = "would %s" % result["would"]  # the summary table's line in check mode
    return result


def would_create(name, platform_name, spec, disks):
    """What a planned import would make: the VM's name, size and disks."""
    cpu = spec.get("cpu") or {}
    storage = {d.get("id"): d.get("storage") for d in spec.get("disks") or []}
    return {
        "name": name,
        "platform": platform_name,
        "cpus": cpu.get("sockets", 1) * cpu.get("cores", 1) * cpu.get("threads", 1),
        "memory_mib": spec.get("memory_mib"),
        "disks": [
            {
                "id": d["id"],
                "capacity": d.get("capacity"),
                "format": d.get("format"),
                "subformat": d.get("subformat"),
                "storage": storage.get(d["id"]),
            }
            for d in disks
        ],
        "nics": [{"mac": n.get("mac"), "network": n.get("network")} for n in spec.get("nics") or []],
    }


def planned_import_summary(plan, name, platform_name, spec, disks):
    """One line: "create web01 on kvm: 1 disk(s) disk0 64.0 MiB qcow2 (no VM named web01 yet)"."""
    sizes = ", ".join(
        "%s %s %s" % (d["id"], human_bytes(d.get("capacity") or 0), d.get("subformat") or d.get("format") or "")
        for d in disks
    )
    return "%s %s on %s: %d disk(s) %s (%s)" % (plan.action, name, platform_name, len(disks), sizes, plan.reason)


def import_result(plan, name, spec_changes):
    """The start of every import's result: the same keys on every platform."""
    return {
        "changed": plan.changes,
        "name": name,
        "action": plan.action,
        "reason": plan.reason,
        "spec_changes": spec_changes,
        "provenance": plan.want,
        "bytes_written": 0,
        # --diff shows what the target's provenance (its record of what it holds) becomes.
        "diff": {"before": {"provenance": plan.found} if plan.found else {}, "after": {"provenance": plan.want}},
    }


def plan_import(manifest, target, exists, found, replace=False):
    """Decide what importing ``manifest`` into the target named ``target`` does.

    ``exists``: a VM of that name is there; ``found``: its provenance as read (raw).
    Raises InputError when the target must not be touched.
    """
    want = provenance(manifest)
    if not exists:
        return ImportPlan("create", want, reason="no VM named %s yet" % target)
    if replace:
        return ImportPlan("replace", want, found=found, reason="replace=true")
    prov = read_provenance(found)
    if prov is None or prov["source_id"] != want["source_id"] or prov["source_platform"] != want["source_platform"]:
        raise InputError(
            "VM %r already exists on the target and was not made from %s VM %s (its provenance: %s)"
            % (
                target,
                want["source_platform"],
                want["source_name"] or want["source_id"],
                json.dumps(found, sort_keys=True) if found else "none",
            ),
            "choose another name, or set replace=true to remove that VM and import again",
        )
    if prov.get("rolled_back"):
        # It ran after its import (a cutover started it): neither its fingerprints nor a
        # delta chain describe its disks any more. Writing them all again clears the mark.
        return ImportPlan(
            "rewrite",
            want,
            found=prov,
            disks=list(want["disks"]),
            reason="the target was rolled back at %s: every disk is written again" % prov["rolled_back"],
        )
    converted = (prov.get("guest_converted") or {}).get("fingerprint")
    if converted and converted != want["fingerprint"]:
        # Its guest was converted: a delta read from the source does not apply to those
        # disks. Written again whole, then converted again.
        return ImportPlan(
            "rewrite",
            want,
            found=prov,
            disks=list(want["disks"]),
            reason="the target's guest was converted (at %s): every disk is written again and converted again"
            % prov["guest_converted"].get("at"),
        )
    complete = prov["state"] == "complete"
    same_chain = prov["chain"] == want["chain"]
    if same_chain and complete and prov["sync_index"] > want["sync_index"]:
        raise InputError(
            "VM %r holds sync %d of this chain, newer than the bundle's sync %d"
            % (target, prov["sync_index"], want["sync_index"]),
            "import the newest bundle of this source, or set replace=true to go back to this one",
        )
    if complete and prov["fingerprint"] == want["fingerprint"]:
        if same_chain and prov["sync_index"] == want["sync_index"]:
            return ImportPlan("none", want, found=prov, reason="the target already holds this bundle")
        return ImportPlan("record", want, found=prov, reason="same content; provenance moves to this bundle's sync")
    # A run that died half-way cleared the fingerprints of the disks it was writing
    # (see mark_updating), so they count as changed here.
    changed = [d for d, fp in want["disks"].items() if prov["disks"].get(d) != fp]
    if same_chain:
        # A run that died half-way left sync_index at the last sync it finished: its
        # deltas are applied again (the same bytes written twice).
        deltas = _delta_indices(manifest, prov["sync_index"] + 1, want["sync_index"])
        if all(deltas.get(d) for d in changed) and prov["sync_index"] < want["sync_index"]:
            return ImportPlan(
                "deltas",
                want,
                found=prov,
                disks=changed,
                deltas={d: deltas[d] for d in changed},
                reason="target at sync %d, bundle at %d" % (prov["sync_index"], want["sync_index"]),
            )
    reason = "the content of %s changed and no delta chain leads there" % ", ".join(changed)
    if not changed:
        # An import stopped after its disks were written (while the domain was defined):
        # nothing to write again, only the provenance to complete.
        reason = "the target was left incomplete with every disk written: its provenance is completed"
    return ImportPlan("rewrite", want, found=prov, disks=changed, reason=reason)


def mark_updating(plan):
    """The provenance a target carries while ``plan`` changes its disks: state
    incomplete, and the disks being written no longer vouched for."""
    found = plan.found or {}
    disks = {d: fp for d, fp in (found.get("disks") or {}).items() if d not in plan.disks}
    return dict(found, state="incomplete", disks=disks)


def apply_deltas(path, fmt, bundle, disk, deltas, target):
    """Bring the disk image ``path`` of an existing target (marked updating) up by the
    bundle's ``deltas`` of ``disk``, and refuse what they wrote when it does not match the
    bundle's block digests (blocks.apply_deltas_checked). The target stays marked
    incomplete then, and a re-run applies the deltas again. Returns stats per delta."""
    applied, bad = _blocks.apply_deltas_checked(path, fmt, deltas, bundle.resolve, bundle.load_digests(disk))
    if bad:
        block_size = int(disk["block_size"])
        raise DiskError(
            "bundle %s, disk %s: after its deltas (%s) the disk of %s (%s) differs from the bundle's block "
            "digests in %d blocks, first at byte %d: a delta file is damaged, or that disk was changed "
            "outside this tool"
            % (
                bundle.dir,
                disk["id"],
                ", ".join(bundle.resolve(d["path"]) for d in deltas),
                target,
                path,
                len(bad),
                bad[0] * block_size,
            ),
            "copy the bundle again (or re-run the export that wrote it) and import again; %s stays marked "
            "incomplete until then (or import with replace=true to write it whole)" % target,
        )
    return applied


def compare_disk(disk_id, where, expected, actual, expected_capacity, actual_capacity):
    """The verify comparison of one disk: a list of mismatch sentences (empty: equal).

    ``expected``/``actual`` are DigestLists (the bundle's, the target's as read).
    """
    if actual_capacity != expected_capacity:
        return ["disk %s (%s) holds %d bytes, the bundle %d" % (disk_id, where, actual_capacity, expected_capacity)]
    bad = expected.changed_blocks(actual)
    if not bad:
        return []
    return [
        "disk %s (%s) differs from the bundle in %d of %d blocks, first at byte %d"
        % (disk_id, where, len(bad), len(expected), bad[0] * expected.block_size)
    ]


def compare_spec(actual, expected):
    """Spec fields a target must share with the bundle: ({field: {...}}, [mismatches])."""

    def cpus(s):
        c = s.get("cpu") or {}
        return c.get("sockets", 1) * c.get("cores", 1) * c.get("threads", 1)

    want_macs = sorted(n["mac"].lower() for n in expected.get("nics") or [] if n.get("mac"))
    have_macs = sorted((n.get("mac") or "").lower() for n in actual.get("nics") or [])
    checks = {
        "cpus": (cpus(actual), cpus(expected)),
        "memory_mib": (actual.get("memory_mib"), expected.get("memory_mib")),
        "firmware": ((actual.get("firmware") or {}).get("type"), (expected.get("firmware") or {}).get("type")),
        "disk_count": (len(actual.get("disks") or []), len(expected.get("disks") or [])),
        "nic_count": (len(actual.get("nics") or []), len(expected.get("nics") or [])),
        # MACs the bundle does not fix are the target's to generate.
        "nic_macs": (have_macs if want_macs else [], want_macs),
    }
    out, mismatches = {}, []
    for field, (have, want) in checks.items():
        out[field] = {"target": have, "bundle": want, "equal": have == want}
        if have != want:
            mismatches.append("%s: target %s, bundle %s" % (field, have, want))
    return out, mismatches


EXPORT_MODES = ("auto", "cold", "warm", "incremental")


def check_export_mode(mode, running, has_chain, name, bundle_dir):
    """Refuse a mode the VM's state or the bundle cannot give; returns cold or warm.

    cold: read while the VM is off; warm: while it runs (snapshot, backup job);
    incremental: either, but only on top of the bundle's chain. Whether a sync is full
    or incremental follows the chain (and the ``full`` option), not the mode.
    """
    if mode not in EXPORT_MODES:
        raise InputError("unknown export mode %r" % (mode,), "use one of %s" % ", ".join(EXPORT_MODES))
    if mode == "cold" and running:
        raise InputError(
            "VM %s is running; a cold export needs it off" % name,
            "shut it down first, or use mode warm (or auto)",
        )
    if mode == "warm" and not running:
        raise InputError(
            "VM %s is off; a warm export copies a running VM" % name,
            "start it, or use mode cold (or auto)",
        )
    if mode == "incremental" and not has_chain:
        raise InputError(
            "bundle %s holds no sync chain of VM %s to add an incremental to" % (bundle_dir, name),
            "run a full export first (mode auto)",
        )
    return "warm" if running else "cold"


def resume_refusal(bundle):
    """Why an incomplete bundle (its last export died half-way) cannot be continued, or None.

    Every platform continues such a bundle from its last finished sync rather than
    starting over, unless the bundle no longer agrees with itself (e.g. a digest list was
    replaced but the manifest not yet saved): then a new chain starts and the export says
    why in ``fallback_reason``.
    """
    try:
        bundle.check_integrity()
    except V2VError as exc:
        return "bundle %s was left incomplete and no longer agrees with itself (%s): a new full copy" % (
            bundle.dir,
            exc.problem,
        )
    return None


def finish_step(result, started, what):
    """The keys every step's result ends with, whatever the platform: changed,
    bytes_read, bytes_written, seconds, rate_bytes_per_second and a readable summary
    (``what`` says what was done: "cold full export of web01")."""
    result["changed"] = bool(result.get("changed"))
    result["bytes_read"] = int(result.get("bytes_read") or 0)
    result["bytes_written"] = int(result.get("bytes_written") or 0)
    result["seconds"] = round(time.monotonic() - started, 3)
    moved = max(result["bytes_read"], result["bytes_written"])
    result["rate_bytes_per_second"] = int(moved / result["seconds"]) if result["seconds"] > 0 else 0
    result["summary"] = "%s: read %s, wrote %s in %.1f s%s" % (
        what,
        human_bytes(result["bytes_read"]),
        human_bytes(result["bytes_written"]),
        result["seconds"],
        "" if result["changed"] else " (nothing to do)",
    )
    return result


def finish_export(result, name, started):
    """finish_step for an export: "warm incremental export of web01" ("cold export"
    when KVM's kind and mode are the same word)."""
    mode, kind = result.get("mode"), result.get("kind")
    words = [w for w in (mode, kind if kind != mode else None) if w]
    return finish_step(result, started, "%s export of %s" % (" ".join(words), name))


def require_complete(bundle):
    """A step reads only a bundle whose writer finished."""
    if not bundle.complete:
        raise InputError(
            "bundle %s is incomplete (the step writing it did not finish)" % bundle.dir,
            "re-run the export (and convert) that writes it",
        )


def run_verify(platform, bundle, ref, options):
    """The verify step, the same on every platform: spec fields, then each disk read
    back from the target and compared block by block with the bundle's digests, then
    (optionally) a boot check. Reads only the target. Raises VerifyError on a mismatch.

    ``platform`` supplies find_vm, vm_name, describe, power_state, target_disks,
    open_disk and boot_check (platforms/base.py).
    """
    started = time.monotonic()
    require_complete(bundle)
    vm = platform.find_vm(ref)
    name = platform.vm_name(vm)
    fields, mismatches = {}, []
    if options.get("spec", True):
        fields, mismatches = compare_spec(platform.describe(vm), bundle.manifest["spec"])
    result = {"changed": False, "name": name, "disks": [], "spec": fields, "boot": None, "bytes_read": 0}
    prov = read_provenance(platform.read_provenance(vm))
    fingerprint = content_fingerprint(bundle.manifest)
    result["digests"] = "not compared"
    if options.get("digests", True) and platform.power_state(vm) != "off":
        if not prov or prov["verified"] != fingerprint or prov["fingerprint"] != fingerprint:
            raise InputError(
                "target VM %s is %s: its disks change while they are read" % (name, platform.power_state(vm)),
                "shut it down before verifying digests, or set digests=false",
            )
        # Compared equal by an earlier verify, then started (by its boot check): the
        # guest has written since, so the disks are not read again.
        result["digests"] = "verified earlier, before the target was started"
    elif options.get("digests", True):
        converted = (prov or {}).get("guest_converted") or {}
        if converted.get("fingerprint") != fingerprint or converted.get("state") != "done":
            converted = {}
        else:
            result["guest_conversion"] = (
                "the disks equalled this bundle before the guest conversion at %s (%s); now compared with their "
                "digests after it" % (converted.get("at"), converted.get("verified_before"))
            )
        for record, tdisk in zip(bundle.disks, platform.target_disks(vm), strict=False):
            after = (converted.get("disks") or {}).get(record["id"]) if converted else None
            rec = _verify_disk(platform, vm, bundle, record, tdisk, mismatches, converted_sha256=after)
            result["bytes_read"] += rec["bytes_read"]
            result["disks"].append(rec)
        result["digests"] = "compared"
        if not mismatches and prov and prov["verified"] != fingerprint and not options.get("_check_mode"):
            # The target is the journal: it records what it was found equal to.
            platform.write_provenance(vm, dict(prov, verified=fingerprint))
            result["changed"] = True
    if options.get("boot_check") and not mismatches:
        result["boot"] = platform.boot_check(vm, options)
        result["changed"] = bool(result["boot"].get("changed"))
        if not result["boot"]["ok"]:
            mismatches.append("boot: %s" % result["boot"]["reason"])
    result["mismatches"] = mismatches
    result["ok"] = not mismatches
    finish_step(result, started, "verify %s" % name)
    result["summary"] = "verify %s: %s" % (
        name,
        "OK (%s%s)"
        % (
            "%d disk(s) equal" % len(result["disks"]) if result["disks"] else "digests " + result["digests"],
            ", booted" if result["boot"] else "",
        )
        if result["ok"]
        else "; ".join(mismatches),
    )
    if mismatches:
        raise VerifyError(
            "target %s differs from bundle %s: %s" % (name, bundle.dir, "; ".join(mismatches)),
            "re-run the import (replace=true makes the target again from the bundle)",
            **{k: v for k, v in result.items() if k != "changed"},
        )
    return result


def _verify_disk(platform, vm, bundle, record, tdisk, mismatches, converted_sha256=None):
    """One disk against the bundle's digests, or (its guest converted) against the
    digests the conversion recorded after it changed the disk."""
    want = bundle.load_digests(record)
    rec = {"id": record["id"], "where": tdisk["where"], "expected_sha256": record.get("digests_sha256")}
    rec.update(capacity=None, bytes_read=0, blocks=None, mismatched=None, equal=False)
    if want is None:
        mismatches.append("bundle disk %s has no digests to compare with" % record["id"])
        return rec
    with platform.open_disk(vm, tdisk) as reader:
        rec["capacity"] = reader.size
        if getattr(reader, "allocation", None):  # how the target told data from holes, if it did
            rec["allocation"] = reader.allocation
        if reader.size != record["capacity"]:
            mismatches.extend(compare_disk(record["id"], tdisk["where"], want, want, record["capacity"], reader.size))
            return rec
        progress = Progress("verify %s" % record["id"], record["capacity"])
        got = _blocks.digest_disk(reader, want.block_size, progress=progress)
        progress.finish()
    if converted_sha256:
        found = []
        if got.fingerprint() != converted_sha256:
            where = "%s (%s)" % (record["id"], tdisk["where"])
            found.append("disk %s differs from its digests after the guest conversion" % where)
        rec.update(bytes_read=got.bytes_read, blocks=len(want), actual_sha256=got.fingerprint(), equal=not found)
        rec["expected_sha256"] = converted_sha256
        mismatches.extend(found)
        return rec
    found = compare_disk(record["id"], tdisk["where"], want, got, record["capacity"], rec["capacity"])
    mismatches.extend(found)
    bad = want.changed_blocks(got)
    rec.update(
        bytes_read=got.bytes_read,
        blocks=len(want),
        mismatched=len(bad),
        first_differing_offsets=[b * want.block_size for b in bad[:10]],
        actual_sha256=got.fingerprint(),
        equal=not found,
    )
    return rec
