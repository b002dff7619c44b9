"""The deposit state machine: how transfers, blocks, reorgs and fates change deposits and queue callbacks.

Pure: no store, no I/O. Each decision takes what the store loaded for it (a `LedgerView`, one call) and
returns a `Plan` (new deposits, changed deposits, callbacks with their bodies built), which the store
applies in one batch inside the same transaction as the block refs and the cursor. So a deposit's new
state and the callback it causes are committed together (a transactional outbox), the dispatcher only
ever sees callbacks for committed state, and a store across a network pays a few round trips per batch
of blocks, not several per transfer. Chain I/O happens outside, in the follower.

Rules (callbacks.md, issue 2):
- A new deposit below its currency's minimum is `not_confirmed`; at the minimum it is `confirmed`. A new
  deposit already at its minimum (minimum 0, or found late while catching up) gets only `confirmed`.
- Confirmations = processed tip height - block height + 1; 0 while not in a block.
- A deposit whose block leaves the chain goes back to 0 confirmations, still `not_confirmed`, no callback.
- It is `cancelled` (final, with the reason) when the node says it was replaced or no longer knows it,
  when another transaction spends one of its inputs (in a block or in the mempool), or when it stayed out
  of the chain longer than the chain's expiry.
- A confirmed deposit is never taken back: the follower halts the chain instead (see `confirmed_above`).
- A cancelled deposit stays cancelled, even when its transaction shows up in a block after all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from chains.base import BlockRef, BlockScan, MempoolScan, Spend, Transfer, TxFate, TxState
from watcher.callbacks import build_body
from watcher.config import ChainConfig, CurrencyConfig
from watcher.logs import get_logger
from watcher.model import (
    Deposit,
    DepositKey,
    DepositStatus,
    LedgerView,
    Plan,
    QueuedCallback,
    TrackedDeposit,
)

log = get_logger(component="ledger")


def status_for(confirmations: int, min_confirmations: int) -> DepositStatus:
    """The status a live (not cancelled) deposit has at this many confirmations."""
    if confirmations >= min_confirmations:
        return DepositStatus.CONFIRMED
    return DepositStatus.NOT_CONFIRMED


def confirmations_at(tip_height: int, block_height: int | None) -> int:
    """Confirmations of a block at `block_height` when the processed tip is `tip_height`."""
    if block_height is None or block_height > tip_height:
        return 0
    return tip_height - block_height + 1


def transfer_key(t: Transfer) -> DepositKey:
    return (t.txid, t.currency, t.watch_id, t.index)


def transfers_of(scans: Iterable[BlockScan | MempoolScan]) -> list[Transfer]:
    return [t for scan in scans for t in scan.transfers]


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What a rescan's plan found: transfers seen, deposits created."""

    plan: Plan
    transfers: int
    created: int


class Ledger:
    """The state machine of one chain's deposits."""

    def __init__(self, chain: ChainConfig, network: str) -> None:
        self.chain = chain.name
        self.network = network
        self.currencies: Mapping[str, CurrencyConfig] = {c.code: c for c in chain.currencies}

    # ------------------------------------------------------------------------------------- blocks

    def plan_blocks(self, view: LedgerView, scans: Sequence[BlockScan], now: float) -> Plan:
        """Record the transfers and spends of newly processed blocks, then recount at the new tip."""
        draft = _Draft(self, view, now)
        for scan in scans:
            for transfer in scan.transfers:
                draft.record(transfer, scan.ref)
            draft.conflicts(scan.spends, f"in block {scan.ref.height} ({scan.ref.block_hash})")
        draft.recount(scans[-1].ref.height)
        return draft.plan()

    def plan_mempool(self, view: LedgerView, scan: MempoolScan, tip_height: int, now: float) -> Plan:
        """Record payments seen in the mempool (new ones become deposits with 0 confirmations) and
        cancel deposits whose inputs a mempool transaction spends."""
        draft = _Draft(self, view, now)
        for transfer in scan.transfers:
            draft.record(transfer, None)
        draft.conflicts(scan.spends, "in the mempool")
        if draft.created:
            draft.recount(tip_height)
        return draft.plan()

    def plan_history(
        self, view: LedgerView, scans: Sequence[BlockScan], tip_height: int, now: float
    ) -> HistoryResult:
        """Record transfers of past blocks (a rescan); recount at the chain's processed height.

        Known deposits are left as they are (but for a not-final one, attached to its block).
        """
        draft = _Draft(self, view, now)
        seen = 0
        for scan in scans:
            for transfer in scan.transfers:
                seen += 1
                draft.record(transfer, scan.ref)
        if draft.created:
            draft.recount(tip_height)
        return HistoryResult(draft.plan(), seen, len(draft.created))

    # ------------------------------------------------------------------------------------- reorgs

    @staticmethod
    def confirmed_above(deposits: Iterable[Deposit]) -> list[Deposit]:
        """Confirmed deposits among those in blocks above a fork point: unwinding them takes money back."""
        return [d for d in deposits if d.status is DepositStatus.CONFIRMED]

    @staticmethod
    def plan_unwind(above: Iterable[TrackedDeposit], now: float) -> Plan:
        """Detach open deposits from blocks above the fork point: 0 confirmations, no callback."""
        updates = tuple(
            replace(
                t,
                deposit=replace(
                    t.deposit, block_height=None, block_hash=None, confirmations=0, updated_at=now
                ),
                orphaned_at=now,
            )
            for t in above
            if t.deposit.status is DepositStatus.NOT_CONFIRMED
        )
        return Plan(updates=updates)

    # ------------------------------------------------------------------------------------- fates

    @staticmethod
    def orphans(open_deposits: Iterable[TrackedDeposit]) -> list[TrackedDeposit]:
        """Open deposits that are in no block: left the chain in a reorg, or seen only in the mempool."""
        return [t for t in open_deposits if t.deposit.block_height is None]

    def plan_fates(self, view: LedgerView, fates: Mapping[int, TxFate], expiry_s: float, now: float) -> Plan:
        """Cancel the orphaned deposits whose fate (by deposit id) says they are gone; leave the rest.

        Only deposits still open and still in no block (as loaded in the same transaction) are judged:
        one that a block met meanwhile has no fate to settle.
        """
        draft = _Draft(self, view, now)
        for tracked in self.orphans(view.open):
            fate = fates.get(tracked.deposit.id)
            reason = None if fate is None else cancel_reason(tracked, fate, expiry_s, now)
            if reason is not None:
                draft.cancel(tracked.deposit.id, reason)
        return draft.plan()


class _Keep:
    """The type of `_KEEP`: "leave this field as it is" where None is a value."""


_KEEP = _Keep()


class _Draft:
    """One plan in the making: a working copy of the loaded deposits, changed step by step exactly as
    the rules say, in the order the old row-by-row ledger did (so the same callbacks, in the same order)."""

    def __init__(self, ledger: Ledger, view: LedgerView, now: float) -> None:
        self.ledger = ledger
        self.now = now
        self.next_id = view.next_id
        self.by_id: dict[int, TrackedDeposit] = {t.deposit.id: t for t in view.open}
        for tracked in view.matched.values():
            self.by_id.setdefault(tracked.deposit.id, tracked)
        self.by_key: dict[DepositKey, int] = {t.key: i for i, t in self.by_id.items()}
        self.addresses = view.addresses
        # Inputs of open deposits -> their ids, in id order (new deposits get higher ids, appended).
        self.spenders: dict[str, list[int]] = {}
        for tracked in sorted(view.open, key=lambda t: t.deposit.id):
            self._index_inputs(tracked)
        self.created: list[int] = []
        self.dirty: dict[int, None] = {}  # changed deposits, in order of first change
        self.callbacks: list[QueuedCallback] = []

    def _index_inputs(self, tracked: TrackedDeposit) -> None:
        for outpoint in tracked.inputs:
            self.spenders.setdefault(outpoint, []).append(tracked.deposit.id)

    def _set(self, deposit_id: int, tracked: TrackedDeposit) -> None:
        self.by_id[deposit_id] = tracked
        self.dirty[deposit_id] = None

    def _change(
        self,
        deposit_id: int,
        *,
        block: BlockRef | _Keep | None = _KEEP,
        confirmations: int | None = None,
        status: DepositStatus | None = None,
        error: str | None = None,
    ) -> None:
        """Change a deposit's working copy; `block` (attach, or None to detach) also sets when it left."""
        tracked = self.by_id[deposit_id]
        d = tracked.deposit
        orphaned_at = tracked.orphaned_at
        if not isinstance(block, _Keep):
            d = replace(
                d,
                block_height=None if block is None else block.height,
                block_hash=None if block is None else block.block_hash,
            )
            orphaned_at = self.now if block is None else None
        d = replace(
            d,
            confirmations=d.confirmations if confirmations is None else confirmations,
            status=d.status if status is None else status,
            error=d.error if error is None else error,
            updated_at=self.now,
        )
        self._set(deposit_id, replace(tracked, deposit=d, orphaned_at=orphaned_at))

    def open_ids(self) -> list[int]:
        return sorted(i for i, t in self.by_id.items() if t.deposit.status is DepositStatus.NOT_CONFIRMED)

    # ---------------------------------------------------------------------------------- the rules

    def record(self, t: Transfer, block: BlockRef | None) -> None:
        """Find or create the deposit of a transfer; attach it to `block` if it is live."""
        deposit_id = self.by_key.get(transfer_key(t))
        if deposit_id is None:
            if t.watch_id not in self.addresses:
                # Stopped watching (DELETE, or left the config) after the watch set the scan used was
                # built: a payment to it from now on is the merchant's to notice, not ours to report.
                log.info("transfer_to_unwatched_address", chain=self.ledger.chain, txid=t.txid)
                return
            deposit_id = self._create(t)
        if block is None:
            return
        deposit = self.by_id[deposit_id].deposit
        # A cancelled deposit stays cancelled: the receiver was told it is final. Said loudly, since the
        # payment did arrive after all and the operator has to settle it by hand.
        if deposit.status is DepositStatus.CANCELLED:
            log.error(
                "cancelled_deposit_in_block", chain=self.ledger.chain, deposit_id=deposit_id, txid=t.txid,
                height=block.height, error=deposit.error,
            )  # fmt: skip
        if deposit.status is DepositStatus.NOT_CONFIRMED:
            self._change(deposit_id, block=block)

    def _create(self, t: Transfer) -> int:
        deposit_id = self.next_id
        self.next_id += 1
        address, foreign_id = self.addresses[t.watch_id]
        deposit = Deposit(
            id=deposit_id, chain=self.ledger.chain, currency=t.currency, address_id=t.watch_id,
            address=address, foreign_id=foreign_id, txid=t.txid, tx_index=t.index, amount=t.amount,
            block_height=None, block_hash=None, confirmations=0, status=DepositStatus.NOT_CONFIRMED,
            error="", first_seen_at=self.now, updated_at=self.now,
        )  # fmt: skip
        tracked = TrackedDeposit(deposit, t.sender, t.nonce, tuple(t.inputs), orphaned_at=self.now)
        self._set(deposit_id, tracked)
        self.by_key[tracked.key] = deposit_id
        self.created.append(deposit_id)
        self._index_inputs(tracked)
        return deposit_id

    def conflicts(self, spends: Sequence[Spend], where: str) -> None:
        """Cancel open deposits one of whose inputs another transaction spends (a double-spend).

        A transaction paying several watched outputs is several deposits with the same inputs: a
        conflicting spend cancels every one of them, each once.
        """
        for spend in spends:
            for victim_id in self.spenders.get(spend.outpoint, ()):
                victim = self.by_id[victim_id].deposit
                if victim.txid == spend.txid or victim.status is not DepositStatus.NOT_CONFIRMED:
                    continue
                self.cancel(
                    victim_id,
                    f"transaction {victim.txid} was double-spent: its input {spend.outpoint} is spent"
                    f" by transaction {spend.txid} {where}",
                )

    def cancel(self, deposit_id: int, reason: str) -> None:
        self._change(deposit_id, status=DepositStatus.CANCELLED, error=reason, confirmations=0)
        self._enqueue(deposit_id)

    def recount(self, tip_height: int) -> None:
        """Recount confirmations of every open deposit at `tip_height`; queue the callbacks that causes."""
        created = set(self.created)
        for deposit_id in self.open_ids():
            d = self.by_id[deposit_id].deposit
            minimum = self.ledger.currencies[d.currency].min_confirmations
            confirmations = confirmations_at(tip_height, d.block_height)
            status = status_for(confirmations, minimum)
            if confirmations != d.confirmations or status is not d.status:
                self._change(deposit_id, confirmations=confirmations, status=status)
            if status is DepositStatus.CONFIRMED or deposit_id in created:
                self._enqueue(deposit_id)

    def _enqueue(self, deposit_id: int) -> None:
        d = self.by_id[deposit_id].deposit
        decimals = self.ledger.currencies[d.currency].decimals
        body = build_body(d, decimals, self.ledger.network)
        self.callbacks.append(QueuedCallback(d.id, d.status, body, d.txid, d.confirmations, self.now))

    def plan(self) -> Plan:
        created = set(self.created)
        return Plan(
            inserts=tuple(self.by_id[i] for i in self.created),
            updates=tuple(self.by_id[i] for i in self.dirty if i not in created),
            callbacks=tuple(self.callbacks),
        )


def cancel_reason(orphan: TrackedDeposit, fate: TxFate, expiry_s: float, now: float) -> str | None:
    """Why an orphaned deposit is cancelled now, or None if it should keep waiting."""
    if fate.state is TxState.REPLACED:
        return f"transaction {orphan.deposit.txid} was replaced: {fate.reason}"
    if fate.state is TxState.UNKNOWN:
        return f"transaction {orphan.deposit.txid} left the chain and was dropped: {fate.reason}"
    # PENDING or ABSENT: it may still be mined; wait up to the expiry. MINED too: a mined transaction is
    # met by the follower in its block within a poll, so one still in no block after the expiry is a
    # stale answer (Bitcoin Core's -txindex keeps transactions of blocks that left the chain).
    since = orphan.orphaned_at if orphan.orphaned_at is not None else orphan.deposit.first_seen_at
    if now - since <= expiry_s:
        return None
    stale = ", although the node's transaction index still names it" if fate.state is TxState.MINED else ""
    return f"transaction {orphan.deposit.txid} stayed out of the chain for more than {expiry_s:g} s{stale}"


def transfer_of(orphan: TrackedDeposit) -> Transfer:
    """The Transfer an adapter needs to tell the fate of a stored deposit."""
    d = orphan.deposit
    return Transfer(
        currency=d.currency, watch_id=d.address_id, address=d.address, amount=d.amount, txid=d.txid,
        index=d.tx_index, sender=orphan.sender, nonce=orphan.nonce, inputs=orphan.inputs,
    )  # fmt: skip
