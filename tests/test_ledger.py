"""The ledger's rules as table tests, without a store: a view in, a plan out.

Each rule of watcher/ledger.py's docstring has its rows here. The follower tests run the same rules
through a real SQLite store and a scripted chain; these pin the decisions themselves.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from chains.base import (
    BlockRef,
    BlockScan,
    ChainSettings,
    CurrencySpec,
    MempoolScan,
    Spend,
    Transfer,
    TxFate,
    TxState,
)
from watcher.config import ChainConfig, CurrencyConfig
from watcher.ledger import Ledger, cancel_reason, confirmations_at, status_for, transfer_of
from watcher.model import Deposit, DepositStatus, LedgerView, Plan, TrackedDeposit

NOW = 1_700_000_000.0
ADDRESSES = {1: ("addr-1", "customer-1"), 2: ("addr-2", "customer-2")}


def ledger(min_conf: int = 3) -> Ledger:
    settings = ChainSettings(
        name="btc", network="regtest", rpc_url="http://127.0.0.1:1", currencies=(CurrencySpec("BTC", 8),)
    )
    chain = ChainConfig(
        name="btc", adapter="scripted", settings=settings, poll_interval_s=1.0,
        currencies=(CurrencyConfig("BTC", 8, min_conf),), start_height=0, batch_blocks=10,
        reorg_depth_limit=10, unconfirmed_expiry_s=3600.0,
    )  # fmt: skip
    return Ledger(chain, "regtest")


def block(height: int, tag: str = "a") -> BlockRef:
    return BlockRef(height, f"{tag}{height}", f"{tag}{height - 1}")


def pay(
    txid: str, address_id: int = 1, amount: int = 5000, index: int = 0, inputs: tuple[str, ...] = ()
) -> Transfer:
    return Transfer("BTC", address_id, ADDRESSES[address_id][0], amount, txid, index, inputs=inputs)


def tracked(
    deposit_id: int,
    txid: str,
    *,
    height: int | None = None,
    confirmations: int = 0,
    status: DepositStatus = DepositStatus.NOT_CONFIRMED,
    inputs: tuple[str, ...] = (),
    orphaned_at: float | None = None,
    address_id: int = 1,
) -> TrackedDeposit:
    address, foreign_id = ADDRESSES[address_id]
    deposit = Deposit(
        id=deposit_id, chain="btc", currency="BTC", address_id=address_id, address=address,
        foreign_id=foreign_id, txid=txid, tx_index=0, amount=5000, block_height=height,
        block_hash=None if height is None else f"a{height}", confirmations=confirmations, status=status,
        error="", first_seen_at=NOW - 100, updated_at=NOW - 100,
    )  # fmt: skip
    return TrackedDeposit(deposit, None, None, inputs, orphaned_at)


def view(*deposits: TrackedDeposit, next_id: int = 100) -> LedgerView:
    live = tuple(t for t in deposits if t.deposit.status is DepositStatus.NOT_CONFIRMED)
    return LedgerView(live, {t.key: t for t in deposits}, dict(ADDRESSES), next_id)


def sent(plan: Plan) -> list[tuple[int, str, str]]:
    """The callbacks as (deposit id, status, confirmations in the body)."""
    out = []
    for c in plan.callbacks:
        body = json.loads(c.body)
        assert body["id"] == c.deposit_id and body["status"] == str(c.status)
        out.append((c.deposit_id, str(c.status), body["transactions"][0]["confirmations"]))
    return out


def rows(plan: Plan) -> dict[int, Deposit]:
    return {t.deposit.id: t.deposit for t in (*plan.inserts, *plan.updates)}


# ---------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("tip", "height", "expected"),
    [(10, 10, 1), (10, 8, 3), (10, None, 0), (10, 11, 0), (0, 0, 1)],
)
def test_confirmations_are_tip_minus_height_plus_one_and_zero_outside_a_block(
    tip: int, height: int | None, expected: int
) -> None:
    assert confirmations_at(tip, height) == expected


@pytest.mark.parametrize(
    ("confirmations", "minimum", "expected"),
    [
        (0, 0, "confirmed"),
        (0, 1, "not_confirmed"),
        (2, 3, "not_confirmed"),
        (3, 3, "confirmed"),
        (9, 3, "confirmed"),
    ],
)
def test_status_at_a_number_of_confirmations(confirmations: int, minimum: int, expected: str) -> None:
    assert str(status_for(confirmations, minimum)) == expected


# ---------------------------------------------------------------------------- new deposits


@pytest.mark.parametrize(
    ("min_conf", "tip", "expected"),
    [
        (3, 10, [(100, "not_confirmed", "1")]),  # below its minimum: seen, not yet safe
        (1, 10, [(100, "confirmed", "1")]),  # at its minimum at once: confirmed only
        (0, 10, [(100, "confirmed", "1")]),  # minimum 0
        (3, 12, [(100, "confirmed", "3")]),  # found late while catching up: confirmed only
    ],
)
def test_a_new_deposit_in_a_block(min_conf: int, tip: int, expected: list[tuple[int, str, str]]) -> None:
    scans = [BlockScan(block(h), (pay("t1"),) if h == 10 else (), ()) for h in range(10, tip + 1)]
    plan = ledger(min_conf).plan_blocks(view(), scans, NOW)
    assert sent(plan) == expected
    (new,) = plan.inserts
    assert (new.deposit.id, new.deposit.block_height, new.deposit.block_hash) == (100, 10, "a10")
    assert (new.deposit.address, new.deposit.foreign_id, new.deposit.first_seen_at) == (
        "addr-1",
        "customer-1",
        NOW,
    )
    assert new.orphaned_at is None and plan.updates == ()


def test_new_deposits_take_ids_in_order_from_the_view() -> None:
    scans = [BlockScan(block(5), (pay("t1"), pay("t2", 2), pay("t1", index=1)), ())]
    plan = ledger().plan_blocks(view(next_id=7), scans, NOW)
    assert [(t.deposit.id, t.deposit.txid, t.deposit.tx_index) for t in plan.inserts] == [
        (7, "t1", 0), (8, "t2", 0), (9, "t1", 1)
    ]  # fmt: skip


def test_a_known_deposit_is_not_created_again() -> None:
    known = tracked(3, "t1", height=10, confirmations=1)
    plan = ledger().plan_blocks(view(known), [BlockScan(block(10), (pay("t1"),), ())], NOW)
    assert plan.inserts == ()
    assert sent(plan) == []  # still 1 confirmation: nothing to say


def test_a_mempool_payment_is_a_deposit_with_zero_confirmations_then_attached_to_its_block() -> None:
    first = ledger().plan_mempool(view(), MempoolScan((pay("t1"),), ()), 10, NOW)
    assert sent(first) == [(100, "not_confirmed", "0")]
    (seen,) = first.inserts
    assert seen.deposit.block_height is None and seen.orphaned_at == NOW
    later = ledger().plan_blocks(view(seen), [BlockScan(block(11), (pay("t1"),), ())], NOW + 60)
    (mined,) = later.updates
    assert (mined.deposit.block_height, mined.deposit.confirmations, mined.orphaned_at) == (11, 1, None)
    assert sent(later) == []  # 0 -> 1 confirmation, below the minimum: no callback


# ---------------------------------------------------------------------------- confirmations


def test_confirmations_grow_silently_until_the_minimum_then_confirmed_once() -> None:
    d = tracked(1, "t1", height=10, confirmations=1)
    plan = ledger(3).plan_blocks(view(d), [BlockScan(block(11), (), ())], NOW)
    assert sent(plan) == [] and rows(plan)[1].confirmations == 2
    d = replace(d, deposit=rows(plan)[1])
    plan = ledger(3).plan_blocks(view(d), [BlockScan(block(12), (), ())], NOW)
    assert sent(plan) == [(1, "confirmed", "3")]
    assert rows(plan)[1].status is DepositStatus.CONFIRMED


def test_several_blocks_at_once_are_counted_at_the_last() -> None:
    d = tracked(1, "t1", height=10, confirmations=1)
    scans = [BlockScan(block(h), (), ()) for h in (11, 12, 13, 14)]
    assert sent(ledger(3).plan_blocks(view(d), scans, NOW)) == [(1, "confirmed", "5")]


# ---------------------------------------------------------------------------- reorgs


def test_a_deposit_whose_block_left_the_chain_goes_back_to_zero_without_a_callback() -> None:
    above = [
        tracked(1, "t1", height=11, confirmations=2),
        tracked(2, "t2", height=12, status=DepositStatus.CANCELLED),
    ]
    plan = Ledger.plan_unwind(above, NOW)
    assert plan.callbacks == () and plan.inserts == ()
    (unwound,) = plan.updates
    d = unwound.deposit
    assert (d.id, d.block_height, d.block_hash, d.confirmations, d.status) == (
        1, None, None, 0, DepositStatus.NOT_CONFIRMED
    )  # fmt: skip
    assert unwound.orphaned_at == NOW


def test_a_confirmed_deposit_above_the_fork_is_what_halts_the_chain() -> None:
    deposits = [
        tracked(1, "t1", height=11).deposit,
        tracked(2, "t2", height=12, status=DepositStatus.CONFIRMED).deposit,
        tracked(3, "t3", height=12, status=DepositStatus.CANCELLED).deposit,
    ]
    assert [d.id for d in Ledger.confirmed_above(deposits)] == [2]


def test_a_moved_deposit_is_attached_to_its_new_block() -> None:
    orphan = tracked(1, "t1", orphaned_at=NOW - 5)
    plan = ledger(3).plan_blocks(view(orphan), [BlockScan(block(12, "b"), (pay("t1"),), ())], NOW)
    moved = rows(plan)[1]
    assert (moved.block_height, moved.block_hash, moved.confirmations) == (12, "b12", 1)


# ---------------------------------------------------------------------------- cancellation


@pytest.mark.parametrize("where", ["block", "mempool"])
def test_a_double_spend_cancels_every_deposit_of_the_transaction_once(where: str) -> None:
    inputs = ("f0:0", "f1:1")
    one = tracked(1, "t1", inputs=inputs)
    two = tracked(2, "t1", inputs=inputs, address_id=2)
    other = tracked(3, "t9", inputs=("zz:0",))
    spends = (Spend("f0:0", "thief"), Spend("f1:1", "thief"))
    if where == "block":
        plan = ledger().plan_blocks(view(one, two, other), [BlockScan(block(11), (), spends)], NOW)
        place = "in block 11 (a11)"
    else:
        plan = ledger().plan_mempool(view(one, two, other), MempoolScan((), spends), 10, NOW)
        place = "in the mempool"
    assert sent(plan) == [(1, "cancelled", "0"), (2, "cancelled", "0")]
    assert rows(plan)[1].error == (
        f"transaction t1 was double-spent: its input f0:0 is spent by transaction thief {place}"
    )
    assert 3 not in rows(plan)


def test_a_transaction_spending_its_own_inputs_is_no_double_spend() -> None:
    mine = tracked(1, "t1", inputs=("f0:0",))
    plan = ledger().plan_blocks(view(mine), [BlockScan(block(11), (pay("t1"),), (Spend("f0:0", "t1"),))], NOW)
    assert rows(plan)[1].status is DepositStatus.NOT_CONFIRMED


def test_a_payment_and_its_double_spend_in_one_batch() -> None:
    # Seen in block 11 and double-spent in block 12 of the same batch (the node's chain moved under a
    # payment): cancelled, and no not_confirmed is sent for it after the cancel.
    scans = [
        BlockScan(block(11), (pay("t1", inputs=("f0:0",)),), ()),
        BlockScan(block(12), (), (Spend("f0:0", "thief"),)),
    ]
    plan = ledger().plan_blocks(view(), scans, NOW)
    assert sent(plan) == [(100, "cancelled", "0")]
    assert plan.inserts[0].deposit.status is DepositStatus.CANCELLED


def test_a_cancelled_deposit_stays_cancelled_when_its_transaction_is_mined_after_all() -> None:
    gone = tracked(1, "t1", status=DepositStatus.CANCELLED)
    plan = ledger(1).plan_blocks(view(gone), [BlockScan(block(11), (pay("t1"),), ())], NOW)
    assert plan.empty


@pytest.mark.parametrize(
    ("state", "age_s", "expected"),
    [
        (TxState.REPLACED, 0, "transaction t1 was replaced: by t2"),
        (TxState.UNKNOWN, 0, "transaction t1 left the chain and was dropped: by t2"),
        (TxState.PENDING, 3600, None),  # still within the expiry
        (TxState.ABSENT, 3600, None),
        (TxState.PENDING, 3601, "transaction t1 stayed out of the chain for more than 3600 s"),
        (TxState.ABSENT, 3601, "transaction t1 stayed out of the chain for more than 3600 s"),
        (TxState.MINED, 10, None),
        (
            TxState.MINED,
            3601,
            "transaction t1 stayed out of the chain for more than 3600 s, although the node's transaction"
            " index still names it",
        ),
    ],
)
def test_the_fate_of_a_deposit_in_no_block(state: TxState, age_s: float, expected: str | None) -> None:
    orphan = tracked(1, "t1", orphaned_at=NOW - age_s)
    assert cancel_reason(orphan, TxFate(state, "by t2"), 3600.0, NOW) == expected
    plan = ledger().plan_fates(view(orphan), {1: TxFate(state, "by t2")}, 3600.0, NOW)
    assert sent(plan) == ([] if expected is None else [(1, "cancelled", "0")])


def test_the_expiry_counts_from_first_seen_when_it_never_left_a_block() -> None:
    orphan = replace(tracked(1, "t1"), orphaned_at=None)  # first_seen_at is NOW - 100
    assert cancel_reason(orphan, TxFate(TxState.PENDING, ""), 99.0, NOW) is not None
    assert cancel_reason(orphan, TxFate(TxState.PENDING, ""), 100.0, NOW) is None


def test_fates_judge_only_deposits_still_in_no_block() -> None:
    met = tracked(1, "t1", height=11)  # a block met it between the node's answer and the commit
    plan = ledger().plan_fates(view(met), {1: TxFate(TxState.UNKNOWN, "")}, 3600.0, NOW)
    assert plan.empty


def test_orphans_are_the_open_deposits_in_no_block() -> None:
    deposits = [tracked(1, "t1"), tracked(2, "t2", height=5)]
    assert [t.deposit.id for t in Ledger.orphans(deposits)] == [1]


def test_transfer_of_a_stored_deposit_names_its_address() -> None:
    t = transfer_of(replace(tracked(1, "t1", inputs=("f0:0",)), sender="s", nonce=4))
    assert (t.address, t.watch_id, t.txid, t.index, t.inputs, t.sender, t.nonce) == (
        "addr-1", 1, "t1", 0, ("f0:0",), "s", 4
    )  # fmt: skip


# ---------------------------------------------------------------------------- history (rescan)


def test_history_records_what_is_new_and_leaves_known_deposits() -> None:
    known = tracked(1, "t1", height=3, confirmations=8, status=DepositStatus.CONFIRMED)
    scans = [BlockScan(block(3), (pay("t1"),), ()), BlockScan(block(4), (pay("t2", 2),), ())]
    result = ledger(3).plan_history(view(known), scans, 10, NOW)
    assert (result.transfers, result.created) == (2, 1)
    assert [t.deposit.txid for t in result.plan.inserts] == ["t2"]
    assert sent(result.plan) == [(100, "confirmed", "7")]
    assert result.plan.updates == ()


# ---------------------------------------------------------------------------- the callbacks' bytes


def test_the_body_is_built_from_the_state_it_announces() -> None:
    plan = ledger(1).plan_blocks(view(), [BlockScan(block(10), (pay("t1", amount=123_456_789),), ())], NOW)
    body: dict[str, Any] = json.loads(plan.callbacks[0].body)
    assert body["currency_received"]["amount"] == "1.23456789"
    assert body["crypto_address"] == {
        "id": 1, "currency": "BTC", "address": "addr-1", "foreign_id": "customer-1", "tag": None
    }  # fmt: skip
    assert body["transactions"][0]["block_height"] == 10
    assert plan.callbacks[0].queued_at == NOW
