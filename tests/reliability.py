"""The `reliability` fixture: the rows of docs/reliability.md, declared by the tests that prove them.

A test that tries a fault or a bad input declares what it proves:
reliability(area, fault, user_sees, state_left). The run records whether the test passed;
with VMIGRATE_RELIABILITY_ROWS=<file> (the Makefile's unit, integration and faults targets)
the session writes its rows there as JSON at the end, and tests/reliability_doc.py turns the
row files of the suites that ran into docs/reliability.md, so the page says what those runs
proved and cannot drift from the tests.

Loaded for every suite by tests/conftest.py (pytest_plugins).
"""

import json
import os

import pytest

AREAS = ("kvm", "vsphere", "hyperv", "plan", "engine", "kill", "security", "readers", "names")

_ROWS = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _suite(node):
    """unit, integration or faults: the folder under tests/ the test lives in."""
    parts = node.nodeid.split("::", 1)[0].split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" else parts[0]


@pytest.fixture
def reliability(request):
    rows = []

    def declare(area, fault, user_sees, state_left):
        # A typo in an area would make a table section of its own: refuse it here.
        assert area in AREAS, "reliability area %r is not one of %s" % (area, ", ".join(AREAS))
        rows.append({"area": area, "fault": fault, "user_sees": user_sees, "state_left": state_left})

    yield declare
    call = getattr(request.node, "rep_call", None)
    if call is None or call.failed:
        proved = "NO"
    else:
        proved = "skipped" if call.skipped else "yes"
    path, _sep, name = request.node.nodeid.partition("::")
    test = "%s::%s" % (os.path.basename(path), name.split("[")[0])
    for row in rows:
        _ROWS.append(dict(row, proved=proved, suite=_suite(request.node), test=test))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("VMIGRATE_RELIABILITY_ROWS")
    if not path:
        return
    # The same row from several parametrized cases or hypothesis examples: once.
    unique = {json.dumps(r, sort_keys=True): r for r in _ROWS}
    rows = sorted(unique.values(), key=lambda r: (r["area"], r["fault"], r["suite"], r["test"]))
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
