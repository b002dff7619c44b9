"""The watched addresses of a config, packed: one small bytes record per address.

An AddressEntry object per address costs ~330 bytes (the object, three strings, the key, the line); the
daemon keeps the list for its whole life and a reload holds two. A record keeps the same facts in ~100
bytes (currency and file as indexes into shared tables), and AddressEntry values are built as the list is
read.
Each entry belongs to one integration (its id, kept as an index into a third table): the merchant whose
customer the address is.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import overload

# currency index, integration index, file index, line, watch key length, address length; then key,
# address, foreign id.
_HEADER = struct.Struct("<HHIIHH")
# The integration a `merchant:` section is (watcher.config re-exports it; defined here, below the config).
DEFAULT_INTEGRATION_ID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class AddressEntry:
    currency: str
    address: str  # exactly as configured
    foreign_id: str
    file: str  # where it is configured, for error messages
    line: int
    # The adapter's key for this address (EVM: 20 bytes; Bitcoin: the output script), computed once
    # when the address is validated so the daemon never parses a million addresses twice.
    watch_key: bytes = field(default=b"", repr=False)
    integration: str = DEFAULT_INTEGRATION_ID  # the id of the integration the address belongs to

    @property
    def source(self) -> str:
        """'FILE:LINE'."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True, repr=False)
class AddressList:
    """An immutable sequence of AddressEntry, in the order configured."""

    currencies: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    records: tuple[bytes, ...] = ()
    integrations: tuple[str, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[AddressEntry]) -> AddressList:
        builder = AddressListBuilder()
        for e in entries:
            builder.add(e.currency, e.address, e.foreign_id, e.file, e.line, e.watch_key, e.integration)
        return builder.build()

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[AddressEntry]:
        return map(self._entry, self.records)

    @overload
    def __getitem__(self, index: int) -> AddressEntry: ...
    @overload
    def __getitem__(self, index: slice) -> AddressList: ...
    def __getitem__(self, index: int | slice) -> AddressEntry | AddressList:
        if isinstance(index, slice):
            return AddressList(self.currencies, self.files, self.records[index], self.integrations)
        return self._entry(self.records[index])

    def __repr__(self) -> str:
        return f"AddressList({len(self)} addresses)"

    def counts(self) -> Counter[str]:
        """Addresses per currency code (reads only the records' headers)."""
        by_index = Counter(_HEADER.unpack_from(record)[0] for record in self.records)
        return Counter({self.currencies[i]: n for i, n in by_index.items()})

    def owners(self) -> Counter[str]:
        """Addresses per integration id (reads only the records' headers)."""
        by_index = Counter(_HEADER.unpack_from(record)[1] for record in self.records)
        return Counter({self.integrations[i]: n for i, n in by_index.items()})

    def having(self, currencies: Collection[str]) -> AddressList:
        """The entries of these currencies only, in order."""
        keep = {i for i, code in enumerate(self.currencies) if code in currencies}
        if len(keep) == len(self.currencies):
            return self
        records = tuple(r for r in self.records if _HEADER.unpack_from(r)[0] in keep)
        return AddressList(self.currencies, self.files, records, self.integrations)

    def _entry(self, record: bytes) -> AddressEntry:
        currency, integration, file, line, key_size, address_size = _HEADER.unpack_from(record)
        key_end = _HEADER.size + key_size
        address_end = key_end + address_size
        return AddressEntry(
            self.currencies[currency],
            record[key_end:address_end].decode("utf-8", "surrogatepass"),
            record[address_end:].decode("utf-8", "surrogatepass"),
            self.files[file],
            line,
            record[_HEADER.size : key_end],
            self.integrations[integration],
        )


class AddressListBuilder:
    """Collects entries while a config is loaded and knows which (currency, watch key) are listed."""

    def __init__(self) -> None:
        self._currencies: dict[str, int] = {}
        self._files: dict[str, int] = {}
        self._integrations: dict[str, int] = {}
        self._records: list[bytes] = []
        # Per currency, the watch keys listed so far: what a duplicate is found by.
        self._keys: dict[str, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def listed(self, currency: str, watch_key: bytes) -> bool:
        keys = self._keys.get(currency)
        return keys is not None and watch_key in keys

    def first(self, currency: str, watch_key: bytes) -> AddressEntry | None:
        """The entry that listed this currency's watch key (a scan: for error messages only)."""
        if not self.listed(currency, watch_key):
            return None
        built = self.build()
        return next(e for e in built if e.currency == currency and e.watch_key == watch_key)

    def first_source(self, currency: str, watch_key: bytes) -> str | None:
        """Where this currency's watch key was listed first, 'FILE:LINE' (a scan: for error messages only)."""
        entry = self.first(currency, watch_key)
        return None if entry is None else entry.source

    def add(
        self,
        currency: str,
        address: str,
        foreign_id: str,
        file: str,
        line: int,
        watch_key: bytes,
        integration: str,
    ) -> None:
        code = self._currencies.setdefault(currency, len(self._currencies))
        where = self._files.setdefault(file, len(self._files))
        owner = self._integrations.setdefault(integration, len(self._integrations))
        # surrogatepass: the pure-Python YAML reader lets a "\ud800" escape through; keep it as written.
        encoded = address.encode("utf-8", "surrogatepass")
        header = _HEADER.pack(code, owner, where, line, len(watch_key), len(encoded))
        self._records.append(
            b"".join((header, watch_key, encoded, foreign_id.encode("utf-8", "surrogatepass")))
        )
        self._keys.setdefault(currency, set()).add(watch_key)

    def build(self) -> AddressList:
        return AddressList(
            tuple(self._currencies), tuple(self._files), tuple(self._records), tuple(self._integrations)
        )
