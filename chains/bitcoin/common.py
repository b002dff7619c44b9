"""What the two Bitcoin adapters (`bitcoin-core`, `esplora`) share: addresses, block walks, the mempool.

`BitcoinAdapterBase` holds everything that does not depend on how blocks and transactions are fetched:
the watch keys (output scripts), the one native currency, the ref cache (a block's hash fixes its height
and parent forever), the walk of a raw block into a BlockScan with its chaining check, and the mempool
scan over new txids only (`MempoolIndex`). A subclass says how to list the mempool and how to fetch raw
transactions; everything it fetches is read by chains.bitcoin.rawblock, so both adapters report the very
same transfers and spends for the same chain.

Mempool bookkeeping (`MempoolIndex`): per mempool txid, the payments it makes to watched scripts and the
outpoints it spends; only txids new since the last poll are fetched. Which outpoints are watched changes
between polls, so spends are answered from an outpoint -> txid index of the whole mempool. When the
watched scripts change (a reload), the remembered payments are stale and the index starts over.
"""

from __future__ import annotations

import abc
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import structlog

from chains.base import (
    AddressError,
    BaseAdapter,
    BlockRef,
    BlockScan,
    ChainDataError,
    ChainSettings,
    ConfigMismatch,
    CurrencySpec,
    Deriver,
    KeyIndex,
    MempoolScan,
    Spend,
    Transfer,
    WatchList,
)
from chains.bitcoin import rawblock
from chains.bitcoin.address import address_for_script, script_for_address
from chains.bitcoin.derive import parse_bitcoin_key

log = structlog.get_logger(__name__)

REF_CACHE_ENTRIES = 4096
# tx_fate reuses a mempool listing this young (mempool_scan has usually just fetched one): on mainnet
# the list is megabytes, and a stale answer only confuses PENDING with MINED, both "wait".
MEMPOOL_SNAPSHOT_TTL_S = 1.0
_HASH = re.compile(r"[0-9a-f]{64}").fullmatch


class BitcoinAdapterBase(BaseAdapter):
    """The parts of a Bitcoin ChainAdapter that do not depend on the node's API (see module docstring)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"mempool"})
    native_decimals: ClassVar[int] = 8
    default_min_confirmations: ClassVar[int] = 1
    # New mempool transactions fetched per round trip (progress is kept between rounds), and at most
    # this many per mempool_scan (None: all of them); the rest wait for the next poll.
    mempool_chunk: ClassVar[int] = 500
    max_new_mempool_txs: ClassVar[int | None] = None

    def __init__(self, settings: ChainSettings) -> None:
        super().__init__(settings)
        self._network = settings.network
        natives = [spec for spec in settings.currencies if spec.contract is None]
        self._currency = natives[0].code if len(natives) == 1 else None
        self._refs: Lru[str, BlockRef] = Lru(REF_CACHE_ENTRIES)
        self._mempool = MempoolIndex()
        self._mempool_watch: Mapping[str, KeyIndex] | None = None
        self._snapshot: tuple[float, frozenset[str]] | None = None

    # ------------------------------------------------------------------------------ addresses

    @staticmethod
    def watch_key(currency: CurrencySpec, address: str, network: str) -> bytes:
        """The output script paying `address` (scriptPubKey)."""
        if currency.contract is not None:
            raise AddressError(f"{currency.code}: Bitcoin has no token contracts; remove `contract`")
        return script_for_address(address, network)

    @staticmethod
    def display_address(currency: CurrencySpec, key: bytes, network: str) -> str:
        return address_for_script(key, network)

    @classmethod
    def parse_public_key(cls, text: str, network: str) -> Deriver:
        """A watch-only deriver for a descriptor or zpub/ypub (chains.bitcoin.derive)."""
        return parse_bitcoin_key(text, network)

    async def check_currencies(self) -> None:
        self._check_currencies()  # the native coin only: nothing to ask the node

    def _check_currencies(self) -> None:
        codes = [spec.code for spec in self._settings.currencies]
        if self._currency is None or len(codes) != 1:
            raise ConfigMismatch(
                f"{self._settings.name}: a Bitcoin chain has exactly one currency without a contract "
                f"(configured: {', '.join(codes) or 'none'})"
            )

    # ----------------------------------------------------------------------------------- blocks

    def _remember(self, ref: BlockRef) -> BlockRef:
        parent = self._refs.get(ref.parent_hash)
        if parent is not None and parent.height != ref.height - 1:
            raise ChainDataError(
                f"block {ref.block_hash} at height {ref.height} has parent {ref.parent_hash} "
                f"at height {parent.height}",
                cause=ref,
            )
        self._refs.put(ref.block_hash, ref)
        return ref

    def _walk(
        self,
        height: int,
        block_hash: str,
        raw: bytes,
        scripts: KeyIndex,
        watched: Mapping[bytes, str],
        previous: Sequence[BlockScan],
    ) -> BlockScan:
        """The BlockScan of raw block `block_hash` at `height`, which must chain onto `previous`."""
        matches = rawblock.walk_block(raw, scripts, watched)
        header = matches.header
        if header.block_hash != block_hash:
            raise ChainDataError(
                f"{self._block_source(block_hash)} returned block {header.block_hash}", cause=block_hash
            )
        if previous and header.parent_hash != previous[-1].ref.block_hash:
            raise ChainDataError(
                f"block {height} ({block_hash}) does not chain onto {previous[-1].ref.block_hash}: "
                "the chain changed during the scan",
                cause=header,
            )
        ref = self._remember(BlockRef(height, block_hash, header.parent_hash))
        transfers = tuple(self._transfer(p) for p in matches.payments)
        spends = tuple(Spend(s.outpoint, s.txid) for s in matches.spends)
        return BlockScan(ref, transfers, spends)

    @abc.abstractmethod
    def _block_source(self, block_hash: str) -> str:
        """How the raw block was asked for, for error messages ("getblock HASH")."""

    # ---------------------------------------------------------------------------------- mempool

    async def mempool_scan(self, watch: WatchList) -> MempoolScan:
        scripts = self._scripts(watch)
        if not scripts and not watch.outpoints:
            return MempoolScan()  # nothing to look for: spare the node a (mainnet: megabytes) answer
        if watch.by_currency is not self._mempool_watch:
            # New watched scripts: what was remembered per transaction was matched against the old ones.
            self._mempool = MempoolIndex()
            self._mempool_watch = watch.by_currency
        txids = await self._fetch_mempool_txids()
        self._mempool.retain(frozenset(txids))
        new = [txid for txid in txids if txid not in self._mempool]
        if self.max_new_mempool_txs is not None and len(new) > self.max_new_mempool_txs:
            log.info("bitcoin_mempool_backlog", chain=self._settings.name, new=len(new))
            new = new[: self.max_new_mempool_txs]
        for start in range(0, len(new), self.mempool_chunk):
            batch = new[start : start + self.mempool_chunk]
            for txid, raw in zip(batch, await self._raw_txs(batch), strict=True):
                if raw is not None:  # left the mempool between the two calls
                    self._mempool.add(walk_mempool_tx(txid, raw, scripts, self._tx_source(txid)))
        transfers = tuple(self._transfer(p) for p in self._mempool.payments())
        spends = tuple(self._mempool.spends(outpoint_keys(watch.outpoints)))
        return MempoolScan(transfers, spends)

    async def _fetch_mempool_txids(self) -> list[str]:
        txids = await self._list_mempool()
        self._snapshot = (time.monotonic(), frozenset(txids))
        return txids

    async def _recent_mempool_txids(self) -> frozenset[str]:
        """The mempool's txids, from the last answer if it is younger than MEMPOOL_SNAPSHOT_TTL_S."""
        if self._snapshot is None or time.monotonic() - self._snapshot[0] > MEMPOOL_SNAPSHOT_TTL_S:
            await self._fetch_mempool_txids()
        assert self._snapshot is not None
        return self._snapshot[1]

    @abc.abstractmethod
    async def _list_mempool(self) -> list[str]:
        """Every txid in the node's mempool (validated hashes)."""

    @abc.abstractmethod
    async def _raw_txs(self, txids: Sequence[str]) -> list[bytes | None]:
        """The raw transactions, None for those the node does not know (any more)."""

    @abc.abstractmethod
    def _tx_source(self, txid: str) -> str:
        """How a raw transaction was asked for, for error messages ("getrawtransaction TXID")."""

    # ---------------------------------------------------------------------------------- helpers

    def _scripts(self, watch: WatchList) -> KeyIndex:
        return watch.keys_for(self._currency) if self._currency is not None else {}

    def _transfer(self, payment: rawblock.Payment) -> Transfer:
        assert self._currency is not None  # there are no payments without watched scripts
        return Transfer(
            currency=self._currency,
            watch_id=payment.watch_id,
            address=address_for_script(payment.script, self._network),
            amount=payment.value,
            txid=payment.txid,
            index=payment.vout,
            inputs=payment.inputs,
        )


# ------------------------------------------------------------------------------------------ mempool


@dataclass(frozen=True, slots=True)
class _PoolTx:
    payments: tuple[rawblock.Payment, ...]
    prevouts: tuple[bytes, ...]


class MempoolIndex:
    """What the adapter remembers of the node's mempool between polls (pure bookkeeping, no I/O)."""

    def __init__(self) -> None:
        self._txs: dict[str, _PoolTx] = {}
        self._spent_by: dict[bytes, str] = {}  # raw outpoint -> the mempool txid spending it

    def __contains__(self, txid: str) -> bool:
        return txid in self._txs

    def __len__(self) -> int:
        return len(self._txs)

    def add(self, tx: rawblock.TxMatches) -> None:
        self._txs[tx.txid] = _PoolTx(tx.payments, tx.prevouts)
        for prevout in tx.prevouts:
            self._spent_by[prevout] = tx.txid

    def retain(self, txids: frozenset[str]) -> None:
        """Forget the transactions that left the mempool (mined, replaced, evicted)."""
        for txid in [t for t in self._txs if t not in txids]:
            for prevout in self._txs.pop(txid).prevouts:
                if self._spent_by.get(prevout) == txid:
                    del self._spent_by[prevout]

    def payments(self) -> Iterable[rawblock.Payment]:
        for tx in self._txs.values():
            yield from tx.payments

    def spends(self, watched: Mapping[bytes, str]) -> Iterable[Spend]:
        for key, outpoint in watched.items():
            txid = self._spent_by.get(key)
            if txid is not None:
                yield Spend(outpoint, txid)


# ------------------------------------------------------------------------------------------ helpers


K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond `size`."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def walk_mempool_tx(txid: str, raw: bytes, scripts: KeyIndex, source: str) -> rawblock.TxMatches:
    tx = rawblock.walk_transaction(raw, scripts)
    if tx.txid != txid:
        raise ChainDataError(f"{source} returned transaction {tx.txid}", cause=txid)
    return tx


def outpoint_keys(outpoints: Iterable[str]) -> dict[bytes, str]:
    """Watched outpoints as the raw 36 bytes an input holds (converted once per scan)."""
    keys = {}
    for outpoint in outpoints:
        try:
            keys[rawblock.outpoint_key(outpoint)] = outpoint
        except ValueError:
            log.warning("bitcoin_bad_watched_outpoint", outpoint=outpoint[:100])
    return keys


def parse_hash(value: object, what: str) -> str:
    """A block hash or txid as RPC and explorers show it: 64 lower-case hex digits."""
    if not isinstance(value, str) or not _HASH(value):
        raise ChainDataError(f"{what}: expected a 64-hex-digit hash, got {value!r:.80}", cause=value)
    return value


def parse_height(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ChainDataError(f"{what}: expected a height, got {value!r:.80}", cause=value)
    return value
