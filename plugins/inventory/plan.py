# -*- coding: utf-8 -*-
# Copyright: vmigrate.v2v contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
name: plan
short_description: A migration plan as an inventory, one host per VM
version_added: 0.1.0
description:
  - Reads a migration plan (a YAML file, schema in the collection's C(docs/plan.md)) and
    makes every VM of every wave a host named after its target name, carrying its source,
    target, maps and options as C(v2v_*) variables.
  - Groups C(v2v) (every VM), C(wave_<name>) per wave, C(source_<platform>),
    C(target_<platform>) and C(mode_<full|warm>). Group C(all) gets C(v2v_waves), the
    waves in plan order with their concurrency, failure tolerance and hosts.
  - The whole plan is checked before any host is added - unknown keys, wrong types,
    undefined endpoints, a VM in two waves, two VMs with one target name - and every
    problem is reported in one error naming the file, the line, the key and the fix.
  - With O(validate_sources) the plugin also connects to each source endpoint, expands
    selectors, checks that every named VM exists and that every NIC network and disk
    storage of every VM has a map entry.
  - Templated values (for example V({{ lookup('env', 'VMIGRATE_VSPHERE_PASSWORD') }})) are
    passed to the hosts untouched, for Ansible to template when a task uses them. To
    connect at inventory time the plugin resolves only the form
    V({{ lookup('env', 'NAME') }}) itself; an endpoint with another template is not
    validated, with a warning saying why.
  - The file name must end in C(.v2v.yml), C(.v2v.yaml), C(plan.yml) or C(plan.yaml).
requirements:
  - libvirt-python, for O(validate_sources) on KVM sources
  - pyvmomi, for O(validate_sources) on vSphere sources
  - pywinrm, for O(validate_sources) on Hyper-V sources
options:
  plugin:
    description: The name of this plugin; makes the plan file an inventory source.
    type: str
    required: true
    choices: [vmigrate.v2v.plan]
  validate_sources:
    description:
      - Connect to the source endpoints to expand selectors and to check that the VMs
        exist and that every network and storage they use has a map entry.
      - Set to V(false) to read the plan offline; selectors are then refused.
    type: bool
    default: true
"""

EXAMPLES = r"""
# plan.v2v.yml (see docs/plan.md for every key); then:
#   ansible-inventory -i plan.v2v.yml --graph
#   ansible-playbook -i plan.v2v.yml vmigrate.v2v.migrate --limit wave_wave1
plugin: vmigrate.v2v.plan
version: 1
defaults:
  conversion_hosts: [conv1.example.com, conv2.example.com]
  work_dir: /var/lib/vmigrate
endpoints:
  lab-kvm:
    platform: kvm
    uri: qemu:///system
  prod-vc:
    platform: vsphere
    hostname: vcenter.example.com
    username: migrator@vsphere.local
    password: "{{ lookup('env', 'VMIGRATE_VSPHERE_PASSWORD') }}"
    datacenter: DC1
    placement: {datastore: ds1, folder: migrated}
network_map: {default: VM Network}
storage_map: {default: ds1}
waves:
  - name: wave1
    source: lab-kvm
    target: prod-vc
    concurrency: 2
    vms:
      - web01
      - {name: db01, target_name: db01-new, mode: warm}
      - {select: {name: "app-*"}}
"""

import os
import re

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin
from ansible.utils.unsafe_proxy import wrap_var

from ansible_collections.vmigrate.v2v.plugins.module_utils import plan as _plan
from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import V2VError

SUFFIXES = (".v2v.yml", ".v2v.yaml", "plan.yml", "plan.yaml")
ENV_LOOKUP = re.compile(r"""^\s*\{\{\s*lookup\(\s*(['"])env\1\s*,\s*(['"])([A-Za-z_][A-Za-z0-9_]*)\2\s*\)\s*\}\}\s*$""")


def position(node):
    """(file, line, col) of a loaded mapping or list: ansible_pos before ansible-core
    2.19, the Origin tag since (only readable through the internal datatag API)."""
    pos = _plan.ansible_pos(node)
    if pos:
        return pos
    try:
        from ansible._internal._datatag._tags import Origin
    except ImportError:
        return None
    origin = Origin.get_tag(node)
    if origin is None or origin.line_num is None:
        return None
    return (origin.path, origin.line_num, origin.col_num)


def resolve_connection(connection, environ=None):
    """The connection with env lookups resolved, or (None, reason) for other templates.

    Returns (params, None) or (None, why). Never includes a value in ``why``.
    """
    environ = os.environ if environ is None else environ
    out = {}
    for key, value in connection.items():
        if _plan.is_template(value):
            match = ENV_LOOKUP.match(value)
            if not match:
                return None, "%s is a template other than {{ lookup('env', 'NAME') }}" % key
            name = match.group(3)
            if name not in environ:
                return None, "%s reads environment variable %s, which is not set" % (key, name)
            value = environ[name]
            if key == "port":
                value = int(value)
            elif key == "validate_certs":
                value = value.strip().lower() in ("1", "true", "yes", "on")
        out[key] = value
    return out, None


class PlatformFacts(_plan.SourceFacts):
    """A source endpoint's VMs through the collection's platform classes."""

    def __init__(self, platform):
        self.platform = platform

    def vms(self):
        if self.platform.name == "vsphere":
            from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere import inventory as _inv

            out = []
            for vm in self.platform._all_vms():
                folder = _inv.inventory_path(vm)
                # relative to the datacenter's VM folder: "DC0/vm/prod/app" -> "prod/app"
                prefix = "%s/vm" % self.platform.dc.name
                folder = folder[len(prefix) :].strip("/") if folder.startswith(prefix) else folder
                tags = [t.key for t in (vm.tag or [])]
                out.append({"name": vm.name, "folder": folder, "tags": tags})
            return out
        return [{"name": vm["name"], "folder": None, "tags": None} for vm in self.platform.list_vms()]

    def spec(self, name):
        return self.platform.describe(self.platform.find_vm(name))


def platform_class(name):
    if name == "kvm":
        from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm.platform import KvmPlatform

        return KvmPlatform
    if name == "hyperv":
        from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.hyperv.platform import HyperVPlatform

        return HyperVPlatform
    from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.vsphere.platform import VspherePlatform

    return VspherePlatform


# The host variables that hold names (VMs, waves, networks, storage): never templated.
NAME_VARS = ("v2v_vm", "v2v_target_name", "v2v_wave", "v2v_wave_group", "v2v_network_map", "v2v_storage_map")


class InventoryModule(BaseInventoryPlugin):
    NAME = "vmigrate.v2v.plan"

    def verify_file(self, path):
        return super().verify_file(path) and os.path.basename(path).endswith(SUFFIXES)

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        data = self._read_config_data(path)
        opened = []
        try:
            plan = _plan.parse(data, source=path, position=position)
            facts = None
            if self.get_option("validate_sources"):
                facts = self._source_facts(plan, opened)
            records = _plan.expand(plan, facts)
            self._populate(path, _plan.inventory(plan, records))
        except V2VError as exc:
            raise AnsibleParserError(exc.message) from None
        finally:
            for platform in opened:
                platform.close()

    def _source_facts(self, plan, opened):
        """SourceFacts of each source endpoint the plan uses and the plugin can reach."""
        used = []
        for wave in plan.waves:
            for entry in wave["entries"]:
                if entry and entry["source"] and entry["source"] not in used:
                    used.append(entry["source"])
        facts = {}
        for name in used:
            ep = plan.endpoints[name]
            params, why = resolve_connection(ep["connection"])
            if params is None:
                self.display.warning("vmigrate.v2v.plan: not validating endpoint %s: %s" % (name, why))
                continue
            cls = platform_class(ep["platform"])
            missing = cls.missing_library()
            if missing:
                self.display.warning(
                    "vmigrate.v2v.plan: not validating endpoint %s: Python library %s is missing (%s)"
                    % (name, missing[0], missing[1])
                )
                continue
            if ep["platform"] == "vsphere":
                # the modules' env fallbacks, so a plan may leave them to the environment
                for key, env in (
                    ("hostname", "VMWARE_HOST"),
                    ("username", "VMWARE_USER"),
                    ("password", "VMWARE_PASSWORD"),
                ):
                    if not params.get(key) and os.environ.get(env):
                        params[key] = os.environ[env]
                lacking = [k for k in ("hostname", "username", "password") if not params.get(k)]
                if lacking:
                    self.display.warning(
                        "vmigrate.v2v.plan: not validating endpoint %s: %s not set" % (name, ", ".join(lacking))
                    )
                    continue
            try:
                platform = cls(params)
            except V2VError as exc:
                raise V2VError(
                    "plan %s: cannot connect to source endpoint %s: %s" % (plan.source, name, exc.problem),
                    exc.fix or "check the endpoint's connection, or set validate_sources: false",
                ) from None
            opened.append(platform)
            facts[name] = PlatformFacts(platform)
        return facts

    def _populate(self, path, inv):
        for group in inv["groups"]:
            self.inventory.add_group(group)
        for host, rec in inv["hosts"]:
            self.inventory.add_host(host, group="v2v")
            for key, value in rec.items():
                # Names are data, never templates: a VM called 'web{{ x }}' keeps its name
                # (connections and options may still use lookups, e.g. the password).
                self.inventory.set_variable(host, key, wrap_var(value) if key in NAME_VARS else value)
        for group, hosts in inv["groups"].items():
            for host in hosts:
                self.inventory.add_child(group, host)
        self.inventory.set_variable("all", "v2v_waves", wrap_var(inv["waves"]))
        self.inventory.set_variable("all", "v2v_plan_file", path)
