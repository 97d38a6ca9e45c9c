# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The migration plan (docs/plan.md): validate it, expand its waves to VM records.

Pure logic, no hypervisor and no Ansible import: the inventory plugin
(plugins/inventory/plan.py) loads the YAML, passes the source facts it gathered
(or none, offline) and turns the records into hosts and groups.

Every problem names the file, the line when the loader recorded one, the key path
(``waves[1].vms[0].network_map``) and the fix; all problems found are reported in one
InputError. Values are never echoed for connection keys, so a password cannot leak
into a message.
"""

from __future__ import annotations

import fnmatch
import hashlib
import posixpath
import re

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import InputError
from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec

VERSION = 1
PLATFORMS = ("kvm", "vsphere", "hyperv")
MODES = ("full", "warm")

# The connection options each platform's modules take (doc fragments kvm, vsphere,
# hyperv and hyperv_share).
CONNECTION_KEYS = {
    "kvm": {"uri": "str", "username": "str", "password": "str"},
    "vsphere": {
        "hostname": "str",
        "port": "int",
        "username": "str",
        "password": "str",
        "validate_certs": "bool",
        "ca_path": "str",
        "thumbprint": "str",
        "datacenter": "str",
        "timeout": "int",
        "io_timeout": "int",
    },
    "hyperv": {
        "hostname": "str",
        "port": "int",
        "username": "str",
        "password": "str",
        "transport": "str",
        "scheme": "str",
        "validate_certs": "bool",
        "ca_path": "str",
        "message_encryption": "str",
        "operation_timeout": "int",
        "share": "str",
        "share_windows": "str",
    },
}
# Where a target endpoint puts imported VMs: the import modules' own options, passed
# to them unchanged by the roles.
PLACEMENT_KEYS = {
    "kvm": {
        "pool": "str",
        "volume_format": "str",
        "domain_type": "str",
        "cpu_mode": "str",
        "transfer": "str",
    },
    "vsphere": {
        "datastore": "str",
        "folder": "str",
        "resource_pool": "str",
        "hardware_version": "str",
    },
    "hyperv": {
        "vhd_type": "str",
        "secure_boot_template": "str",
    },
}
DEFAULT_VERIFY = {"digests": True, "spec": True, "boot_check": False, "boot_timeout": 300}
VERIFY_TYPES = {"digests": "bool", "spec": "bool", "boot_check": "bool", "boot_timeout": "posint"}
DEFAULT_OPTIONS = {
    "boot_check": False,
    "boot_timeout": 300,
    "cutover_window": None,
    "power_on_source_on_failure": True,
    "keep_source_off": True,
    "shutdown_timeout": 300,
    "on_shutdown_timeout": "fail",
    "guest_conversion": None,  # the convert module's default (auto) or VMIGRATE_GUEST_CONVERSION
    "virtio_win": None,
}
OPTION_TYPES = {
    "boot_check": "bool",
    "boot_timeout": "posint",
    "cutover_window": "window",
    "power_on_source_on_failure": "bool",
    "keep_source_off": "bool",
    "shutdown_timeout": "posint",
    "on_shutdown_timeout": ("fail", "poweroff"),
    "guest_conversion": ("auto", "inspect", "skip"),
    "virtio_win": "str",
    "mode": MODES,  # the same as the level's `mode` key
}
DEFAULT_WORK_DIR = "/var/lib/vmigrate"
DEFAULT_CONVERSION_HOST = "localhost"

TOP_KEYS = ("plugin", "validate_sources", "version", "defaults", "endpoints", "network_map", "storage_map", "waves")
DEFAULTS_KEYS = ("conversion_host", "conversion_hosts", "work_dir", "mode", "verify", "options")
WAVE_KEYS = (
    "name",
    "source",
    "target",
    "concurrency",
    "max_failed",
    "conversion_host",
    "conversion_hosts",
    "mode",
    "network_map",
    "storage_map",
    "verify",
    "options",
    "vms",
)
VM_KEYS = (
    "name",
    "select",
    "target_name",
    "source",
    "conversion_host",
    "mode",
    "network_map",
    "storage_map",
    "verify",
    "options",
)
SELECT_KEYS = ("name", "folder", "tag")
# Platforms whose VMs have folders and tags a selector can match (docs/plan.md, Selectors).
FOLDERS = ("vsphere",)
TAGS = ("vsphere",)
WAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TIME = re.compile(r"^([01]?\d|2[0-3]):[0-5]\d$")


def is_template(value):
    """A string Ansible templates at use time; the plan passes it through."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def ansible_pos(node):
    """(file, line, col) that Ansible's YAML loader recorded on a mapping or list, or None."""
    pos = getattr(node, "ansible_pos", None)
    return pos if isinstance(pos, tuple) and len(pos) == 3 else None


def group_name(text):
    """A valid Ansible group name: letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def path_part(text):
    """A safe single path component for a work dir: plain characters as they are; a name
    with others ('/', '..', spaces, unicode) gets them as '_' plus a digest of the name, so
    two names never share a work dir ('名前' and '前名', 'a b' and 'a_b')."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".") or "_"
    if safe != text:
        safe = "%s-%s" % (safe, hashlib.sha256(text.encode("utf-8")).hexdigest()[:8])
    return safe


class Problems:
    """The problems found so far; raise() turns them into one InputError."""

    def __init__(self, source, position=None):
        self.source = source
        self.position = position or ansible_pos
        self.items = []

    def line(self, node, default=None):
        pos = self.position(node)
        return pos[1] if pos else default

    def add(self, path, line, problem, fix):
        self.items.append((path, line, problem, fix))

    def where(self, line):
        return "%s line %s" % (self.source, line) if line else str(self.source)

    def raise_if_any(self):
        if not self.items:
            return
        if len(self.items) == 1:
            path, line, problem, fix = self.items[0]
            raise InputError(
                "plan %s: %s %s" % (self.where(line), path, problem),
                fix,
                field=path,
                line=line,
                plan=str(self.source),
            )
        lines = [
            "- %s%s %s (fix: %s)" % ("line %s: " % line if line else "", path, problem, fix)
            for path, line, problem, fix in self.items
        ]
        raise InputError(
            "plan %s has %d problems:\n%s" % (self.source, len(self.items), "\n".join(lines)),
            "correct each one (docs/plan.md describes every key)",
            fields=[i[0] for i in self.items],
            plan=str(self.source),
        )


def _join(path, key):
    if isinstance(key, int) and not isinstance(key, bool):
        return "%s[%d]" % (path, key)
    if not isinstance(key, str) or not key.strip():
        return "%s[%r]" % (path, key)  # a key YAML made from null, true or '': shown as written
    return "%s.%s" % (path, key) if path else key


class _Checker:
    """Type checks that record a problem and say whether the value is usable."""

    def __init__(self, problems):
        self.p = problems

    def mapping(self, value, path, line, keys=None, required=(), fix_keys=None):
        if not isinstance(value, dict):
            self.p.add(
                path or "(top level)", line, "must be a mapping, not %s" % _kind(value), "write it as key: value pairs"
            )
            return False
        line = self.p.line(value, line)
        ok = True
        if keys is not None:
            for key in value:
                if key not in keys:
                    self.p.add(
                        _join(path, key),
                        line,
                        "is not a known key",
                        fix_keys or "use one of: %s (docs/plan.md)" % ", ".join(keys),
                    )
                    ok = False
        for key in required:
            if value.get(key) in (None, ""):
                self.p.add(_join(path, key), line, "is missing", "set %s" % _join(path, key))
                ok = False
        return ok

    def scalar(self, value, kind, path, line, template_ok=False, secret=False):
        """Check one value of ``kind`` (str, int, posint, nonneg, bool, window, or a tuple of choices)."""
        if template_ok and is_template(value):
            return True
        shown = "" if secret else " (%r)" % (value,)
        if isinstance(kind, tuple):
            if value not in kind:
                self.p.add(
                    path, line, "must be one of %s%s" % (", ".join(kind), shown), "use one of: %s" % ", ".join(kind)
                )
                return False
            return True
        if kind == "str":
            if not isinstance(value, str) or not value:
                self.p.add(path, line, "must be a non-empty string%s" % shown, "give a string")
                return False
        elif kind == "bool":
            if not isinstance(value, bool):
                self.p.add(path, line, "must be true or false%s" % shown, "write true or false")
                return False
        elif kind in ("int", "posint", "nonneg"):
            minimum = {"int": None, "posint": 1, "nonneg": 0}[kind]
            if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
                need = {"int": "an integer", "posint": "an integer >= 1", "nonneg": "an integer >= 0"}[kind]
                self.p.add(path, line, "must be %s%s" % (need, shown), "give %s" % need)
                return False
        elif kind == "window":
            if value is None:
                return True
            if not self.mapping(value, path, line, keys=("start", "end"), required=("start", "end")):
                return False
            ok = True
            for key in ("start", "end"):
                if not isinstance(value[key], str) or not TIME.match(value[key]):
                    self.p.add(
                        _join(path, key),
                        self.p.line(value, line),
                        "must be a time HH:MM (%r)" % (value[key],),
                        'quote it, e.g. "22:00"',
                    )
                    ok = False
            return ok
        return True

    def typed_dict(self, value, types, path, line):
        """A mapping whose keys and value types are ``types``; returns a clean dict or None."""
        if value is None:
            return {}
        if not self.mapping(value, path, line, keys=tuple(types)):
            return None
        line = self.p.line(value, line)
        out = {}
        for key, item in value.items():
            if key in types and self.scalar(item, types[key], _join(path, key), line):
                out[key] = item
        return out

    def name_map(self, value, path, line, network=False):
        """A network_map or storage_map: source name -> target (a name; network: or {name, type})."""
        if value is None:
            return {}
        if not self.mapping(value, path, line):
            return None
        line = self.p.line(value, line)
        for key, item in value.items():
            where = _join(path, key)
            if not isinstance(key, str) or not key:
                self.p.add(where, line, "has a key that is not a name", "map source names (strings) to targets")
            elif network and isinstance(item, dict):
                if self.mapping(item, where, line, keys=("name", "type"), required=("name",)):
                    self.scalar(item["name"], "str", _join(where, "name"), line)
                    if item.get("type") is not None:
                        self.scalar(item["type"], ("bridge", "direct", "network"), _join(where, "type"), line)
            elif not isinstance(item, str) or not item:
                hint = "a network name or {name: ..., type: bridge|direct}" if network else "a storage name"
                self.p.add(where, line, "must be %s, not %s" % (hint, _kind(item)), "map %r to %s" % (key, hint))
        return dict(value)


def _kind(value):
    if value is None:
        return "nothing (null)"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}.get(
        next((t for t in (bool, dict, list, str, int) if isinstance(value, t)), None), type(value).__name__
    )


class Plan:
    """A validated plan: endpoints, waves and their (not yet expanded) VM entries."""

    def __init__(self, source):
        self.source = source
        self.validate_sources = True
        self.endpoints = {}
        self.network_map = {}
        self.storage_map = {}
        self.level = {}  # defaults: mode, verify, options, conversion_hosts
        self.work_dir = DEFAULT_WORK_DIR
        self.waves = []


def _level(chk, data, path, line, hosts_ok=True):
    """The settings a level (defaults, wave, VM) may carry: mode, verify, options, hosts."""
    out = {}
    mode = data.get("mode")
    opts = data.get("options")
    options = chk.typed_dict(opts, OPTION_TYPES, _join(path, "options"), line)
    verify = chk.typed_dict(data.get("verify"), VERIFY_TYPES, _join(path, "verify"), line)
    if mode is not None and chk.scalar(mode, MODES, _join(path, "mode"), line):
        out["mode"] = mode
    if options:
        omode = options.pop("mode", None)
        if omode is not None:
            if "mode" in out and out["mode"] != omode:
                chk.p.add(
                    _join(path, "options.mode"),
                    line,
                    "says %s but %s says %s" % (omode, _join(path, "mode"), mode),
                    "set the mode once",
                )
            out["mode"] = omode
        # boot_check/boot_timeout in options are the verify settings of the same name.
        for key in ("boot_check", "boot_timeout"):
            if key in options and verify is not None:
                if key in verify and verify[key] != options[key]:
                    chk.p.add(
                        _join(path, "options." + key),
                        line,
                        "differs from %s" % _join(path, "verify." + key),
                        "set %s once" % key,
                    )
                verify[key] = options[key]
    out["options"] = options or {}
    out["verify"] = verify or {}
    if hosts_ok:
        one, many = data.get("conversion_host"), data.get("conversion_hosts")
        if one is not None and many is not None:
            chk.p.add(_join(path, "conversion_hosts"), line, "is given with conversion_host", "give one of the two")
        elif one is not None:
            if chk.scalar(one, "str", _join(path, "conversion_host"), line):
                out["conversion_hosts"] = [one]
        elif many is not None:
            where = _join(path, "conversion_hosts")
            if not isinstance(many, list) or not many:
                chk.p.add(where, line, "must be a non-empty list of host names", "list the conversion hosts")
            elif all(chk.scalar(h, "str", _join(where, i), line) for i, h in enumerate(many)):
                if len(set(many)) != len(many):
                    chk.p.add(where, line, "names a host twice", "list each conversion host once")
                out["conversion_hosts"] = list(many)
    return out


def parse(data, source="plan", position=None):
    """Validate a loaded plan; a Plan, or one InputError listing every problem."""
    problems = Problems(source, position)
    chk = _Checker(problems)
    plan = Plan(source)
    top_line = problems.line(data)
    if not chk.mapping(data, "", top_line, keys=TOP_KEYS):
        problems.raise_if_any()
    data = data if isinstance(data, dict) else {}

    version = data.get("version", VERSION)
    if version != VERSION:
        problems.add(
            "version", top_line, "is %r; this collection reads version %d" % (version, VERSION), "set version: 1"
        )
    if "validate_sources" in data and chk.scalar(data["validate_sources"], "bool", "validate_sources", top_line):
        plan.validate_sources = data["validate_sources"]

    defaults = data.get("defaults") or {}
    if chk.mapping(defaults, "defaults", top_line, keys=DEFAULTS_KEYS):
        dline = problems.line(defaults, top_line)
        plan.level = _level(chk, defaults, "defaults", dline)
        if "work_dir" in defaults and chk.scalar(defaults["work_dir"], "str", "defaults.work_dir", dline):
            if not defaults["work_dir"].startswith("/"):
                problems.add("defaults.work_dir", dline, "must be an absolute path", "give a path starting with /")
            plan.work_dir = defaults["work_dir"]
    plan.level.setdefault("conversion_hosts", [DEFAULT_CONVERSION_HOST])
    plan.level.setdefault("mode", "full")

    _parse_endpoints(chk, data.get("endpoints"), plan, top_line)
    plan.network_map = chk.name_map(data.get("network_map"), "network_map", top_line, network=True) or {}
    plan.storage_map = chk.name_map(data.get("storage_map"), "storage_map", top_line) or {}
    _parse_waves(chk, data.get("waves"), plan, top_line)
    problems.raise_if_any()
    return plan


def _parse_endpoints(chk, endpoints, plan, line):
    p = chk.p
    if endpoints is None or endpoints == {}:
        p.add("endpoints", line, "is missing", "name each source and target: endpoints: {lab-kvm: {platform: kvm}}")
        return
    if not chk.mapping(endpoints, "endpoints", line):
        return
    line = p.line(endpoints, line)
    for name, ep in endpoints.items():
        path = _join("endpoints", name)
        if not isinstance(name, str) or not name:
            # waves name endpoints by string; YAML makes 1 or true of an unquoted name
            p.add(path, line, "is not a name (%s)" % _kind(name), "quote the endpoint name")
            continue
        # registered even when wrong, so references to it do not add more problems
        plan.endpoints[name] = {"platform": None, "connection": {}, "placement": {}}
        if not chk.mapping(ep, path, line):
            continue
        eline = p.line(ep, line)
        platform = ep.get("platform")
        if platform not in PLATFORMS:
            p.add(
                _join(path, "platform"),
                eline,
                "is %s" % ("missing" if platform is None else "%r, an unknown platform" % (platform,)),
                "use one of: %s" % ", ".join(PLATFORMS),
            )
            continue
        conn_keys = CONNECTION_KEYS[platform]
        chk.mapping(
            ep,
            path,
            eline,
            keys=("platform", "placement") + tuple(conn_keys),
            fix_keys="a %s endpoint takes platform, placement and %s" % (platform, ", ".join(conn_keys)),
        )
        connection = {}
        for key, kind in conn_keys.items():
            if key in ep:
                secret = key == "password"
                if chk.scalar(ep[key], kind, _join(path, key), eline, template_ok=True, secret=secret):
                    connection[key] = ep[key]
        placement = ep.get("placement")
        if placement is not None:
            ptypes = PLACEMENT_KEYS[platform]
            if not chk.mapping(placement, _join(path, "placement"), eline, keys=tuple(ptypes)):
                placement = None  # the problem is recorded; keep the endpoint usable by references
            else:
                pline = p.line(placement, eline)
                for key, item in placement.items():
                    chk.scalar(item, ptypes[key], _join(path, "placement." + key), pline, template_ok=True)
        plan.endpoints[name] = {"platform": platform, "connection": connection, "placement": dict(placement or {})}


def _parse_waves(chk, waves, plan, line):
    p = chk.p
    if not isinstance(waves, list) or not waves:
        p.add("waves", line, "must be a non-empty list of waves", "add waves: [{name: wave1, target: ..., vms: [...]}]")
        return
    wline = p.line(waves, line)
    groups = {}
    for wi, wave in enumerate(waves):
        path = "waves[%d]" % wi
        if not chk.mapping(wave, path, wline, keys=WAVE_KEYS, required=("name", "target", "vms")):
            if not isinstance(wave, dict):
                continue
        line = p.line(wave, wline)
        name = wave.get("name")
        rec = {"name": name, "index": wi, "line": line, "path": path, "entries": []}
        if name is not None:
            if not isinstance(name, str) or not WAVE_NAME.match(name):
                p.add(
                    _join(path, "name"),
                    line,
                    "%r is not a valid wave name" % (name,),
                    "use letters, digits, '_', '.' and '-', starting with a letter or digit",
                )
            else:
                group = "wave_" + group_name(name)
                if group in groups:
                    other = groups[group]
                    same = other == name
                    p.add(
                        _join(path, "name"),
                        line,
                        "%s"
                        % ("repeats wave %r" % name if same else "%r and %r both make group %s" % (other, name, group)),
                        "give every wave its own name" if same else "rename one of the two waves",
                    )
                groups[group] = name
                rec["group"] = group
        for key in ("source", "target"):
            ref = wave.get(key)
            if ref is not None:
                _check_endpoint(chk, ref, _join(path, key), line, plan)
            rec[key] = ref
        rec["concurrency"] = wave.get("concurrency", 1)
        chk.scalar(rec["concurrency"], "posint", _join(path, "concurrency"), line)
        rec["max_failed"] = wave.get("max_failed", 0)
        chk.scalar(rec["max_failed"], "nonneg", _join(path, "max_failed"), line)
        rec["level"] = _level(chk, wave, path, line)
        rec["network_map"] = chk.name_map(wave.get("network_map"), _join(path, "network_map"), line, network=True) or {}
        rec["storage_map"] = chk.name_map(wave.get("storage_map"), _join(path, "storage_map"), line) or {}
        vms = wave.get("vms")
        if vms is not None and (not isinstance(vms, list) or not vms):
            p.add(_join(path, "vms"), line, "must be a non-empty list", "list VM names or selectors")
            vms = []
        vline = p.line(vms, line)
        for vi, entry in enumerate(vms or []):
            rec["entries"].append(_parse_entry(chk, entry, "%s.vms[%d]" % (path, vi), vline, rec, plan))
        plan.waves.append(rec)


def _check_endpoint(chk, ref, path, line, plan):
    if not isinstance(ref, str) or ref not in plan.endpoints:
        known = ", ".join(plan.endpoints) or "(none)"
        chk.p.add(path, line, "names endpoint %r, which is not defined" % (ref,), "use one of: %s" % known)
        return False
    return True


def _parse_entry(chk, entry, path, line, wave, plan):
    """One item of a wave's vms: a name, {name: ...} or {select: {...}}, with overrides."""
    p = chk.p
    if isinstance(entry, str) and entry:
        entry = {"name": entry}
    elif not isinstance(entry, dict):
        p.add(path, line, "must be a VM name or a mapping, not %s" % _kind(entry), "write a name or {name: ...}")
        return None
    else:
        chk.mapping(entry, path, line, keys=VM_KEYS)
        line = p.line(entry, line)
    out = {"path": path, "line": line}
    has_name, has_select = entry.get("name") is not None, entry.get("select") is not None
    if has_name == has_select:
        p.add(path, line, "needs exactly one of name and select", "give the VM's name, or a select: {...}")
        return None
    if has_name:
        if not chk.scalar(entry["name"], "str", _join(path, "name"), line):
            return None
        out["name"] = entry["name"]
    else:
        sel = entry["select"]
        spath = _join(path, "select")
        if not chk.mapping(sel, spath, line, keys=SELECT_KEYS):
            return None
        if not sel:
            p.add(spath, line, "is empty", "select by name (a glob), folder or tag")
            return None
        for key, item in sel.items():
            chk.scalar(item, "str", _join(spath, key), p.line(sel, line))
        if entry.get("target_name") is not None:
            p.add(
                _join(path, "target_name"),
                line,
                "cannot rename the VMs of a selector",
                "list the VM by name to rename it",
            )
        out["select"] = dict(sel)
    if entry.get("target_name") is not None and chk.scalar(
        entry["target_name"], "str", _join(path, "target_name"), line
    ):
        out["target_name"] = entry["target_name"]
    source = entry.get("source", wave.get("source"))
    if source is None:
        p.add(_join(path, "source"), line, "is not set here nor on its wave", "set source on the wave or the VM")
    elif entry.get("source") is not None and not _check_endpoint(chk, source, _join(path, "source"), line, plan):
        source = None
    out["source"] = source if isinstance(source, str) and source in plan.endpoints else None
    out["level"] = _level(chk, entry, path, line)
    out["network_map"] = chk.name_map(entry.get("network_map"), _join(path, "network_map"), line, network=True) or {}
    out["storage_map"] = chk.name_map(entry.get("storage_map"), _join(path, "storage_map"), line) or {}
    return out


# ------------------------------------------------------------------ expansion


class SourceFacts:
    """What the plan asks of a source endpoint; the plugin wraps a Platform in one.

    ``vms()``: [{name, folder (None when the platform has none), tags (None when it
    cannot say)}]; ``spec(name)``: the neutral spec (engine/spec.py), or InputError.
    """

    def vms(self):
        raise NotImplementedError

    def spec(self, name):
        raise NotImplementedError


def _merge(*dicts):
    out = {}
    for d in dicts:
        out.update(d or {})
    return out


def _select(sel, vms, platform):
    """The VM names a selector matches; ValueError naming what the platform cannot say."""
    if "folder" in sel and platform not in FOLDERS:
        raise ValueError("%s VMs have no folders" % platform)
    if "tag" in sel and platform not in TAGS:
        raise ValueError("%s VMs have no tags the plugin can read" % platform)
    out = []
    for vm in vms:
        if "name" in sel and not fnmatch.fnmatchcase(vm["name"], sel["name"]):
            continue
        if "folder" in sel:
            if vm.get("folder") is None:
                raise ValueError("%s VMs have no folders" % platform)
            folder = vm["folder"].strip("/")
            want = sel["folder"].strip("/")
            if not (fnmatch.fnmatchcase(folder, want) or folder.startswith(want + "/")):
                continue
        if "tag" in sel:
            if vm.get("tags") is None:
                raise ValueError("%s cannot report tags" % platform)
            if not any(fnmatch.fnmatchcase(t, sel["tag"]) for t in vm["tags"]):
                continue
        out.append(vm["name"])
    return out


def expand(plan, facts=None):
    """The VM records of ``plan`` in wave order (see docs/plan.md, host variables).

    ``facts``: {endpoint name: SourceFacts} for the sources that could be reached; None
    when validate_sources is off. Selectors need their source's facts; with facts, every
    named VM must exist and every NIC network and disk storage needs a map entry.
    """
    problems = Problems(plan.source)
    p = problems
    facts_given = facts is not None
    facts = facts or {}
    listing = {}

    def vms_of(endpoint, path, line):
        if endpoint not in listing:
            try:
                listing[endpoint] = facts[endpoint].vms()
            except InputError as exc:
                p.add(path, line, "cannot be checked: source %s: %s" % (endpoint, exc.problem), exc.fix or "see above")
                listing[endpoint] = None
        return listing[endpoint]

    # Named VMs are claimed first, so a selector never takes a VM named elsewhere.
    claimed = {}
    for wave in plan.waves:
        for entry in wave["entries"]:
            if entry and "name" in entry and entry["source"]:
                key = (entry["source"], entry["name"])
                if key in claimed:
                    entry["duplicate"] = True
                    p.add(
                        entry["path"],
                        entry["line"],
                        "names VM %r of %s, already in %s" % (entry["name"], entry["source"], claimed[key]),
                        "list each VM in one wave only",
                    )
                else:
                    claimed[key] = entry["path"]

    records = []
    for wave in plan.waves:
        for entry in wave["entries"]:
            if not entry or not entry["source"] or entry.get("duplicate"):
                continue
            source = entry["source"]
            platform = plan.endpoints[source]["platform"]
            if "name" in entry:
                names = [entry["name"]]
            else:
                vms = None
                if not facts_given:
                    p.add(
                        _join(entry["path"], "select"),
                        entry["line"],
                        "needs the source's VMs, but validate_sources is false",
                        "set validate_sources: true, or list the VMs by name",
                    )
                elif source not in facts:
                    p.add(
                        _join(entry["path"], "select"),
                        entry["line"],
                        "needs the VMs of %s, which could not be read (see the warning)" % source,
                        "give %s a connection usable at inventory time, or list the VMs by name" % source,
                    )
                else:
                    vms = vms_of(source, entry["path"], entry["line"])
                if vms is None:
                    continue
                try:
                    names = [n for n in _select(entry["select"], vms, platform) if (source, n) not in claimed]
                except ValueError as exc:
                    p.add(
                        _join(entry["path"], "select"),
                        entry["line"],
                        "cannot be used: %s" % exc,
                        "select by name instead",
                    )
                    continue
                if not names:
                    p.add(
                        _join(entry["path"], "select"),
                        entry["line"],
                        "matches no VM of %s that the plan does not already take" % source,
                        "check the selector (names are globs: app-*)",
                    )
                for n in names:
                    claimed[(source, n)] = entry["path"]
            for name in names:
                records.append(_record(plan, wave, entry, source, name))

    # Host names are target names: two VMs may not land on one.
    seen = {}
    for rec in records:
        other = seen.get(rec["v2v_target_name"])
        if other is not None:
            p.add(
                rec["_path"],
                rec["_line"],
                "makes target %r, as %s does" % (rec["v2v_target_name"], other),
                "give one of them a target_name",
            )
        seen[rec["v2v_target_name"]] = rec["_path"]

    if facts_given:
        _check_sources(plan, records, facts, listing, vms_of, p)
    _spread(plan, records)
    p.raise_if_any()
    for rec in records:
        rec.pop("_path")
        rec.pop("_line")
        rec.pop("_hosts")
        rec.pop("_pinned")
    return records


def _record(plan, wave, entry, source, name):
    d, w, v = plan.level, wave["level"], entry["level"]
    target = wave["target"]
    src_ep, tgt_ep = plan.endpoints[source], plan.endpoints.get(target) or {}
    target_name = entry.get("target_name") or name
    verify = _merge(DEFAULT_VERIFY, d["verify"], w["verify"], v["verify"])
    options = _merge(DEFAULT_OPTIONS, d["options"], w["options"], v["options"])
    options["boot_check"], options["boot_timeout"] = verify["boot_check"], verify["boot_timeout"]
    return {
        "v2v_vm": name,
        "v2v_target_name": target_name,
        "v2v_wave": wave["name"],
        "v2v_wave_index": wave["index"],
        "v2v_wave_group": wave.get("group"),
        "v2v_mode": v.get("mode") or w.get("mode") or d["mode"],
        "v2v_source": {
            "endpoint": source,
            "platform": src_ep["platform"],
            "connection": dict(src_ep["connection"]),
        },
        "v2v_target": {
            "endpoint": target,
            "platform": tgt_ep.get("platform"),
            "connection": dict(tgt_ep.get("connection") or {}),
            "placement": dict(tgt_ep.get("placement") or {}),
        },
        "v2v_network_map": _merge(plan.network_map, wave["network_map"], entry["network_map"]),
        "v2v_storage_map": _merge(plan.storage_map, wave["storage_map"], entry["storage_map"]),
        "v2v_options": options,
        "v2v_verify": verify,
        "v2v_work_dir": posixpath.join(plan.work_dir, path_part(wave["name"]), path_part(target_name)),
        "v2v_conversion_host": None,
        "_hosts": w.get("conversion_hosts") or d["conversion_hosts"],
        "_pinned": (v.get("conversion_hosts") or [None])[0],
        "_path": entry["path"] if "name" in entry else "%s (%s)" % (entry["path"], name),
        "_line": entry["line"],
    }


def _spread(plan, records):
    """Round-robin over the wave's conversion hosts, in plan order, restarting per wave
    (so each wave's parallel VMs spread evenly); a VM's own conversion_host wins."""
    turn = {}
    for rec in records:
        if rec["_pinned"]:
            rec["v2v_conversion_host"] = rec["_pinned"]
            continue
        i = turn.get(rec["v2v_wave_index"], 0)
        rec["v2v_conversion_host"] = rec["_hosts"][i % len(rec["_hosts"])]
        turn[rec["v2v_wave_index"]] = i + 1


def _check_sources(plan, records, facts, listing, vms_of, p):
    """Each VM exists on its source and each NIC network and disk storage has a map entry."""
    for rec in records:
        source = rec["v2v_source"]["endpoint"]
        if source not in facts:
            continue
        vms = vms_of(source, rec["_path"], rec["_line"])
        if vms is None:
            continue
        if rec["v2v_vm"] not in {vm["name"] for vm in vms}:
            known = sorted(vm["name"] for vm in vms)
            p.add(
                rec["_path"],
                rec["_line"],
                "names VM %r, which %s does not have" % (rec["v2v_vm"], source),
                "check the name; %s has: %s" % (source, ", ".join(known[:20]) or "(no VMs)"),
            )
            continue
        try:
            spec = facts[source].spec(rec["v2v_vm"])
        except InputError as exc:
            p.add(rec["_path"], rec["_line"], "cannot be described: %s" % exc.problem, exc.fix or "see the message")
            continue
        for i, nic in enumerate(spec.get("nics") or []):
            net = nic.get("network")
            if net and net not in rec["v2v_network_map"]:
                p.add(
                    rec["_path"],
                    rec["_line"],
                    "VM %r nics[%d] (%s) is on network %r, which has no network_map entry"
                    % (rec["v2v_vm"], i, nic.get("mac") or "no MAC", net),
                    "add %r: <target network> to network_map (the plan's, the wave's or the VM's)" % net,
                )
        for disk in spec.get("disks") or []:
            storage = disk.get("storage")
            if storage is None:
                storage = _spec.storage_of(disk.get("source"))
            if storage and storage not in rec["v2v_storage_map"]:
                p.add(
                    rec["_path"],
                    rec["_line"],
                    "VM %r disk %s is on storage %r, which has no storage_map entry"
                    % (rec["v2v_vm"], disk.get("id"), storage),
                    "add %r: <target pool or datastore> to storage_map (the plan's, the wave's or the VM's)" % storage,
                )


def inventory(plan, records):
    """{hosts: [(name, vars)], groups: {group: [hosts]}, waves: v2v_waves} in wave order."""
    groups = {"v2v": []}
    waves = [
        {
            "name": w["name"],
            "index": w["index"],
            "group": w.get("group"),
            "concurrency": w["concurrency"],
            "max_failed": w["max_failed"],
            "hosts": [],
        }
        for w in plan.waves
    ]
    hosts = []
    for rec in records:
        host = rec["v2v_target_name"]
        hosts.append((host, rec))
        waves[rec["v2v_wave_index"]]["hosts"].append(host)
        for group in (
            "v2v",
            rec["v2v_wave_group"],
            # Ordered by name, so a play's `serial` (which sees `groups`, not host
            # variables) can run one batch per wave, in plan order.
            "v2v_wave_%03d" % rec["v2v_wave_index"],
            "source_" + rec["v2v_source"]["platform"],
            "target_" + rec["v2v_target"]["platform"],
            "mode_" + rec["v2v_mode"],
        ):
            groups.setdefault(group, []).append(host)
    return {"hosts": hosts, "groups": groups, "waves": waves}
