"""The store on real files and databases: schema versions, the daemon lock, address ids, big amounts,
outbox. Tests taking `store_location` run on both backends (SQLite, PostgreSQL); the schema's own tests
for PostgreSQL are in test_store_pg.py."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from chains.base import BlockRef
from watcher.errors import StoreError
from watcher.model import (
    AddressSource,
    AttemptResult,
    Deposit,
    DepositStatus,
    OutboxState,
    PaymentStatus,
    Plan,
    QueuedCallback,
    TrackedDeposit,
)
from watcher.store import DEFAULT_INTEGRATION_ID, MIGRATIONS, NewAddress, NewPayment, Store


async def test_new_store_is_at_the_latest_schema_version(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "w.sqlite3"))
    await store.close()
    with sqlite3.connect(tmp_path / "w.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this program"):
        await Store.open(str(path))


async def test_second_daemon_on_the_same_store_refuses_to_start(tmp_path: Path) -> None:
    path = str(tmp_path / "w.sqlite3")
    first = await Store.open(path, exclusive=True)
    try:
        with pytest.raises(StoreError, match="in use by another deposit-watcher"):
            await Store.open(path, exclusive=True)
        reader = await Store.open(path)  # the CLI may read beside the daemon
        await reader.close()
    finally:
        await first.close()
    again = await Store.open(path, exclusive=True)  # the lock is released with the daemon
    await again.close()


async def test_address_ids_are_stable_across_reconfiguration(store_location: str) -> None:
    store = await Store.open(store_location)
    a = NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")
    b = NewAddress("eth", "ETH", b"\x02" * 20, "0xB", "c-2")
    await store.sync_addresses("eth", [a, b])
    first = await store.watch_keys("eth")
    await store.sync_addresses("eth", [b])  # a removed: no longer watched, id kept
    assert await store.watch_keys("eth") == {"ETH": {b.watch_key: first["ETH"][b.watch_key]}}
    await store.sync_addresses("eth", [a, b])
    assert await store.watch_keys("eth") == first
    await store.close()


async def test_amounts_beyond_64_bits_round_trip_exactly(store_location: str) -> None:
    store = await Store.open(store_location)
    await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")])
    amount = 123_456_789 * 10**30 + 1
    async with store.transaction() as tx:
        deposit_id = await tx.insert_deposit(
            chain="eth", currency="ETH", address_id=1, txid="0xt", tx_index=-1, amount=amount,
            sender=None, nonce=None, inputs=(), now=1.0,
        )  # fmt: skip
    deposit = await store.deposit(deposit_id)
    assert deposit is not None and deposit.amount == amount and deposit.status is DepositStatus.NOT_CONFIRMED
    await store.close()


async def test_rolled_back_transaction_leaves_nothing(store_location: str) -> None:
    store = await Store.open(store_location)
    await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")])
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            deposit_id = await tx.insert_deposit(
                chain="eth", currency="ETH", address_id=1, txid="0xt", tx_index=-1, amount=1,
                sender=None, nonce=None, inputs=(), now=1.0,
            )  # fmt: skip
            await tx.enqueue_callback(deposit_id, DepositStatus.NOT_CONFIRMED, b"{}", 1.0)
            raise RuntimeError("crash before commit")
    assert await store.deposits() == [] and await store.outbox_entries() == []
    await store.close()


def _tracked(deposit_id: int, address_id: int, txid: str, sender: str | None) -> TrackedDeposit:
    address, foreign_id = {1: ("0xA", "c-1"), 2: ("0xB", "c-2")}[address_id]
    deposit = Deposit(
        id=deposit_id, chain="eth", currency="ETH", address_id=address_id, address=address,
        foreign_id=foreign_id, txid=txid, tx_index=deposit_id - 8, amount=10**40 + deposit_id,
        block_height=5, block_hash="0xh5", confirmations=1, status=DepositStatus.NOT_CONFIRMED, error="",
        first_seen_at=1_700_000_000.123_456_7, updated_at=1_700_000_000.1 + deposit_id,
    )  # fmt: skip
    return TrackedDeposit(deposit, sender, 2**62 if sender else None, ("0xo:0", "0xp:1"), None)


async def test_a_plan_is_seen_by_its_own_transaction_and_undone_with_it(store_location: str) -> None:
    """A ledger plan, block refs and the cursor written in one transaction (PostgreSQL defers them to the
    COMMIT, or to the first statement that touches their tables): the transaction's later statements see
    them in order; text of any kind and bytes of any value come back exactly; a write that fails undoes
    the whole transaction."""
    store = await Store.open(store_location)
    await store.sync_addresses(
        "eth",
        [
            NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1"),
            NewAddress("eth", "ETH", b"\x02" * 20, "0xB", "c-2"),
        ],
    )
    odd = "it's $$ $j0$ \\x00 \u00e9 \" ; -- \u2603"
    first, second = _tracked(7, 1, "0xt7", odd), _tracked(8, 2, "0xt8", None)
    body = bytes(range(256))
    callbacks = tuple(
        QueuedCallback(i, status, b, f"0xt{i}", 1, 1_700_000_001.5)
        for i, status, b in ((7, DepositStatus.NOT_CONFIRMED, body), (8, DepositStatus.NOT_CONFIRMED, b"x"),
                             (7, DepositStatus.CONFIRMED, b"{}"))
    )  # fmt: skip
    refs = [BlockRef(h, f"0xh{h}", f"0xh{h - 1}") for h in (4, 5)]
    confirmed = replace(
        first, deposit=replace(first.deposit, status=DepositStatus.CONFIRMED, confirmations=2, updated_at=9.5)
    )
    async with store.transaction() as tx:
        await tx.apply(Plan(inserts=(first, second), callbacks=callbacks))
        await tx.add_blocks("eth", refs, keep=10)
        await tx.set_cursor("eth", refs[-1])
        assert await tx.cursor_height("eth") == 5
        view = await tx.load("eth", [first.key, ("0xnone", "ETH", 1, 0)], [1, 2, 3])
        assert view.open == (first, second) and view.matched == {first.key: first} and view.next_id == 9
        assert view.addresses == {1: ("0xA", "c-1"), 2: ("0xB", "c-2")}
        await tx.apply(Plan(updates=(confirmed,)))
    assert [await store.deposit(7), await store.deposit(8)] == [confirmed.deposit, second.deposit]
    entries = await store.outbox_entries()
    assert [(e.deposit_id, e.status, e.state, e.body) for e in entries] == [
        (7, DepositStatus.NOT_CONFIRMED, OutboxState.SUPERSEDED, body),
        (8, DepositStatus.NOT_CONFIRMED, OutboxState.PENDING, b"x"),
        (7, DepositStatus.CONFIRMED, OutboxState.PENDING, b"{}"),
    ]
    events = await store.events(DEFAULT_INTEGRATION_ID)
    assert [(e.deposit_id, e.status, e.body) for e in events] == [(7, "not_confirmed", body),
        (8, "not_confirmed", b"x"), (7, "confirmed", b"{}")]  # fmt: skip
    assert await store.recent_blocks("eth", 5) == refs[::-1]
    async with store.transaction() as tx:
        [again] = (await tx.load("eth", [first.key])).matched.values()
        assert again == confirmed
    with pytest.raises((StoreError, sqlite3.IntegrityError)):
        async with store.transaction() as tx:
            await tx.set_cursor("eth", BlockRef(6, "0xh6", "0xh5"))
            await tx.apply(Plan(inserts=(first,)))  # its id is taken
    cursor = (await store.chain_state("eth")).cursor
    assert cursor is not None and (cursor.height, cursor.block_hash) == (5, "0xh5")
    await store.close()


async def test_enqueue_supersedes_pending_and_failed(store_location: str) -> None:
    store = await Store.open(store_location)
    await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")])
    async with store.transaction() as tx:
        d = await tx.insert_deposit(
            chain="eth", currency="ETH", address_id=1, txid="0xt", tx_index=-1, amount=1,
            sender=None, nonce=None, inputs=(), now=1.0,
        )  # fmt: skip
        await tx.enqueue_callback(d, DepositStatus.NOT_CONFIRMED, b"a", 1.0)
        await tx.enqueue_callback(d, DepositStatus.CONFIRMED, b"b", 2.0)
    states = [(e.status, e.state) for e in await store.outbox_entries()]
    assert states == [
        (DepositStatus.NOT_CONFIRMED, OutboxState.SUPERSEDED),
        (DepositStatus.CONFIRMED, OutboxState.PENDING),
    ]
    resent = await store.resend(d)
    assert resent is not None and resent.body == b"b" and resent.status is DepositStatus.CONFIRMED
    await store.close()


async def test_migrations_from_every_earlier_schema_version(tmp_path: Path) -> None:
    """A store left at any earlier version (here: each prefix of the migrations) upgrades on open."""
    for version in range(len(MIGRATIONS)):
        path = tmp_path / f"v{version}.sqlite3"
        with sqlite3.connect(path) as db:
            for script in MIGRATIONS[:version]:
                db.executescript(script)
            db.execute(f"PRAGMA user_version = {version}")
        store = await Store.open(str(path))
        await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")])
        assert await store.integrity_check() == "ok"
        await store.close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


async def test_backup_while_open_is_a_consistent_copy(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "w.sqlite3"), exclusive=True)  # as the running daemon
    await store.sync_addresses("eth", [NewAddress("eth", "ETH", b"\x01" * 20, "0xA", "c-1")])
    await store.backup(str(tmp_path / "copy.sqlite3"))
    await store.close()
    copy = await Store.open(str(tmp_path / "copy.sqlite3"))
    assert await copy.watch_keys("eth") == {"ETH": {b"\x01" * 20: 1}}
    await copy.close()


async def test_a_schema_1_store_keeps_its_rows_as_the_merchant_integrations(tmp_path: Path) -> None:
    """Rows from before integrations (schema 1) belong to the `merchant:` integration after the upgrade:
    its addresses stay watched as config rows, its deposits and pending callbacks stay its own."""
    path = tmp_path / "v1.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id)"
            " VALUES (7, 'eth', 'ETH', ?, '0xA', 'c-1')",
            (b"\x01" * 20,),
        )
        db.execute(
            "INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount, confirmations,"
            " status, first_seen_at, updated_at) VALUES (3, 'eth', 'ETH', 7, '0xt', -1, '5', 0,"
            " 'not_confirmed', 1, 1)"
        )
        db.execute(
            "INSERT INTO outbox (deposit_id, status, body, state, created_at, next_attempt_at)"
            " VALUES (3, 'not_confirmed', x'7b7d', 'pending', 1, 1)"
        )
    merchant = "00000000-0000-0000-0000-000000000000"
    store = await Store.open(str(path))
    try:
        [address] = await store.issued_addresses(merchant)
        assert (address.id, address.source, address.active, address.key_id) == (7, "config", True, None)
        assert [d.id for d in await store.integration_deposits(merchant)] == [3]
        [due] = await store.due_callbacks(now=2, limit=10)
        assert due.integration_id == merchant and due.deposit_id == 3
        assert await store.integration_ids() == {merchant}
        assert (await store.watch_keys("eth"))["ETH"].get(b"\x01" * 20) == 7
    finally:
        await store.close()


def _schema_2_store_with_a_delivered_and_a_pending_callback(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.executescript(MIGRATIONS[1])
        db.execute("PRAGMA user_version = 2")
        db.execute(
            "INSERT INTO addresses (id, chain, currency, watch_key, address, foreign_id, source)"
            " VALUES (7, 'eth', 'ETH', ?, '0xA', 'c-1', 'api')",
            (b"\x01" * 20,),
        )
        db.execute(
            "INSERT INTO deposits (id, chain, currency, address_id, txid, tx_index, amount, confirmations,"
            " status, first_seen_at, updated_at) VALUES (3, 'eth', 'ETH', 7, '0xt', -1, '5', 0,"
            " 'confirmed', 1, 1)"
        )
        db.execute(
            "INSERT INTO outbox (id, deposit_id, status, body, state, attempts, created_at, first_attempt_at,"
            " next_attempt_at, delivered_at)"
            " VALUES (40, 3, 'not_confirmed', x'7b7d', 'delivered', 1, 1, 1, 1, 2)"
        )
        db.execute(
            "INSERT INTO outbox (id, deposit_id, status, body, state, created_at, next_attempt_at)"
            " VALUES (41, 3, 'confirmed', x'5b5d', 'pending', 3, 3)"
        )
        db.execute(
            "INSERT INTO attempts (outbox_id, attempted_at, duration_ms, http_status, error,"
            " response_excerpt) VALUES (40, 2, 1.5, 200, '', 'ok')"
        )


async def test_a_schema_2_store_keeps_its_outbox_and_attempts_through_the_rebuild(tmp_path: Path) -> None:
    """Schema 3 rebuilds the outbox (deposit_id nullable, payment_id added): its rows keep their ids, states
    and bodies, their attempts still point at them, and new ids go on after the old ones."""
    path = tmp_path / "v2.sqlite3"
    _schema_2_store_with_a_delivered_and_a_pending_callback(path)
    store = await Store.open(str(path))
    try:
        entries = await store.outbox_entries()
        assert [(e.id, e.deposit_id, e.payment_id, e.status, e.state, e.body) for e in entries] == [
            (40, 3, None, DepositStatus.NOT_CONFIRMED, OutboxState.DELIVERED, b"{}"),
            (41, 3, None, DepositStatus.CONFIRMED, OutboxState.PENDING, b"[]"),
        ]
        [attempt] = await store.attempts(40)
        assert (attempt.http_status, attempt.response_excerpt) == (200, "ok")
        [due] = await store.due_callbacks(now=5, limit=10)
        assert (due.id, due.integration_id) == (41, "00000000-0000-0000-0000-000000000000")
        again = await store.resend(3, now=6.0)
        assert again is not None and again.id == 42 and again.body == b"[]"
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'outbox'")}
        assert {"outbox_due", "outbox_deposit", "outbox_payment"} <= indexes
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # neither a deposit nor a payment
            db.execute(
                "INSERT INTO outbox (status, body, state, created_at, next_attempt_at)"
                " VALUES ('linked', x'00', 'pending', 1, 1)"
            )


async def _payment_store(location: str) -> tuple[Store, int]:
    """A store with one payment (id returned) on a payment address of integration `shop`."""
    store = await Store.open(location)
    async with store.transaction() as tx:
        address = await tx.insert_address(
            NewAddress("eth", "ETH", b"\x09" * 20, "0xP", "PAY_x", "shop", AddressSource.PAYMENT), 1.0, 0
        )
        payment = await tx.insert_payment(
            NewPayment("PAY_x", "shop", "eth", "ETH", address.id, 10**20, None, "order-1", None, 1.0, 100.0,
                       "key-1", "hash")
        )  # fmt: skip
    return store, payment.id


async def test_payment_rows_round_trip_and_move(store_location: str) -> None:
    store, payment_id = await _payment_store(store_location)
    try:
        found = await store.payment("shop", "PAY_x")
        assert found is not None and (found.id, found.amount, found.address) == (payment_id, 10**20, "0xP")
        assert found.status is PaymentStatus.PENDING and found.received == 0
        assert await store.payment("other", "PAY_x") is None  # another integration's is not found
        assert await store.issued_addresses("shop") == []  # no customer's standing address
        async with store.transaction() as tx:
            [open_one] = await tx.open_payments("eth")
            assert await tx.payments_for_addresses([found.address_id]) == [open_one]
            linked = replace(open_one, status=PaymentStatus.LINKED, received=3 * 10**19, blind_at_link=2.5)
            await tx.update_payment(linked)
        async with store.transaction() as tx:
            assert await tx.payment("shop", "PAY_x") == linked
            ended = replace(linked, status=PaymentStatus.ABANDONED, ended_at=200.0)
            await tx.update_payment(ended)
            assert await tx.open_payments("eth") == []
            assert await tx.payments_for_addresses([found.address_id]) == [ended]  # ended ones too
        assert await store.integration_payments("shop", status="abandoned") == [ended]
        assert await store.integration_payments("shop", customer_reference="order-2") == []
        assert await store.integration_payments("shop", after=payment_id) == []
    finally:
        await store.close()


async def test_a_payments_webhooks_are_due_one_at_a_time_in_order(store_location: str) -> None:
    """Payment events are never superseded: `completed` waits while `linked` is pending, then both go."""
    store, payment_id = await _payment_store(store_location)
    try:
        async with store.transaction() as tx:
            linked = await tx.queue_payment_webhook(payment_id, PaymentStatus.LINKED, b"l", 5.0)
            completed = await tx.queue_payment_webhook(payment_id, PaymentStatus.COMPLETED, b"c", 5.0)
        [due] = await store.due_callbacks(now=10, limit=10)
        assert (due.id, due.payment_id, due.deposit_id, due.status) == (linked, payment_id, None, "linked")
        assert due.integration_id == "shop" and due.subject == ("payment", payment_id)
        await store.record_attempts([(AttemptResult(linked, 10.0, 1.0, 200, "", ""), None)])
        [due] = await store.due_callbacks(now=10, limit=10)
        assert due.id == completed and due.status is PaymentStatus.COMPLETED
        async with store.transaction() as tx:
            again = await tx.requeue_latest_payment_webhook(payment_id, 11.0)
        assert again is not None and again.body == b"c" and again.state is OutboxState.PENDING
        states = [e.state for e in await store.outbox_entries(payment_id=payment_id)]
        assert states == [OutboxState.DELIVERED, OutboxState.PENDING, OutboxState.PENDING]  # none superseded
    finally:
        await store.close()


async def test_a_config_listing_a_payments_address_leaves_it_the_payments(store_location: str) -> None:
    """A config reload never takes a payment's address over, nor unwatches it when the config drops it."""
    store, payment_id = await _payment_store(store_location)
    try:
        listed = NewAddress("eth", "ETH", b"\x09" * 20, "0xP", "config-customer")
        await store.sync_addresses("eth", [listed])
        await store.sync_addresses("eth", [])
        found = await store.payment("shop", "PAY_x")
        assert found is not None and found.id == payment_id
        row = await store._all("SELECT source, foreign_id, integration_id, active FROM addresses")
        assert row == [("payment", "PAY_x", "shop", 1)]
        assert (await store.watch_keys("eth"))["ETH"].get(b"\x09" * 20) == found.address_id
    finally:
        await store.close()
