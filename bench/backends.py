"""The two store backends side by side (issue 12): SQLite and PostgreSQL measured in one run.

- Catch-up: bench/ledger.py's (follower + ledger + store over pre-built blocks, many deposits a block),
  blocks per second.
- Callbacks: the Dispatcher delivering a prepared outbox to the devnet receiver (its own process), timed
  until every entry is DELIVERED in the store: a delivery counts once its attempt is committed.

The PostgreSQL server is started here (devnet.postgres) with fsync on, in a temp directory on the same
disk as the SQLite files. Durability differs, to PostgreSQL's cost: SQLite runs as the daemon runs it
(WAL, synchronous=NORMAL: a commit survives the process's crash, and is on disk only at the next
checkpoint), PostgreSQL with fsync=on and synchronous_commit=on (each commit's WAL is flushed to disk
before the commit returns). The backends alternate run by run, so drift in the machine's load hits both;
each figure is the median of the repeats. The ratio is PostgreSQL's rate over SQLite's (target: within
2x, i.e. >= 0.5).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.ledger import BATCH_BLOCKS, MIN_CONFIRMATIONS, LedgerRun, catch_up
from devnet.postgres import PostgresServer

if TYPE_CHECKING:
    from bench.run import CallbackRun

BACKENDS = ("sqlite", "postgresql")
TARGET_RATIO = 0.5  # PostgreSQL's rate / SQLite's: "within 2x"


@dataclass(frozen=True, slots=True)
class BackendsResult:
    callbacks: int
    concurrency: int
    server: str  # PostgreSQL's version and durability settings, as the server reports them
    catch_up: dict[tuple[str, int], list[LedgerRun]]  # (backend, deposits a block) -> repeats
    deliveries: dict[str, list[CallbackRun]]  # backend -> repeats

    def blocks_per_s(self, backend: str, per_block: int) -> float:
        return statistics.median(r.blocks_per_s for r in self.catch_up[(backend, per_block)])

    def deliveries_per_s(self, backend: str) -> float:
        return statistics.median(r.per_s for r in self.deliveries[backend])


def run_backends_bench(
    *,
    per_blocks: tuple[int, ...] = (50, 500),
    blocks: int = 100,
    callbacks: int = 10_000,
    concurrency: int = 20,
    repeats: int = 3,
) -> BackendsResult:
    """Catch-up at each of `per_blocks` deposits a block, then `callbacks` deliveries, on both
    backends, `repeats` times each (alternating); every run on a fresh store."""
    from bench.run import daemon_logging, deliver_all, prepare_outbox, receiver_process

    names = (f"b{n}" for n in itertools.count())
    with (
        tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp,
        PostgresServer(fsync=True) as server,
        daemon_logging(),
    ):

        def fresh(backend: str) -> str:
            name = next(names)
            return (
                os.path.join(tmp, f"{name}.sqlite3") if backend == "sqlite" else server.create_database(name)
            )

        server_line = server.psql(
            "SELECT current_setting('server_version') || ', fsync=' || current_setting('fsync')"
            " || ', synchronous_commit=' || current_setting('synchronous_commit')"
        ).strip()
        runs: dict[tuple[str, int], list[LedgerRun]] = {}
        for _, per_block, backend in itertools.product(range(repeats), per_blocks, BACKENDS):
            run = asyncio.run(catch_up(per_block, blocks, fresh(backend)))
            runs.setdefault((backend, per_block), []).append(run)
        templates = {backend: fresh(backend) for backend in BACKENDS}
        for template in templates.values():
            asyncio.run(prepare_outbox(template, callbacks, seed=3))
        deliveries: dict[str, list[CallbackRun]] = {backend: [] for backend in BACKENDS}
        with receiver_process() as (url, pid):
            for _, backend in itertools.product(range(repeats), BACKENDS):
                name = next(names)
                if backend == "sqlite":
                    location = os.path.join(tmp, f"{name}.sqlite3")
                    shutil.copyfile(templates[backend], location)  # closed cleanly: no WAL to copy
                else:
                    template = templates[backend].rsplit("/", 1)[1]
                    server.psql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                    location = server.url(name)
                delivered = asyncio.run(deliver_all(location, url, pid, callbacks, concurrency))
                deliveries[backend].append(delivered)
    return BackendsResult(callbacks, concurrency, server_line, runs, deliveries)


def backends_rows(result: BackendsResult | None) -> list[tuple[str, str, str]]:
    if result is None:
        return []
    repeats = len(result.deliveries["sqlite"])
    rows = [
        (f"== 8. Store backends: SQLite (WAL, synchronous=NORMAL) vs PostgreSQL {result.server}; "
         f"median of {repeats}, backends alternating", "", ""),
    ]  # fmt: skip
    for per_block in sorted({n for _, n in result.catch_up}):
        runs = {b: [r.blocks_per_s for r in result.catch_up[(b, per_block)]] for b in BACKENDS}
        [sample, *_] = result.catch_up[("sqlite", per_block)]
        what = f"catch-up, {per_block} deposits/block, blocks/s"
        detail = f"{sample.blocks} blocks, min {MIN_CONFIRMATIONS} conf, {BATCH_BLOCKS} blocks a commit"
        rows += _pair(what, runs, "{:,.1f}", detail)
    runs = {b: [r.per_s for r in result.deliveries[b]] for b in BACKENDS}
    failed = sum(r.failed_attempts for b in BACKENDS for r in result.deliveries[b])
    detail = f"{result.callbacks:,} callbacks, concurrency {result.concurrency}, failed attempts {failed}"
    rows += _pair("callbacks delivered and committed/s", runs, "{:,.0f}", detail)
    return rows


def _pair(what: str, runs: dict[str, list[float]], form: str, detail: str) -> list[tuple[str, str, str]]:
    """A figure on SQLite and on PostgreSQL (medians), the ratio against the target on the second line."""
    sqlite, postgresql = (statistics.median(runs[b]) for b in BACKENDS)
    ratio = postgresql / sqlite
    verdict = "ok" if ratio >= TARGET_RATIO else "MISSED"
    spread = ", ".join(f"{name} {form.format(min(runs[b]))}..{form.format(max(runs[b]))}"
                       for name, b in zip(("SQLite", "PostgreSQL"), BACKENDS, strict=True))  # fmt: skip
    return [
        (f"{what}: SQLite", form.format(sqlite), f"{detail}; runs: {spread}"),
        (
            f"{what}: PostgreSQL",
            form.format(postgresql),
            f"PostgreSQL/SQLite {ratio:.2f} (target >= {TARGET_RATIO:g}: within 2x) {verdict}",
        ),
    ]
