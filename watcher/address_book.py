"""What the merchant API and the address commands do, scoped to one integration.

Every method checks its input first (a `RequestRefused` naming the field, nothing written), then reads or
writes in one store transaction. Issuing is idempotent per (integration, chain, foreign_id): the first
take of a customer records the derivation index it gets, inside the transaction that inserts the address,
so concurrent takes, restarts and crashes all find the same index again. One EVM address (one index) serves
every currency of its chain, as CoinsPaid hands out one 0x address for ETH and its tokens.

A new or re-activated address is handed to `watch` after its commit and before the caller answers: the
daemon adds it to the followers' watch sets then (watcher.follower.Follower.watch_address), so a payment
made after the answer is never scanned against a set without it.
"""

from __future__ import annotations

import builtins
import time
import unicodedata
from collections.abc import Callable
from dataclasses import replace

from chains.base import AddressError, ChainAdapter, DerivationError, Deriver
from chains.registry import adapter_class
from watcher.config import ChainConfig, Config, CurrencyConfig, IntegrationConfig
from watcher.errors import RequestRefused
from watcher.model import (
    AddressSource,
    AttemptResult,
    Deposit,
    DepositStatus,
    Event,
    IssuedAddress,
    OutboxEntry,
)
from watcher.store import NewAddress, Store, StoreTransaction

MAX_FOREIGN_ID = 255
MAX_PAGE = 1000

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
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
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
        # The common case, a customer asking again: read only, no write lock (no queue behind followers).
        known = await self.store.derived_for(integration.id, cur.code, foreign_id)
        if known is not None:
            return known, False
        now = time.time()
        async with self.store.transaction() as tx:
            found = await tx.derivation(integration.id, chain.name, foreign_id)
            if found is None:
                deriver = configured.deriver
                index = await tx.next_key_index(deriver.id, configured.first_index)
                key = (deriver.id, deriver.descriptor)
                recorded = deriver.id in self._recorded_keys
                await tx.add_derivation(
                    integration.id, chain.name, foreign_id, key, index, now, key_known=recorded
                )
            else:
                key_id, index = found
                deriver = await self._deriver(tx, chain, key_id, configured.deriver)
            address = derive_address(deriver, index)
            watch_key = self._watch_key(chain, cur, address)
            existing = await tx.address_by_key(cur.code, watch_key)
            if existing is not None:
                issued = await self._reuse(tx, integration, existing, foreign_id, None)
                created = False
            else:
                new = NewAddress(
                    chain.name, cur.code, watch_key, address, foreign_id, integration.id, AddressSource.API
                )
                derived = {"key_id": deriver.id, "key_index": index, "derivation_path": deriver.path(index)}
                issued = await tx.insert_address(new, now, self.store.id_offset, **derived)
                created = True
        self._recorded_keys.add(deriver.id)  # committed: the key's row exists from now on
        if created or issued != existing:  # new or reactivated: the followers must know
            self._watch(issued, watch_key, not created)
        return issued, created

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
        """An address already in the store asked for again: the same customer's gets (re)activated;
        another integration's, or another customer's while watched, is a conflict."""
        if existing.integration_id != integration.id or existing.source is AddressSource.PAYMENT:
            # Not saying whose: an integration learns nothing of another's addresses. A payment's address
            # is that payment's alone (its derivation's foreign_id is the payment reference).
            raise RequestRefused(
                409, "address_taken", "this address is not available to this integration", "address"
            )
        if existing.active and existing.foreign_id != foreign_id:
            raise RequestRefused(
                409, "conflict", "this address is already watched for another foreign_id", "foreign_id"
            )
        scan_from = existing.scan_from
        if from_height is not None:
            scan_from = from_height if scan_from is None else min(scan_from, from_height)
        if existing.active and scan_from == existing.scan_from:
            return existing
        await tx.set_address(existing.id, foreign_id=foreign_id, active=True, scan_from=scan_from)
        return replace(existing, foreign_id=foreign_id, active=True, scan_from=scan_from)

    async def _deriver(
        self, tx: StoreTransaction, chain: ChainConfig, key_id: str, configured: Deriver
    ) -> Deriver:
        if key_id == configured.id:
            return configured
        deriver = self._old_derivers.get(key_id)
        if deriver is None:
            descriptor = await tx.key_descriptor(key_id)
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


def derive_address(deriver: Deriver, index: int) -> str:
    try:
        return deriver.address(index)
    except DerivationError as e:  # past the last non-hardened index: the key is used up
        raise RequestRefused(409, "key_exhausted", str(e), "currency") from None
