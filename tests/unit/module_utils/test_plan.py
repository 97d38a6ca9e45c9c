"""The plan: validation (every refusal names file, line, key and fix), merging, spreading, expansion."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from ansible.parsing.dataloader import DataLoader

from ansible_collections.vmigrate.v2v.plugins.inventory.plan import position
from ansible_collections.vmigrate.v2v.plugins.module_utils import plan as _plan
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError

BASE = """\
plugin: vmigrate.v2v.plan
version: 1
endpoints:
  kvm1: {platform: kvm, uri: "qemu:///system"}
  vc:
    platform: vsphere
    hostname: vc.example.com
    username: me
    password: "{{ lookup('env', 'SECRET_PW') }}"
    placement: {datastore: ds1}
network_map: {default: VM Network}
storage_map: {default: ds1}
waves:
  - name: wave1
    source: kvm1
    target: vc
    vms:
      - web01
"""


LOADS = "refused as the plan loads: no host in the inventory, nothing run"


def load(tmp_path, text, name="t.v2v.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return DataLoader().load_from_file(str(path)), str(path)


def build(tmp_path, text, facts=None, use_facts=False):
    data, path = load(tmp_path, text)
    plan = _plan.parse(data, source=path, position=position)
    return plan, _plan.expand(plan, facts if (facts is not None or use_facts) else None)


def refused(tmp_path, text, facts=None):
    data, path = load(tmp_path, text)
    with pytest.raises(InputError) as exc:
        plan = _plan.parse(data, source=path, position=position)
        _plan.expand(plan, facts)
    return exc.value, path


def test_minimal_plan_gets_the_defaults(tmp_path):
    _plan_obj, recs = build(tmp_path, BASE)
    (rec,) = recs
    assert rec["v2v_vm"] == rec["v2v_target_name"] == "web01"
    assert rec["v2v_wave"] == "wave1" and rec["v2v_wave_index"] == 0 and rec["v2v_wave_group"] == "wave_wave1"
    assert rec["v2v_mode"] == "full"
    assert rec["v2v_conversion_host"] == "localhost"
    assert rec["v2v_work_dir"] == "/var/lib/vmigrate/wave1/web01"
    assert rec["v2v_source"] == {"endpoint": "kvm1", "platform": "kvm", "connection": {"uri": "qemu:///system"}}
    assert rec["v2v_target"]["connection"]["password"] == "{{ lookup('env', 'SECRET_PW') }}"  # untouched
    assert rec["v2v_target"]["placement"] == {"datastore": "ds1"}
    assert rec["v2v_verify"] == _plan.DEFAULT_VERIFY
    assert rec["v2v_options"] == _plan.DEFAULT_OPTIONS
    assert not [k for k in rec if k.startswith("_")]


def test_merge_order_defaults_wave_vm(tmp_path):
    text = BASE.replace(
        "network_map: {default: VM Network}",
        "defaults:\n  mode: warm\n  work_dir: /srv/v2v\n  verify: {digests: false, boot_timeout: 60}\n"
        "  options: {shutdown_timeout: 10, keep_source_off: false}\n"
        "network_map: {default: VM Network, lan: LAN}",
    ).replace(
        "    vms:\n      - web01\n",
        "    mode: full\n    network_map: {lan: LAN2, dmz: DMZ}\n    storage_map: {fast: ssd}\n"
        "    options: {boot_check: true, shutdown_timeout: 20, cutover_window: {start: '22:00', end: '02:00'}}\n"
        "    vms:\n      - web01\n"
        "      - {name: db01, target_name: db01-new, options: {mode: warm, shutdown_timeout: 30},"
        " network_map: {dmz: DMZ3}, verify: {spec: false}}\n",
    )
    _plan_obj, (web, db) = build(tmp_path, text)
    assert web["v2v_mode"] == "full" and db["v2v_mode"] == "warm"
    assert web["v2v_network_map"] == {"default": "VM Network", "lan": "LAN2", "dmz": "DMZ"}
    assert db["v2v_network_map"] == {"default": "VM Network", "lan": "LAN2", "dmz": "DMZ3"}
    assert db["v2v_storage_map"] == {"default": "ds1", "fast": "ssd"}
    assert web["v2v_options"]["shutdown_timeout"] == 20 and db["v2v_options"]["shutdown_timeout"] == 30
    assert db["v2v_options"]["keep_source_off"] is False
    assert db["v2v_options"]["cutover_window"] == {"start": "22:00", "end": "02:00"}
    # options.boot_check is the verify setting of the same name
    assert db["v2v_verify"] == {"digests": False, "spec": False, "boot_check": True, "boot_timeout": 60}
    assert db["v2v_options"]["boot_check"] is True and db["v2v_options"]["boot_timeout"] == 60
    assert db["v2v_target_name"] == "db01-new" and db["v2v_work_dir"] == "/srv/v2v/wave1/db01-new"


def test_conversion_hosts_round_robin_per_wave(tmp_path):
    text = BASE.replace("network_map:", "defaults: {conversion_hosts: [c1, c2, c3]}\nnetwork_map:").replace(
        "      - web01\n",
        "      - [a, b, c, d, e]\n",
    )
    text = text.replace("      - [a, b, c, d, e]\n", "".join("      - %s\n" % n for n in "abcde"))
    text += (
        "  - name: wave2\n    source: kvm1\n    target: vc\n    vms:\n      - f\n"
        "      - {name: g, conversion_host: special}\n      - h\n"
    )
    _plan_obj, recs = build(tmp_path, text)
    assert [(r["v2v_vm"], r["v2v_conversion_host"]) for r in recs] == [
        ("a", "c1"),
        ("b", "c2"),
        ("c", "c3"),
        ("d", "c1"),
        ("e", "c2"),
        ("f", "c1"),
        ("g", "special"),
        ("h", "c2"),
    ]


REFUSALS = [
    # (edit, key path, line, words of the fix)
    (("version: 1", "version: 1\nbogus: 1"), "bogus", 1, "use one of: plugin"),
    (("      - web01", "      - {name: web01, colour: red}"), "waves[0].vms[0].colour", 18, "use one of: name, select"),
    (("    target: vc", "    target: vc\n    concurrency: two"), "waves[0].concurrency", 14, "integer >= 1"),
    (("    target: vc", "    target: vc\n    max_failed: -1"), "waves[0].max_failed", 14, "integer >= 0"),
    (("    target: vc", "    target: vc\n    mode: hot"), "waves[0].mode", 14, "use one of: full, warm"),
    (("    target: vc", "    target: nowhere"), "waves[0].target", 14, "use one of: kvm1, vc"),
    (("    source: kvm1", "    source: ghost"), "waves[0].source", 14, "use one of: kvm1, vc"),
    (("platform: kvm,", "platform: xen,"), "endpoints.kvm1.platform", 4, "use one of: kvm, vsphere"),
    (("  - name: wave1\n    source", "  - source"), "waves[0].name", 14, "set waves[0].name"),
    (("    target: vc\n", ""), "waves[0].target", 14, "set waves[0].target"),
    (('uri: "qemu:///system"}', "uri: 5}"), "endpoints.kvm1.uri", 4, "give a string"),
    (("ds1}\n", "ds1, pool: p}\n"), "endpoints.vc.placement.pool", 10, "use one of: datastore"),
    (("network_map: {default: VM Network}", "network_map: [a, b]"), "network_map", 1, "key: value"),
    (("      - web01", "      - {select: {name: 'w*'}, target_name: x}"), "waves[0].vms[0].target_name", 18, "by name"),
    (("      - web01", "      - {name: a, select: {name: b}}"), "waves[0].vms[0]", 18, "name, or a select"),
    (
        ("    target: vc", "    target: vc\n    options: {cutover_window: {start: '25:00', end: '01:00'}}"),
        "waves[0].options.cutover_window.start",
        17,
        "22:00",
    ),
]


# What each refusal is, for docs/reliability.md.
REFUSED = {
    "bogus": "unknown top-level key",
    "waves[0].vms[0].colour": "unknown key in a VM entry",
    "waves[0].concurrency": "wrong type: concurrency 'two'",
    "waves[0].max_failed": "out of range: max_failed -1",
    "waves[0].mode": "unknown mode 'hot'",
    "waves[0].target": "wave target naming no endpoint",
    "waves[0].source": "wave source naming no endpoint",
    "endpoints.kvm1.platform": "unknown platform 'xen'",
    "waves[0].name": "wave without a name",
    "endpoints.kvm1.uri": "wrong type: uri 5",
    "endpoints.vc.placement.pool": "placement key of another platform (pool on vSphere)",
    "network_map": "wrong type: network_map a list",
    "waves[0].vms[0].target_name": "target_name on a select (many VMs, one name)",
    "waves[0].vms[0]": "a VM entry with both name and select",
    "waves[0].options.cutover_window.start": "cutover window start '25:00'",
}


@pytest.mark.parametrize("edit,path,line,fix", REFUSALS, ids=[r[1] for r in REFUSALS])
def test_refusals_name_file_line_key_and_fix(tmp_path, edit, path, line, fix, reliability):
    reliability(
        "plan",
        "plan: %s" % ("wave without a target" if fix == "set waves[0].target" else REFUSED[path]),
        "'plan <file> line N: %s ...' and a 'Fix:' ('%s')" % (path, fix),
        LOADS,
    )
    assert edit[0] in BASE
    err, file = refused(tmp_path, BASE.replace(edit[0], edit[1], 1))
    assert err.problem.startswith("plan %s line %d: %s " % (file, line, path)), err.message
    assert fix in err.fix, err.message
    assert "Fix:" in err.message


def test_vm_in_two_waves(tmp_path, reliability):
    reliability(
        "plan",
        "plan: a VM listed twice (in two waves)",
        "'plan <file> line 22: waves[1].vms[0] names VM 'web01' of kvm1, already in waves[0].vms[0]', fix "
        "'one wave only'",
        LOADS,
    )
    text = BASE + "  - name: wave2\n    source: kvm1\n    target: vc\n    vms: [web01]\n"
    err, file = refused(tmp_path, text)
    assert "plan %s line 22: waves[1].vms[0] names VM 'web01' of kvm1, already in waves[0].vms[0]" % file in err.message
    assert "one wave only" in err.fix


def test_same_name_on_another_source_is_not_a_duplicate_but_a_target_clash(tmp_path, reliability):
    reliability(
        "plan",
        "plan: two VMs (of two sources) making the same target name",
        "\"... makes target 'web01'\" and a fix naming target_name",
        LOADS,
    )
    text = BASE + "  - name: wave2\n    source: vc\n    target: kvm1\n    vms: [web01]\n"
    err, _path = refused(tmp_path, text)
    assert "makes target 'web01'" in err.message and "target_name" in err.fix


def test_duplicate_wave_names_and_group_clash(tmp_path, reliability):
    reliability(
        "plan",
        "plan: two waves of one name, or names making one inventory group (a-b, a_b)",
        "\"waves[1].name repeats wave 'wave1'\"; \"'a-b' and 'a_b' both make group wave_a_b\"",
        LOADS,
    )
    err, _path = refused(tmp_path, BASE + "  - name: wave1\n    source: kvm1\n    target: vc\n    vms: [x]\n")
    assert "waves[1].name repeats wave 'wave1'" in err.message
    text = BASE.replace("name: wave1", "name: a-b") + "  - name: a_b\n    source: kvm1\n    target: vc\n    vms: [x]\n"
    err, _path = refused(tmp_path, text)
    assert "'a-b' and 'a_b' both make group wave_a_b" in err.message


def test_all_problems_in_one_error_and_no_password(tmp_path, reliability):
    reliability(
        "plan",
        "plan with three problems at once, the password given as a list",
        "one error: '3 problems', 'endpoints.vc.password must be a non-empty string'; the password's value "
        "not in the message",
        LOADS,
    )
    text = BASE.replace("\"{{ lookup('env', 'SECRET_PW') }}\"", "[hunter2]").replace("target: vc", "target: none")
    text = text.replace("version: 1", "version: 2")
    err, _path = refused(tmp_path, text)
    assert "3 problems" in err.problem
    assert "endpoints.vc.password must be a non-empty string" in err.problem
    assert "hunter2" not in err.message


def test_selector_needs_source_facts(tmp_path, reliability):
    reliability(
        "plan",
        "plan: a select: with validate_sources false",
        "'validate_sources is false' and a fix to list the VMs by name",
        LOADS,
    )
    err, _path = refused(tmp_path, BASE.replace("      - web01", "      - {select: {name: 'web*'}}"), facts=None)
    assert "validate_sources is false" in err.problem and "by name" in err.fix


class FakeFacts(_plan.SourceFacts):
    def __init__(self, specs, folders=None, tags=None):
        self.specs, self.folders, self.tags = specs, folders, tags

    def vms(self):
        return [
            {
                "name": n,
                "folder": None if self.folders is None else self.folders.get(n, ""),
                "tags": None if self.tags is None else self.tags.get(n, []),
            }
            for n in self.specs
        ]

    def spec(self, name):
        return self.specs[name]


def spec(net="default", storage="default"):
    return {"nics": [{"mac": "52:54:00:00:00:01", "network": net}], "disks": [{"id": "disk0", "storage": storage}]}


def test_selectors_expand_in_plan_order_and_skip_named_vms(tmp_path):
    text = BASE.replace("      - web01\n", "      - {select: {name: 'web*'}, mode: warm}\n      - app1\n")
    text += "  - name: wave2\n    source: kvm1\n    target: vc\n    vms: [web02]\n"
    facts = {"kvm1": FakeFacts({n: spec() for n in ("app1", "web01", "web02", "web03")})}
    _plan_obj, recs = build(tmp_path, text, facts)
    assert [(r["v2v_vm"], r["v2v_wave"], r["v2v_mode"]) for r in recs] == [
        ("web01", "wave1", "warm"),
        ("web03", "wave1", "warm"),
        ("app1", "wave1", "full"),
        ("web02", "wave2", "full"),
    ]


def test_folder_and_tag_selectors(tmp_path):
    text = BASE.replace("source: kvm1\n    target: vc", "source: vc\n    target: kvm1").replace(
        "      - web01\n", "      - {select: {folder: prod, tag: 'mig*'}}\n"
    )
    facts = {
        "vc": FakeFacts(
            {"a": spec(), "b": spec(), "c": spec()},
            folders={"a": "prod/app", "b": "prod", "c": "test"},
            tags={"a": ["migrate"], "b": [], "c": ["migrate"]},
        )
    }
    _plan_obj, recs = build(tmp_path, text, facts)
    assert [r["v2v_vm"] for r in recs] == ["a"]
    # KVM has no folders: said, not silently matched
    text = BASE.replace("      - web01", "      - {select: {folder: prod}}")
    err, _path = refused(tmp_path, text, {"kvm1": FakeFacts({})})
    assert "kvm VMs have no folders" in err.problem


def test_missing_vm_and_map_entries_listed_together(tmp_path, reliability):
    reliability(
        "plan",
        "plan: missing network_map / storage_map entries and a VM the source lacks",
        "one error, '3 problems': \"VM 'web01' nics[0] (<mac>) is on network 'lan'\" with \"add 'lan': <target "
        'network> to network_map"; "names VM \'ghost\', which kvm1 does not have"; "disk disk0 is on storage '
        "'/data', which has no storage_map entry\"",
        LOADS,
    )
    vms = "      - web01\n      - ghost\n      - {name: db01, network_map: {dmz: D}}\n"
    text = BASE.replace("      - web01\n", vms)
    facts = {"kvm1": FakeFacts({"web01": spec(net="lan"), "db01": spec(net="dmz", storage="/data")})}
    err, file = refused(tmp_path, text, facts)
    msg = err.problem
    assert "3 problems" in msg
    assert "waves[0].vms[0] VM 'web01' nics[0] (52:54:00:00:00:01) is on network 'lan'" in msg
    assert "add 'lan': <target network> to network_map" in msg
    assert "waves[0].vms[1] names VM 'ghost', which kvm1 does not have" in msg
    assert "waves[0].vms[2] VM 'db01' disk disk0 is on storage '/data', which has no storage_map entry" in msg


def test_inventory_groups_and_waves(tmp_path):
    text = BASE.replace("      - web01\n", "      - web01\n      - {name: db01, mode: warm}\n")
    text += "  - name: wave-2\n    source: vc\n    target: kvm1\n    concurrency: 3\n    max_failed: 1\n    vms: [x]\n"
    plan, recs = build(tmp_path, text)
    inv = _plan.inventory(plan, recs)
    assert [h for h, _rec in inv["hosts"]] == ["web01", "db01", "x"]
    assert inv["groups"] == {
        "v2v": ["web01", "db01", "x"],
        "wave_wave1": ["web01", "db01"],
        "wave_wave_2": ["x"],
        "v2v_wave_000": ["web01", "db01"],
        "v2v_wave_001": ["x"],
        "source_kvm": ["web01", "db01"],
        "source_vsphere": ["x"],
        "target_vsphere": ["web01", "db01"],
        "target_kvm": ["x"],
        "mode_full": ["web01", "x"],
        "mode_warm": ["db01"],
    }
    assert inv["waves"] == [
        {"name": "wave1", "index": 0, "group": "wave_wave1", "concurrency": 1, "max_failed": 0,
         "hosts": ["web01", "db01"]},
        {"name": "wave-2", "index": 1, "group": "wave_wave_2", "concurrency": 3, "max_failed": 1, "hosts": ["x"]},
    ]  # fmt: skip


def test_hyperv_endpoints_take_the_hyperv_modules_options(tmp_path, reliability):
    reliability(
        "plan",
        "plan: an option of another platform on an endpoint (datastore on a Hyper-V endpoint)",
        "the problem names datastore; the fix lists the Hyper-V options (share_windows ...)",
        LOADS,
    )
    text = BASE.replace(
        "network_map:",
        "  hv:\n    platform: hyperv\n    hostname: hv01\n    username: me\n    password: x\n"
        "    share: /mnt/hv01\n    share_windows: 'C:\\VMs'\n    placement: {vhd_type: fixed}\nnetwork_map:",
    ).replace("    target: vc\n", "    target: hv\n")
    _plan_obj, (rec,) = build(tmp_path, text)
    assert rec["v2v_target"]["platform"] == "hyperv"
    assert rec["v2v_target"]["connection"]["share_windows"] == "C:\\VMs"
    assert rec["v2v_target"]["placement"] == {"vhd_type": "fixed"}
    err, _path = refused(tmp_path, text.replace("    share: /mnt/hv01\n", "    datastore: x\n"))
    assert "datastore" in err.problem and "share_windows" in err.fix


def test_work_dirs_of_names_with_other_characters_never_collide(tmp_path):
    """Names that only differ in characters a path cannot hold as they are (unicode, spaces,
    '/', '..') each get their own work dir: the safe form plus a digest of the name."""
    names = ["名前", "前名", "a b", "a_b", "../x", "..", "-web '$(x)`n"]
    vms = "".join("      - {name: %s, target_name: %s}\n" % (json.dumps(n), json.dumps(n)) for n in names)
    _plan_obj, recs = build(tmp_path, BASE.replace("      - web01\n", vms))
    dirs = [r["v2v_work_dir"] for r in recs]
    assert len(set(dirs)) == len(names), dirs
    for d in dirs:
        part = d.rsplit("/", 1)[1]
        assert d == "/var/lib/vmigrate/wave1/" + part and part not in (".", "..") and not part.startswith(".")
    assert dict(zip(names, dirs, strict=True))["a_b"] == "/var/lib/vmigrate/wave1/a_b"  # plain: unchanged


def test_plan_paths_stay_under_the_work_dir(tmp_path, reliability):
    reliability(
        "plan",
        "plan names that would lead out of the work dir: target_name '../../etc', wave name '../w', "
        "a relative work_dir",
        "wave name: \"waves[0].name '../w' is not a valid wave name\"; work_dir: 'defaults.work_dir must be "
        "an absolute path' (file and line named); the target name is kept, its directory made safe",
        "the VM's work dir '<work_dir>/wave1/_.._etc-<8 hex of its sha256>', under the work dir; nothing outside",
    )
    _plan_obj, (rec,) = build(tmp_path, BASE.replace("      - web01", "      - {name: web01, target_name: ../../etc}"))
    assert rec["v2v_target_name"] == "../../etc"
    assert re.fullmatch(r"/var/lib/vmigrate/wave1/_\.\._etc-[0-9a-f]{8}", rec["v2v_work_dir"]), rec["v2v_work_dir"]
    assert ".." not in rec["v2v_work_dir"].split("/")
    err, file = refused(tmp_path, BASE.replace("  - name: wave1", "  - name: ../w"))
    assert "plan %s line 14: waves[0].name '../w' is not a valid wave name" % file in err.message, err.message
    err, file = refused(tmp_path, BASE.replace("network_map:", "defaults: {work_dir: relative/dir}\nnetwork_map:"))
    assert "plan %s line 11: defaults.work_dir must be an absolute path" % file in err.message, err.message
