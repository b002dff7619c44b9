"""Moves payments along their life as their addresses' deposits change and as time passes.

The rules are watcher/payment_life.py's (pure); this applies them inside the store transactions that
change deposits, so a payment's new status and its webhook commit with the deposit change that caused
them (the transactional outbox: nothing is sent that was not committed first).

- `after_plan`: called by a follower in the transaction of every ledger plan it applies. The payments of
  the addresses the plan touched are advanced; a deposit to the address of a payment that has ended is a
  late payment: it stays recorded as a deposit (the API's deposits and event feed show it) and is logged.
- `sweep`: every few seconds, the open payments whose expiry (or grace) has passed, on the time the
  chain was seen (`SeenClock`): a chain that was not followed ends no payment for time it did not see.
- `SeenClock`: per chain, the last time the follower was at the node's head (everything paid until then
  was seen) and the running total of seconds it was not (gaps between such moments longer than a few
  polls: a node outage, a halt, a lag, the daemon stopped). Kept in the store, so downtime counts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from watcher.config import Config, IntegrationConfig, PaymentsConfig
from watcher.logs import get_logger
from watcher.model import Payment, Plan
from watcher.payment_book import record_changes
from watcher.payment_life import ChainWatch, Change, advance, by_transaction
from watcher.store import Store, StoreTransaction

SWEEP_EVERY_S = 5.0
# A chain whose mempool is not read (EVM here) shows a payment only once it is in a block: what was sent
# in the last minute before a look at the head may not be in one yet, so that look vouches for a minute
# less (Ethereum: five blocks of 12 s).
NO_MEMPOOL_MARGIN_S = 60.0
# Between two looks at the head more than this many poll intervals (at least `BLIND_AFTER_MIN_S`) count
# as time the chain was not followed.
BLIND_AFTER_POLLS = 3
BLIND_AFTER_MIN_S = 5.0

log = get_logger(component="payments")


class SeenClock:
    """What the daemon has seen of one chain (see the module's docstring)."""

    def __init__(self, margin_s: float, blind_after_s: float, at_head: float | None, blind_s: float) -> None:
        self.margin_s = margin_s
        self.blind_after_s = blind_after_s
        self.at_head = at_head  # the last time the follower was at the node's head
        self.blind_s = blind_s
        self.dirty = False

    def saw_head(self, now: float) -> None:
        if self.at_head is not None and now - self.at_head > self.blind_after_s:
            self.blind_s += now - self.at_head
        if self.at_head is None or now > self.at_head:
            self.at_head = now
            self.dirty = True

    def watch(self) -> ChainWatch:
        seen = None if self.at_head is None else self.at_head - self.margin_s
        return ChainWatch(seen_until=seen, blind_total_s=self.blind_s)


class PaymentTracker:
    def __init__(self, store: Store, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config  # replaced on reload
        self._clock = clock
        self.clocks: dict[str, SeenClock] = {}
        self.late_payments = 0

    async def load(self, mempool: Mapping[str, bool]) -> None:
        """Each chain's clock from the store; `mempool`: whether the chain's adapter reads the mempool."""
        saved = await self.store.seen_clocks()
        for chain in self.config.chains:
            at_head, blind_s = saved.get(chain.name, (None, 0.0))
            blind_after = max(BLIND_AFTER_MIN_S, BLIND_AFTER_POLLS * chain.poll_interval_s)
            margin = 0.0 if mempool.get(chain.name) else NO_MEMPOOL_MARGIN_S
            self.clocks[chain.name] = SeenClock(margin, blind_after, at_head, blind_s)

    def saw_head(self, chain: str, at: float) -> None:
        """A follower read its node's head at `at` and processed every block to it (and the mempool after
        it): everything paid until then was seen."""
        clock = self.clocks.get(chain)
        if clock is not None:
            clock.saw_head(at)

    def watch(self, chain: str) -> ChainWatch:
        clock = self.clocks.get(chain)
        return clock.watch() if clock is not None else ChainWatch(None, 0.0)

    # ------------------------------------------------------------------------------- deposits

    async def after_plan(self, tx: StoreTransaction, chain: str, plan: Plan, now: float) -> list[Change]:
        touched = {t.deposit.address_id for t in (*plan.inserts, *plan.updates)}
        if not touched:
            return []
        inserted = {t.deposit.address_id for t in plan.inserts}
        changes: list[Change] = []
        for payment in await tx.payments_for_addresses(touched):
            if payment.status.final:
                if payment.address_id in inserted:
                    self._late(payment)
                continue
            changes += await self._advance(tx, payment, now)
        return changes

    def _late(self, payment: Payment) -> None:
        self.late_payments += 1
        log.warning(
            "late_payment",
            payment_reference=payment.reference,
            status=str(payment.status),
            address_id=payment.address_id,
            hint="recorded as a deposit of the integration (GET /v1/deposits, the event feed)",
        )

    async def _advance(self, tx: StoreTransaction, payment: Payment, now: float) -> list[Change]:
        integration = self._integration(payment.integration_id)
        grace_s = (integration.payments if integration is not None else PaymentsConfig()).grace_s
        deposits = await tx.payment_deposits(payment)
        changes = advance(payment, by_transaction(deposits), now, self.watch(payment.chain), grace_s)
        if not changes:
            return []
        decimals = self._decimals(payment.currency)
        if integration is None or decimals is None:
            # Its integration or its currency left the config: the change is kept (GET /v1/payments shows
            # it); no webhook can be built for it now. Never an error here: it would undo the deposit.
            await tx.update_payment(changes[-1].payment)
            log.warning("payment_not_configured", payment_reference=payment.reference)
        else:
            await record_changes(tx, integration, changes, decimals)
        for change in changes:
            log.info(
                "payment_status",
                payment_reference=payment.reference,
                status=str(change.status),
                received=str(change.payment.received),
            )
        return changes

    def _decimals(self, currency: str) -> int | None:
        try:
            return self.config.currency(currency)[1].decimals
        except KeyError:
            return None

    def _integration(self, integration_id: str) -> IntegrationConfig | None:
        return next((i for i in self.config.integrations if i.id == integration_id), None)

    # ------------------------------------------------------------------------------- time

    async def sweep(self) -> list[Change]:
        """Advance the open payments whose expiry has passed, and keep each chain's clock."""
        now = self._clock()
        changes: list[Change] = []
        async with self.store.transaction() as tx:
            for chain, clock in self.clocks.items():
                if clock.dirty:
                    await tx.save_seen_clock(chain, clock.at_head, clock.blind_s)
                    clock.dirty = False
                for payment in await tx.open_payments(chain, expired_by=now):
                    changes += await self._advance(tx, payment, now)
        return changes

    async def run(self, on_change: Callable[[], None]) -> None:
        """Sweep every `SWEEP_EVERY_S` until cancelled; `on_change` wakes the dispatcher."""
        while True:
            if await self.sweep():
                on_change()
            await asyncio.sleep(SWEEP_EVERY_S)


def no_callbacks(config: Config) -> frozenset[str]:
    """Integrations whose deposits get no CoinsPaid callback: those that take another format."""
    return frozenset(i.id for i in config.integrations if i.callback.format != "coinspaid")
