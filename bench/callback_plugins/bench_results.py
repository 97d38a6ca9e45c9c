"""Callback used by bench/e2e.py only: writes each task's result, by task name, as JSON
to the file named by VMIGRATE_BENCH_RESULTS when the playbook ends. It replaces an extra
task (which would itself cost a module start-up inside the timed playbook).

Each result also carries ``_bench_host`` and wall-clock stamps (time.time()):
``_bench_play_start`` (the playbook began, as the callback saw it), ``_bench_task_start``
and ``_bench_task_end`` (the task started on that host / its result came back). With
several hosts, results are keyed ``<host>/<task name>``."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_results"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._results = {}
        self._started = {}  # (host, task uuid) -> time the runner started it
        self._play_start = time.time()
        self._hosts = set()

    def _key(self, result):
        return (result._host.get_name(), result._task._uuid)

    def v2_playbook_on_start(self, playbook):
        self._play_start = time.time()

    def v2_runner_on_start(self, host, task):
        self._started[(host.get_name(), task._uuid)] = time.time()

    def _keep(self, result, failed=False):
        host = result._host.get_name()
        self._hosts.add(host)
        self._results[(host, result._task.get_name())] = dict(
            result._result,
            failed=failed,
            _bench_host=host,
            _bench_play_start=self._play_start,
            _bench_task_start=self._started.get(self._key(result)),
            _bench_task_end=time.time(),
        )

    def v2_runner_on_ok(self, result):
        self._keep(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._keep(result, failed=True)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("VMIGRATE_BENCH_RESULTS")
        if path:
            many = len(self._hosts) > 1
            out = {("%s/%s" % k if many else k[1]): v for k, v in self._results.items()}
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(out, fh, default=str)
