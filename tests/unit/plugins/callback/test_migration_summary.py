from ansible_collections.vmigrate.v2v.plugins.callback import migration_summary


def test_row_reads_the_keys_every_step_ends_with():
    res = {"changed": True, "rate_bytes_per_second": 3 * 1024 * 1024, "summary": "import web01 (create): ..."}
    row = migration_summary._row("web01", "kvm_import", res)
    assert "kvm_import" in row and "changed=True" in row and "3.0 MiB/s" in row and row.endswith("(create): ...")
    assert "/s" not in migration_summary._row("web01", "kvm_verify", {"changed": False, "summary": "verify web01: OK"})


def test_human():
    assert migration_summary._human(3 * 1024 * 1024) == "3.0 MiB"
    assert migration_summary._human(12) == "12 B"
