# Copyright: contributors to vmigrate.v2v
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration report: per VM and per wave, as data (report.json) and as one
self-contained HTML page (report.html). Pure Python, no Ansible and no hypervisor: the
report role reads the status files (status.json, sync.json, cutover.json) the migrate,
sync and cutover roles write, and the filters in plugins/filter/report.py call these.

Nothing here reads a clock: the same status files always give the same report, so the
role rewrites the files only when something new happened."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from html import escape

# A VM's phases, in the order they happen, and the file each one writes.
PHASES = ("migrate", "sync", "cutover")
PHASE_FILES = {"migrate": "status.json", "sync": "sync.json", "cutover": "cutover.json"}
STEPS = ("export", "convert", "import", "guest_convert", "verify")
NOT_STARTED = "not started"
FAILED = "failed"
# Status -> CSS class of its colour (anything else is "other").
STATUS_CLASS = {
    "migrated": "ok",
    "synced": "ok",
    "cut-over": "ok",
    "ok": "ok",
    FAILED: "bad",
    NOT_STARTED: "none",
    "not run": "none",
}


def _num(value, kind=float):
    """A number from a status file (set_fact may have written it as a string); None if
    there is none."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        return None


def _time(text):
    try:
        return datetime.fromisoformat(str(text))
    except (TypeError, ValueError):
        return None


def read_status_file(result, path="status file"):
    """A slurp result (or a mapping already parsed) -> (record or None, error or None).
    A file that is not there is no error: that phase has not started."""
    if result is None:
        return None, None
    if "content" not in result:
        msg = str(result.get("msg") or "")
        if result.get("skipped") or "not found" in msg.lower() or "no such file" in msg.lower():
            return None, None
        return None, "could not read %s: %s. Fix: check the file and its permissions on the conversion host" % (
            path,
            msg or "unknown error",
        )
    try:
        text = result["content"]
        if result.get("encoding", "base64") == "base64":
            text = base64.b64decode(text).decode("utf-8")
        record = json.loads(text)
    except (ValueError, TypeError) as exc:
        return None, "%s is not valid JSON (%s). Fix: delete it and re-run the phase that writes it" % (path, exc)
    if not isinstance(record, dict):
        return None, "%s does not hold a JSON object. Fix: delete it and re-run the phase that writes it" % path
    return record, None


def _phase(record, phase):
    """What the report says about one phase of a VM, from its status file."""
    if record is None:
        return {"status": NOT_STARTED}
    out = {
        "status": str(record.get("status") or "unknown"),
        "finished": record.get("finished"),
        "error": record.get("error") or None,
        "steps": {},
        "seconds": 0.0,
        "bytes_read": 0,
        "bytes_written": 0,
        "bytes_moved": 0,
    }
    steps = record.get("steps") or {}
    for step in STEPS:
        res = steps.get(step) or {}
        if not res or res.get("skipped"):
            continue
        item = {k: res[k] for k in ("changed", "summary", "ok", "msg") if k in res}
        for key, kind in (("seconds", float), ("bytes_read", int), ("bytes_written", int)):
            item[key] = _num(res.get(key), kind) or 0
        out["steps"][step] = item
        out["seconds"] += item["seconds"]
    out["seconds"] = round(out["seconds"], 3)
    # Source bytes read by the export; target bytes written by the import; bytes moved =
    # the data carried over, counted once: as the phase recorded it (a sync's
    # bytes_moved), else the most any step wrote (an export or convert may only reference
    # the source's files, and then the import copies straight from them).
    step_bytes = [v.get("bytes_written", 0) for s, v in out["steps"].items() if s != "verify"]
    out["bytes_read"] = out["steps"].get("export", {}).get("bytes_read", 0)
    out["bytes_written"] = out["steps"].get("import", {}).get("bytes_written", 0)
    moved = _num(record.get("bytes_moved"), int)
    out["bytes_moved"] = moved if moved is not None else max(step_bytes or [0])
    if "verify" in out["steps"]:
        out["verified"] = out["steps"]["verify"].get("ok")
    if isinstance(record.get("guest"), dict):
        out["guest"] = record["guest"]
    if phase == "sync":
        out["sync_index"] = _num(record.get("sync_index"), int)
        out["behind_seconds"] = _num(record.get("behind_seconds"))
        out["synced_at"] = record.get("synced_at")
    if phase == "cutover":
        out["downtime_seconds"] = _num(record.get("downtime_seconds"))
        out["source_shutdown"] = record.get("source_shutdown")
        out["target_started"] = record.get("target_started")
    return out


def _files_by_phase(files):
    """The role's slurp results (a list, each with item.key the phase) or a mapping
    phase -> result."""
    if isinstance(files, dict):
        return dict(files)
    by_phase = {}
    for res in files or []:
        item = res.get("item")
        key = item.get("key") if isinstance(item, dict) else item
        by_phase[key] = res
    return by_phase


def vm_report(vm):
    """One VM of the plan: vm is what the role gathered for a host - name, vm, wave,
    wave_index, mode, source/target {endpoint, platform}, conversion_host, work_dir and
    files (the slurp results of its status files)."""
    files = _files_by_phase(vm.get("files"))
    phases, errors = {}, []
    for phase in PHASES:
        path = "%s/%s" % (vm.get("work_dir") or ".", PHASE_FILES[phase])
        record, error = read_status_file(files.get(phase), path)
        phases[phase] = _phase(record, phase)
        if error:
            phases[phase]["status"] = "unreadable"
            errors.append({"phase": phase, "error": error})
        elif phases[phase].get("error"):
            errors.append({"phase": phase, "error": str(phases[phase]["error"])})
    started = [p for p in PHASES if phases[p]["status"] != NOT_STARTED]
    # The VM stands where its furthest phase stands (a re-run rewrites that phase's file).
    status = phases[started[-1]]["status"] if started else NOT_STARTED
    seconds = round(sum(phases[p].get("seconds", 0) for p in PHASES), 3)
    totals = {k: sum(phases[p].get(k, 0) for p in PHASES) for k in ("bytes_read", "bytes_written", "bytes_moved")}
    # The latest verification that ran: the cutover's, else a sync's, else the migration's.
    verify = {"result": "not run"}
    for phase in reversed(PHASES):
        step = phases[phase].get("steps", {}).get("verify")
        if step:
            ok = step.get("ok")
            verify = {
                "result": "ok" if ok is True else (FAILED if ok is False else "unknown"),
                "phase": phase,
                "summary": step.get("summary") or step.get("msg"),
            }
            break
    if verify["result"] == "not run" and any(
        phases[p]["status"] == FAILED and "verify" in str(phases[p].get("error") or "").lower() for p in PHASES
    ):
        verify["result"] = FAILED
    source, target = vm.get("source") or {}, vm.get("target") or {}
    return {
        "name": vm.get("name"),
        "vm": vm.get("vm"),
        "wave": vm.get("wave"),
        "wave_index": vm.get("wave_index"),
        "mode": vm.get("mode"),
        "source": {"platform": source.get("platform"), "endpoint": source.get("endpoint")},
        "target": {"platform": target.get("platform"), "endpoint": target.get("endpoint")},
        "conversion_host": vm.get("conversion_host"),
        "work_dir": vm.get("work_dir"),
        "status": status,
        "phases": phases,
        "seconds": seconds,
        **totals,
        "throughput_bytes_per_second": int(totals["bytes_read"] / seconds) if seconds > 0 else 0,
        "downtime_seconds": phases["cutover"].get("downtime_seconds"),
        "verification": verify,
        # The guest as the latest phase that looked at it left it (the cutover converts).
        "guest": next((phases[p]["guest"] for p in reversed(PHASES) if phases[p].get("guest")), None),
        "errors": errors,
    }


def _guest_cell(guest):
    """(title, text) of the HTML's guest column: the decision, and why, what changed, warnings."""
    if not guest:
        return "", "-"
    words = [guest.get("reason") or ""] + list(guest.get("hardware") or []) + list(guest.get("warnings") or [])
    action = guest.get("action") or "-"
    if guest.get("deferred"):
        action += " (at the cutover)"
    return _e("; ".join(w for w in words if w)), _e(" ".join(x for x in (action, guest.get("os") or "") if x))


def _wave_span(vms):
    """Seconds from the first VM's start to the last one's end, from the status files'
    finish times less their steps' seconds (VMs of a wave run in parallel)."""
    starts, ends = [], []
    for vm in vms:
        for phase in PHASES:
            p = vm["phases"][phase]
            end = _time(p.get("finished"))
            if end is None:
                continue
            ends.append(end.timestamp())
            starts.append(end.timestamp() - p.get("seconds", 0))
    return round(max(ends) - min(starts), 1) if ends else 0.0


def build_report(vms, waves=None, plan_file=None):
    """The whole report (what report.json holds) from the VMs the role gathered and the
    plan's waves (v2v_waves: name, index, concurrency, max_failed, hosts)."""
    rows = sorted((vm_report(v) for v in vms or []), key=lambda r: (r["wave_index"] or 0, str(r["name"])))
    order = [w.get("name") for w in sorted(waves or [], key=lambda w: w.get("index", 0))]
    for row in rows:
        if row["wave"] not in order:
            order.append(row["wave"])
    wave_info = {w.get("name"): w for w in waves or []}
    out_waves = []
    for name in order:
        members = [r for r in rows if r["wave"] == name]
        if not members:
            continue
        counts = {}
        for r in members:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        info = wave_info.get(name, {})
        downtimes = [r["downtime_seconds"] for r in members if r["downtime_seconds"] is not None]
        out_waves.append(
            {
                "name": name,
                "index": info.get("index", members[0]["wave_index"]),
                "concurrency": info.get("concurrency"),
                "max_failed": info.get("max_failed"),
                "vms": [r["name"] for r in members],
                "counts": dict(sorted(counts.items())),
                "failed": counts.get(FAILED, 0),
                "bytes_read": sum(r["bytes_read"] for r in members),
                "bytes_written": sum(r["bytes_written"] for r in members),
                "bytes_moved": sum(r["bytes_moved"] for r in members),
                "vm_seconds": round(sum(r["seconds"] for r in members), 3),
                "duration_seconds": _wave_span(members),
                "max_downtime_seconds": max(downtimes) if downtimes else None,
            }
        )
    finished = [p.get("finished") for r in rows for p in r["phases"].values() if p.get("finished")]
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return {
        "plan_file": plan_file,
        # The newest status file's time: stable while nothing new happens.
        "as_of": max(finished, key=lambda t: _time(t).timestamp() if _time(t) else 0) if finished else None,
        "totals": {
            "vms": len(rows),
            "counts": dict(sorted(counts.items())),
            "bytes_read": sum(r["bytes_read"] for r in rows),
            "bytes_written": sum(r["bytes_written"] for r in rows),
            "bytes_moved": sum(r["bytes_moved"] for r in rows),
            "vm_seconds": round(sum(r["seconds"] for r in rows), 3),
        },
        "waves": out_waves,
        "vms": rows,
    }


# ---------------------------------------------------------------- HTML


def human_bytes(n):
    n = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024
    return "%.1f PiB" % n  # pragma: no cover - the loop returns at TiB


def human_seconds(s):
    if s is None:
        return "-"
    s = float(s)
    if s < 60:
        return "%.1f s" % s
    if s < 3600:
        return "%dm %02ds" % (s // 60, s % 60)
    return "%dh %02dm" % (s // 3600, (s % 3600) // 60)


def _e(value):
    """Escaped text for HTML content and (double- or single-quoted) attributes."""
    return escape("" if value is None else str(value), quote=True)


def _badge(status):
    return '<span class="st %s">%s</span>' % (STATUS_CLASS.get(status, "other"), _e(status))


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.4em 0 .5em}
.meta{color:#666;margin-bottom:1em}
table{border-collapse:collapse;background:#fff;margin-bottom:1em}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eee;cursor:pointer;user-select:none}
td.n{text-align:right;white-space:nowrap}
.st{display:inline-block;padding:0 .5em;border-radius:.6em;font-size:.9em;white-space:nowrap}
.st.ok{background:#d4f4d9;color:#125a20}.st.bad{background:#fbd5d5;color:#8a1010}
.st.none{background:#e6e6e6;color:#555}.st.other{background:#fff1c2;color:#6b5000}
tr.bad td{background:#fff5f5}
.err{color:#8a1010;font-family:monospace;white-space:pre-wrap;overflow-wrap:anywhere;max-width:36em}
.chart text{font-size:11px;fill:#333}.chart .sec{fill:#4a7bd0}.chart .byt{fill:#e0913a}
"""

# Click a column header to sort by it. The body's data-ready says the script ran to
# its end (the headless-browser test looks for it).
SCRIPT = """
(function () {
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var asc = th.getAttribute("data-dir") !== "asc";
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute("data-v") || a.cells[col].textContent;
          var y = b.cells[col].getAttribute("data-v") || b.cells[col].textContent;
          var nx = parseFloat(x), ny = parseFloat(y);
          var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
          return asc ? c : -c;
        });
        th.setAttribute("data-dir", asc ? "asc" : "desc");
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  document.body.setAttribute("data-ready", "1");
})();
"""


def _chart(rows):
    """An inline SVG bar chart: per VM, its seconds (blue) and bytes moved (orange), each
    scaled to the largest."""
    if not rows:
        return '<p class="meta">No VMs.</p>'
    label_w, bar_w, row_h = 260, 360, 34
    max_s = max(r["seconds"] for r in rows) or 1
    max_b = max(r["bytes_moved"] or r["bytes_read"] for r in rows) or 1
    height = row_h * len(rows) + 24
    out = [
        '<svg class="chart" role="img" width="%d" height="%d" '
        'aria-label="Seconds and bytes per VM">' % (label_w + bar_w + 140, height),
        '<rect class="sec" x="%d" y="4" width="10" height="10"/><text x="%d" y="13">seconds</text>'
        % (label_w, label_w + 14),
        '<rect class="byt" x="%d" y="4" width="10" height="10"/><text x="%d" y="13">bytes moved</text>'
        % (label_w + 90, label_w + 104),
    ]
    for i, r in enumerate(rows):
        y = 24 + i * row_h
        moved = r["bytes_moved"] or r["bytes_read"]
        ws = max(1, int(bar_w * r["seconds"] / max_s)) if r["seconds"] else 0
        wb = max(1, int(bar_w * moved / max_b)) if moved else 0
        out.append('<g class="vm"><title>%s</title>' % _e(r["name"]))
        out.append('<text x="0" y="%d">%s</text>' % (y + 18, _e(str(r["name"])[:40])))
        out.append('<rect class="sec" x="%d" y="%d" width="%d" height="12"/>' % (label_w, y + 2, ws))
        out.append('<text x="%d" y="%d">%s</text>' % (label_w + ws + 4, y + 12, _e(human_seconds(r["seconds"]))))
        out.append('<rect class="byt" x="%d" y="%d" width="%d" height="12"/>' % (label_w, y + 16, wb))
        out.append('<text x="%d" y="%d">%s</text></g>' % (label_w + wb + 4, y + 26, _e(human_bytes(moved))))
    out.append("</svg>")
    return "".join(out)


def _td_num(value, text):
    return '<td class="n" data-v="%s">%s</td>' % (_e(value if value is not None else ""), _e(text))


def render_html(report):
    """report (build_report's) -> one self-contained HTML page: inline CSS, an inline
    SVG chart and a small inline script; nothing is loaded from anywhere."""
    rows = report.get("vms") or []
    totals = report.get("totals") or {}
    title = "Migration report"
    h = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # No request may leave the page: only inline styles and scripts.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">",
        "<title>%s</title><style>%s</style></head><body>" % (_e(title), CSS),
        "<h1>%s</h1>" % _e(title),
        '<div class="meta">plan %s &middot; as of %s &middot; %d VMs: %s &middot; read %s, written %s, moved %s</div>'
        % (
            _e(report.get("plan_file") or "-"),
            _e(report.get("as_of") or "no status yet"),
            totals.get("vms", 0),
            _e(", ".join("%d %s" % (n, s) for s, n in (totals.get("counts") or {}).items()) or "none"),
            _e(human_bytes(totals.get("bytes_read"))),
            _e(human_bytes(totals.get("bytes_written"))),
            _e(human_bytes(totals.get("bytes_moved"))),
        ),
        "<h2>Waves</h2>",
        '<table id="waves" class="sortable"><thead><tr><th>#</th><th>wave</th><th>VMs</th><th>status</th>'
        "<th>failed / tolerated</th><th>duration</th><th>VM time</th><th>read</th><th>written</th>"
        "<th>moved</th><th>max downtime</th></tr></thead><tbody>",
    ]
    for w in report.get("waves") or []:
        tolerated = "-" if w.get("max_failed") is None else str(w["max_failed"])
        bad = w["failed"] and w.get("max_failed") is not None and w["failed"] > w["max_failed"]
        h.append(
            '<tr class="%s">' % ("bad" if bad else "")
            + _td_num(w.get("index"), w.get("index"))
            + "<td>%s</td>" % _e(w["name"])
            + _td_num(len(w["vms"]), len(w["vms"]))
            + "<td>%s</td>" % " ".join("%s&nbsp;%d" % (_badge(s), n) for s, n in w["counts"].items())
            + _td_num(w["failed"], "%d / %s" % (w["failed"], tolerated))
            + _td_num(w["duration_seconds"], human_seconds(w["duration_seconds"]))
            + _td_num(w["vm_seconds"], human_seconds(w["vm_seconds"]))
            + _td_num(w["bytes_read"], human_bytes(w["bytes_read"]))
            + _td_num(w["bytes_written"], human_bytes(w["bytes_written"]))
            + _td_num(w["bytes_moved"], human_bytes(w["bytes_moved"]))
            + _td_num(w["max_downtime_seconds"], human_seconds(w["max_downtime_seconds"]))
            + "</tr>"
        )
    h.append("</tbody></table>")
    h.append("<h2>Seconds and bytes per VM</h2>")
    h.append(_chart(rows))
    h.append(
        '<h2>VMs</h2><table id="vms" class="sortable"><thead><tr><th>VM</th><th>wave</th><th>source</th>'
        "<th>target</th><th>mode</th><th>status</th><th>migrate</th><th>sync</th><th>cutover</th>"
        "<th>time</th><th>read</th><th>written</th><th>moved</th><th>rate</th><th>downtime</th>"
        "<th>guest</th><th>verify</th><th>errors</th></tr></thead><tbody>"
    )
    for r in rows:
        src = "%s (%s)" % (r["source"]["endpoint"] or "-", r["source"]["platform"] or "-")
        dst = "%s (%s)" % (r["target"]["endpoint"] or "-", r["target"]["platform"] or "-")
        steps = "; ".join(
            "%s %s: %s" % (phase, step, human_seconds(v["seconds"]))
            for phase in PHASES
            for step, v in r["phases"][phase].get("steps", {}).items()
        )
        errors = "".join('<div class="err">%s: %s</div>' % (_e(e["phase"]), _e(e["error"])) for e in r["errors"])
        vname = r["name"] if r["vm"] in (None, r["name"]) else "%s (source %s)" % (r["name"], r["vm"])
        h.append(
            '<tr class="%s" data-vm="%s">' % ("bad" if r["status"] == FAILED else "", _e(r["name"]))
            + "<td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td>"
            % (_e(vname), _e(r["wave"]), _e(src), _e(dst), _e(r["mode"]), _badge(r["status"]))
            + "".join("<td>%s</td>" % _badge(r["phases"][p]["status"]) for p in PHASES)
            + '<td class="n" data-v="%s" title="%s">%s</td>'
            % (_e(r["seconds"]), _e(steps), _e(human_seconds(r["seconds"])))
            + _td_num(r["bytes_read"], human_bytes(r["bytes_read"]))
            + _td_num(r["bytes_written"], human_bytes(r["bytes_written"]))
            + _td_num(r["bytes_moved"], human_bytes(r["bytes_moved"]))
            + _td_num(r["throughput_bytes_per_second"], human_bytes(r["throughput_bytes_per_second"]) + "/s")
            + _td_num(r["downtime_seconds"], human_seconds(r["downtime_seconds"]))
            + '<td title="%s">%s</td>' % _guest_cell(r.get("guest"))
            + '<td title="%s">%s</td>'
            % (_e(r["verification"].get("summary") or ""), _badge(r["verification"]["result"]))
            + "<td>%s</td></tr>" % errors
        )
    h.append("</tbody></table>")
    h.append("<script>%s</script></body></html>" % SCRIPT)
    return "\n".join(h) + "\n"
