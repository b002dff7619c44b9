"""The watched keys of one currency as adapters look them up: a plain dict, or `CompactKeys` when many.

An adapter matches every output script (Bitcoin) or `to` address (EVM) it walks against the watched keys
(`chains.base.KeyIndex`: `get`, `in`, `len`). A dict of bytes keys costs about 143 B of RSS per address:
1.4 GB at 10,000,000 addresses, the whole memory budget of the daemon. `CompactKeys` keeps no key at all,
only a 128-bit fingerprint and the watch id: about 24 B per address (see bench/README.md for figures).

How `CompactKeys` finds a key:

1. A bitmap of 16 to 32 bits per key, indexed by Python's `hash(key)` (SipHash, computed in C): most
   output scripts and addresses of a block are not watched and stop here at almost the cost of a dict
   lookup. Equal bytes have equal hashes in one process, so this filter never drops a watched key; a
   false positive (at most ~6%) only costs step 2. Because `hash` is seeded per process, an index is
   used only in the process that built it: it refuses to be pickled.
2. The key's fingerprint: BLAKE2b-128 keyed with 16 random bytes drawn for this index. Its high 64 bits
   are looked up by bisection in a sorted `array('Q')`; the low 64 bits and the id sit in parallel arrays.

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
fingerprints: entries go to arrays per range of fingerprints (1/256 of the space each) as they stream
in, and each range is sorted on its own when the index is finished.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from hashlib import blake2b
from typing import NoReturn

from chains.base import KeyIndex

# At most this many keys are kept in a plain dict (143 B/key: 14 MB); beyond it, CompactKeys (~24 B/key).
# Measured on the reference machine (bench/README.md): below this a dict builds ~4x faster and matches
# ~1.5x faster, and the memory it costs is noise next to the interpreter's own ~40 MB.
COMPACT_ABOVE = 100_000

_SECRET_BYTES = 16
# A fingerprint is its two halves as native 64-bit integers: what array("Q").frombytes appends while
# building, and what a lookup unpacks. The high half is the sorted one.
_HALVES = struct.Struct("=QQ").unpack
# While building, one range of fingerprints per value of the high half's top byte (256 ranges).
_TOP_BYTE = 7 if sys.byteorder == "little" else 0
_BUCKETS = 256
_BITS_PER_KEY = 16  # at least: the bitmap has the next power of two of 16 * n bits
_MAX_U32 = (1 << 32) - 1


class DuplicateKey(ValueError):
    """A key was given twice (or two keys share a 128-bit fingerprint): the index would be ambiguous."""


def build_index(pairs: Iterable[tuple[bytes, int]], compact_above: int = COMPACT_ABOVE) -> KeyIndex:
    """The index of `pairs` (watch key, watch id): a dict up to `compact_above` keys, else CompactKeys."""
    builder = IndexBuilder(compact_above)
    for key, watch_id in pairs:
        builder.add(key, watch_id)
    return builder.finish()


class CompactKeys:
    """An immutable watch key -> watch id index that keeps 128-bit fingerprints instead of the keys.

    It answers `get`, `in`, `[]` and `len` like a dict; it cannot list its keys (it does not have them),
    so it is a `KeyIndex`, not a Mapping. Built by `IndexBuilder` (or `build_index`), never pickled.
    """

    __slots__ = ("_bitmap", "_bitmap_mask", "_high", "_ids", "_low", "_secret", "_shift", "_starts")

    def __init__(
        self, secret: bytes, high: array[int], low: array[int], ids: array[int], bitmap: bytearray
    ) -> None:
        self._secret = secret
        self._high = high  # sorted
        self._low = low
        self._ids = ids
        self._bitmap = bitmap
        self._bitmap_mask = len(bitmap) * 8 - 1
        # A directory by the top bits of `high`: bisection runs over ~8-16 entries instead of all n
        # (a hit costs ~1 us instead of ~2 at 1,000,000 keys).
        bits = max(0, min(len(high).bit_length() - 4, 24))
        self._shift = 64 - bits
        self._starts = _directory(high, bits)

    def get(self, key: bytes, /) -> int | None:
        h = hash(key) & self._bitmap_mask
        if not self._bitmap[h >> 3] >> (h & 7) & 1:
            return None
        high, low = _HALVES(blake2b(key, digest_size=16, key=self._secret).digest())
        highs = self._high
        slot = high >> self._shift
        end = self._starts[slot + 1]
        i = bisect_left(highs, high, self._starts[slot], end)
        # Distinct keys may share the high half (2^-64 a pair): every entry with it is compared.
        while i < end and highs[i] == high:
            if self._low[i] == low:
                return self._ids[i]
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
        return len(self._high)

    def __repr__(self) -> str:
        return f"CompactKeys({len(self):,} keys)"

    def __reduce__(self) -> NoReturn:
        # The bitmap depends on this process's hash seed: in another process it would miss watched keys.
        raise TypeError("CompactKeys is valid only in the process that built it and cannot be pickled")

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and the bitmap (what the index costs beyond a few small objects)."""
        arrays = (self._high, self._low, self._ids, self._starts)
        return sum(a.itemsize * len(a) for a in arrays) + len(self._bitmap)


def _directory(high: array[int], bits: int) -> array[int]:
    """starts[j]: the first position in sorted `high` whose top `bits` bits are >= j; starts[2^bits] = n."""
    shift = 64 - bits
    starts = array("I" if len(high) <= _MAX_U32 else "Q", [0]) * ((1 << bits) + 1)
    i = 0
    for j in range(1, 1 << bits):
        starts[j] = i = bisect_left(high, j << shift, i)
    starts[-1] = len(high)
    return starts


class IndexBuilder:
    """Collects (watch key, watch id) one at a time and finishes into the smaller fitting KeyIndex.

    Up to `compact_above` keys they sit in a dict; past that they move into per-range arrays of
    fingerprints (32 B/key while building: both halves, id, Python hash) and the dict is dropped.
    """

    def __init__(self, compact_above: int = COMPACT_ABOVE) -> None:
        """`compact_above` 0: always CompactKeys (even empty)."""
        self._compact_above = compact_above
        self._secret = os.urandom(_SECRET_BYTES)
        self._small: dict[bytes, int] | None = {} if compact_above > 0 else None
        self._buckets: list[tuple[array[int], array[int], array[int]] | None] = (
            [] if compact_above > 0 else [None] * _BUCKETS
        )
        self._count = 0
        self._max_id = 0
        self._min_id = 0

    def add(self, key: bytes, watch_id: int) -> None:
        if self._small is not None:
            self._add_small(key, watch_id)
            return
        # The compact form inline: this runs for each of millions of rows at the daemon's start.
        digest = blake2b(key, digest_size=16, key=self._secret).digest()
        bucket = self._buckets[digest[_TOP_BYTE]]
        if bucket is None:
            bucket = self._buckets[digest[_TOP_BYTE]] = (array("Q"), array("q"), array("q"))
        bucket[0].frombytes(digest)  # high and low half
        bucket[1].append(watch_id)
        bucket[2].append(hash(key))
        self._count += 1
        if watch_id > self._max_id:
            self._max_id = watch_id
        elif watch_id < self._min_id:
            self._min_id = watch_id

    def finish(self) -> KeyIndex:
        """The index; the builder is spent (its arrays are handed over or freed)."""
        if self._small is not None:
            small, self._small = self._small, None
            return small
        return self._finish_compact()

    # ------------------------------------------------------------------------------- compact form

    def _add_small(self, key: bytes, watch_id: int) -> None:
        small = self._small
        assert small is not None
        if key in small:
            raise DuplicateKey(f"watch key {key.hex()} is given twice")
        small[key] = watch_id
        if len(small) > self._compact_above:
            self._small = None
            self._buckets = [None] * _BUCKETS
            for moved_key, moved_id in small.items():
                self.add(moved_key, moved_id)

    def _finish_compact(self) -> CompactKeys:
        # Address ids are SQLite rowids: 4 bytes each while they fit (id_offset may push them past that).
        ids = array("I" if self._min_id >= 0 and self._max_id <= _MAX_U32 else "q")
        high, low = array("Q"), array("Q")
        bitmap = bytearray(max(8, 1 << (_BITS_PER_KEY * self._count - 1).bit_length()) // 8)
        mask = len(bitmap) * 8 - 1
        for b, bucket in enumerate(self._buckets):
            if bucket is None:
                continue
            # Range by range, in fingerprint order: the finished arrays grow as the ranges are freed, so
            # the peak stays near the 32 B/key of the ranges (not ranges + finished arrays, 52 B/key).
            self._buckets[b] = None
            halves = bucket[0]
            rows = sorted(zip(halves[0::2], halves[1::2], bucket[1], strict=True))
            for i in range(1, len(rows)):
                if rows[i][:2] == rows[i - 1][:2]:
                    raise DuplicateKey("two watch keys share a fingerprint (a key given twice)")
            high += array("Q", [r[0] for r in rows])
            low += array("Q", [r[1] for r in rows])
            ids += array(ids.typecode, [r[2] for r in rows])
            for h in bucket[2]:
                h &= mask
                bitmap[h >> 3] |= 1 << (h & 7)
        self._buckets = []
        return CompactKeys(self._secret, high, low, ids, bitmap)
