"""What the merchant API and the address commands do, scoped to one integration.

Every method checks its input first (a `RequestRefused` naming the field, nothing written), then reads or
writes in one store transaction. Issuing is idempotent per (integration, chain, foreign_id): the first
take of a customer records the derivation index it gets, inside the transaction that inserts the address,
so concurrent takes, restarts and crashes all find the same index again. One EVM address (one index) serves
every currency of its chain, as CoinsPaid hands out one 0x address for ETH and its tokens.

A new or re-activated address is handed to `watch` after its commit and before the caller answers: the
daemon adds it to the followers' watch sets then (watcher.follower.Follower.watch_address), so a payment
made after the answer is never scanned against a set without it.

Takes of new customers are issued by group commit (watcher.group_commit): those arriving while one batch is
written wait for the next, which plans them all (watcher.take_plan) and writes them in one transaction run
whole on the store's writer thread (Store.write), a handful of statements whatever the batch's size.
"""

from __future__ import annotations

import asyncio
import builtins
import re
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

from chains.base import AddressError, ChainAdapter, Deriver
from chains.registry import adapter_class
from watcher import take_plan
from watcher.config import ChainConfig, Config, CurrencyConfig, IntegrationConfig
from watcher.errors import RequestRefused
from watcher.group_commit import GroupCommit
from watcher.model import (
    AddressSource,
    AttemptResult,
    Deposit,
    DepositStatus,
    Event,
    IssuedAddress,
    OutboxEntry,
)
from watcher.store import NewAddress, Store, StoreTransaction, ThreadTransaction
from watcher.take_plan import Ask, Request, Taken, TakePlan

MAX_FOREIGN_ID = 255
MAX_PAGE = 1000
# Takes in one transaction at most: 11 parameters an address row stay under SQLite's old limit of 999.
MAX_TAKE_BATCH = 64

# Unicode's control characters (category Cc) and lone surrogates (Cs), exactly: one regex search instead of
# a category look-up per character (a take checks its foreign_id twice).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]").search

# Told of each address to watch from now on: (address, its watch key, whether it may have been paid
# before: registered or reactivated, so the mempool is matched again for it).
Watch = Callable[[IssuedAddress, bytes, bool], None]


def check_foreign_id(value: object, field: str = "foreign_id") -> str:
    """The merchant's customer reference: 1..255 characters, no control characters (they would reach logs,
    CSV exports and the merchant's own handlers)."""
    if not isinstance(value, str):
        raise RequestRefused(422, "invalid_field", "must be a string", field)
    if not value or len(value) > MAX_FOREIGN_ID:
        raise RequestRefused(422, "invalid_field", f"must be 1 to {MAX_FOREIGN_ID} characters", field)
    if _CONTROL(value):
        raise RequestRefused(422, "invalid_field", "must not contain control characters", field)
    return value


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise RequestRefused(422, "invalid_field", f"must be between 1 and {MAX_PAGE}", "limit")
    return limit


class AddressBook:
    def __init__(self, store: Store, config: Config, watch: Watch | None = None) -> None:
        self.store = store
        self.config = config  # replaced on reload
        self._watch: Watch = watch or (lambda address, key, maybe_paid: None)
        # Derivers of keys no longer configured (a merchant rotated its xpub): parsed again from the stored
        # descriptor, once. Configured keys come from the config.
        self._old_derivers: dict[str, Deriver] = {}
        # Public keys whose row is committed (add_derivation can skip recording them again).
        self._recorded_keys: set[str] = set()
        self._takes: GroupCommit[Ask, Taken] = GroupCommit(self._issue, MAX_TAKE_BATCH)

    # ------------------------------------------------------------------------------- input

    def currency(self, code: object) -> tuple[ChainConfig, CurrencyConfig]:
        """The chain and currency of a currency code; 422 `unknown_currency` listing the known ones."""
        return self._currency(code)

    def watch_key(self, chain: ChainConfig, currency: CurrencyConfig, address: object) -> bytes:
        return self._watch_key(chain, currency, address)

    def watch(self, issued: IssuedAddress, watch_key: bytes, maybe_paid: bool) -> None:
        """Hand a committed new address to the followers (the daemon's `watch`)."""
        self._watch(issued, watch_key, maybe_paid)

    def _currency(self, code: object) -> tuple[ChainConfig, CurrencyConfig]:
        if not isinstance(code, str):
            raise RequestRefused(422, "invalid_field", "must be a string", "currency")
        try:
            return self.config.currency(code)
        except KeyError:
            known = ", ".join(c.code for chain in self.config.chains for c in chain.currencies)
            raise RequestRefused(
                422, "unknown_currency", f"unknown currency (known: {known})", "currency"
            ) from None

    def _watch_key(self, chain: ChainConfig, currency: CurrencyConfig, address: object) -> bytes:
        if not isinstance(address, str) or not address:
            raise RequestRefused(422, "invalid_field", "must be a non-empty string", "address")
        try:
            return _adapter(chain).watch_key(currency.spec(), address, self.config.network)
        except AddressError as e:
            raise RequestRefused(422, "invalid_address", str(e), "address") from None

    # ------------------------------------------------------------------------------- issuing

    async def take(
        self, integration: IntegrationConfig, currency: str, foreign_id: str
    ) -> tuple[IssuedAddress, bool]:
        """The customer's standing address for `currency`, derived from the integration's public key of the
        currency's chain: (address, created). The same customer gets the same address every time."""
        chain, cur = self._currency(currency)
        foreign_id = check_foreign_id(foreign_id)
        configured = integration.public_key(chain.name)
        if configured is None:
            raise RequestRefused(
                422, "no_public_key", f"no public key is configured for chain {chain.name}", "currency"
            )
        # In the next write transaction, shared with the takes waiting then (group commit). A customer
        # asking again is answered there too, by its first statement: a separate read first would cost a
        # round trip to another SQLite thread for every new customer.
        return await self._takes.submit(Ask(integration, chain, cur, foreign_id, configured))

    async def _issue(self, batch: list[tuple[Ask, asyncio.Future[Taken]]]) -> None:
        """Issue a batch of takes in one transaction, as if taken one after the other in arrival order
        (watcher.take_plan); each caller is answered after the commit and after the followers were told.
        Takes of one customer and currency in one batch get one address: the first is `created`."""
        asks: dict[Request, Ask] = {}
        for ask, _ in batch:
            asks.setdefault(ask.request, ask)
        work = partial(
            self._issue_on_thread, list(asks.values()), frozenset(self._recorded_keys), time.time()
        )
        plan, keys, results = await self.store.write(work)
        self._recorded_keys.update(keys)  # committed: their rows exist from now on
        for issued, watch_key, maybe_paid in plan.to_watch(results):
            self._watch(issued, watch_key, maybe_paid)
        answered: set[Request] = set()
        for ask, future in batch:
            result = results[ask.request]
            if future.done():  # its caller went away
                continue
            if isinstance(result, RequestRefused):
                future.set_exception(result)
            else:
                future.set_result((result[0], result[1] and ask.request not in answered))
                answered.add(ask.request)

    def _issue_on_thread(
        self, asks: list[Ask], recorded: frozenset[str], now: float, tx: ThreadTransaction
    ) -> tuple[TakePlan, list[str], dict[Request, Taken | RequestRefused]]:
        """The batch's transaction, run on the store's writer thread (Store.write): the plan, the key ids
        recorded by it, and what each take gets."""
        known = tx.derived_for([a.request for a in asks])
        plan = self._plan_takes(tx, [a for a in asks if a.request not in known])
        keys = [key for key in plan.keys_used() if key[0] not in recorded]
        tx.add_derivations(plan.new_derivations(), keys, now)
        results: dict[Request, Taken | RequestRefused] = {r: (a, False) for r, a in known.items()}
        results.update(plan.refused)
        for ask, existing, reused in plan.reuses():
            if reused != existing:
                tx.reactivate(existing.id, ask.foreign_id, reused.scan_from)
            results[ask.request] = (reused, False)
        inserts = plan.inserts()
        stored = tx.insert_derived([row for _, row in inserts], now, self.store.id_offset)
        for (ask, _), issued in zip(inserts, stored, strict=True):
            results[ask.request] = (issued, True)
        return plan, [key[0] for key in keys], results

    def _plan_takes(self, tx: ThreadTransaction, asks: list[Ask]) -> TakePlan:
        """The batch's plan, read in three statements whatever its size. A customer new on its chain
        gets its key's next index, in arrival order; one whose every take is refused (its address is
        another integration's, say) gives the index back, as a rolled-back take did, and the indexes
        after it are planned again (rare: a second look-up, not one a take)."""
        customers = list(dict.fromkeys(a.customer for a in asks))
        stored = tx.derivations(customers)
        found = {}
        for ask in asks:
            if ask.customer in stored and ask.customer not in found:
                key_id, index = stored[ask.customer]
                found[ask.customer] = (self._deriver(tx, ask.chain, key_id, ask.key.deriver), index)
        new = [c for c in customers if c not in stored]
        first_free = tx.next_key_indexes(
            {a.key.deriver.id: a.key.first_index for a in asks if a.customer not in stored}
        )
        refused: dict[Request, RequestRefused] = {}
        derived: dict[tuple[str, int], str] = {}
        while True:
            plan = TakePlan(asks, found, refused, self._watch_key, derived)
            next_indexes = dict(first_free)
            for customer in new:
                plan.give_next(customer, next_indexes)
            plan.derive_found(found)
            plan.match(tx.addresses_by_keys(plan.watch_keys()))
            dropped = [c for c in new if plan.all_refused(c)]
            if not dropped:
                return plan
            for customer in dropped:
                refused.update(plan.refusals_of(customer))
                new.remove(customer)

    async def register(
        self,
        integration: IntegrationConfig,
        currency: str,
        address: str,
        foreign_id: str,
        from_height: int | None = None,
    ) -> tuple[IssuedAddress, bool]:
        """Watch an address made elsewhere: (address, created). With `from_height`, the follower scans the
        chain's processed blocks from there for it (once; what it finds is reported like any payment)."""
        chain, cur = self._currency(currency)
        watch_key = self._watch_key(chain, cur, address)
        foreign_id = check_foreign_id(foreign_id)
        if from_height is not None and (
            isinstance(from_height, bool) or not isinstance(from_height, int) or from_height < 0
        ):
            raise RequestRefused(
                422, "invalid_field", "must be a block height (an integer >= 0)", "from_height"
            )
        now = time.time()
        async with self.store.transaction() as tx:
            existing = await tx.address_by_key(cur.code, watch_key)
            if existing is not None:
                issued = await self._reuse(tx, integration, existing, foreign_id, from_height)
                created = False
            else:
                new = NewAddress(
                    chain.name, cur.code, watch_key, address, foreign_id, integration.id, AddressSource.API
                )
                issued = await tx.insert_address(new, now, self.store.id_offset, scan_from=from_height)
                created = True
        if created or issued != existing:  # new, reactivated or to be scanned: the followers must know
            self._watch(issued, watch_key, True)
        return issued, created

    async def _reuse(
        self,
        tx: StoreTransaction,
        integration: IntegrationConfig,
        existing: IssuedAddress,
        foreign_id: str,
        from_height: int | None,
    ) -> IssuedAddress:
        reused = take_plan.reused(integration, existing, foreign_id, from_height)
        if reused != existing:
            await tx.set_address(existing.id, foreign_id=foreign_id, active=True, scan_from=reused.scan_from)
        return reused

    def _deriver(
        self, tx: ThreadTransaction, chain: ChainConfig, key_id: str, configured: Deriver
    ) -> Deriver:
        """The deriver of a stored derivation's key: the configured one, or one no longer configured (a
        merchant rotated its xpub), parsed again from its stored descriptor once."""
        if key_id == configured.id:
            return configured
        deriver = self._old_derivers.get(key_id)
        if deriver is None:
            descriptor = tx.key_descriptor(key_id)
            if descriptor is None:  # a derivation always records its key first: a damaged store
                raise RuntimeError(f"public key {key_id} of a stored derivation is missing from the store")
            deriver = _adapter(chain).parse_public_key(descriptor, self.config.network)
            self._old_derivers[key_id] = deriver
        return deriver

    # ------------------------------------------------------------------------------- addresses

    async def get(self, integration: IntegrationConfig, currency: str, address: str) -> IssuedAddress:
        chain, cur = self._currency(currency)
        watch_key = self._watch_key(chain, cur, address)
        found = await self.store.issued_address(integration.id, cur.code, watch_key)
        if found is None:
            raise RequestRefused(404, "not_found", "no such address", "address")
        return found

    async def list(
        self,
        integration: IntegrationConfig,
        *,
        foreign_id: str | None = None,
        currency: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[IssuedAddress]:
        if currency is not None:
            currency = self._currency(currency)[1].code
        if foreign_id is not None:
            check_foreign_id(foreign_id)
        return await self.store.issued_addresses(
            integration.id, foreign_id=foreign_id, currency=currency, after=after, limit=check_limit(limit)
        )

    async def delete(self, integration: IntegrationConfig, currency: str, address: str) -> IssuedAddress:
        """Stop watching: no new deposit is made for it from the next scan on; its deposits (and those
        still to confirm) and their callbacks stay."""
        found = await self.get(integration, currency, address)
        if not found.active:
            return found
        async with self.store.transaction() as tx:
            await tx.set_address(found.id, foreign_id=found.foreign_id, active=False, scan_from=None)
        return replace(found, active=False, scan_from=None)

    # ------------------------------------------------------------------------------- deposits

    async def deposits(
        self,
        integration: IntegrationConfig,
        *,
        status: str | None = None,
        currency: str | None = None,
        foreign_id: str | None = None,
        since: float | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> builtins.list[Deposit]:
        if status is not None and status not in {s.value for s in DepositStatus}:
            known = ", ".join(s.value for s in DepositStatus)
            raise RequestRefused(422, "invalid_field", f"must be one of {known}", "status")
        if currency is not None:
            currency = self._currency(currency)[1].code
        if foreign_id is not None:
            check_foreign_id(foreign_id)
        return await self.store.integration_deposits(
            integration.id, status=status, currency=currency, foreign_id=foreign_id, since=since, after=after,
            limit=check_limit(limit),
        )  # fmt: skip

    async def deposit(
        self, integration: IntegrationConfig, deposit_id: int
    ) -> tuple[Deposit, builtins.list[AttemptResult]]:
        """The deposit with every attempt to deliver its callbacks, oldest first."""
        found = await self.store.integration_deposit(integration.id, deposit_id)
        if found is None:
            raise RequestRefused(404, "not_found", "no such deposit", "id")
        attempts: builtins.list[AttemptResult] = []
        for entry in await self.store.outbox_entries(deposit_id=deposit_id):
            attempts += await self.store.attempts(entry.id)
        return found, attempts

    async def resend(self, integration: IntegrationConfig, deposit_id: int) -> OutboxEntry:
        """Queue the deposit's latest callback again, the same bytes (CoinsPaid's "resend")."""
        if await self.store.integration_deposit(integration.id, deposit_id) is None:
            raise RequestRefused(404, "not_found", "no such deposit", "id")
        entry = await self.store.resend(deposit_id)
        if entry is None:
            raise RequestRefused(409, "nothing_to_resend", "this deposit has no callback yet", "id")
        return entry

    async def events(
        self, integration: IntegrationConfig, after: int = 0, limit: int = 100
    ) -> builtins.list[Event]:
        if after < 0:
            raise RequestRefused(422, "invalid_field", "must be an event id (an integer >= 0)", "after")
        return await self.store.events(integration.id, after, check_limit(limit))

    async def highest_indexes(self, integration: IntegrationConfig) -> dict[str, int]:
        return await self.store.highest_indexes(integration.id)


def _adapter(chain: ChainConfig) -> type[ChainAdapter]:
    cls: type[ChainAdapter] = adapter_class(chain.adapter)
    return cls
