"""Unit tests of the libvirt-independent parts of _kvm (XML, provenance, deltas)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from ansible_collections.vmigrate.v2v.plugins.module_utils._errors import PlatformError
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import connection as _connection
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import inventory as _inventory
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import source as _source
from ansible_collections.vmigrate.v2v.plugins.module_utils.platforms.kvm import target as _target

DOMAIN = """<domain type='kvm'><name>web01</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/var/lib/libvirt/images/web01.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
<disk type='block' device='disk'><driver name='qemu' type='raw'/>
<source dev='/dev/vg/data'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>"""


def test_domain_disks_skips_removable_and_keeps_order():
    disks = _inventory.domain_disks(DOMAIN)
    assert [(d["id"], d["target"], d["path"], d["format"]) for d in disks] == [
        ("disk0", "vda", "/var/lib/libvirt/images/web01.qcow2", "qcow2"),
        ("disk1", "vdb", "/dev/vg/data", "raw"),
    ]


def test_backup_xml_pull_mode_incremental():
    root = ET.fromstring(_source.backup_xml("/run/s.sock", ["vda", "vdb"], "/tmp/x", incremental="vmigrate-1"))
    assert root.get("mode") == "pull"
    assert root.findtext("incremental") == "vmigrate-1"
    assert root.find("server").attrib == {"transport": "unix", "socket": "/run/s.sock"}
    assert [d.find("scratch").get("file") for d in root.findall("disks/disk")] == [
        "/tmp/x/vda.scratch",
        "/tmp/x/vdb.scratch",
    ]
    full = ET.fromstring(_source.backup_xml("/run/s.sock", ["vda"], "/tmp/x"))
    assert full.find("incremental") is None


def test_checkpoint_xml_bitmaps():
    root = ET.fromstring(_source.checkpoint_xml("vmigrate-2", ["vda"]))
    assert root.findtext("name") == "vmigrate-2"
    assert root.find("disks/disk").attrib == {"name": "vda", "checkpoint": "bitmap"}


def test_provenance_round_trip_attributes_and_children():
    prov = {"source_id": "abc", "sync_index": 3, "state": "complete", "checkpoint": None, "disks": {"disk0": "f"}}
    parsed = _inventory.parse_provenance(_inventory.provenance_xml(prov))
    assert parsed == {"source_id": "abc", "sync_index": 3, "state": "complete", "disks": {"disk0": "f"}}
    # The form engine/descriptors writes into a defined domain reads the same.
    text = '<v2v:provenance xmlns:v2v="%s" source_id="abc"><v2v:sync_index>3</v2v:sync_index></v2v:provenance>'
    assert _inventory.parse_provenance(text % _inventory.NS) == {"source_id": "abc", "sync_index": 3}
    # Older targets wrote every value as an attribute string.
    assert _inventory.parse_provenance('<provenance source_id="abc" sync_index="3"/>') == {
        "source_id": "abc",
        "sync_index": "3",
    }
    assert _inventory.parse_provenance("") is None


def test_with_cpu_mode():
    xml = "<domain><cpu mode='host-passthrough' check='none'><topology sockets='1'/></cpu></domain>"
    cpu = ET.fromstring(_target.with_cpu_mode(xml, "default")).find("cpu")
    assert "mode" not in cpu.attrib and cpu.find("topology") is not None
    assert ET.fromstring(_target.with_cpu_mode(xml, "host-model")).find("cpu").get("mode") == "host-model"
    assert _target.with_cpu_mode(xml, None) == xml


@pytest.mark.parametrize(
    "uri,local",
    [
        ("qemu:///system", True),
        ("qemu+tcp://127.0.0.1:1/system", True),
        ("qemu+ssh://root@kvm1/system", False),
        ("qemu+tls://kvm2.example/system", False),
    ],
)
def test_is_local_uri(uri, local):
    assert _connection.is_local_uri(uri) is local


def _libvirt_error(code, message):
    libvirt = _connection.libvirt
    exc = libvirt.libvirtError(message)
    exc.err = (code, libvirt.VIR_FROM_STORAGE, message, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return exc


class _BusyPool:
    """A pool that is busy (another client builds a volume in it) for ``busy`` refreshes."""

    def __init__(self, busy, error=None):
        self.busy, self.refreshed, self.error = busy, 0, error

    def name(self):
        return "target"

    def refresh(self, flags):
        if self.busy:
            self.busy -= 1
            raise self.error or _libvirt_error(
                _connection.libvirt.VIR_ERR_INTERNAL_ERROR,
                "internal error: pool 'target' has asynchronous jobs running.",
            )
        self.refreshed += 1
        return 0


def test_refresh_pool_waits_for_another_volume_build():
    waits = []
    pool = _BusyPool(busy=3)
    _connection.refresh_pool(pool, sleep=waits.append)
    assert pool.refreshed == 1
    assert waits == [0.1, 0.2, 0.4]


def test_refresh_pool_gives_up_naming_the_pool():
    pool = _BusyPool(busy=10)
    with pytest.raises(PlatformError) as err:
        _connection.refresh_pool(pool, attempts=3, sleep=lambda _s: None)
    assert "storage pool target" in str(err.value) and pool.refreshed == 0


def test_refresh_pool_does_not_retry_other_errors():
    other = _libvirt_error(_connection.libvirt.VIR_ERR_NO_STORAGE_POOL, "pool not found")
    pool = _BusyPool(busy=1, error=other)
    with pytest.raises(_connection.libvirt.libvirtError):
        _connection.refresh_pool(pool, sleep=lambda _s: None)
