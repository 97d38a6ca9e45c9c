# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Progress of long copies: percent, bytes and rate, and a readable summary.

Modules cannot print while Ansible runs them, so progress events are appended as
JSON lines to the file named by VMIGRATE_PROGRESS_FILE (the callback plugin, the
`step` action's wait loop through the progress_info module, and people with
`tail -f` read it) and the summary goes into the module result. An event carries the
snapshot's keys plus `event` (progress or done) and `eta_seconds`.
"""

from __future__ import annotations

import json
import os
import time

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n):
    n = float(n)
    for unit in UNITS:
        if abs(n) < 1024 or unit == UNITS[-1]:
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024
    return "%d B" % n  # not reached


def eta_seconds(event):
    """Seconds left at the event's rate, or None when it cannot tell (no rate yet)."""
    rate = event.get("rate_bytes_per_second") or 0
    left = max(int(event.get("total_bytes") or 0) - int(event.get("bytes") or 0), 0)
    if not left:
        return 0
    return int(left / rate + 0.5) if rate > 0 else None


def progress_line(event):
    """One readable line: "copy web01 disk0: 42.0% 10.0 MiB of 24.0 MiB at 5.0 MiB/s, ETA 3 s"."""
    if event.get("message"):
        return "%s: %s (%.0f s)" % (event.get("label"), event["message"], event.get("seconds") or 0)
    eta = event.get("eta_seconds", eta_seconds(event))
    return "%s: %s%% %s of %s at %s/s, ETA %s" % (
        event.get("label"),
        event.get("percent"),
        human_bytes(event.get("bytes") or 0),
        human_bytes(event.get("total_bytes") or 0),
        human_bytes(event.get("rate_bytes_per_second") or 0),
        "?" if eta is None else "%d s" % eta,
    )


class Progress:
    """Counts bytes done against a total and emits rate-limited events."""

    def __init__(self, label, total_bytes, sink=None, interval=1.0, clock=time.monotonic):
        self.label = label
        self.total = int(total_bytes or 0)
        self.done_bytes = 0
        self.interval = interval
        self._clock = clock
        self.started = clock()
        self._last_emit = 0.0
        self._sink = sink if sink is not None else os.environ.get("VMIGRATE_PROGRESS_FILE")
        self.events = 0

    def advance(self, nbytes):
        self.done_bytes += int(nbytes)
        now = self._clock()
        if now - self._last_emit >= self.interval:
            self._last_emit = now
            self._emit("progress")

    def snapshot(self):
        elapsed = max(self._clock() - self.started, 1e-9)
        percent = 100.0 if not self.total else min(100.0, 100.0 * self.done_bytes / self.total)
        return {
            "label": self.label,
            "bytes": self.done_bytes,
            "total_bytes": self.total,
            "percent": round(percent, 1),
            "seconds": round(elapsed, 3),
            "rate_bytes_per_second": int(self.done_bytes / elapsed),
        }

    def note(self, message):
        """A phase of work without byte counts (virt-v2v's "Inspecting the source"), emitted as it comes."""
        self._emit("message", dict(self.snapshot(), message=message))

    def finish(self):
        """Emit the final event and return the summary dict for the module result."""
        summary = self.snapshot()
        summary["summary"] = "%s: %s of %s in %.1f s (%s/s)" % (
            self.label,
            human_bytes(summary["bytes"]),
            human_bytes(summary["total_bytes"]),
            summary["seconds"],
            human_bytes(summary["rate_bytes_per_second"]),
        )
        self._emit("done", summary)
        return summary

    def _emit(self, event, data=None):
        self.events += 1
        if not self._sink:
            return
        record = dict(data or self.snapshot())
        record["event"] = event
        record["eta_seconds"] = eta_seconds(record)
        try:
            if callable(self._sink):
                self._sink(record)
            else:
                # Not world-readable: labels name VMs and disks (0640 like the rest, _files).
                fd = os.open(self._sink, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                with os.fdopen(fd, "a") as fh:
                    fh.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError:
            pass  # progress must never break a migration


def last_event(text):
    """The last complete JSON event among the lines of ``text``, or None (a line still
    being written, or cut at the start of a tail, is skipped)."""
    for raw in reversed((text or "").splitlines()):
        try:
            event = json.loads(raw)
        except ValueError:
            continue
        if isinstance(event, dict):
            return event
    return None


def job_state(text):
    """(finished, result) of an async job from its results file's text, read as
    ansible.builtin.async_status reads it: a file not (fully) written yet, or one that
    says started and not finished, is a job still running."""
    try:
        data = json.loads(text)
    except ValueError:
        return False, None
    if not isinstance(data, dict) or ("started" in data and not data.get("finished")):
        return False, None
    return True, data
