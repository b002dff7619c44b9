"""The Bitcoin chain adapter (`adapter: bitcoin-core`): payments to watched scripts and spends of watched
outpoints, in blocks and in the mempool, through one Bitcoin Core (or bcoin) JSON-RPC node.

Only calls that Bitcoin Core and bcoin answer alike are used: getblockchaininfo, getblockcount,
getbestblockhash, getblockhash, `getblock HASH 0` (raw hex), getrawmempool and `getrawtransaction TXID 0`.
Everything else is read from the raw bytes by chains.bitcoin.rawblock, so amounts are integers from the
serialisation (never floats from JSON) and no verbose JSON is built by the node or parsed here.

Node quirks tolerated: "not found" is -5 on Core and -1 on bcoin (a null result counts as not found too);
getblockhash above the tip is -8 on Core; -28 (warming up) is an outage, not a rejection. Reorgs are told
by hashes and parent hashes only, never by `confirmations` (bcoin keeps it positive for stale blocks).

Caching: a block's hash fixes its height and parent forever, so refs are cached by hash; polling an
unchanged head costs one getbestblockhash. Raw blocks fetched for head()/block_ref() (which need the
parent hash, and the allowed calls give it only through the raw header) wait in a byte-bounded cache
until scan() takes them, so the tip is fetched once.

Mempool bookkeeping (`MempoolIndex`): per mempool txid, the payments it makes to watched scripts and the
outpoints it spends; only txids new since the last poll are fetched. Which outpoints are watched changes
between polls, so spends are answered from an outpoint -> txid index of the whole mempool. When the
watched scripts change (a reload), the remembered payments are stale and the index starts over.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import structlog

from chains.base import (
    AddressError,
    BlockRef,
    BlockScan,
    ChainDataError,
    ChainError,
    ChainSettings,
    ConfigMismatch,
    CurrencySpec,
    MempoolScan,
    NodeRejected,
    NodeUnavailable,
    Spend,
    Transfer,
    TxFate,
    TxState,
    WatchList,
    WrongChain,
)
from chains.bitcoin import rawblock
from chains.bitcoin.address import address_for_script, script_for_address
from chains.jsonrpc import Call, JsonRpcClient, ResponseTooLarge

log = structlog.get_logger(__name__)

# getblockchaininfo's `chain` for each configured network. testnet3, testnet4 and signet share the
# address formats the config's `testnet` selects.
CHAINS_OF_NETWORK = {
    "mainnet": frozenset({"main"}),
    "testnet": frozenset({"test", "testnet", "testnet4", "signet"}),
    "regtest": frozenset({"regtest"}),
}
NOT_FOUND_CODES = frozenset({-5, -1})  # Core RPC_INVALID_ADDRESS_OR_KEY; bcoin's generic MISC_ERROR
HEIGHT_OUT_OF_RANGE = -8  # Core's getblockhash above the tip
WARMING_UP = -28
# Raw blocks per getblock batch are bounded by bytes of hex: a mainnet block is up to ~4 MB (8 MB hex).
BLOCK_BATCH_HEX_BYTES = 8 * 1024 * 1024
MAX_BLOCKS_PER_BATCH = 50
FIRST_BLOCK_HEX_ESTIMATE = 4 * 1024 * 1024
HASHES_PER_BATCH = 1000
TXS_PER_BATCH = 500
REF_CACHE_ENTRIES = 4096
RAW_CACHE_BYTES = 64 * 1024 * 1024
# tx_fate reuses a getrawmempool answer this young (mempool_scan has usually just fetched one): on
# mainnet the list is megabytes, and a stale answer only confuses PENDING with MINED, both "wait".
MEMPOOL_SNAPSHOT_TTL_S = 1.0
_HASH = re.compile(r"[0-9a-f]{64}").fullmatch


class BitcoinCoreAdapter:
    """ChainAdapter for Bitcoin through Bitcoin Core's JSON-RPC (see chains.base.ChainAdapter)."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"mempool"})
    native_decimals: ClassVar[int] = 8
    default_min_confirmations: ClassVar[int] = 1

    def __init__(self, settings: ChainSettings) -> None:
        self._settings = settings
        self._network = settings.network
        self._rpc = JsonRpcClient(
            settings.rpc_url,
            timeout_s=settings.timeout_s,
            user=settings.rpc_user,
            password=settings.rpc_password,
            observer=settings.rpc_observer,
        )
        natives = [spec for spec in settings.currencies if spec.contract is None]
        self._currency = natives[0].code if len(natives) == 1 else None
        self._refs: _Lru[str, BlockRef] = _Lru(REF_CACHE_ENTRIES)
        self._raw_blocks = _RawBlockCache(RAW_CACHE_BYTES)
        self._block_hex_estimate = FIRST_BLOCK_HEX_ESTIMATE
        self._mempool = MempoolIndex()
        self._mempool_watch: Mapping[str, Mapping[bytes, int]] | None = None
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

    # -------------------------------------------------------------------------------- lifecycle

    async def open(self) -> str:
        self._check_currencies()
        info = _expect_dict(await self._call("getblockchaininfo"), "getblockchaininfo")
        chain = info.get("chain")
        expected = CHAINS_OF_NETWORK.get(self._network)
        if expected is None:
            raise ConfigMismatch(f"{self._settings.name}: unknown network {self._network!r}")
        if chain not in expected:
            raise WrongChain(
                f"{self._settings.name}: the node follows Bitcoin {chain!r}, the configuration's network "
                f"is {self._network} ({', '.join(sorted(expected))})",
                cause=info,
            )
        genesis = _parse_hash(await self._call("getblockhash", [0]), "getblockhash 0")
        return f"bitcoin:{genesis}"

    def _check_currencies(self) -> None:
        codes = [spec.code for spec in self._settings.currencies]
        if self._currency is None or len(codes) != 1:
            raise ConfigMismatch(
                f"{self._settings.name}: a Bitcoin chain has exactly one currency without a contract "
                f"(configured: {', '.join(codes) or 'none'})"
            )

    async def close(self) -> None:
        await self._rpc.close()

    # ----------------------------------------------------------------------------------- blocks

    async def head(self) -> BlockRef:
        best = _parse_hash(await self._call("getbestblockhash"), "getbestblockhash")
        cached = self._refs.get(best)
        if cached is not None:
            return cached
        # Height and hash from one answer: a block arriving between two calls cannot mix them.
        info = _expect_dict(await self._call("getblockchaininfo"), "getblockchaininfo")
        best = _parse_hash(info.get("bestblockhash"), "getblockchaininfo.bestblockhash")
        height = _parse_height(info.get("blocks"), "getblockchaininfo.blocks")
        return self._refs.get(best) or await self._fetch_ref(height, best)

    async def block_ref(self, height: int) -> BlockRef | None:
        if height < 0:
            return None
        try:
            block_hash = _parse_hash(await self._call("getblockhash", [height]), f"getblockhash {height}")
        except NodeRejected as exc:
            if exc.code not in NOT_FOUND_CODES | {HEIGHT_OUT_OF_RANGE}:
                raise
            count = _parse_height(await self._call("getblockcount"), "getblockcount")
            if height > count:
                return None
            raise ChainDataError(
                f"getblockhash {height} failed below the tip {count}: {exc}", cause=exc
            ) from exc
        return self._refs.get(block_hash) or await self._fetch_ref(height, block_hash)

    async def _fetch_ref(self, height: int, block_hash: str) -> BlockRef:
        """The ref of a block not in the cache: its parent hash is only in the raw header."""
        (raw,) = await self._raw_blocks_for([block_hash])
        header = rawblock.parse_header(raw)
        if header.block_hash != block_hash:
            raise ChainDataError(
                f"getblock {block_hash} returned block {header.block_hash}", cause=block_hash
            )
        self._raw_blocks.put(block_hash, raw)  # scan() will most likely want it next
        return self._remember(BlockRef(height, block_hash, header.parent_hash))

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

    # ------------------------------------------------------------------------------------- scan

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        if to_height < from_height:
            return []
        hashes = await self._block_hashes(from_height, to_height)
        scripts = self._scripts(watch)
        watched = _outpoint_keys(watch.outpoints)
        scans: list[BlockScan] = []
        # Batch by batch, so a long catch-up never holds more than one batch of raw blocks.
        while len(scans) < len(hashes):
            batch = self._next_batch(hashes[len(scans) :])
            for block_hash, raw in zip(batch, await self._raw_blocks_for(batch), strict=True):
                scans.append(self._walk(from_height + len(scans), block_hash, raw, scripts, watched, scans))
        return scans

    def _walk(
        self,
        height: int,
        block_hash: str,
        raw: bytes,
        scripts: Mapping[bytes, int],
        watched: Mapping[bytes, str],
        previous: Sequence[BlockScan],
    ) -> BlockScan:
        matches = rawblock.walk_block(raw, scripts, watched)
        header = matches.header
        if header.block_hash != block_hash:
            raise ChainDataError(
                f"getblock {block_hash} returned block {header.block_hash}", cause=block_hash
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

    def _next_batch(self, hashes: Sequence[str]) -> list[str]:
        """As many of the next blocks as fit the byte budget, judged by the largest block seen lately."""
        count = max(1, min(MAX_BLOCKS_PER_BATCH, BLOCK_BATCH_HEX_BYTES // max(self._block_hex_estimate, 1)))
        return list(hashes[:count])

    async def _block_hashes(self, from_height: int, to_height: int) -> list[str]:
        hashes: list[str] = []
        for start in range(from_height, to_height + 1, HASHES_PER_BATCH):
            heights = range(start, min(start + HASHES_PER_BATCH, to_height + 1))
            try:
                answers = await self._batch([("getblockhash", [h]) for h in heights])
            except NodeRejected as exc:
                if exc.code not in NOT_FOUND_CODES | {HEIGHT_OUT_OF_RANGE}:
                    raise
                message = f"blocks {heights.start}..{heights.stop - 1} are not all on the node's chain: {exc}"
                raise ChainDataError(message, cause=exc) from exc
            hashes += [_parse_hash(a, f"getblockhash {h}") for h, a in zip(heights, answers, strict=True)]
        return hashes

    async def _raw_blocks_for(self, hashes: Sequence[str]) -> list[bytes]:
        """The raw blocks, from the cache (taking them out) or in one batched getblock call."""
        cached = {h: raw for h in hashes if (raw := self._raw_blocks.take(h)) is not None}
        wanted = [h for h in hashes if h not in cached]
        if wanted:
            try:
                answers = await self._batch([("getblock", [h, 0]) for h in wanted])
            except NodeRejected as exc:
                if exc.code not in NOT_FOUND_CODES:
                    raise
                raise ChainDataError(f"the node no longer has a block it named: {exc}", cause=exc) from exc
            except ResponseTooLarge:
                self._block_hex_estimate = BLOCK_BATCH_HEX_BYTES  # one block per batch from now on
                raise
            self._block_hex_estimate = max(len(a) if isinstance(a, str) else 0 for a in answers)
            for block_hash, answer in zip(wanted, answers, strict=True):
                cached[block_hash] = _parse_hex(answer, f"getblock {block_hash} 0")
        return [cached[h] for h in hashes]

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
        for start in range(0, len(new), TXS_PER_BATCH):
            batch = new[start : start + TXS_PER_BATCH]
            for txid, raw in zip(batch, await self._raw_txs(batch), strict=True):
                if raw is not None:  # left the mempool between the two calls
                    self._mempool.add(_walk_mempool_tx(txid, raw, scripts))
        transfers = tuple(self._transfer(p) for p in self._mempool.payments())
        spends = tuple(self._mempool.spends(_outpoint_keys(watch.outpoints)))
        return MempoolScan(transfers, spends)

    async def _fetch_mempool_txids(self) -> list[str]:
        answer = await self._call("getrawmempool")
        if not isinstance(answer, list):
            raise ChainDataError(f"getrawmempool: expected a list, got {type(answer).__name__}", cause=answer)
        txids = [_parse_hash(t, "getrawmempool entry") for t in answer]
        self._snapshot = (time.monotonic(), frozenset(txids))
        return txids

    async def _recent_mempool_txids(self) -> frozenset[str]:
        """The mempool's txids, from the last answer if it is younger than MEMPOOL_SNAPSHOT_TTL_S."""
        if self._snapshot is None or time.monotonic() - self._snapshot[0] > MEMPOOL_SNAPSHOT_TTL_S:
            await self._fetch_mempool_txids()
        assert self._snapshot is not None
        return self._snapshot[1]

    async def _raw_txs(self, txids: Sequence[str]) -> list[bytes | None]:
        """The raw transactions, None for those the node does not know. A batch answers one error for
        all, so a batch with an unknown txid is split until the unknown ones stand alone."""
        try:
            answers = await self._batch([("getrawtransaction", [txid, 0]) for txid in txids])
        except NodeRejected as exc:
            if exc.code not in NOT_FOUND_CODES:
                raise
            if len(txids) == 1:
                return [None]
            middle = len(txids) // 2
            return [*await self._raw_txs(txids[:middle]), *await self._raw_txs(txids[middle:])]
        return [
            None if answer is None else _parse_hex(answer, f"getrawtransaction {txid}")
            for txid, answer in zip(txids, answers, strict=True)
        ]

    # ------------------------------------------------------------------------------------- fate

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        """PENDING if in the mempool, MINED if `getrawtransaction` finds it elsewhere (a node with a
        transaction index: Core's -txindex, bcoin's --index-tx), else ABSENT. Without a transaction
        index a mined transaction is ABSENT too; the follower meets it in its block anyway."""
        txid = transfer.txid
        if txid in await self._recent_mempool_txids():
            return TxFate(TxState.PENDING, "in the node's mempool")
        (raw,) = await self._raw_txs([txid])
        if raw is None:
            # Never UNKNOWN: another node may still mine it; the daemon waits for a conflicting spend or
            # the chain's expiry.
            return TxFate(TxState.ABSENT, "not in the node's mempool or chain")
        # Found outside the mempool: the node's transaction index knows it from a block. The raw answer
        # does not say which block, so the height stays unknown.
        return TxFate(TxState.MINED, "in a block, by the node's transaction index")

    # ---------------------------------------------------------------------------------- helpers

    def _scripts(self, watch: WatchList) -> Mapping[bytes, int]:
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

    async def _call(self, method: str, params: Sequence[Any] = ()) -> Any:
        try:
            return await self._rpc.call(method, params)
        except NodeRejected as exc:
            raise _warming_up(exc) from exc

    async def _batch(self, calls: Sequence[Call]) -> list[Any]:
        try:
            return await self._rpc.batch(calls)
        except NodeRejected as exc:
            raise _warming_up(exc) from exc


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


class _Lru(Generic[K, V]):
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


class _RawBlockCache:
    """Raw blocks fetched for a ref and not yet scanned, bounded in bytes (oldest dropped first)."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._blocks: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def put(self, block_hash: str, raw: bytes) -> None:
        self.take(block_hash)
        self._blocks[block_hash] = raw
        self._bytes += len(raw)
        while self._bytes > self._max_bytes and len(self._blocks) > 1:
            _, dropped = self._blocks.popitem(last=False)
            self._bytes -= len(dropped)

    def take(self, block_hash: str) -> bytes | None:
        raw = self._blocks.pop(block_hash, None)
        if raw is not None:
            self._bytes -= len(raw)
        return raw


def _warming_up(exc: NodeRejected) -> ChainError:
    """-28: the node is starting (loading the block index, verifying): an outage, retry later."""
    if exc.code == WARMING_UP:
        return NodeUnavailable(f"the node is warming up: {exc}", cause=exc)
    return exc


def _walk_mempool_tx(txid: str, raw: bytes, scripts: Mapping[bytes, int]) -> rawblock.TxMatches:
    tx = rawblock.walk_transaction(raw, scripts)
    if tx.txid != txid:
        raise ChainDataError(f"getrawtransaction {txid} returned transaction {tx.txid}", cause=txid)
    return tx


def _outpoint_keys(outpoints: Iterable[str]) -> dict[bytes, str]:
    """Watched outpoints as the raw 36 bytes an input holds (converted once per scan)."""
    keys = {}
    for outpoint in outpoints:
        try:
            keys[rawblock.outpoint_key(outpoint)] = outpoint
        except ValueError:
            log.warning("bitcoin_bad_watched_outpoint", outpoint=outpoint[:100])
    return keys


def _expect_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ChainDataError(f"{what}: expected an object, got {type(value).__name__}", cause=value)
    return value


def _parse_hash(value: object, what: str) -> str:
    """A block hash or txid as RPC shows it: 64 lower-case hex digits."""
    if not isinstance(value, str) or not _HASH(value):
        raise ChainDataError(f"{what}: expected a 64-hex-digit hash, got {value!r:.80}", cause=value)
    return value


def _parse_height(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ChainDataError(f"{what}: expected a height, got {value!r:.80}", cause=value)
    return value


def _parse_hex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ChainDataError(f"{what}: expected hex, got {type(value).__name__}", cause=value)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ChainDataError(f"{what}: not hex: {value[:80]!r}", cause=value[:2000]) from None
