"""What the plan tests (test_plan_migrate, test_plan_report, test_plan_roles) share:
shut-off KVM source domains with random data, a KVM -> KVM plan file over them, and
running a collection playbook on it."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import libvirt

MIB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(ROOT, "playbooks")


class SourceDomains:
    """make(name) defines a shut-off domain <prefix>-<name>-<tag> whose qcow2 disk of 4 x mib
    MiB holds four pieces of random data (holes between them) of piece_mib MiB each (default
    mib/4), or no disk;
    cleanup() removes every domain and volume carrying the tag."""

    def __init__(self, lab, conn, prefix):
        self.lab, self.conn, self.prefix = lab, conn, prefix
        self.tag = uuid.uuid4().hex[:6]

    def make(self, name, mib=4, disk=True, piece_mib=None):
        from ansible_collections.vmigrate.v2v.plugins.module_utils.engine import spec as _spec
        from ansible_collections.vmigrate.v2v.plugins.module_utils.engine.descriptors import libvirt as _libvirt_xml

        name = name if name.startswith(self.prefix + "-") else "%s-%s-%s" % (self.prefix, name, self.tag)
        disks, files, path = [], {}, None
        if disk:
            path = os.path.join(self.lab["pool_paths"][self.lab["pools"]["source"]], name + ".qcow2")
            with open(path + ".raw", "wb") as fh:
                fh.truncate(4 * mib * MIB)
                for i in range(4):
                    fh.seek(i * mib * MIB)
                    for _chunk in range(piece_mib or 1):  # 1 MiB at a time: big pieces stay cheap on memory
                        fh.write(os.urandom(MIB if piece_mib else mib * MIB // 4))
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", path + ".raw", path], check=True)
            os.unlink(path + ".raw")
            disks = [_spec.new_disk(id="disk0", bus="virtio", format="qcow2", capacity=4 * mib * MIB)]
            files = {"disk0": {"path": path, "format": "qcow2"}}
        spec = _spec.new_spec(name=name, memory_mib=64, disks=disks, nics=[])
        xml = _libvirt_xml.libvirt_xml_from_spec(spec, files, domain_type=self.lab["domain_type"])
        self.conn.defineXML(xml.replace(' mode="host-passthrough"', ""))
        return name, path

    def cleanup(self):
        for dom in self.conn.listAllDomains(0):
            if dom.name().startswith(self.prefix + "-") and self.tag in dom.name():
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        for pool_name in (self.lab["pools"]["source"], self.lab["pools"]["target"]):
            pool = self.conn.storagePoolLookupByName(pool_name)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                if self.tag in vol.name():
                    vol.delete(0)


def target_of(name):
    """The target of source lab-<x>-<what>-<tag>: lab-<x>-t-<tag>-<what>."""
    _lab, x, what, tag = name.split("-", 3)
    return "lab-%s-t-%s-%s" % (x, tag, what)


def write_plan(lab, tmp_path, waves, mode="full", options=None, max_failed=0):
    """A KVM -> KVM plan: waves = [[source name, ...], ...], named w0, w1, ...; work dir
    tmp_path/work; each VM's target is target_of(name)."""
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', mode: %s, options: %s}" % (tmp_path / "work", mode, json.dumps(options or {})),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s', placement: {pool: %s}}" % (lab["libvirt_uri"], lab["pools"]["target"]),
        "storage_map: {'%s': %s}" % (lab["pool_paths"][lab["pools"]["source"]], lab["pools"]["target"]),
        "waves:",
    ]
    for i, names in enumerate(waves):
        lines += ["  - name: w%d" % i, "    source: lab-kvm", "    target: lab-kvm", "    concurrency: 2"]
        lines += ["    max_failed: %d" % max_failed, "    vms:"]
        lines += ["      - {name: %s, target_name: %s}" % (n, target_of(n)) for n in names]
    path = tmp_path / ("plan-%s.v2v.yml" % uuid.uuid4().hex[:4])
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def vsphere_endpoint(vc, password_env):
    """The plan's lines of endpoint lab-vc: the lab's vcsim, its password read from the
    environment variable ``password_env`` (never written into the plan)."""
    return [
        "  lab-vc:",
        "    platform: vsphere",
        "    hostname: '%s'" % vc["hostname"],
        "    port: %d" % vc["port"],
        "    username: '%s'" % vc["username"],
        "    password: \"{{ lookup('env', '%s') }}\"" % password_env,
        "    ca_path: '%s'" % vc["ca_path"],
        "    datacenter: '%s'" % vc["datacenter"],
        "    placement: {datastore: %s}" % vc["datastore"],
    ]


def write_vsphere_plan(lab, tmp_path, name, target, defaults):
    """A KVM -> vSphere (vcsim) plan of one VM, wave w0; the vCenter password comes from the
    environment variable LAB_VC_PASSWORD (never written into the plan). ``defaults`` is
    the plan's defaults line after its work_dir (e.g. "mode: full")."""
    vc = lab["vcsim"]
    lines = [
        "plugin: vmigrate.v2v.plan",
        "version: 1",
        "defaults: {work_dir: '%s', %s}" % (tmp_path / "work", defaults),
        "endpoints:",
        "  lab-kvm: {platform: kvm, uri: '%s'}" % lab["libvirt_uri"],
        *vsphere_endpoint(vc, "LAB_VC_PASSWORD"),
        "storage_map: {'%s': %s}" % (lab["pool_paths"][lab["pools"]["source"]], vc["datastore"]),
        "waves:",
        "  - {name: w0, source: lab-kvm, target: lab-vc, vms: [{name: %s, target_name: %s}]}" % (name, target),
    ]
    path = tmp_path / "plan-vs.v2v.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def play(run_playbook, plan_path, playbook, check=False):
    """A collection playbook (playbooks/<playbook>) with the plan as its inventory."""
    env = {"ANSIBLE_INVENTORY": plan_path}
    return run_playbook(os.path.join(PLAYBOOKS, playbook), check=check, env=env, timeout=1200)
