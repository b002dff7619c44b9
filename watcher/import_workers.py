"""Checking the rows of an address file on every core, for `addresses import`.

The file is read here, in order (a quoted CSV field may span lines: only one reader can number them), and
cut into batches of raw rows. Worker processes check each batch (the EIP-55 keccak, the bech32 checksum:
pure CPU, most of an import's time in one process) and pack it for the store (`ImportBatch`), while this
process reads on and the store stages the batches already checked. Results are taken in file order, so
the first refused row reported is the file's first bad row, whichever worker found it. A file of one
batch is checked here: starting processes would cost more than they save.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from array import array
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import aclosing
from itertools import chain, islice

from watcher.address_import import RowValidator
from watcher.errors import ImportFileError
from watcher.store import IMPORT_BATCH, ImportBatch

RawRow = tuple[int, str, str, str]  # (line, currency, address, foreign_id) as read
Refusal = tuple[int | None, str, str]  # an ImportFileError's line, field and message

_validator: RowValidator | None = None  # a worker process's, set once when it starts


def check_batch(validator: RowValidator, rows: list[RawRow]) -> ImportBatch:
    """The rows checked and packed for the store; ImportFileError at the first bad one."""
    return ImportBatch.of([row for _, row in validator.checked(rows)])


def _start(validator: RowValidator) -> None:
    global _validator
    _validator = validator


def _check_in_worker(rows: list[RawRow]) -> ImportBatch | Refusal:
    assert _validator is not None, "the worker was started without its validator"
    try:
        return check_batch(_validator, rows)
    except ImportFileError as exc:
        # Sent back as its fields: the exception's four-argument __init__ does not survive pickling.
        return exc.line, exc.field, exc.message


async def checked_batches(
    validator: RowValidator,
    rows: Iterator[RawRow],
    lines: array[int],
    progress: Callable[[int], None],
    *,
    batch_rows: int = IMPORT_BATCH,
    workers: int | None = None,
) -> AsyncGenerator[ImportBatch, None]:
    """`rows` checked, as packed batches in file order; each row's line goes to `lines` (the store names
    a conflicting row by its position). ImportFileError (without the file's name) at the first bad row.
    `workers`: processes checking batches (default: one per core this process may use)."""
    # The reader's own refusal (a row not shaped as one) is reported after the rows before it are checked:
    # reading runs ahead of the checks, and an earlier row may be the first bad one.
    unreadable: list[ImportFileError] = []
    readable = _until_refused(rows, unreadable)
    raw = iter(lambda: list(islice(readable, batch_rows)), [])
    first = next(raw, [])
    second = next(raw, None)
    if second is None:  # one batch (or none)
        if first:
            lines.extend([r[0] for r in first])
            yield check_batch(validator, first)
            progress(len(lines))
    else:
        pooled = _in_workers(validator, chain([first, second], raw), lines, progress, workers)
        async with aclosing(pooled):  # the pool is shut down even when the caller stops early
            async for batch in pooled:
                yield batch
    if unreadable:
        raise unreadable[0]


async def _in_workers(
    validator: RowValidator,
    batches: Iterator[list[RawRow]],
    lines: array[int],
    progress: Callable[[int], None],
    workers: int | None,
) -> AsyncGenerator[ImportBatch, None]:
    count = workers or _cores()
    pool = ProcessPoolExecutor(count, mp_context=_context(), initializer=_start, initargs=(validator,))
    pending: deque[asyncio.Future[ImportBatch | Refusal]] = deque()
    loop = asyncio.get_running_loop()
    try:
        checked = 0
        for batch in batches:
            lines.extend([r[0] for r in batch])
            pending.append(loop.run_in_executor(pool, _check_in_worker, batch))
            # Two batches a worker in flight keep every worker busy; more would only hold rows in memory.
            while len(pending) > 2 * count or (pending and pending[0].done()):
                checked += (done := _result(await pending.popleft())).size
                yield done
                progress(checked)
        while pending:
            checked += (done := _result(await pending.popleft())).size
            yield done
            progress(checked)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _until_refused(rows: Iterator[RawRow], refused: list[ImportFileError]) -> Iterator[RawRow]:
    try:
        yield from rows
    except ImportFileError as exc:
        refused.append(exc)


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _result(answer: ImportBatch | Refusal) -> ImportBatch:
    if isinstance(answer, ImportBatch):
        return answer
    line, field, message = answer
    raise ImportFileError("", line, field, message)


def _context() -> multiprocessing.context.BaseContext:
    """fork where there is one: a worker starts in milliseconds with every module loaded (spawn imports
    them again, ~0.5 s, a tenth of a 200,000-row import). The store's aiosqlite threads exist then (Python
    3.12 warns of fork in a threaded process), idle on their queues: the pool starts at the first batch,
    before any is staged, and the workers only run the checks, never SQLite, those threads or the loop."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
