"""Walks raw Bitcoin blocks and transactions (`getblock HASH 0`, `getrawtransaction TXID 0`): pure, no I/O.

The walk steps over the serialised bytes and builds no object per transaction: for each input it only
looks at the 36-byte prevout (and only when outpoints are watched), for each output it looks the script
up in the watched scripts (a dict keyed by output script, see chains.bitcoin.address). Only a transaction
that pays a watched script or spends a watched outpoint is hashed and described. That is what makes a
1.5 MB block cost milliseconds instead of the ~140 ms of a full deserialisation (performance.md).

The txid is the double SHA-256 of the transaction WITHOUT its witness (BIP-144): for a segwit
transaction that is version + inputs + outputs + locktime, skipping the marker, flag and witnesses.
Hashing the bytes as they are would give the wtxid, which no explorer, wallet or RPC calls the txid.

Malformed data (truncated, trailing bytes, non-canonical sizes, an amount over 21M BTC) raises
ChainDataError: a walk that does not consume the bytes exactly never returns, so garbage never yields a
payment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from dataclasses import dataclass

from chains.base import ChainDataError, KeyIndex

HEADER_SIZE = 80
OUTPOINT_SIZE = 36
MAX_MONEY = 21_000_000 * 100_000_000
# Bitcoin Core refuses compact sizes above this (MAX_SIZE in serialize.h); it also ends garbage early.
MAX_COMPACT_SIZE = 0x02000000
# The smallest value each wide compact-size form may hold (canonical encoding).
_SMALLEST = {2: 0xFD, 4: 0x10000, 8: 0x100000000}
_NULL_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"  # a coinbase input spends nothing
_HEX64 = re.compile(r"[0-9a-fA-F]{64}").fullmatch
_DIGITS = re.compile(r"[0-9]{1,10}").fullmatch

Scripts = KeyIndex  # output script -> watch id (a dict or chains.watchset.CompactKeys)
Outpoints = Collection[bytes]  # raw 36-byte outpoints (txid little-endian + vout LE32)


@dataclass(frozen=True, slots=True)
class Payment:
    """An output paying a watched script."""

    txid: str
    vout: int
    value: int  # satoshi
    script: bytes
    watch_id: int
    inputs: tuple[str, ...]  # the transaction's outpoints "txid:vout", coinbase's null one left out


@dataclass(frozen=True, slots=True)
class OutpointSpend:
    """A transaction spending a watched outpoint."""

    outpoint: str
    txid: str


@dataclass(frozen=True, slots=True)
class BlockHeader:
    block_hash: str
    parent_hash: str


@dataclass(frozen=True, slots=True)
class BlockMatches:
    """What a block holds for the watcher, in block order."""

    header: BlockHeader
    tx_count: int
    payments: tuple[Payment, ...]
    spends: tuple[OutpointSpend, ...]


@dataclass(frozen=True, slots=True)
class TxMatches:
    """What one (mempool) transaction holds for the watcher, plus all its prevouts for bookkeeping."""

    txid: str
    payments: tuple[Payment, ...]
    prevouts: tuple[bytes, ...]


# ------------------------------------------------------------------------------------------ outpoints


def outpoint_key(outpoint: str) -> bytes:
    """The raw 36 bytes of "txid:vout" as a transaction input holds them; ValueError if malformed."""
    txid, sep, vout = outpoint.partition(":")
    # Strict: bytes.fromhex skips blanks (a short key) and str.isdigit() takes '²' (which int() refuses).
    if not sep or not _HEX64(txid) or not _DIGITS(vout) or int(vout) > 0xFFFFFFFF:
        raise ValueError(f"not an outpoint 'txid:vout': {outpoint!r:.100}")
    return bytes.fromhex(txid)[::-1] + int(vout).to_bytes(4, "little")


def outpoint_text(key: bytes) -> str:
    return f"{key[31::-1].hex()}:{int.from_bytes(key[32:36], 'little')}"


# ------------------------------------------------------------------------------------------ headers


def _hash_hex(digest: bytes) -> str:
    """Hashes are shown byte-reversed (as RPC and explorers show them)."""
    return digest[::-1].hex()


def _dsha256(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def parse_header(raw: bytes) -> BlockHeader:
    """Hash and parent hash of a block from its first 80 bytes."""
    if len(raw) < HEADER_SIZE:
        raise ChainDataError(f"block of {len(raw)} bytes is shorter than a header")
    return BlockHeader(_hash_hex(_dsha256(raw[:HEADER_SIZE])), _hash_hex(raw[4:36]))


# ------------------------------------------------------------------------------------------ walking


def _long_varint(raw: bytes, pos: int) -> tuple[int, int]:
    """A compact size whose first byte (at `pos`) is 0xfd..0xff: (value, position after it)."""
    prefix = raw[pos]
    width = 2 if prefix == 0xFD else 4 if prefix == 0xFE else 8
    field = raw[pos + 1 : pos + 1 + width]
    if len(field) != width:
        raise IndexError("compact size past the end")
    value = int.from_bytes(field, "little")
    # Core refuses a size that has a shorter encoding; so do we (one byte string, one meaning).
    if value < _SMALLEST[width]:
        raise ChainDataError(f"non-canonical compact size at byte {pos}")
    if value > MAX_COMPACT_SIZE:
        raise ChainDataError(f"compact size {value} at byte {pos} is over {MAX_COMPACT_SIZE}")
    return value, pos + 1 + width


def _walk_tx(
    raw: bytes, pos: int, scripts: Scripts, watched: Outpoints
) -> tuple[int, int, int, list[tuple[int, int, int, int, int]] | None, list[bytes] | None]:
    """Step over one transaction starting at `pos`.

    Returns (end, body_start, body_end, hits, spent): body_start..body_end are the inputs and outputs of a
    segwit transaction (body_start is -1 for a legacy one), hits are (vout, value_pos, script_start,
    script_end, watch_id) of outputs paying watched scripts, spent the watched prevouts it spends. Reads
    past the end raise IndexError (the caller turns it into ChainDataError); it is inlined by hand
    because it runs for every transaction of every block.
    """
    start = pos
    pos += 4
    body_start = -1
    if raw[pos] == 0:
        # BIP-144 marker: a transaction without witness never has zero inputs, so 0 means "witness".
        if raw[pos + 1] != 1:
            raise ChainDataError(f"transaction at byte {start}: unknown segwit flag {raw[pos + 1]}")
        pos += 2
        body_start = pos
    n_in = raw[pos]
    pos += 1
    if n_in >= 0xFD:
        n_in, pos = _long_varint(raw, pos - 1)
    if n_in == 0:
        raise ChainDataError(f"transaction at byte {start} has no inputs")
    spent: list[bytes] | None = None
    for _ in range(n_in):
        if watched:
            prevout = raw[pos : pos + OUTPOINT_SIZE]
            if prevout in watched:
                spent = [prevout] if spent is None else [*spent, prevout]
        pos += OUTPOINT_SIZE
        size = raw[pos]
        pos += 1
        if size >= 0xFD:
            size, pos = _long_varint(raw, pos - 1)
        pos += size + 4  # scriptSig, sequence
    n_out = raw[pos]
    pos += 1
    if n_out >= 0xFD:
        n_out, pos = _long_varint(raw, pos - 1)
    if n_out == 0:
        raise ChainDataError(f"transaction at byte {start} has no outputs")
    hits: list[tuple[int, int, int, int, int]] | None = None
    for vout in range(n_out):
        value_pos = pos
        size = raw[pos + 8]
        pos += 9
        if size >= 0xFD:
            size, pos = _long_varint(raw, pos - 1)
        end = pos + size
        watch_id = scripts.get(raw[pos:end])
        if watch_id is not None:
            hit = (vout, value_pos, pos, end, watch_id)
            hits = [hit] if hits is None else [*hits, hit]
        pos = end
    body_end = pos
    if body_start >= 0:
        for _ in range(n_in):
            items = raw[pos]
            pos += 1
            if items >= 0xFD:
                items, pos = _long_varint(raw, pos - 1)
            for _ in range(items):
                size = raw[pos]
                pos += 1
                if size >= 0xFD:
                    size, pos = _long_varint(raw, pos - 1)
                pos += size
    return pos + 4, body_start, body_end, hits, spent  # + locktime


def _txid(view: memoryview, start: int, end: int, body_start: int, body_end: int) -> str:
    """The txid: the hash of the serialisation without marker, flag and witnesses (not the wtxid)."""
    if body_start < 0:
        return _hash_hex(_dsha256(view[start:end]))
    inner = hashlib.sha256(view[start : start + 4])
    inner.update(view[body_start:body_end])
    inner.update(view[end - 4 : end])
    return _hash_hex(hashlib.sha256(inner.digest()).digest())


def _prevouts(raw: bytes, start: int) -> list[bytes]:
    """Every input's prevout of the (already walked, so well-formed) transaction at `start`."""
    pos = start + 4
    if raw[pos] == 0:
        pos += 2
    count, pos = _varint(raw, pos)
    prevouts = []
    for _ in range(count):
        prevouts.append(raw[pos : pos + OUTPOINT_SIZE])
        size, pos = _varint(raw, pos + OUTPOINT_SIZE)
        pos += size + 4
    return prevouts


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    return (raw[pos], pos + 1) if raw[pos] < 0xFD else _long_varint(raw, pos)


def _payments(raw: bytes, txid: str, hits: list[tuple[int, int, int, int, int]], start: int) -> list[Payment]:
    inputs = tuple(outpoint_text(p) for p in _prevouts(raw, start) if p != _NULL_PREVOUT)
    payments = []
    for vout, value_pos, script_start, script_end, watch_id in hits:
        value = int.from_bytes(raw[value_pos : value_pos + 8], "little")
        if value > MAX_MONEY:
            raise ChainDataError(f"output {txid}:{vout} has {value} satoshi, more than 21 million BTC")
        payments.append(Payment(txid, vout, value, raw[script_start:script_end], watch_id, inputs))
    return payments


# ------------------------------------------------------------------------------------------ public


def walk_block(raw: bytes, scripts: Scripts, watched: Outpoints = frozenset()) -> BlockMatches:
    """The payments to `scripts` and the spends of `watched` outpoints in a raw block, in block order."""
    header = parse_header(raw)
    view = memoryview(raw)
    size = len(raw)
    payments: list[Payment] = []
    spends: list[OutpointSpend] = []
    try:
        count, pos = _varint(raw, HEADER_SIZE)
        if count == 0:
            raise ChainDataError(f"block {header.block_hash} has no transactions")
        for _ in range(count):
            start = pos
            pos, body_start, body_end, hits, spent = _walk_tx(raw, pos, scripts, watched)
            if hits is None and spent is None:
                continue
            if pos > size:
                break  # truncated: reported below, nothing of this transaction is used
            txid = _txid(view, start, pos, body_start, body_end)
            if hits is not None:
                payments += _payments(raw, txid, hits, start)
            spends += [OutpointSpend(outpoint_text(p), txid) for p in spent or ()]
    except IndexError:
        raise ChainDataError(f"block {header.block_hash} is truncated ({size} bytes)") from None
    _check_consumed(pos, size, f"block {header.block_hash}")
    return BlockMatches(header, count, tuple(payments), tuple(spends))


def walk_transaction(raw: bytes, scripts: Scripts) -> TxMatches:
    """The payments to `scripts` in one raw transaction, its txid and all its prevouts."""
    try:
        end, body_start, body_end, hits, _ = _walk_tx(raw, 0, scripts, ())
    except IndexError:
        raise ChainDataError(f"transaction of {len(raw)} bytes is truncated") from None
    _check_consumed(end, len(raw), "transaction")
    txid = _txid(memoryview(raw), 0, end, body_start, body_end)
    payments = _payments(raw, txid, hits, 0) if hits else []
    prevouts = tuple(p for p in _prevouts(raw, 0) if p != _NULL_PREVOUT)
    return TxMatches(txid, tuple(payments), prevouts)


def _check_consumed(pos: int, size: int, what: str) -> None:
    if pos > size:
        raise ChainDataError(f"{what} is truncated ({size} bytes, {pos} needed)")
    if pos < size:
        raise ChainDataError(f"{what} has {size - pos} bytes after its end")
