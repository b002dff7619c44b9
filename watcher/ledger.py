"""The deposit state machine: how transfers, blocks, reorgs and fates change deposits and queue callbacks.

Every function here runs inside one store transaction (`Tx`), so a deposit's new state and the callback
it causes are committed together (a transactional outbox): the dispatcher only ever sees callbacks for
committed state. Chain I/O happens outside, in the follower.

Rules (callbacks.md, issue 2):
- A new deposit below its currency's minimum is `not_confirmed`; at the minimum it is `confirmed`. A new
  deposit already at its minimum (minimum 0, or found late while catching up) gets only `confirmed`.
- Confirmations = processed tip height - block height + 1; 0 while not in a block.
- A deposit whose block leaves the chain goes back to 0 confirmations, still `not_confirmed`, no callback.
- It is `cancelled` (final, with the reason) when the node says it was replaced or no longer knows it,
  when another transaction spends one of its inputs (in a block or in the mempool), or when it stayed out
  of the chain longer than the chain's expiry.
- A confirmed deposit is never taken back: the follower halts the chain instead (see `confirmed_above`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chains.base import BlockRef, BlockScan, MempoolScan, Spend, Transfer, TxFate, TxState
from watcher.callbacks import build_body
from watcher.config import ChainConfig, CurrencyConfig
from watcher.logs import get_logger
from watcher.model import Deposit, DepositStatus
from watcher.store import OpenDeposit, Tx

log = get_logger(component="ledger")


@dataclass(frozen=True, slots=True)
class Change:
    """One callback queued by the ledger (for logs and tests)."""

    deposit_id: int
    status: DepositStatus
    txid: str
    confirmations: int


def status_for(confirmations: int, min_confirmations: int) -> DepositStatus:
    """Pure: the status a live (not cancelled) deposit has at this many confirmations."""
    if confirmations >= min_confirmations:
        return DepositStatus.CONFIRMED
    return DepositStatus.NOT_CONFIRMED


def confirmations_at(tip_height: int, block_height: int | None) -> int:
    """Pure: confirmations of a block at `block_height` when the processed tip is `tip_height`."""
    if block_height is None or block_height > tip_height:
        return 0
    return tip_height - block_height + 1


class Ledger:
    """The state machine of one chain's deposits."""

    def __init__(self, chain: ChainConfig, network: str) -> None:
        self.chain = chain.name
        self.network = network
        self.currencies: Mapping[str, CurrencyConfig] = {c.code: c for c in chain.currencies}

    # ------------------------------------------------------------------------------------- blocks

    async def apply_scans(self, tx: Tx, scans: Sequence[BlockScan], now: float) -> list[Change]:
        """Record the transfers and spends of newly processed blocks, then recount at the new tip."""
        new_ids: set[int] = set()
        cancelled: list[Change] = []
        for scan in scans:
            for transfer in scan.transfers:
                deposit_id, created = await self._record(tx, transfer, scan.ref, now)
                if created:
                    new_ids.add(deposit_id)
            where = f"in block {scan.ref.height} ({scan.ref.block_hash})"
            cancelled += await self._conflicts(tx, scan.spends, where, now)
        return cancelled + await self.recount(tx, scans[-1].ref.height, now, new_ids)

    async def apply_mempool(self, tx: Tx, scan: MempoolScan, tip_height: int, now: float) -> list[Change]:
        """Record payments seen in the mempool (new ones become deposits with 0 confirmations) and
        cancel deposits whose inputs a mempool transaction spends."""
        new_ids: set[int] = set()
        for transfer in scan.transfers:
            deposit_id, created = await self._record(tx, transfer, None, now)
            if created:
                new_ids.add(deposit_id)
        changes = await self._conflicts(tx, scan.spends, "in the mempool", now)
        if new_ids:
            changes += await self.recount(tx, tip_height, now, new_ids)
        return changes

    async def apply_history(
        self, tx: Tx, scans: Sequence[BlockScan], tip_height: int, now: float
    ) -> tuple[int, int]:
        """Record transfers of past blocks (a rescan); recount at the chain's processed height.

        Returns (transfers seen, deposits created). Known deposits are left as they are.
        """
        new_ids: set[int] = set()
        seen = 0
        for scan in scans:
            for transfer in scan.transfers:
                seen += 1
                deposit_id, created = await self._record(tx, transfer, scan.ref, now)
                if created:
                    new_ids.add(deposit_id)
        if new_ids:
            await self.recount(tx, tip_height, now, new_ids)
        return seen, len(new_ids)

    async def _conflicts(self, tx: Tx, spends: Sequence[Spend], where: str, now: float) -> list[Change]:
        """Cancel open deposits one of whose inputs another transaction spends (a double-spend).

        A transaction paying several watched outputs is several deposits with the same inputs: a
        conflicting spend cancels every one of them, each once.
        """
        if not spends:
            return []
        by_outpoint: dict[str, list[OpenDeposit]] = {}
        for open_deposit in await tx.open_deposits(self.chain):
            for outpoint in open_deposit.inputs:
                by_outpoint.setdefault(outpoint, []).append(open_deposit)
        changes = []
        cancelled: set[int] = set()
        for spend in spends:
            for victim in by_outpoint.get(spend.outpoint, ()):
                if victim.deposit.txid == spend.txid or victim.deposit.id in cancelled:
                    continue
                reason = (
                    f"transaction {victim.deposit.txid} was double-spent: its input {spend.outpoint} is spent"
                    f" by transaction {spend.txid} {where}"
                )
                changes.append(await self._cancel(tx, victim.deposit.id, reason, now))
                cancelled.add(victim.deposit.id)
        return changes

    async def _cancel(self, tx: Tx, deposit_id: int, reason: str, now: float) -> Change:
        await tx.update_deposit(
            deposit_id, now, status=DepositStatus.CANCELLED, error=reason, confirmations=0
        )
        return await self._enqueue(tx, deposit_id, now)

    async def _record(self, tx: Tx, t: Transfer, block: BlockRef | None, now: float) -> tuple[int, bool]:
        """Find or create the deposit of a transfer; attach it to `block` if it is live."""
        deposit_id = await tx.find_deposit(self.chain, t.txid, t.currency, t.watch_id, t.index)
        created = deposit_id is None
        if deposit_id is None:
            deposit_id = await tx.insert_deposit(
                chain=self.chain, currency=t.currency, address_id=t.watch_id, txid=t.txid,
                tx_index=t.index, amount=t.amount, sender=t.sender, nonce=t.nonce, inputs=t.inputs,
                now=now,
            )  # fmt: skip
        if block is not None:
            deposit = await tx.get_deposit(deposit_id)
            # A cancelled deposit stays cancelled: the receiver was told it is final. Said loudly, since the
            # payment did arrive after all and the operator has to settle it by hand.
            if deposit.status is DepositStatus.CANCELLED:
                log.error(
                    "cancelled_deposit_in_block", chain=self.chain, deposit_id=deposit_id, txid=t.txid,
                    height=block.height, error=deposit.error,
                )  # fmt: skip
            if deposit.status is DepositStatus.NOT_CONFIRMED:
                await tx.update_deposit(
                    deposit_id, now, block_height=block.height, block_hash=block.block_hash, orphaned_at=None
                )
        return deposit_id, created

    async def recount(
        self, tx: Tx, tip_height: int, now: float, new_ids: set[int] | None = None
    ) -> list[Change]:
        """Recount confirmations of every open deposit at `tip_height`; queue the callbacks that causes."""
        new_ids = new_ids or set()
        changes: list[Change] = []
        for open_deposit in await tx.open_deposits(self.chain):
            d = open_deposit.deposit
            minimum = self.currencies[d.currency].min_confirmations
            confirmations = confirmations_at(tip_height, d.block_height)
            status = status_for(confirmations, minimum)
            if confirmations != d.confirmations or status is not d.status:
                await tx.update_deposit(d.id, now, confirmations=confirmations, status=status)
            if status is DepositStatus.CONFIRMED or d.id in new_ids:
                changes.append(await self._enqueue(tx, d.id, now))
        return changes

    async def _enqueue(self, tx: Tx, deposit_id: int, now: float) -> Change:
        deposit = await tx.get_deposit(deposit_id)
        decimals = self.currencies[deposit.currency].decimals
        await tx.enqueue_callback(
            deposit.id, deposit.status, build_body(deposit, decimals, self.network), now
        )
        return Change(deposit.id, deposit.status, deposit.txid, deposit.confirmations)

    # ------------------------------------------------------------------------------------- reorgs

    async def confirmed_above(self, tx: Tx, fork_height: int) -> list[Deposit]:
        """Confirmed deposits in blocks above the fork point: unwinding those would take money back."""
        return [
            d
            for d in await tx.deposits_in_blocks_above(self.chain, fork_height)
            if d.status is DepositStatus.CONFIRMED
        ]

    async def unwind(self, tx: Tx, fork_height: int, now: float) -> list[Deposit]:
        """Detach open deposits from blocks above the fork point: 0 confirmations, no callback."""
        unwound = []
        for d in await tx.deposits_in_blocks_above(self.chain, fork_height):
            if d.status is DepositStatus.NOT_CONFIRMED:
                await tx.update_deposit(
                    d.id, now, block_height=None, block_hash=None, confirmations=0, orphaned_at=now
                )
                unwound.append(d)
        return unwound

    # ------------------------------------------------------------------------------------- fates

    async def orphans(self, tx: Tx) -> list[OpenDeposit]:
        """Open deposits that are in no block: left the chain in a reorg, or seen only in the mempool."""
        return [o for o in await tx.open_deposits(self.chain) if o.deposit.block_height is None]

    async def settle_fate(
        self, tx: Tx, orphan: OpenDeposit, fate: TxFate, expiry_s: float, now: float
    ) -> Change | None:
        """Cancel an orphaned deposit when its fate says it is gone; otherwise leave it waiting."""
        reason = cancel_reason(orphan, fate, expiry_s, now)
        if reason is None:
            return None
        return await self._cancel(tx, orphan.deposit.id, reason, now)


def cancel_reason(orphan: OpenDeposit, fate: TxFate, expiry_s: float, now: float) -> str | None:
    """Pure: why an orphaned deposit is cancelled now, or None if it should keep waiting."""
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


def transfer_of(orphan: OpenDeposit, watch_address: str) -> Transfer:
    """The Transfer an adapter needs to tell the fate of a stored deposit."""
    d = orphan.deposit
    return Transfer(
        currency=d.currency, watch_id=d.address_id, address=watch_address, amount=d.amount, txid=d.txid,
        index=d.tx_index, sender=orphan.sender, nonce=orphan.nonce, inputs=orphan.inputs,
    )  # fmt: skip
