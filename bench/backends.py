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
        (f"== 8. Store backends, median of {repeats} (SQLite: WAL, synchronous=NORMAL; PostgreSQL "
         f"{result.server})", "", ""),
    ]  # fmt: skip
    per_blocks = sorted({n for _, n in result.catch_up})
    for per_block in per_blocks:
        sqlite, postgresql = (result.blocks_per_s(b, per_block) for b in BACKENDS)
        [sample, *_] = result.catch_up[("sqlite", per_block)]
        what = (
            f"catch-up, {per_block} deposits/block, {sample.blocks} blocks (min {MIN_CONFIRMATIONS} conf, "
            f"{BATCH_BLOCKS} blocks a commit): blocks/s"
        )
        rows += [
            (what, "", ""),
            ("  SQLite", f"{sqlite:,.1f}", ""),
            ("  PostgreSQL", f"{postgresql:,.1f}", _ratio(postgresql / sqlite)),
        ]
    sqlite, postgresql = (result.deliveries_per_s(b) for b in BACKENDS)
    failed = sum(r.failed_attempts for runs in result.deliveries.values() for r in runs)
    rows += [
        (
            f"callbacks: {result.callbacks:,} delivered and committed, concurrency {result.concurrency}",
            "",
            f"failed attempts: {failed}",
        ),
        ("  SQLite", f"{sqlite:,.0f}/s", ""),
        ("  PostgreSQL", f"{postgresql:,.0f}/s", _ratio(postgresql / sqlite)),
    ]
    return rows


def _ratio(value: float) -> str:
    verdict = "ok" if value >= TARGET_RATIO else "MISSED"
    return f"PostgreSQL/SQLite {value:.2f}  (target >= {TARGET_RATIO:g}: within 2x) {verdict}"
