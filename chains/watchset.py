"""The watched keys of one currency as adapters look them up: a plain dict, or `CompactKeys` when many.

An adapter matches every output script (Bitcoin) or `to` address (EVM) it walks against the watched keys
(`chains.base.KeyIndex`: `get`, `in`, `len`). A dict of bytes keys costs 130-143 B of RSS per address:
1.3 GB at 10,000,000 addresses, nearly the whole memory budget of the daemon. `CompactKeys` keeps no
key at all, only a 128-bit fingerprint and the watch id: about 24 B per address (bench/README.md).

How `CompactKeys` finds a key:

1. A bitmap of 16 to 32 bits per key, indexed by Python's `hash(key)` (SipHash, computed in C): most
   output scripts and addresses of a block are not watched and stop here at almost the cost of a dict
   lookup. Equal bytes have equal hashes in one process, so this filter never drops a watched key; a
   false positive (at most ~6%) only costs step 2. Because `hash` is seeded per process, an index is
   used only in the process that built it: it refuses to be pickled.
2. The key's fingerprint: BLAKE2b-128 keyed with 16 random bytes drawn for this index. The top bits of
   its high 64 bits pick a range (1,000 to 2,500 entries); the high half is found there by bisection in a
   sorted `array('Q')`, and the low half and the id sit in parallel arrays.

Why a fingerprint match is enough to credit a deposit (money depends on it). For keys chosen without
knowledge of the secret BLAKE2b key, the fingerprints of distinct keys are independent and uniform, so
one lookup of an unwatched key matches one of n watched fingerprints with probability at most n/2^128:
2.9e-32 at n = 10,000,000. A daemon looking up 100,000 keys a second for ten years (3e13 lookups)
misattributes a payment with probability below 1e-18, far below the rate of undetected memory or disk
errors that bound a dict's correctness just as well. An attacker cannot search for a script colliding
with a customer's: the key never leaves this process and changes at every load, so each try would be an
on-chain payment that succeeds with probability n/2^128. Hence hits are not confirmed against the store.

Two watched keys with the same fingerprint (probability n^2/2^129, 1.5e-25 at 10,000,000) cannot be told
from a key given twice, so both are refused: building raises `DuplicateKey` rather than let one address
receive the other's payments; the next build draws another secret. Duplicates are refused in the dict
form too, so both forms agree; the store never hands out one (UNIQUE (currency, watch_key)).

`IndexBuilder` picks the form: a dict up to `COMPACT_ABOVE` keys (where the dict's extra memory is a few
MB and its build is faster), `CompactKeys` beyond. It builds without holding a list of all keys or
fingerprints: entries go into their range's arrays as they stream in (28 B/key: both halves, the id and
32 bits of `hash(key)`), and at the end each range alone sets its bitmap bits and is sorted and replaced
by exact-size arrays (20 B/key), so the transient is one range's, never a second copy of everything.
"""

from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sized
from hashlib import blake2b
from typing import NoReturn, TypeAlias, cast

from chains.base import KeyIndex

# At most this many keys are kept in a plain dict; beyond it, CompactKeys. Measured on the 2-core reference
# machine: a dict builds in 0.2 instead of 1.5 us/key and answers a miss in ~35 instead of ~200 ns, a hit
# in ~45 ns instead of ~1.4 us; at 100,000 keys it costs ~14 MB instead of ~2.4 MB, noise next to the
# interpreter's ~60 MB. Past that the dict's ~120-143 B/key dominate (1.3 GB at 10,000,000).
COMPACT_ABOVE = 100_000

_SECRET_BYTES = 16
# A fingerprint is its two halves as native 64-bit integers: what array("Q").frombytes appends while
# building, and what a lookup unpacks. The high half is the sorted one.
_HALVES = cast(Callable[[bytes], tuple[int, int]], struct.Struct("=QQ").unpack)
_BITS_PER_KEY = 16  # at least: the bitmap has the next power of two of 16 * n bits
# Ranges of fingerprints: about n / 1024 of them (600 to 1,200 entries each), at most 2^14 (16,384).
_MAX_RANGE_BITS = 14
# Ranges for a count not known in advance (the store's): 4,096, ~2,400 entries each at 10,000,000 keys.
_UNKNOWN_COUNT = 4_000_000
_M32 = (1 << 32) - 1


class DuplicateKey(ValueError):
    """A key was given twice (or two keys share a 128-bit fingerprint): the index would be ambiguous."""


def build_index(pairs: Iterable[tuple[bytes, int]], compact_above: int = COMPACT_ABOVE) -> KeyIndex:
    """The index of `pairs` (watch key, watch id): a dict up to `compact_above` keys, else CompactKeys."""
    builder = IndexBuilder(compact_above, len(pairs) if isinstance(pairs, Sized) else 0)
    for key, watch_id in pairs:
        builder.add(key, watch_id)
    return builder.finish()


class CompactKeys:
    """An immutable watch key -> watch id index that keeps 128-bit fingerprints instead of the keys.

    It answers `get`, `in`, `[]` and `len` like a dict; it cannot list its keys (it does not have them),
    so it is a `KeyIndex`, not a Mapping. Built by `IndexBuilder` (or `build_index`), never pickled.

    The fingerprints live in ranges by the top bits of their high half (~1,000 entries each at 1,000,000
    keys, ~2,400 at 10,000,000 loaded by the store); each range holds its sorted high halves, their low
    halves and their ids in three arrays, made from the builder's range of the same bits one at a time.
    """

    __slots__ = ("_bitmap", "_bitmap_mask", "_count", "_ranges", "_secret", "_shift")

    def __init__(
        self, secret: bytes, ranges: list[_Range | None], shift: int, bitmap: bytearray, count: int
    ) -> None:
        self._secret = secret
        self._ranges = ranges
        self._shift = shift
        self._bitmap = bitmap
        self._bitmap_mask = len(bitmap) * 8 - 1
        self._count = count

    def get(self, key: bytes, /) -> int | None:
        h = hash(key) & self._bitmap_mask
        if not self._bitmap[h >> 3] >> (h & 7) & 1:
            return None
        high, low = _HALVES(blake2b(key, digest_size=16, key=self._secret).digest())
        found = self._ranges[high >> self._shift]
        if found is None:
            return None
        highs, lows, ids = found
        i = bisect_left(highs, high)
        # Distinct keys may share the high half (2^-64 a pair): every entry with it is compared.
        while i < len(highs) and highs[i] == high:
            if lows[i] == low:
                return ids[i]
            i += 1
        return None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        # The bitmap test of `get`, repeated here so that most misses cost no second call (bytes cache
        # their hash: `get` does not compute it again).
        h = hash(key) & self._bitmap_mask
        return bool(self._bitmap[h >> 3] >> (h & 7) & 1) and self.get(key) is not None

    def __getitem__(self, key: bytes) -> int:
        watch_id = self.get(key)
        if watch_id is None:
            raise KeyError(key)
        return watch_id

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"CompactKeys({len(self):,} keys)"

    def __reduce__(self) -> NoReturn:
        # The bitmap depends on this process's hash seed: in another process it would miss watched keys.
        raise TypeError("CompactKeys is valid only in the process that built it and cannot be pickled")

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and the bitmap (what the index costs beyond the array objects)."""
        arrays = (a for found in self._ranges if found is not None for a in found)
        return sum(a.itemsize * len(a) for a in arrays) + len(self._bitmap) + 8 * len(self._ranges)


# One range of fingerprints: high halves (sorted), low halves, ids.
_Range: TypeAlias = "tuple[array[int], array[int], array[int]]"
# The same while building: both halves interleaved in arrival order, ids, the keys' hash() (low 32 bits:
# enough to index any bitmap up to 2^32 bits, that is up to 268,435,456 keys).
_Filling: TypeAlias = "tuple[array[int], array[int], array[int]]"


class IndexBuilder:
    """Collects (watch key, watch id) one at a time and finishes into the smaller fitting KeyIndex.

    Up to `compact_above` keys they sit in a dict; past that they go into ranges of fingerprints (28
    B/key while building). `expected` (how many keys are coming, if known) only sets the number of
    ranges: a wrong one makes lookups slower, never wrong. The bitmap is sized at the end, from the count.
    """

    def __init__(self, compact_above: int = COMPACT_ABOVE, expected: int = 0) -> None:
        """`compact_above` 0: always CompactKeys (even empty)."""
        self._compact_above = compact_above
        self._secret = os.urandom(_SECRET_BYTES)
        self._small: dict[bytes, int] | None = {}
        self._count = 0
        self._ranges: list[_Filling | None] = []
        self._shift = 64
        self._expected = expected
        self._max_id = 0
        self._min_id = 0
        if compact_above <= 0:
            self._go_compact()

    def add(self, key: bytes, watch_id: int) -> None:
        if self._small is not None:
            self._add_small(key, watch_id)
            return
        # The compact form inline: this runs for each of millions of rows at the daemon's start.
        digest = blake2b(key, digest_size=16, key=self._secret).digest()
        high = _HALVES(digest)[0]
        found = self._ranges[high >> self._shift]
        if found is None:
            found = self._ranges[high >> self._shift] = (array("Q"), array("q"), array("I"))
        found[0].frombytes(digest)  # high and low half
        found[1].append(watch_id)
        found[2].append(hash(key) & _M32)
        self._count += 1
        if watch_id > self._max_id:
            self._max_id = watch_id
        elif watch_id < self._min_id:
            self._min_id = watch_id

    def __len__(self) -> int:
        """Keys added so far."""
        return len(self._small) if self._small is not None else self._count

    def finish(self) -> KeyIndex:
        """The index; the builder is spent (its arrays are handed over)."""
        if self._small is not None:
            small, self._small = self._small, None
            return small
        return self._finish_compact()

    def _add_small(self, key: bytes, watch_id: int) -> None:
        small = self._small
        assert small is not None
        if key in small:
            raise DuplicateKey(f"watch key {key.hex()} is given twice")
        small[key] = watch_id
        if len(small) > self._compact_above:
            self._go_compact()
            for moved_key, moved_id in small.items():
                self.add(moved_key, moved_id)

    def _go_compact(self) -> None:
        self._small = None
        expected = self._expected or _UNKNOWN_COUNT
        bits = max(0, min(expected.bit_length() - 10, _MAX_RANGE_BITS))
        self._shift = 64 - bits
        self._ranges = [None] * (1 << bits)

    def _finish_compact(self) -> CompactKeys:
        # Address ids are SQLite rowids: 4 bytes each while they fit (id_offset may push them past that).
        id_type = "I" if self._min_id >= 0 and self._max_id <= _M32 else "q"
        # At most 2^32 bits: the hashes kept above are 32 bits (past 268,435,456 keys, more false positives).
        bitmap_bits = min(max(64, 1 << (_BITS_PER_KEY * self._count - 1).bit_length()), 1 << 32)
        bitmap = bytearray(bitmap_bits // 8)
        mask = len(bitmap) * 8 - 1
        # Fewer ranges than while building when fewer keys came than the ranges were made for (~1,000
        # keys a range): adjacent building ranges (same top bits) merge into one.
        building_bits = 64 - self._shift
        bits = max(0, min(self._count.bit_length() - 10, building_bits))
        merged = building_bits - bits
        ranges: list[_Range | None] = [None] * (1 << bits)
        for r in range(len(ranges)):
            group = [found for found in self._ranges[r << merged : (r + 1) << merged] if found is not None]
            if not group:
                continue
            self._ranges[r << merged : (r + 1) << merged] = [None] * (1 << merged)
            for found in group:
                for h in found[2]:
                    h &= mask
                    bitmap[h >> 3] |= 1 << (h & 7)
            # Range by range: the sorted arrays replace the building ones (exact size, 20 B/key) while
            # the transient list of rows is one range's, not all n.
            rows = sorted(row for f in group for row in zip(f[0][0::2], f[0][1::2], f[1], strict=True))
            del group
            for i in range(1, len(rows)):
                if rows[i][:2] == rows[i - 1][:2]:
                    raise DuplicateKey("two watch keys share a fingerprint (a key given twice)")
            ranges[r] = (
                array("Q", [row[0] for row in rows]),
                array("Q", [row[1] for row in rows]),
                array(id_type, [row[2] for row in rows]),
            )
        self._ranges = []
        return CompactKeys(self._secret, ranges, 64 - bits, bitmap, self._count)


class GrowingIndex:
    """A built index that takes new keys while adapters use it: the base (a CompactKeys, which cannot
    change) and a dict of the keys added since it was built. Lookups see an added key at once, even in a
    scan already under way: a scan that matches after the key was added sees it."""

    __slots__ = ("added", "base")

    def __init__(self, base: KeyIndex) -> None:
        self.base = base
        self.added: dict[bytes, int] = {}

    def get(self, key: bytes, /) -> int | None:
        found = self.added.get(key)
        return found if found is not None else self.base.get(key)

    def __contains__(self, key: object, /) -> bool:
        return key in self.added or key in self.base

    def __len__(self) -> int:
        return len(self.base) + len(self.added)

    def add(self, key: bytes, watch_id: int) -> None:
        self.added[key] = watch_id


def growable(index: KeyIndex) -> dict[bytes, int] | GrowingIndex:
    """An index that keys can be added to in place: a dict is one already (lookups stay a plain dict's)."""
    if isinstance(index, dict):
        return index
    return GrowingIndex(index)
