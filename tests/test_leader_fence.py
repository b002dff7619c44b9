"""The leader's fence as the PostgreSQL store's begin check (watcher/leader_fence.py), on a real server.

Through a real PgStore: a write of leader work commits while the lease is at its term; once the lease
has moved on in the database (a take-over this node has not noticed yet) the database refuses it with
the transaction whole (Deposed, nothing committed); a write outside leader work (the merchant API, on any
daemon) is never fenced; leader work of a term over by the node's own clock is refused before anything
is sent.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import pytest

from tests.test_leadership import TAKEOVER_LIMIT_S, Election, fetchval, until
from watcher.config import LeadershipConfig
from watcher.errors import Deposed
from watcher.leader_fence import fence_check
from watcher.leadership import _WORK_TERM, Leadership, run_while_leader, work_term
from watcher.store import Store
from watcher.store_pg import PgStore


@pytest.fixture
async def election() -> AsyncIterator[Election]:
    e = Election()
    try:
        yield e
    finally:
        await e.stop()


async def _count(store: Store) -> None:
    """A write of one row, in a transaction that goes through the begin check."""
    async with store.transaction() as tx:
        await tx.execute("UPDATE writes SET n = n + 1")


async def test_the_fence_lets_the_terms_own_writes_through_and_refuses_the_others(
    pg_url: str, election: Election
) -> None:
    store = await Store.open(pg_url)
    assert isinstance(store, PgStore)
    await fetchval(pg_url, "CREATE TABLE writes (n INTEGER NOT NULL)")
    await fetchval(pg_url, "INSERT INTO writes VALUES (0)")
    # A long lease: its renewals (every 10 s) do not notice the forced take-over during the test.
    a = Leadership(pg_url, LeadershipConfig(name="a", lease_s=30.0, poll_interval_s=0.5, takeover_s=40.0))
    store.begin_check = fence_check(a)
    step = asyncio.Event()
    outcomes: list[str] = []
    straggler: list[asyncio.Task[None]] = []

    async def attempt() -> None:
        try:
            await _count(store)
            outcomes.append("written")
        except Deposed:
            outcomes.append("refused")

    async def later() -> None:
        await step.wait()
        await attempt()

    async def work(term: int) -> None:
        assert work_term() == term
        await attempt()
        straggler.append(asyncio.create_task(later()))  # detached: keeps this term's context
        await asyncio.Event().wait()

    leader_work = asyncio.create_task(run_while_leader(a, work))
    try:
        election.start(a)
        await until(lambda: len(straggler) == 1, TAKEOVER_LIMIT_S, "the term's work")
        term = a.leading_term()
        assert term is not None and outcomes == ["written"]
        # The lease moves on in the database; this node does not know yet: the database refuses.
        await fetchval(pg_url, "UPDATE leadership SET term = term + 1")
        step.set()
        await straggler[0]
        assert outcomes == ["written", "refused"] and a.leading_term() == term
        # Outside leader work (the merchant API, on any daemon): never fenced.
        await _count(store)
        # A term over by the node's own clock: refused before anything is sent.
        await a.resign()
        step.clear()
        straggler[0] = asyncio.create_task(later(), context=_context_of(term))
        step.set()
        await straggler[0]
        assert outcomes == ["written", "refused", "refused"]
        assert await fetchval(pg_url, "SELECT n FROM writes") == 2  # the refused wrote nothing
    finally:
        leader_work.cancel()
        for t in straggler:
            t.cancel()
        await asyncio.gather(leader_work, *straggler, return_exceptions=True)
        await store.close()


def _context_of(term: int) -> contextvars.Context:
    """A context as run_while_leader gives leader work of `term`."""
    context = contextvars.copy_context()
    context.run(_WORK_TERM.set, term)
    return context
