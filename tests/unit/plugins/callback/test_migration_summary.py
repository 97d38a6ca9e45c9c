from ansible_collections.vmigrate.v2v.plugins.callback import migration_summary


def test_row_reads_the_keys_every_step_ends_with():
    res = {"changed": True, "rate_bytes_per_second": 3 * 1024 * 1024, "summary": "import web01 (create): ..."}
    row = migration_summary._row("web01", "kvm_import", res)
    assert "kvm_import" in row and "changed=True" in row and "3.0 MiB/s" in row and row.endswith("(create): ...")
    assert "/s" not in migration_summary._row("web01", "kvm_verify", {"changed": False, "summary": "verify web01: OK"})


def test_human():
    assert migration_summary._human(3 * 1024 * 1024) == "3.0 MiB"
    assert migration_summary._human(12) == "12 B"


def test_rows_name_the_module_that_ran_and_skip_progress_reports():
    from types import SimpleNamespace

    step_task = SimpleNamespace(action="vmigrate.v2v.step")
    res = {"step_module": "vmigrate.v2v.kvm_export", "changed": True, "summary": "cold full export of web01"}
    assert migration_summary._step_name(step_task, res) == "kvm_export"
    assert migration_summary._step_name(SimpleNamespace(action="vmigrate.v2v.convert"), {}) == "convert"
    cb = migration_summary.CallbackModule()
    host = SimpleNamespace(get_name=lambda: "web01")
    cb.v2_runner_on_ok(SimpleNamespace(_task=step_task, _host=host, _result=res))
    cb.v2_runner_on_ok(
        SimpleNamespace(_task=SimpleNamespace(action="vmigrate.v2v.progress_info"), _host=host, _result={"line": "x"})
    )
    assert len(cb._rows) == 1 and "kvm_export" in cb._rows[0] and cb._rows[0].endswith("cold full export of web01")
