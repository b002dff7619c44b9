"""The watched keys of one currency as adapters look them up: a plain dict, or `CompactKeys` when many.

An adapter matches every output script (Bitcoin) or `to` address (EVM) it walks against the watched keys
(`chains.base.KeyIndex`: `get`, `in`, `len`). A dict of bytes keys costs 130-143 B of RSS per address:
1.3 GB at 10,000,000 addresses, nearly the whole memory budget of the daemon. `CompactKeys` keeps no
key at all, only a 128-bit fingerprint and the watch id: about 24 B per address (bench/README.md).

How `CompactKeys` finds a key:

1. A bitmap of 16 to 32 bits per key, indexed by the key's CRC-32 (`zlib.crc32`, computed in C once a
   lookup): most output scripts and addresses of a block are not watched and stop here at about the
   cost of a dict lookup. Equal bytes have equal CRCs in every process, so this filter never drops a
   watched key, and a helper process can build its part of a load's bitmap (watcher/watchload.py: the
   start-up on two cores; Python's `hash` is seeded per process, so it could not). A false positive
   (at most ~6% for keys not aimed at the bitmap; CRC-32 spreads Bitcoin scripts' fixed prefixes and
   suffixes as well as random EVM addresses) only costs step 2. The CRC is not secret, so an attacker
   can make outputs that pass the bitmap (only ~1 in 16 bits is set, and aiming needs a guess at which):
   each costs us one keyed BLAKE2b and a bisection (~1.5 us instead of ~0.1), a full block of them a
   few tens of ms; it cannot make one match, which only step 2 decides. The sets built by one load share
   one bitmap (of all their keys, 16 bits each): a set's false positives depend only on the share of
   bits set, the same as with a bitmap of its own.
2. The key's fingerprint: BLAKE2b-128 keyed with 16 random bytes drawn for the build (one load's sets
   share it: each set's keys are still hashed under a secret they could not know). The high and low
   halves (big-endian) and the ids are three parallel arrays sorted by fingerprint; the top bits of the
   high half pick a slice of ~600 to 1,200 entries (`starts`), where the high half is found by bisection.
   An index is never pickled: the secret is written nowhere (a load's helper process is handed it
   through a pipe, never a file).

Why a fingerprint match is enough to credit a deposit (money depends on it). For keys chosen without
knowledge of the secret BLAKE2b key, the fingerprints of distinct keys are independent and uniform, so
one lookup of an unwatched key matches one of n watched fingerprints with probability at most n/2^128:
2.9e-32 at n = 10,000,000. A daemon looking up 100,000 keys a second for ten years (3e13 lookups)
misattributes a payment with probability below 1e-18, far below the rate of undetected memory or disk
errors that bound a dict's correctness just as well. An attacker cannot search for a script colliding
with a customer's: the key never leaves this process and changes at every load, so each try would be an
on-chain payment that succeeds with probability n/2^128. The bitmap does not enter this argument: it
only turns keys away, and never a watched one. Hence hits are not confirmed against the store.

Two watched keys with the same fingerprint (probability n^2/2^129, 1.5e-25 at 10,000,000) cannot be told
from a key given twice, so both are refused: building raises `DuplicateKey` rather than let one address
receive the other's payments; the next build draws another secret. Duplicates are refused in the dict
form too, so both forms agree; the store never hands out one (UNIQUE (currency, watch_key)).

`IndexBuilder` picks the form: a dict up to `COMPACT_ABOVE` keys (where the dict's extra memory is a few
MB and its build is faster), `CompactKeys` beyond. `CompactBuilder` builds the sets of many groups (the
store's (chain, currency)) in one pass and without a Python statement per key: the daemon's start-up is
this build for every watched address (issue 10: 10,000,000 within 60 s). Fingerprints, records and
hashes are made by C-level `map`s over pages of keys; records (fingerprint and id: 24 B) go to their
group's list, are sorted a chunk at a time and cut into packed runs by top byte, plus 4 B/key of
CRC-32; `finish` merges one building range at a time into the table (24 B/key), so the transient is one
range's objects, never a second copy of everything. A load on two processes (watcher/watchload.py) is two
builders of one secret: each builds its bitmap (`bitmap`, at the size of the whole load; ORed by
`or_into`) and hands the other its runs of half the building ranges (`take_runs`, `absorb`); each merges
its half (`merge`, refusing a key given to each builder like any key given twice), and `finish` builds
the tables from both merges, in order (a part out of order is refused: a table out of order would miss
keys).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import sys
import zlib
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Sequence
from functools import partial
from hashlib import blake2b
from itertools import islice, repeat
from operator import itemgetter
from typing import Generic, NoReturn, TypeVar, cast

from chains.base import KeyIndex

# At most this many keys are kept in a plain dict; beyond it, CompactKeys. Measured on the 2-core reference
# machine: a dict builds in 0.2 instead of 1.5 us/key and answers a miss in ~35 instead of ~200 ns, a hit
# in ~45 ns instead of ~1.4 us; at 100,000 keys it costs ~14 MB instead of ~2.4 MB, noise next to the
# interpreter's ~60 MB. Past that the dict's ~120-143 B/key dominate (1.3 GB at 10,000,000).
COMPACT_ABOVE = 100_000

_SECRET_BYTES = 16
# A fingerprint is its two halves as big-endian 64-bit integers: so the order of fingerprint bytes (how
# the builder sorts them) is the order of their high halves (how a lookup bisects them).
_HALVES = cast(Callable[[bytes], tuple[int, int]], struct.Struct(">QQ").unpack)
_BITS_PER_KEY = 16  # at least: the bitmap has the next power of two of 16 * n bits
# Lookup ranges (slices of the sorted arrays found by the top bits of the high half): about n / 1024 of
# them (600 to 1,200 entries each), at most 2^14 (16,384; ~600 entries at 10,000,000 keys).
_MAX_RANGE_BITS = 14
# The bitmap's index of a key: a CRC-32 (C speed, the same in every process, unlike the seeded `hash`,
# so that a process of its own can build part of a load).
_crc32 = zlib.crc32
_OR_BYTES = 1 << 20  # bitmaps are ORed this many bytes at a time (`or_into`)

# While building, a key is one record: its fingerprint and its id (8 bytes, signed), both big-endian, so
# that records sort by fingerprint and their join, read as native 64-bit words and byte-swapped, is the
# table of (high, low, id) triples CompactKeys keeps.
_RECORD_BYTES = 24
_FP = slice(0, 16)
_ID_BYTES = 8
_SIGNED_ID_BYTES = partial(int.to_bytes, length=_ID_BYTES, byteorder="big", signed=True)
# Records are sorted this many at a time, then cut into their group's building ranges (by the top byte of
# the fingerprint: 256 of them) and packed: 24 B/key while building, plus one chunk's objects (~20 MB).
_CHUNK = 1 << 18
BUILD_RANGES = 256
_TRIM_EVERY = 16  # building ranges merged between two calls of `_give_back_freed_memory`
# Keys handed to the fingerprinting at once by `IndexBuilder.add` (one key at a time).
_BATCH = 8192

# What CompactBuilder groups keys by (the store's (chain, currency)).
Group = TypeVar("Group", bound=Hashable)


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
    so it is a `KeyIndex`, not a Mapping. Built by `CompactBuilder` (or `IndexBuilder`, `build_index`),
    never pickled.

    One array of (high half, low half, id) triples sorted by fingerprint (24 B/key), seen through three
    strided views; `starts` cuts it into slices by the top bits of the high half, so a lookup bisects
    ~1,000 entries, not all n.
    """

    __slots__ = (
        "_bitmap",
        "_bitmap_mask",
        "_count",
        "_highs",
        "_ids",
        "_lows",
        "_secret",
        "_shift",
        "_starts",
        "_table",
    )

    def __init__(
        self, secret: bytes, table: array[int], starts: array[int], shift: int, bitmap: bytearray
    ) -> None:
        self._secret = secret
        self._table = table
        words = memoryview(table)
        self._highs, self._lows = words[0::3], words[1::3]
        self._ids = words.cast("B").cast("q")[2::3]
        self._starts = starts
        self._shift = shift
        self._bitmap = bitmap
        self._bitmap_mask = len(bitmap) * 8 - 1
        self._count = len(self._highs)

    def get(self, key: bytes, /) -> int | None:
        h = _crc32(key) & self._bitmap_mask
        if not self._bitmap[h >> 3] >> (h & 7) & 1:
            return None
        return self._find(key)

    def _find(self, key: bytes) -> int | None:
        """The id of a key that passed the bitmap, by its fingerprint."""
        high, low = _HALVES(blake2b(key, digest_size=16, key=self._secret).digest())
        r = high >> self._shift
        highs, end = self._highs, self._starts[r + 1]
        i = bisect_left(highs, high, self._starts[r], end)
        # Distinct keys may share the high half (2^-64 a pair): every entry with it is compared.
        while i < end and highs[i] == high:
            if self._lows[i] == low:
                return self._ids[i]
            i += 1
        return None

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        # The bitmap test of `get`, here so that most misses cost no second call, and a crc32 (not cached
        # by the key as `hash` is) is computed once.
        h = _crc32(key) & self._bitmap_mask
        return bool(self._bitmap[h >> 3] >> (h & 7) & 1) and self._find(key) is not None

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
        # It holds the secret of its fingerprints, which must not be written anywhere (module docstring):
        # a load's helper process is handed the secret itself, never a pickled index.
        raise TypeError("CompactKeys holds the secret of its fingerprints and cannot be pickled")

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and the bitmap (the bitmap may be shared with other sets of a load)."""
        arrays = (self._table, self._starts)
        return sum(a.itemsize * len(a) for a in arrays) + len(self._bitmap)


class CompactBuilder(Generic[Group]):
    """Builds the CompactKeys of several groups (the store's (chain, currency)) from batches of rows.

    Every step per key runs inside C-level `map`s and sorts, never as a Python statement per key: the
    daemon starts with millions of keys (issue 10: 10,000,000 within 60 s). A batch's fingerprints are
    keyed BLAKE2b (one secret for the build, shared by its groups), followed by their id and appended to
    their group's pending records; `_CHUNK` records at a time, each group's are sorted and cut by top byte
    into packed runs. `finish` merges the runs of one building range at a time (the transient is one
    range's objects, never n) into each group's table. One bitmap of CRC-32s serves all groups.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        """`secret`: the fingerprints' key, given to build part of a load elsewhere (a random one if None)."""
        self._secret = os.urandom(_SECRET_BYTES) if secret is None else secret
        self._hasher = blake2b(digest_size=16, key=self._secret)
        self._codes: dict[Group, int] = {}
        self._pending: list[list[bytes]] = []  # by code: records not yet sorted
        self._pending_count = 0
        self._hashes = array("I")
        self._runs: list[list[list[bytes]]] = []  # by code, then building range: packed sorted runs
        self._counts: list[int] = []  # by code
        self._absorbed = False  # keys of another builder taken (`absorb`): their bitmap is not here

    def code(self, group: Group) -> int:
        """The code that `add_batch` takes for the keys of `group` (a new one the first time)."""
        code = self._codes.get(group)
        if code is None:
            code = self._codes[group] = len(self._codes)
            self._pending.append([])
            self._runs.append([[] for _ in range(BUILD_RANGES)])
            self._counts.append(0)
        return code

    def add_batch(self, codes: Iterable[int], keys: Sequence[bytes], ids: Sequence[int]) -> None:
        """Keys with their groups' codes (`code`) and their ids, the three in step."""
        states = list(map(blake2b.copy, repeat(self._hasher, len(keys))))
        deque(map(blake2b.update, states, keys), 0)  # the keyed state copied: one compression a key
        records = map(bytes.__add__, map(blake2b.digest, states), _id_bytes(ids))
        # Each record appended to its group's list: looked up and called in C, as everything here.
        deque(map(list.append, map(self._pending.__getitem__, codes), records), 0)
        del states
        self._hashes.extend(map(_crc32, keys))
        self._pending_count += len(keys)
        if self._pending_count >= _CHUNK:
            self._cut()

    def __len__(self) -> int:
        return len(self._hashes)

    def counts(self) -> dict[Group, int]:
        """Keys added so far per group that has any."""
        self._cut()
        return {group: self._counts[code] for group, code in self._codes.items() if self._counts[code]}

    @property
    def secret(self) -> bytes:
        return self._secret

    def total(self) -> int:
        """Keys added so far, and absorbed (`absorb`)."""
        self._cut()
        return sum(self._counts)

    def code_counts(self) -> list[int]:
        """Keys added so far per code (`code`), for another builder's `absorb`."""
        self._cut()
        return list(self._counts)

    def bitmap(self, bits: int) -> bytearray:
        """The bitmap of the keys added here, of `bits` bits (`bitmap_bits`)."""
        return _bitmap(self._hashes, bits)

    def take_runs(self, ranges: range = range(BUILD_RANGES)) -> Iterator[bytes]:
        """The sorted runs of each code's building ranges in `ranges`, code by code, each range's runs
        joined into one bytes (possibly empty) and released as given: for another builder's `absorb`."""
        self._cut()
        for by_code in self._runs:
            for r in ranges:
                packed, by_code[r] = by_code[r], []
                yield b"".join(packed)

    def run_count(self, ranges: range = range(BUILD_RANGES)) -> int:
        """How many runs `take_runs` gives and `absorb` takes: one a building range of each code."""
        return len(self._runs) * len(ranges)

    def absorb(
        self, counts: Sequence[int], runs: Sequence[bytes], ranges: range = range(BUILD_RANGES)
    ) -> None:
        """Take the keys of another builder of the same groups' codes and secret (its `code_counts` and
        `take_runs` of `ranges`; counts of 0 when that builder's counts are already here); their bitmap
        is that builder's, given to `finish`. A key given to both builders is refused (`finish`,
        `merge`) like any key given twice."""
        if len(counts) != len(self._counts) or len(runs) != self.run_count(ranges):
            raise ValueError(f"absorbing {len(counts)} groups, {len(runs)} runs into {len(self._counts)}")
        self._cut()
        targets = (by_code[r] for by_code in self._runs for r in ranges)
        deque(map(list.append, targets, runs), 0)
        self._counts = list(map(int.__add__, self._counts, counts))
        self._absorbed = True

    def merge(self, ranges: range, skip: Collection[Group] = ()) -> list[list[bytes]]:
        """Per code, its building ranges in `ranges` that hold records, each merged (sorted, checked for
        duplicates), in order (none for a group in `skip`): for `finish` (`merged`) here or in another
        builder (which then must hold none of those ranges). Their runs are released."""
        self._cut()
        merged: list[list[bytes]] = []
        for group, code in self._codes.items():
            by_code, parts = self._runs[code], []
            for r in ranges:
                packed, by_code[r] = by_code[r], []
                if packed and group not in skip:
                    parts.append(_merged(packed))
            merged.append(parts)
            _give_back_freed_memory()
        return merged

    def finish(
        self,
        skip: Collection[Group] = (),
        bitmap: bytearray | None = None,
        merged: Sequence[list[bytes]] | None = None,
    ) -> dict[Group, CompactKeys]:
        """The CompactKeys of every group with keys and not in `skip`; the builder is spent. `bitmap`:
        the bitmap of every key (`bitmap_bits(total())` bits), when built elsewhere in parts (`or_into`).
        `merged`: per code, the records of building ranges above those held here, merged (`merge`, here
        or by another builder), in order: appended to each table as they are, each released once used."""
        self._cut()
        bits = bitmap_bits(sum(self._counts))
        if bitmap is None:
            if self._absorbed:  # the bitmap of these keys alone would turn the absorbed ones away
                raise ValueError("a builder that absorbed keys needs the bitmap of all of them")
            bitmap = _bitmap(self._hashes, bits)
        elif len(bitmap) * 8 != bits:
            raise ValueError(f"a bitmap of {len(bitmap) * 8} bits for {sum(self._counts)} keys ({bits})")
        self._hashes = array("I")
        built: dict[Group, CompactKeys] = {}
        for group, code in self._codes.items():
            runs, self._runs[code] = self._runs[code], []
            tails = merged[code] if merged is not None else []
            if self._counts[code] and group not in skip:
                built[group] = _compact(self._secret, runs, bitmap, tails)
        return built

    def _cut(self) -> None:
        """Sort each group's pending records and move them, packed, into its building ranges."""
        for code, records in enumerate(self._pending):
            if not records:
                continue
            self._pending[code] = []
            records.sort()
            self._counts[code] += len(records)
            ranges, start = self._runs[code], 0
            for top in range(1, BUILD_RANGES + 1):  # the top byte of the next range's fingerprints
                cut = bisect_left(records, bytes((top,)), start) if top < BUILD_RANGES else len(records)
                if cut > start:
                    ranges[top - 1].append(b"".join(records[start:cut]))
                    start = cut
        self._pending_count = 0


def _id_bytes(ids: Sequence[int]) -> Iterable[bytes]:
    """Each id as 8 big-endian bytes. Positional arguments are ~3x faster than the keyword `signed`
    (which a negative id, never a SQLite-assigned one, needs)."""
    if min(ids, default=0) >= 0:
        return map(int.to_bytes, ids, repeat(_ID_BYTES))  # length, then byteorder "big" by default
    return map(_SIGNED_ID_BYTES, ids)


def bitmap_bits(count: int) -> int:
    """The bits of the bitmap of `count` keys: the next power of two of 16 a key, at least 64."""
    # At most 2^32 bits: the hashes kept are 32 bits (past 268,435,456 keys, more false positives).
    return min(max(64, 1 << (_BITS_PER_KEY * count - 1).bit_length()), 1 << 32)


def or_into(bitmap: bytearray, other: bytes) -> None:
    """`bitmap` |= `other` (two bitmaps of the same size), as two big integers: in C."""
    if len(bitmap) != len(other):
        raise ValueError(f"bitmaps of {len(bitmap)} and {len(other)} bytes")
    for at in range(0, len(bitmap), _OR_BYTES):  # a slice at a time: a transient of 3 slices, not 3 bitmaps
        end = min(at + _OR_BYTES, len(bitmap))
        ored = int.from_bytes(bitmap[at:end], "little") | int.from_bytes(other[at:end], "little")
        bitmap[at:end] = ored.to_bytes(end - at, "little")


def _bitmap(hashes: array[int], bits: int) -> bytearray:
    bitmap = bytearray(bits // 8)
    mask = bits - 1
    for h in hashes:
        h &= mask
        bitmap[h >> 3] |= 1 << (h & 7)
    return bitmap


def _libc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call, nothing lost but RSS
        return None
    trim.argtypes = [ctypes.c_size_t]
    return cast(Callable[[int], int], trim)


_MALLOC_TRIM = _libc_trim()


def _give_back_freed_memory() -> None:
    """Return the pages of the runs merged so far to the OS. The runs (a few KB each) were allocated
    among blocks still in use, so glibc keeps their freed pages, and the arrays being built (large, mapped
    apart) never reuse them: without this the load's peak RSS held both (~60 instead of ~40 B/key)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _merged(packed: list[bytes]) -> bytes:
    """The records of one building range's runs, sorted and checked for duplicates (the range holds
    every record of its top byte: a key given twice is in one range)."""
    buf = b"".join(packed)
    packed.clear()
    cuts = range(0, len(buf) + 1, _RECORD_BYTES)
    records = sorted(map(buf.__getitem__, map(slice, cuts, islice(cuts, 1, None))))
    del buf
    fingerprints = list(map(itemgetter(_FP), records))
    if any(map(bytes.__eq__, fingerprints, islice(fingerprints, 1, None))):
        raise DuplicateKey("two watch keys share a fingerprint (a key given twice)")
    del fingerprints
    return b"".join(records)


def _compact(
    secret: bytes, runs: list[list[bytes]], bitmap: bytearray, tails: list[bytes] | None = None
) -> CompactKeys:
    """One group's CompactKeys from its building ranges' packed runs (each range sorted and checked for
    duplicates alone: its records are its fingerprints' top byte, so the ranges are in order), then
    `tails`, records of the ranges above them already merged (`CompactBuilder.merge`), in order."""
    table = array("Q")
    last = b""
    for r, packed in enumerate(runs):
        if not packed:
            continue
        if r % _TRIM_EVERY == _TRIM_EVERY - 1:
            _give_back_freed_memory()
        merged = _merged(packed)
        last = merged[-_RECORD_BYTES:]
        table.frombytes(merged)
        del merged
    tails = tails if tails is not None else []
    for i, tail in enumerate(tails):
        if not tail:
            continue
        # The table must stay sorted, or lookups would miss keys: each part must begin above the last.
        if last and tail[:_RECORD_BYTES] <= last:
            raise ValueError("records merged apart overlap the building ranges before them")
        last = tail[-_RECORD_BYTES:]
        table.frombytes(tail)
        tails[i] = tail = b""  # released as soon as copied
        if i % _TRIM_EVERY == _TRIM_EVERY - 1:
            _give_back_freed_memory()
    if sys.byteorder == "little":
        table.byteswap()  # the big-endian records as native words
    highs = memoryview(table)[0::3]
    bits = max(0, min(len(highs).bit_length() - 10, _MAX_RANGE_BITS))
    shift = 64 - bits
    starts = array("Q", (bisect_left(highs, r << shift) for r in range(1 << bits)))
    starts.append(len(highs))
    highs.release()
    return CompactKeys(secret, table, starts, shift, bitmap)


class IndexBuilder:
    """Collects (watch key, watch id) one at a time and finishes into the smaller fitting KeyIndex.

    Up to `compact_above` keys they sit in a dict; past that they go, `_BATCH` at a time, into a
    `CompactBuilder` of one group (28 B/key while building, 24 when built).
    """

    def __init__(self, compact_above: int = COMPACT_ABOVE) -> None:
        """`compact_above` 0: always CompactKeys (even empty)."""
        self._compact_above = compact_above
        self._small: dict[bytes, int] | None = {}
        self._compact: CompactBuilder[None] | None = None
        self._keys: list[bytes] = []
        self._ids: list[int] = []
        if compact_above <= 0:
            self._go_compact()

    def add(self, key: bytes, watch_id: int) -> None:
        if self._small is not None:
            self._add_small(key, watch_id)
            return
        self._keys.append(key)
        self._ids.append(watch_id)
        if len(self._keys) >= _BATCH:
            self._flush()

    def __len__(self) -> int:
        """Keys added so far."""
        if self._small is not None:
            return len(self._small)
        assert self._compact is not None
        return len(self._compact) + len(self._keys)

    def finish(self) -> KeyIndex:
        """The index; the builder is spent."""
        if self._small is not None:
            small, self._small = self._small, None
            return small
        assert self._compact is not None
        self._flush()
        built = self._compact.finish()
        return built[None] if None in built else _compact(os.urandom(_SECRET_BYTES), [], bytearray(8))

    def _add_small(self, key: bytes, watch_id: int) -> None:
        small = self._small
        assert small is not None
        if key in small:
            raise DuplicateKey(f"watch key {key.hex()} is given twice")
        small[key] = watch_id
        if len(small) > self._compact_above:
            self._go_compact()
            self._keys, self._ids = list(small), list(small.values())
            self._flush()

    def _go_compact(self) -> None:
        self._small = None
        self._compact = CompactBuilder[None]()

    def _flush(self) -> None:
        assert self._compact is not None
        if self._keys:
            self._compact.add_batch(repeat(self._compact.code(None)), self._keys, self._ids)
            self._keys, self._ids = [], []


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
