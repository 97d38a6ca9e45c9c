# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a rollback decides, the same on every platform (the rollback role runs it
through the power step's ``mark_rolled_back`` and the cleanup step).

- The mark a rolled-back target carries: its provenance with state ``rolled-back`` and
  ``rolled_back`` (when), and a note people see (libvirt <title>/<description>, vSphere
  annotation), both written by the platform's write_provenance from the provenance, so
  the next import that writes a fresh provenance also removes the note. The import
  (steps.plan_import) writes every disk of a marked target again: it ran after its
  import, so neither its fingerprints nor a delta chain can be trusted.
- The source's cleanup: what earlier exports made on it and left (platforms name them:
  KVM checkpoints and backup jobs, vSphere snapshots), removed and forgotten by the
  bundle; never anything the migration did not make.
"""

from __future__ import annotations

import time

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import bundle as _bundle
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import steps

STATE = "rolled-back"
# Every note starts with this, so it is found and replaced (never stacked) on a rewrite.
MARK = "ROLLED BACK by vmigrate.v2v"
TITLE = MARK + " - not the live VM"


def mark(prov, when):
    """The provenance of a rolled-back target: vouching for nothing it holds."""
    return dict(prov, state=STATE, rolled_back=when, verified=None)


def rolled_back(prov):
    """When the target carrying ``prov`` (raw, as read) was rolled back, or None."""
    prov = steps.read_provenance(prov)
    return prov.get("rolled_back") if prov else None


def note(prov):
    """The sentence a rolled-back target shows people (None when not rolled back)."""
    prov = steps.read_provenance(prov)
    if not prov or not prov.get("rolled_back"):
        return None
    return (
        "%s at %s: not the live VM, %s VM %s runs again. A migrate, sync or cutover of it writes every disk "
        "again and clears this mark." % (MARK, prov["rolled_back"], prov["source_platform"], prov["source_name"])
    )


def with_note(text, new_note, sep="\n"):
    """``text`` (a description, annotation or title) with our note as its first part:
    replaced when there is one, removed when ``new_note`` is None."""
    parts = (text or "").split(sep) if text else []
    if parts and parts[0].startswith(MARK):
        parts = parts[1:]
    rest = sep.join(parts)
    if not new_note:
        return rest
    return new_note + sep + rest if rest else new_note


def title(prov):
    """The one-line title a rolled-back target carries (None when not rolled back)."""
    return TITLE if note(prov) else None


def mark_target(platform, vm, check_mode, now=None):
    """Mark ``vm`` (off, carrying our provenance) as rolled back; idempotent.

    Returns {marked: changed, rolled_back: when, note}. A VM with no provenance of ours
    is refused: only a target an import made is marked.
    """
    name = platform.vm_name(vm)
    raw = platform.read_provenance(vm)
    prov = steps.read_provenance(raw)
    if prov is None:
        raise InputError(
            "VM %s carries no vmigrate provenance, so it is not a target of a migration" % name,
            "mark only a target that an import made (the rollback role checks this first)",
        )
    if prov.get("rolled_back") and prov["state"] == STATE:
        return {"marked": False, "rolled_back": prov["rolled_back"], "note": note(prov)}
    when = prov.get("rolled_back") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    marked = mark(prov, when)
    if not check_mode:
        platform.write_provenance(vm, marked)
    return {"marked": True, "rolled_back": when, "note": note(marked)}


def refuse_start(platform, vm):
    """Starting a rolled-back target would run stale disks beside the live source."""
    when = rolled_back(platform.read_provenance(vm))
    if when:
        name = platform.vm_name(vm)
        raise InputError(
            "VM %s was rolled back at %s: its disks are from before the rollback and the source runs again"
            % (name, when),
            "run migrate, sync or cutover for its source (the import writes every disk again and clears the mark), "
            "or clear the mark by importing with replace=true",
        )


def run_cleanup(platform, vm, bundle_dir, check_mode):
    """The cleanup step: remove what earlier exports made on the source ``vm`` and left
    (platform.migration_leftovers), forget it in the bundle; a result dict."""
    started = time.monotonic()
    name = platform.vm_name(vm)
    bundle = _bundle.Bundle.load(bundle_dir) if bundle_dir and _bundle.Bundle.exists(bundle_dir) else None
    items = platform.migration_leftovers(vm, bundle)
    shown = [{k: v for k, v in item.items() if k != "record"} for item in items]
    removed = []
    if not check_mode:
        try:
            for item in items:
                platform.remove_leftover(vm, item)
                removed.append(item)
        finally:
            # What is gone is no longer recorded, also when a later removal failed.
            if bundle is not None and any(i.get("record") is not None for i in removed):
                for item in removed:
                    if item.get("record") is not None:
                        bundle.forget_created(item["kind"] + "s", item["record"])
                bundle.save()
    result = {
        "changed": bool(items),
        "name": name,
        "removed": shown,
        "diff": {"before": {"leftovers": shown}, "after": {"leftovers": []}},
    }
    steps.finish_step(result, started, "cleanup of %s" % name)
    what = ", ".join("%s %s" % (i["kind"], i["name"]) for i in shown)
    result["summary"] = "cleanup of %s: %s" % (
        name,
        ("would remove " if check_mode else "removed ") + what if shown else "nothing of ours left (nothing to do)",
    )
    return result
