"""Callback used by bench/e2e.py only: writes each task's result, by task name, as JSON
to the file named by VMIGRATE_BENCH_RESULTS when the playbook ends. It replaces an extra
task (which would itself cost a module start-up inside the timed playbook)."""

from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._results = {}

    def _keep(self, result, failed=False):
        self._results[result._task.get_name()] = dict(result._result, failed=failed)

    def v2_runner_on_ok(self, result):
        self._keep(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._keep(result, failed=True)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("VMIGRATE_BENCH_RESULTS")
        if path:
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(self._results, fh, default=str)
