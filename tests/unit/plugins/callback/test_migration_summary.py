from ansible_collections.vmigrate.v2v.plugins.callback import migration_summary


def test_transfers_found_at_any_shallow_depth():
    result = {
        "changed": True,
        "transfer": [{"disk": "disk0", "progress": {"bytes": 10, "seconds": 2.0, "rate_bytes_per_second": 5}}],
        "progress": {"bytes": 7, "seconds": 1.0, "rate_bytes_per_second": 7},
        "spec": {"disks": [{"capacity": 1}]},
    }
    found = migration_summary._transfers(result)
    assert sorted(t["bytes"] for t in found) == [7, 10]


def test_human():
    assert migration_summary._human(3 * 1024 * 1024) == "3.0 MiB"
    assert migration_summary._human(12) == "12 B"
