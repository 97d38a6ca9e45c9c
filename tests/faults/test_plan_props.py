"""The plan parser (module_utils/plan.py) on generated plans: they load, or fail with one
InputError naming the plan and the key path of each problem; never another exception."""

from __future__ import annotations

import copy
import string

import yaml
from ansible.parsing.dataloader import DataLoader
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import junk

from ansible_collections.vmigrate.v2v.plugins.inventory.plan import position
from ansible_collections.vmigrate.v2v.plugins.module_utils import plan as _plan
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError

SOURCE = "/plans/gen.v2v.yml"
ident = st.text(string.ascii_lowercase + string.digits + "-_", min_size=1, max_size=8).filter(lambda s: s[0].isalnum())


@st.composite
def plans(draw):
    """A plan docs/plan.md describes: endpoints, maps, defaults and waves of VM entries."""
    eps = draw(st.dictionaries(ident, st.sampled_from(_plan.PLATFORMS), min_size=1, max_size=3))
    endpoints = {}
    for name, platform in eps.items():
        ep = {"platform": platform}
        if platform == "kvm":
            ep["uri"] = draw(st.sampled_from(["qemu:///system", "qemu+ssh://h/system"]))
        else:
            ep.update(hostname="h.example", username="u", password="{{ lookup('env', 'PW') }}")
        if draw(st.booleans()):
            keys = _plan.PLACEMENT_KEYS[platform]
            ep["placement"] = {k: "x" for k in draw(st.lists(st.sampled_from(sorted(keys)), max_size=2))}
        endpoints[name] = ep
    names = sorted(endpoints)
    data = {"plugin": "vmigrate.v2v.plan", "version": 1, "endpoints": endpoints}
    if draw(st.booleans()):
        data["defaults"] = {
            "mode": draw(st.sampled_from(_plan.MODES)),
            "work_dir": "/srv/v2v",
            "verify": {"digests": draw(st.booleans()), "boot_timeout": draw(st.integers(1, 900))},
            "options": {"cutover_window": {"start": "22:00", "end": "02:30"}, "on_shutdown_timeout": "poweroff"},
            "conversion_hosts": draw(st.lists(ident, min_size=1, max_size=3, unique=True)),
        }
    if draw(st.booleans()):
        data["network_map"] = {"VM Network": "default", "lan": {"name": "br0", "type": "bridge"}}
        data["storage_map"] = {"ds1": "default"}
    waves = []
    for wname in draw(st.lists(ident, min_size=1, max_size=3, unique=True)):
        vms = []
        for vm in draw(st.lists(ident, min_size=1, max_size=3, unique=True)):
            entry = draw(
                st.sampled_from(
                    [
                        vm,
                        {"name": vm},
                        {"name": vm, "target_name": vm + "-new", "mode": "warm"},
                        {"select": {"name": vm + "*"}},
                    ]
                )
            )
            vms.append(entry)
        wave = {
            "name": wname,
            "source": draw(st.sampled_from(names)),
            "target": draw(st.sampled_from(names)),
            "vms": vms,
        }
        if draw(st.booleans()):
            wave.update(concurrency=draw(st.integers(1, 4)), max_failed=draw(st.integers(0, 2)))
        waves.append(wave)
    data["waves"] = waves
    return data


def _nodes(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _nodes(item, path + (i,))


class Facts(_plan.SourceFacts):
    """A source with the VMs the plan names (and a few more), each on one network and datastore."""

    def __init__(self, names, fail=False):
        self.names, self.fail = names, fail

    def vms(self):
        if self.fail:
            raise InputError("source unreachable", "start it")
        return [{"name": n, "folder": "/dc/vm", "tags": ["t"]} for n in self.names]

    def spec(self, name):
        return {"nics": [{"network": "VM Network", "mac": None}], "disks": [{"id": "d0", "source": {"path": "/x/y"}}]}


def load(data, facts=None):
    plan = _plan.parse(data, source=SOURCE)
    return _plan.expand(plan, facts)


def check_refusal(exc):
    assert SOURCE in exc.problem and exc.fix, exc.message
    fields = exc.details.get("fields") or [exc.details.get("field")]
    assert fields and all(isinstance(f, str) and f for f in fields), exc.details
    for field in fields:  # each problem names its key path in the message
        assert field in exc.problem, (field, exc.message)


@given(plans())
def test_generated_plans_load(data):
    try:
        records = load(copy.deepcopy(data))
    except InputError as exc:
        # a selector without source facts, or two VMs landing on one target name, is a refusal
        check_refusal(exc)
        return
    inv = _plan.inventory(_plan.parse(data, source=SOURCE), records)
    assert len(inv["hosts"]) == len(records) == len({r["v2v_target_name"] for r in records})
    for rec in records:
        assert rec["v2v_work_dir"].startswith(data.get("defaults", {}).get("work_dir", _plan.DEFAULT_WORK_DIR))
        assert rec["v2v_mode"] in _plan.MODES and rec["v2v_conversion_host"]


PLAN_ROW = (
    "readers",
    "fuzz: plans with 1-3 values replaced by junk (wrong types, unknown values; hypothesis, derandomized), as "
    "data and as YAML through the inventory's loader",
    "never a traceback: the plan loads, or one InputError naming the plan file (and line, from YAML), the key "
    "path of each problem, and a fix",
    "refused as the plan loads: no host, nothing run",
)


@given(plans(), st.data())
@settings(max_examples=400)
def test_spoiled_plans_fail_with_an_input_error_naming_the_key(reliability, data, draw):
    reliability(*PLAN_ROW)
    paths = list(_nodes(data))
    for _step in range(draw.draw(st.integers(1, 3))):
        path = draw.draw(st.sampled_from(paths))
        value = draw.draw(junk)
        if not path:
            data = value
            break
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier spoil replaced this node's parent
    with_facts = draw.draw(st.booleans())
    facts = None
    if with_facts and isinstance(data, dict) and isinstance(data.get("endpoints"), dict):
        facts = {
            ep: Facts(["a", "b", "web01"], fail=draw.draw(st.booleans()))
            for ep in data["endpoints"]
            if isinstance(ep, str)
        }
    try:
        load(data, facts)
    except InputError as exc:
        check_refusal(exc)


@given(plans(), st.data())
@settings(max_examples=100)
def test_spoiled_plan_files_name_the_line(tmp_path_factory, reliability, data, draw):
    """Through the inventory plugin's loader: a refusal of a YAML plan names the file and line."""
    reliability(*PLAN_ROW)
    waves = data["waves"]
    wave = draw.draw(st.sampled_from(waves))
    key = draw.draw(st.sampled_from(sorted(wave)))
    wave[key] = draw.draw(junk.filter(lambda v: not isinstance(v, float)))
    path = tmp_path_factory.mktemp("plan") / "p.v2v.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    loaded = DataLoader().load_from_file(str(path))
    try:
        _plan.expand(_plan.parse(loaded, source=str(path), position=position))
    except InputError as exc:
        assert str(path) in exc.problem and " line " in exc.problem, exc.message
