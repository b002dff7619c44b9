"""bench/run.py at toy sizes: each measurement runs end to end (real anvil, store, receiver process) and
produces numbers. No timing is asserted: CI machines are too noisy for that, `make bench` is for people."""

from __future__ import annotations

import math

from bench import run as bench


def positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def test_evm_scan_bench_runs() -> None:
    result = bench.run_evm_bench(
        blocks=20, logs_per_block=10, watched=1000, hit_every=5, pool_size=50, runs=1
    )
    assert (result.blocks, result.logs, result.watched, result.watch_form) == (20, 200, 1000, "dict")
    assert result.hits == 40  # 10 watched pool addresses, each paid 4 times
    assert positive(
        result.bare_fetch_s,
        result.adapter_fetch_s,
        result.decode_match_s,
        result.fetch_match_s,
        result.tx_infos_s,
        result.adapter_logs_s,
        result.headers_s,
        result.scan_s,
    )
    assert "EVM log scan" in bench.render(result, None, None)


def test_evm_scan_bench_runs_with_compact_keys() -> None:
    result = bench.run_evm_bench(
        blocks=10, logs_per_block=10, watched=1000, hit_every=5, pool_size=50, runs=1, compact_above=0
    )
    assert (result.watched, result.watch_form, result.hits) == (1000, "compact", 20)
    assert "1,000 watched addresses (compact)" in bench.render(result, None, None)


def test_memory_bench_runs() -> None:
    result = bench.run_memory_bench(addresses=1000)
    assert result.addresses == 1000
    assert positive(result.insert_s, result.load_s, result.traced_bytes, result.bytes_per_address)
    assert "Store.open + watch_keys" in bench.render(None, result, None)
    # Both forms of the watch set, each loaded in fresh processes; 1,000 addresses: the daemon's is dict.
    assert [load.form for load in result.loads] == ["dict", "compact"] and result.daemon_form == "dict"
    for load in result.loads:
        assert positive(load.load_s, load.traced_bytes, load.peak_rss, load.rss_before)
        assert load.peak_rss > 10_000_000  # a whole interpreter
    assert result.load("compact").traced_bytes < result.load("dict").traced_bytes
    text = bench.render(None, result, None)
    assert "compact: Store.open + watch_keys" in text and "peak RSS of the loading process" in text


def test_callback_bench_runs() -> None:
    result = bench.run_callback_bench(count=200, concurrencies=(5,), repeats=1)
    [run] = result.runs
    assert (run.concurrency, run.count) == (5, 200)
    assert positive(run.seconds, run.per_s, result.prepare_s)
    assert run.attempts >= 200
    assert "DELIVERED" in bench.render(None, None, result)


def test_yaml_addresses_bench_runs() -> None:
    result = bench.run_yaml_bench(1000)
    assert (result.addresses, result.file_bytes > 50_000) == (1000, True)
    assert positive(result.check_s, result.check_cpu_s, result.load_s, result.sync_s)
    assert result.check_peak_rss > 10_000_000 and result.run_peak_rss > 10_000_000  # a whole interpreter
    text = bench.render(None, None, None, [result])
    assert "1,000 addresses" in text and "run's start peak RSS" in text


def test_ledger_bench_runs() -> None:
    from bench.ledger import run_ledger_bench

    runs = run_ledger_bench((1, 4), blocks=12)
    assert [(r.per_block, r.blocks, r.deposits) for r in runs] == [(1, 12, 12), (4, 12, 48)]
    # One commit of all 12 blocks (20 a commit), min 6 confirmations: deposits 6 or more deep get only
    # `confirmed`, the others only `not_confirmed` so far; one callback each.
    for r in runs:
        assert r.callbacks == r.deposits and positive(r.seconds, r.store_calls, r.blocks_per_s)
    assert "store calls/block" in bench.render(None, None, None, (), runs)


def test_addresses_bench_runs() -> None:
    from bench.addresses import run_import_bench, run_start_bench

    imported = run_import_bench(400)
    assert (imported.addresses, imported.added) == (400, 400)
    assert positive(imported.seconds, imported.checked_s, imported.per_s, imported.file_bytes)
    assert imported.checked_s < imported.seconds
    started = run_start_bench(1000)
    assert (started.addresses, started.keys) == (1000, 1000)
    assert positive(started.open_s, started.load_s, started.fill_s, started.db_bytes)
    assert started.peak_rss > started.rss_before > 10_000_000  # a whole interpreter
    text = bench.render(None, None, None, imported=imported, started=started)
    assert "addresses import: 400 addresses" in text and "start-up with 1,000 addresses" in text
    assert "peak RSS of that process" in text and "target >= 50,000/s" in text


def test_api_take_bench_runs() -> None:
    from bench.api import api_rows, run_api_bench

    run = run_api_bench(addresses=400, rate=20, seconds=1.5)
    assert run.addresses == 400 and len(run.answers) == 30
    assert run.errors == [] and run.warmup_errors == ()
    assert {a.status for a in run.answers} <= {200, 201} and any(a.status == 201 for a in run.answers)
    assert positive(run.start_api_s, run.start_ready_s, run.load_s, run.percentile(0.99), run.daemon_cpu_s)
    assert run.daemon_hwm >= run.daemon_rss > 10_000_000  # a whole interpreter
    assert run.eth_blocks >= 1 and run.btc_blocks >= 1
    text = bench.render(None, None, None, taken=run)
    assert "take latency p99" in text and "process start to /readyz" in text
    assert api_rows(None) == []


def test_backends_bench_runs() -> None:
    """Both backends in one run: a PostgreSQL server with fsync on beside SQLite; the ratio printed."""
    from bench.backends import run_backends_bench

    result = run_backends_bench(per_blocks=(4,), blocks=12, callbacks=60, concurrency=5, repeats=1)
    assert "fsync=on, synchronous_commit=on" in result.server
    for backend in ("sqlite", "postgresql"):
        [run] = result.catch_up[(backend, 4)]
        assert (run.blocks, run.deposits, run.callbacks) == (12, 48, 48)
        [delivered] = result.deliveries[backend]
        assert delivered.count == 60 and delivered.attempts >= 60
        assert positive(result.blocks_per_s(backend, 4), result.deliveries_per_s(backend))
    text = bench.render(None, None, None, backends=result)
    assert text.count("PostgreSQL/SQLite") == 2 and "catch-up, 4 deposits/block" in text
