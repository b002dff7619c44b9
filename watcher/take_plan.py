"""What a batch of takes gets (watcher.address_book.AddressBook._issue): pure bookkeeping, no I/O.

The address book reads the batch's derivations, its keys' next indexes and the stored addresses at the
derived keys in one statement each, and this plan works out, as if the takes had run one after the other
in arrival order: which customer gets which index, which address each take gets (new, found again or
reactivated) and which takes are refused, and why. Derivation (EC math, ~0.25 ms) happens here, once per
customer and index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from chains.base import DerivationError, Deriver
from watcher.config import ChainConfig, CurrencyConfig, IntegrationConfig, PublicKeyConfig
from watcher.errors import RequestRefused
from watcher.model import AddressSource, IssuedAddress
from watcher.store import NewAddress

Taken = tuple[IssuedAddress, bool]  # (address, created)
Customer = tuple[str, str, str]  # (integration id, chain, foreign_id): one derivation
Request = tuple[str, str, str]  # (integration id, currency, foreign_id): one address
# (chain, currency, address) -> watch key; raises RequestRefused
WatchKeyOf = Callable[[ChainConfig, CurrencyConfig, str], bytes]


@dataclass(frozen=True, slots=True)
class Ask:
    """One take waiting for its batch, checked already."""

    integration: IntegrationConfig
    chain: ChainConfig
    currency: CurrencyConfig
    foreign_id: str
    key: PublicKeyConfig  # the integration's configured key of the chain

    @property
    def customer(self) -> Customer:
        return (self.integration.id, self.chain.name, self.foreign_id)

    @property
    def request(self) -> Request:
        return (self.integration.id, self.currency.code, self.foreign_id)


def reused(
    integration: IntegrationConfig, existing: IssuedAddress, foreign_id: str, from_height: int | None
) -> IssuedAddress:
    """An address already in the store asked for again, as it is to be: the same customer's gets
    (re)activated; another integration's, or another customer's while watched, is a conflict."""
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
    return replace(existing, foreign_id=foreign_id, active=True, scan_from=scan_from)


def derive(deriver: Deriver, index: int) -> str:
    try:
        return deriver.address(index)
    except DerivationError as e:  # past the last non-hardened index: the key is used up
        raise RequestRefused(409, "key_exhausted", str(e), "currency") from None


class TakePlan:
    """One attempt at planning a batch. `found`: derivations already stored (with their derivers);
    `refused`: takes refused by an earlier attempt (their customer gave its index back)."""

    def __init__(
        self,
        asks: list[Ask],
        found: dict[Customer, tuple[Deriver, int]],
        refused: dict[Request, RequestRefused],
        watch_key_of: WatchKeyOf,
        derived: dict[tuple[str, int], str],
    ) -> None:
        self.asks = asks
        self.refused = dict(refused)
        self._watch_key_of = watch_key_of
        self._derived = derived  # (key id, index) -> address, kept across attempts
        self.given: dict[Customer, tuple[Deriver, int]] = {}  # new derivations
        self.derivations = dict(found)
        self.addresses: dict[Request, tuple[str, bytes]] = {}  # (address, watch key)
        self.matched: dict[Request, tuple[IssuedAddress, IssuedAddress]] = {}  # (stored, as it is to be)

    def _of(self, customer: Customer) -> list[Ask]:
        return [a for a in self.asks if a.customer == customer and a.request not in self.refused]

    def give_next(self, customer: Customer, next_indexes: dict[str, int]) -> None:
        """The customer's takes at its key's next index; the index is used only if one of them gets an
        address there (`next_indexes` moves on then)."""
        asks = self._of(customer)
        if not asks:
            return
        deriver = asks[0].key.deriver
        index = next_indexes[deriver.id]
        if self._address(customer, asks, deriver, index):
            self.given[customer] = (deriver, index)
            self.derivations[customer] = (deriver, index)
            next_indexes[deriver.id] = index + 1

    def derive_found(self, found: dict[Customer, tuple[Deriver, int]]) -> None:
        for customer, (deriver, index) in found.items():
            self._address(customer, self._of(customer), deriver, index)

    def _address(self, customer: Customer, asks: list[Ask], deriver: Deriver, index: int) -> bool:
        """Each take's address and watch key at `index`, or its refusal; whether any got one."""
        try:
            address = self._derived.get((deriver.id, index)) or derive(deriver, index)
        except RequestRefused as e:
            self.refused.update((a.request, e) for a in asks)
            return False
        self._derived[(deriver.id, index)] = address
        for ask in asks:
            try:
                self.addresses[ask.request] = (address, self._watch_key_of(ask.chain, ask.currency, address))
            except RequestRefused as e:
                self.refused[ask.request] = e
        return any(a.request in self.addresses for a in asks)

    def watch_keys(self) -> list[tuple[str, bytes]]:
        return [(request[1], key) for request, (_, key) in self.addresses.items()]

    def match(self, stored: dict[tuple[str, bytes], IssuedAddress]) -> None:
        """Takes whose address is in the store already: found again, reactivated, or refused."""
        for ask in self.asks:
            if ask.request not in self.addresses or ask.request in self.refused:
                continue
            existing = stored.get((ask.currency.code, self.addresses[ask.request][1]))
            if existing is None:
                continue
            try:
                self.matched[ask.request] = (
                    existing,
                    reused(ask.integration, existing, ask.foreign_id, None),
                )
            except RequestRefused as e:
                self.refused[ask.request] = e

    def all_refused(self, customer: Customer) -> bool:
        """A new derivation none of whose takes stands: it is not recorded, its index is given back."""
        asks = [a for a in self.asks if a.customer == customer]
        return customer in self.given and all(a.request in self.refused for a in asks)

    def refusals_of(self, customer: Customer) -> dict[Request, RequestRefused]:
        return {a.request: self.refused[a.request] for a in self.asks if a.customer == customer}

    # ---------------------------------------------------------------------------- what to write

    def new_derivations(self) -> list[tuple[str, str, str, str, int]]:
        return [(*customer, deriver.id, index) for customer, (deriver, index) in self.given.items()]

    def keys_used(self) -> list[tuple[str, str, str, str]]:
        """(key id, integration, chain, descriptor) of the keys the new derivations use."""
        keys = {d.id: (d.id, c[0], c[1], d.descriptor) for c, (d, _) in self.given.items()}
        return list(keys.values())

    def reuses(self) -> list[tuple[Ask, IssuedAddress, IssuedAddress]]:
        return [(a, *self.matched[a.request]) for a in self.asks if a.request in self.matched
                and a.request not in self.refused]  # fmt: skip

    def inserts(self) -> list[tuple[Ask, tuple[NewAddress, str, int, str]]]:
        """The takes getting a new address row: (take, (row, key id, index, derivation path))."""
        rows = []
        for ask in self.asks:
            r = ask.request
            if r not in self.addresses or r in self.refused or r in self.matched:
                continue
            deriver, index = self.derivations[ask.customer]
            address, watch_key = self.addresses[r]
            new = NewAddress(ask.chain.name, ask.currency.code, watch_key, address, ask.foreign_id,
                             ask.integration.id, AddressSource.API)  # fmt: skip
            rows.append((ask, (new, deriver.id, index, deriver.path(index))))
        return rows

    def to_watch(
        self, results: dict[Request, Taken | RequestRefused]
    ) -> Iterator[tuple[IssuedAddress, bytes, bool]]:
        """(address, watch key, maybe paid) the followers must be told of: new ones and reactivated ones."""
        for request, result in results.items():
            if isinstance(result, RequestRefused):
                continue
            issued, created = result
            stored = self.matched.get(request)
            if created or (stored is not None and stored[0] != issued):
                yield issued, self.addresses[request][1], not created
