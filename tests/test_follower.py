"""The follower and ledger against a scripted chain and a real store (SQLite and PostgreSQL): deposits,
reorgs, fates, halts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import structlog

from chains.base import BlockRef, BlockScan, ChainDataError, ChainSettings, CurrencySpec, TxFate, TxState
from tests.scripted_chain import Payment, ScriptedChain, ScriptedChainState
from watcher.config import ChainConfig, CurrencyConfig
from watcher.errors import ChainHalted
from watcher.follower import Follower, check_history
from watcher.health import ChainHealth, Health
from watcher.model import DepositStatus, OutboxState
from watcher.store import NewAddress, Store

ALICE, BOB = b"alice", b"bob"


def chain_config(min_conf: int = 2, expiry_s: float = 86400.0, depth: int = 10) -> ChainConfig:
    settings = ChainSettings(
        name="test", network="regtest", rpc_url="http://127.0.0.1:1", currencies=(CurrencySpec("ETH", 18),)
    )
    return ChainConfig(
        name="test", adapter="scripted", settings=settings, poll_interval_s=0.01,
        currencies=(CurrencyConfig("ETH", 18, min_conf), CurrencyConfig("TOK", 6, min_conf, "0xtoken")),
        start_height=0, batch_blocks=3, reorg_depth_limit=depth, unconfirmed_expiry_s=expiry_s,
    )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(store_location: str) -> AsyncIterator[Store]:
    s = await Store.open(store_location)
    rows = [
        NewAddress("test", "ETH", ALICE, "alice", "customer-1"),
        NewAddress("test", "ETH", BOB, "bob", "customer-2"),
        NewAddress("test", "TOK", ALICE, "alice", "customer-1"),
    ]
    await s.sync_addresses("test", rows)
    yield s
    await s.close()


@pytest.fixture
def chain() -> ScriptedChain:
    ScriptedChain.shared = ScriptedChainState()
    return ScriptedChain()


async def follower_for(
    store: Store, chain: ScriptedChain, clock: Clock | None = None, **kw: object
) -> Follower:
    f = Follower(
        chain_config(**kw), "regtest", chain, store, ChainHealth("test"), lambda: None, clock or Clock()
    )  # type: ignore[arg-type]
    await f.reload_watch()
    return f


async def sync(f: Follower) -> None:
    for _ in range(100):
        if not await f.step():
            return
    raise AssertionError("follower did not catch up")


async def outbox(store: Store) -> list[tuple[int, str, str, dict[str, object]]]:
    return [
        (e.deposit_id, str(e.status), str(e.state), json.loads(e.body)) for e in await store.outbox_entries()
    ]


def pay(
    txid: str, key: bytes = ALICE, amount: int = 10**18, currency: str = "ETH", index: int = -1
) -> Payment:
    return Payment(txid=txid, currency=currency, key=key, amount=amount, index=index)


async def test_deposit_goes_not_confirmed_then_confirmed(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine(pay("tx1", amount=1_500_000_000_000_000_001))
    await sync(f)
    [d] = await store.deposits()
    assert (d.status, d.confirmations, d.amount, d.foreign_id) == (
        "not_confirmed",
        1,
        1_500_000_000_000_000_001,
        "customer-1",
    )
    chain.mine()
    await sync(f)
    rows = await outbox(store)
    assert [(s, st) for _, s, st, _ in rows] == [("not_confirmed", "superseded"), ("confirmed", "pending")]
    body = rows[1][3]
    assert body["id"] == d.id and body["status"] == "confirmed"
    assert body["transactions"][0]["confirmations"] == "2"  # type: ignore[index]
    assert body["currency_received"]["amount"] == "1.500000000000000001"  # type: ignore[index]


async def test_min_confirmations_zero_sends_only_confirmed(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=0)
    chain.state.mempool.append(pay("tx1"))
    await sync(f)
    assert [(s, st) for _, s, st, _ in await outbox(store)] == [("confirmed", "pending")]
    chain.mine(chain.state.mempool[0])
    chain.mine()
    await sync(f)
    assert len(await outbox(store)) == 1


async def test_late_discovery_sends_confirmed_only(store: Store, chain: ScriptedChain) -> None:
    chain.mine(pay("tx1"))
    for _ in range(5):
        chain.mine()
    f = await follower_for(store, chain)
    await sync(f)
    assert [(s, st) for _, s, st, _ in await outbox(store)] == [("confirmed", "pending")]


async def test_several_payments_and_outputs_are_separate_deposits(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine(
        pay("tx1"), pay("tx2"), pay("tx3", key=BOB), pay("tx3", key=ALICE, currency="TOK", amount=5, index=0)
    )
    chain.mine(pay("tx4"))
    await sync(f)
    deposits = await store.deposits()
    assert [(d.txid, d.address, d.currency) for d in deposits] == [
        ("tx1", "alice", "ETH"),
        ("tx2", "alice", "ETH"),
        ("tx3", "bob", "ETH"),
        ("tx3", "alice", "TOK"),
        ("tx4", "alice", "ETH"),
    ]
    assert len({d.id for d in deposits}) == 5


async def test_unwatched_and_zero_value_are_ignored(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine(pay("tx1", key=b"carol"), pay("tx2", amount=0))
    await sync(f)
    assert await store.deposits() == []


async def test_reorg_reincluding_deposit_keeps_id_and_confirms_once(
    store: Store, chain: ScriptedChain
) -> None:
    f = await follower_for(store, chain, min_conf=3)
    chain.mine(pay("tx1"))
    chain.mine()
    await sync(f)
    [before] = await store.deposits()
    assert before.confirmations == 2
    chain.fork(0, salt="b")  # tx1 back to the mempool
    chain.mine()
    chain.mine(chain.state.mempool[0])
    await sync(f)
    [moved] = await store.deposits()
    assert moved.id == before.id and moved.block_height == 2 and moved.confirmations == 1
    for _ in range(3):
        chain.mine()
    await sync(f)
    rows = await outbox(store)
    assert [s for _, s, _, _ in rows].count("confirmed") == 1
    assert all(body["id"] == before.id for _, _, _, body in rows)
    assert f.health.reorgs == 1


async def test_reorg_dropping_deposit_cancels_it_with_reason(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=3)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.fork(0, salt="b")
    chain.state.mempool.clear()  # the node forgot it
    chain.mine()
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED and "dropped" in d.error
    rows = await outbox(store)
    assert rows[-1][1] == "cancelled" and rows[-1][3]["error"] == d.error


async def test_replaced_transaction_is_cancelled(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=3)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.fork(0, salt="b")
    chain.state.mempool.clear()
    chain.state.fates["tx1"] = TxFate(TxState.REPLACED, "nonce 0 of 0xsender was used by another transaction")
    chain.mine()
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED and "replaced" in d.error


async def test_orphan_waiting_in_mempool_stays_until_expiry(store: Store, chain: ScriptedChain) -> None:
    clock = Clock()
    f = await follower_for(store, chain, clock, min_conf=3, expiry_s=600)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.fork(0, salt="b")  # back in the mempool, pending
    chain.mine()
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert (d.status, d.confirmations, d.block_height) == (DepositStatus.NOT_CONFIRMED, 0, None)
    clock.now += 601
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED and "600 s" in d.error


async def test_reorg_of_confirmed_deposit_halts_without_changes(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=1)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.fork(0, salt="b")
    chain.mine()
    chain.mine()
    with pytest.raises(ChainHalted, match="removes confirmed deposits"):
        await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CONFIRMED and d.block_height == 1
    assert (await store.chain_state("test")).cursor.height == 1  # type: ignore[union-attr]


async def test_reorg_deeper_than_kept_refs_halts(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, depth=3)
    for _ in range(6):
        chain.mine()
    await sync(f)
    chain.fork(0, salt="b")
    for _ in range(8):
        chain.mine()
    with pytest.raises(ChainHalted, match="deeper than"):
        await sync(f)


async def test_a_reorg_below_the_first_scanned_block_on_a_fresh_install_unwinds(
    store: Store, chain: ScriptedChain
) -> None:
    """Regression: a first start kept only the block just below `start_height`, so a reorg that replaced
    it (two blocks deep here) halted the chain as "deeper than the kept blocks" on a fresh install."""
    for _ in range(9):
        chain.mine()  # blocks 1..9
    f = Follower(
        replace(chain_config(depth=5), start_height=9), "regtest", chain, store, ChainHealth("test"),
        lambda: None, Clock(),
    )  # type: ignore[arg-type]  # fmt: skip
    await f.reload_watch()
    await sync(f)
    assert [r.height for r in await store.recent_blocks("test", 10)] == [9, 8, 7, 6, 5]
    chain.fork(6, salt="b")  # replaces 7 and 8 (below the first scanned block 9) and 9
    for _ in range(4):
        chain.mine(*([pay("tx-late")] if chain.height() == 9 else []))
    await sync(f)
    assert f.health.reorgs == 1 and f.health.deepest_reorg == 3
    state = await store.chain_state("test")
    assert state.cursor == chain.state.blocks[-1][0] and state.halted_reason is None
    [d] = await store.deposits()
    assert d.txid == "tx-late" and d.block_height == 10


async def test_anchoring_refuses_a_chain_that_moves_under_it(store: Store, chain: ScriptedChain) -> None:
    for _ in range(6):
        chain.mine()
    f = Follower(
        replace(chain_config(depth=4), start_height=6), "regtest", chain, store, ChainHealth("test"),
        lambda: None, Clock(),
    )  # type: ignore[arg-type]  # fmt: skip
    real_block_ref = chain.block_ref

    async def moving_block_ref(height: int) -> BlockRef | None:
        ref = await real_block_ref(height)
        if height == 5:  # the node answers for 5, then its chain forks below it
            chain.fork(3, salt="b")
            chain.mine()
            chain.mine()
            chain.mine()
        return ref

    chain.block_ref = moving_block_ref  # type: ignore[method-assign]
    with pytest.raises(ChainDataError, match="moved below height 5 while anchoring"):
        await f.step()
    assert await store.recent_blocks("test", 10) == []
    assert (await store.chain_state("test")).cursor is None
    chain.block_ref = real_block_ref  # type: ignore[method-assign]
    await sync(f)
    assert [r.height for r in await store.recent_blocks("test", 10)] == [6, 5, 4, 3]


async def test_mempool_payment_is_seen_then_confirmed(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=1)
    chain.state.mempool.append(pay("tx1"))
    await sync(f)
    [d] = await store.deposits()
    assert (d.status, d.confirmations, d.block_height) == (DepositStatus.NOT_CONFIRMED, 0, None)
    chain.mine(chain.state.mempool[0])
    await sync(f)
    [d2] = await store.deposits()
    assert d2.id == d.id and d2.status == DepositStatus.CONFIRMED
    assert [s for _, s, _, _ in await outbox(store)] == ["not_confirmed", "confirmed"]


async def test_restart_resumes_from_cursor_without_duplicates(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.mine(pay("tx2"))
    chain.mine()
    f2 = await follower_for(store, chain)  # a new process over the same store
    await sync(f2)
    deposits = await store.deposits()
    assert [d.txid for d in deposits] == ["tx1", "tx2"]
    assert [d.status for d in deposits] == [DepositStatus.CONFIRMED, DepositStatus.CONFIRMED]


async def test_node_behind_waits_instead_of_unwinding(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine(pay("tx1"))
    chain.mine()
    chain.mine()
    await sync(f)
    saved = list(chain.state.blocks)
    del chain.state.blocks[2:]  # a restarted node that has not caught up yet, same chain
    assert await f.step() is False
    assert (await store.chain_state("test")).cursor.height == 3  # type: ignore[union-attr]
    chain.state.blocks[:] = saved
    assert await f.step() is False
    assert f.health.reorgs == 0


async def test_superseded_entries_are_never_due(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine(pay("tx1"))
    chain.mine()
    await sync(f)
    due = await store.due_callbacks(now=2e9, limit=10)
    assert [(e.status, e.state) for e in due] == [(DepositStatus.CONFIRMED, OutboxState.PENDING)]


def btc_pay(txid: str, inputs: tuple[str, ...], key: bytes = ALICE, amount: int = 50_000) -> Payment:
    return Payment(txid=txid, currency="ETH", key=key, amount=amount, index=0, inputs=inputs)


async def test_double_spend_in_a_block_cancels_the_deposit(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=2)
    chain.state.mempool.append(btc_pay("tx1", ("funding:0",)))
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.NOT_CONFIRMED
    chain.state.mempool.clear()
    chain.state.fates["tx1"] = TxFate(TxState.ABSENT)  # as a Bitcoin node reports it: not known now
    thief = Payment(txid="tx2", currency="ETH", key=b"carol", amount=50_000, inputs=("funding:0",))
    chain.mine(thief)
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED
    assert "double-spent" in d.error and "funding:0" in d.error
    assert "tx2" in d.error and "in block 1" in d.error
    assert [s for _, s, _, _ in await outbox(store)] == ["not_confirmed", "cancelled"]


async def test_double_spend_cancels_every_deposit_of_the_transaction(
    store: Store, chain: ScriptedChain
) -> None:
    # One transaction paying two watched addresses is two deposits with the same inputs (found by the crash
    # trial, seed 7: only the last output was cancelled, the others waited a day for the expiry).
    f = await follower_for(store, chain, min_conf=2)
    two_outputs = [
        Payment(txid="tx1", currency="ETH", key=key, amount=50_000, index=vout, inputs=("funding:0",))
        for vout, key in enumerate((ALICE, BOB))
    ]
    chain.state.mempool.extend(two_outputs)
    await sync(f)
    assert [d.status for d in await store.deposits()] == [DepositStatus.NOT_CONFIRMED] * 2
    chain.state.mempool.clear()
    chain.state.fates["tx1"] = TxFate(TxState.ABSENT)
    chain.mine(Payment(txid="tx2", currency="ETH", key=b"carol", amount=50_000, inputs=("funding:0",)))
    await sync(f)
    deposits = await store.deposits()
    assert [d.status for d in deposits] == [DepositStatus.CANCELLED] * 2
    assert all("double-spent" in d.error and "tx2" in d.error for d in deposits)
    assert sorted(s for _, s, _, _ in await outbox(store)) == ["cancelled"] * 2 + ["not_confirmed"] * 2


async def test_replacement_in_the_mempool_cancels_the_deposit(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=2)
    chain.state.mempool.append(btc_pay("tx1", ("funding:0", "funding:1")))
    await sync(f)
    chain.state.mempool[:] = [btc_pay("tx1b", ("funding:1",), key=b"carol")]
    chain.state.fates["tx1"] = TxFate(TxState.ABSENT)
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED and "in the mempool" in d.error


async def test_own_transaction_spending_its_inputs_is_no_conflict(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain, min_conf=2)
    chain.state.mempool.append(btc_pay("tx1", ("funding:0",)))
    await sync(f)
    chain.mine(chain.state.mempool[0])
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CONFIRMED


async def test_absent_transaction_waits_for_the_expiry(store: Store, chain: ScriptedChain) -> None:
    clock = Clock()
    f = await follower_for(store, chain, clock, min_conf=2, expiry_s=300)
    chain.state.mempool.append(btc_pay("tx1", ("funding:0",)))
    await sync(f)
    chain.state.mempool.clear()
    chain.state.fates["tx1"] = TxFate(TxState.ABSENT, "not in the node's mempool")
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.NOT_CONFIRMED
    clock.now += 301
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED and "300 s" in d.error


async def test_stale_mined_answer_expires(store: Store, chain: ScriptedChain) -> None:
    clock = Clock()
    f = await follower_for(store, chain, clock, min_conf=3, expiry_s=300)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.fork(0, salt="b")
    chain.state.mempool.clear()
    chain.state.fates["tx1"] = TxFate(TxState.MINED)  # a transaction index that still names it
    chain.mine()
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.NOT_CONFIRMED  # within the expiry: waits
    clock.now += 301
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED and "transaction index" in d.error


async def test_halted_chain_does_not_stop_the_watchdog(store: Store, chain: ScriptedChain) -> None:
    """Regression: a halted follower left its last beat promise behind, so once that deadline passed the
    watchdog reported it stalled and systemd would restart the daemon over and over."""
    async with store.transaction() as tx:
        await tx.pin_identity("test", "scripted:another-chain")
    health = Health()
    f = Follower(
        chain_config(), "regtest", chain, store, health.chain("test"), lambda: None, Clock(), health.beat
    )  # type: ignore[arg-type]
    await asyncio.wait_for(f.run(), 10)  # returns once halted
    assert "store followed" in (health.chain("test").halted_reason or "")
    assert health.beats["follower:test"] == math.inf and health.stalled() == []


async def test_node_behind_is_logged_once_and_its_catching_up_once(
    store: Store, chain: ScriptedChain
) -> None:
    """Regression: every poll while the node was behind logged node_behind and then
    node_connection_restored (the step "succeeded"), ten lines a second for as long as it lagged."""
    f = await follower_for(store, chain)
    for _ in range(3):
        chain.mine()
    await sync(f)
    saved = list(chain.state.blocks)
    del chain.state.blocks[2:]
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(f.run())
        await asyncio.sleep(0.3)  # some 30 polls
        chain.state.blocks[:] = saved
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    events = [e["event"] for e in logs]
    assert events.count("node_behind") == 1 and events.count("node_caught_up") == 1, events
    assert "node_connection_restored" not in events and f.health.reorgs == 0


async def test_node_without_blocks_below_its_head_is_an_error_not_a_fork(
    store: Store, chain: ScriptedChain
) -> None:
    """Regression: a node that named a head but had no block at our tip's height (a load balancer whose
    backends lag each other) sent the fork search down every kept block and halted the chain with a
    "reorg deeper than the kept blocks"; with min_confirmations 1 it could also unwind a confirmed one."""
    f = await follower_for(store, chain, min_conf=1)
    chain.mine(pay("tx1"))
    chain.mine()
    await sync(f)
    chain.mine()
    real = chain.block_ref

    async def lagging(height: int) -> BlockRef | None:
        return None if height < chain.height() else await real(height)

    chain.block_ref = lagging  # type: ignore[method-assign]
    with pytest.raises(ChainDataError, match="no block at height 2, under its own head 3"):
        await f.step()
    assert f.health.reorgs == 0 and (await store.chain_state("test")).cursor.height == 2  # type: ignore[union-attr]
    chain.block_ref = real  # type: ignore[method-assign]
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CONFIRMED and f.health.reorgs == 0


async def test_node_far_behind_below_the_kept_blocks_waits(store: Store, chain: ScriptedChain) -> None:
    """Regression: a node re-syncing from scratch (its head below every kept block ref) was taken for a
    reorg deeper than the kept blocks, and the chain halted."""
    f = await follower_for(store, chain, depth=3)
    for _ in range(6):
        chain.mine(pay(f"tx{len(chain.state.blocks)}"))
    await sync(f)
    saved = list(chain.state.blocks)
    del chain.state.blocks[2:]
    assert await f.step() is False
    assert (await store.chain_state("test")).cursor.height == 6  # type: ignore[union-attr]
    chain.state.blocks[:] = saved
    assert await f.step() is False
    assert f.health.reorgs == 0
    statuses = {d.status for d in await store.deposits()}
    assert statuses == {DepositStatus.CONFIRMED, DepositStatus.NOT_CONFIRMED}


async def test_node_back_from_an_outage_on_another_chain_halts(store: Store, chain: ScriptedChain) -> None:
    """Regression: the chain identity was checked only once per process, so a node that came back from an
    outage as another chain's node (a rebuilt host, a proxy pointing elsewhere) was followed: a higher
    one halted as a "reorg deeper than the kept blocks", a lower one was waited for forever."""
    f = await follower_for(store, chain)
    chain.mine(pay("tx1"))
    task = asyncio.create_task(f.run())
    for _ in range(200):
        if f.health.processed_height == 1:
            break
        await asyncio.sleep(0.01)
    chain.state.down = True
    await asyncio.sleep(0.05)
    chain.state.identity = "scripted:another-chain"
    del chain.state.blocks[1:]  # a shorter chain, below every kept block
    chain.state.down = False
    await asyncio.wait_for(task, 10)  # returns once halted
    assert "store followed scripted:1" in (f.health.halted_reason or "")
    assert f.health.reorgs == 0


async def test_stale_head_is_logged_once_and_moving_again_once(store: Store, chain: ScriptedChain) -> None:
    clock = Clock()
    f = Follower(
        chain_config(), "regtest", chain, store, ChainHealth("test"), lambda: None, clock, max_head_age_s=60
    )  # type: ignore[arg-type]
    await f.reload_watch()
    with structlog.testing.capture_logs() as logs:
        await sync(f)
        for _ in range(3):
            clock.now += 40
            await sync(f)
        chain.mine()
        clock.now += 1
        await sync(f)
        await sync(f)
    found = [e for e in logs if e["event"].startswith("node_head_")]
    assert [(e["event"], e["height"]) for e in found] == [("node_head_stale", 0), ("node_head_moving", 1)]
    assert found[0]["age_s"] == 80 and found[0]["limit_s"] == 60 and found[1]["unchanged_s"] == 121


async def test_cancelled_deposit_mined_later_stays_cancelled(store: Store, chain: ScriptedChain) -> None:
    """cancelled is final for the receiver: nothing more is sent (the daemon logs it for the operator)."""
    f = await follower_for(store, chain, min_conf=2)
    chain.mine(pay("tx1"))
    await sync(f)
    chain.fork(0, salt="b")
    chain.state.mempool.clear()  # dropped: cancelled
    chain.mine()
    chain.mine()
    await sync(f)
    chain.mine(pay("tx1"))  # ...and yet mined after all
    chain.mine()
    await sync(f)
    [d] = await store.deposits()
    assert d.status == DepositStatus.CANCELLED
    assert [s for _, s, _, _ in await outbox(store)] == ["not_confirmed", "cancelled"]


# ------------------------------------------------------------------------------------------ rescan


async def test_rescan_records_an_old_payment_to_an_address_added_later_exactly_once(
    store: Store, chain: ScriptedChain
) -> None:
    f = await follower_for(store, chain, min_conf=2)
    chain.mine(pay("tx-old", key=b"carol"))
    for _ in range(4):
        chain.mine()
    await sync(f)
    assert await store.deposits() == []
    await store.sync_addresses("test", [NewAddress("test", "ETH", b"carol", "carol", "customer-3")])
    await f.check_identity()
    await f.reload_watch()
    assert await f.rescan(0, 5, chunk_blocks=2) == (1, 1)
    assert await f.rescan(0, 5, chunk_blocks=2) == (1, 0)  # the second time: found, not created
    [d] = await store.deposits()
    assert (d.txid, d.foreign_id, d.block_height, d.confirmations, d.status) == (
        "tx-old", "customer-3", 1, 5, DepositStatus.CONFIRMED
    )  # fmt: skip
    assert [(e[1], e[2]) for e in await outbox(store)] == [("confirmed", "pending")]


async def test_rescan_refuses_blocks_that_differ_from_the_stored_refs(
    store: Store, chain: ScriptedChain
) -> None:
    """The node reorganised after the daemon processed those blocks (and before it noticed): the rescan
    must not record the other branch's payments as history."""
    f = await follower_for(store, chain)
    for _ in range(5):
        chain.mine()
    await sync(f)
    chain.fork(2, salt="b")
    chain.mine(pay("tx-other-branch"))
    chain.mine()
    chain.mine()
    with pytest.raises(ChainDataError, match=r"block 3 is .* on the node but .* in the store"):
        await f.rescan(0, 5, chunk_blocks=10)
    assert await store.deposits() == []


async def test_rescan_refuses_a_node_on_another_chain(store: Store, chain: ScriptedChain) -> None:
    f = await follower_for(store, chain)
    chain.mine()
    await f.check_identity()
    await sync(f)
    chain.state.identity = "scripted:other"
    with pytest.raises(
        ChainHalted, match="node is on chain scripted:other, but the store followed scripted:1"
    ):
        await f.check_identity()


@pytest.mark.parametrize(
    ("heights", "stored", "previous", "error"),
    [
        ([(3, "c", "b"), (4, "d", "c")], {2: "b", 3: "c", 4: "d"}, None, None),
        ([(3, "c", "b"), (4, "d", "c")], {}, (2, "b"), None),  # older than the kept refs: chaining only
        ([(3, "c", "b"), (4, "d", "x")], {}, None, "block 4 does not follow block 3"),
        ([(3, "c", "b")], {}, (2, "z"), "block 3 does not follow block 2"),
        ([(3, "c", "b")], {3: "C"}, None, "block 3 is c on the node but C in the store"),
        ([(3, "c", "b")], {2: "B"}, None, "block 3's parent is b on the node but B in the store"),
    ],
)
def test_check_history(
    heights: list[tuple[int, str, str]],
    stored: dict[int, str],
    previous: tuple[int, str] | None,
    error: str | None,
) -> None:
    scans = [BlockScan(BlockRef(h, b, p), (), ()) for h, b, p in heights]
    before = None if previous is None else BlockRef(previous[0], previous[1], "")
    if error is None:
        check_history(scans, stored, before)
    else:
        with pytest.raises(ChainDataError, match=error):
            check_history(scans, stored, before)
