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

The addresses, the block walk and the mempool bookkeeping (`MempoolIndex`) are shared with the `esplora`
adapter (chains.bitcoin.common), so both report the same transfers and spends for the same chain.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from chains.base import (
    BlockRef,
    BlockScan,
    ChainDataError,
    ChainError,
    ChainSettings,
    ConfigMismatch,
    NodeRejected,
    NodeUnavailable,
    Transfer,
    TxFate,
    TxState,
    WatchList,
    WrongChain,
)
from chains.bitcoin import rawblock
from chains.bitcoin.common import (
    BitcoinAdapterBase,
    MempoolIndex,
    outpoint_keys,
    parse_hash,
    parse_height,
)
from chains.jsonrpc import Call, JsonRpcClient, ResponseTooLarge

__all__ = ["BitcoinCoreAdapter", "MempoolIndex"]  # MempoolIndex: re-exported for its tests

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
RAW_CACHE_BYTES = 64 * 1024 * 1024


class BitcoinCoreAdapter(BitcoinAdapterBase):
    """ChainAdapter for Bitcoin through Bitcoin Core's JSON-RPC (see chains.base.ChainAdapter)."""

    mempool_chunk = TXS_PER_BATCH

    def __init__(self, settings: ChainSettings) -> None:
        super().__init__(settings)
        self._rpc = JsonRpcClient.for_settings(settings)
        self._raw_blocks = _RawBlockCache(RAW_CACHE_BYTES)
        self._block_hex_estimate = FIRST_BLOCK_HEX_ESTIMATE

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
        genesis = parse_hash(await self._call("getblockhash", [0]), "getblockhash 0")
        return f"bitcoin:{genesis}"

    async def close(self) -> None:
        await self._rpc.close()

    # ----------------------------------------------------------------------------------- blocks

    async def head(self) -> BlockRef:
        best = parse_hash(await self._call("getbestblockhash"), "getbestblockhash")
        cached = self._refs.get(best)
        if cached is not None:
            return cached
        # Height and hash from one answer: a block arriving between two calls cannot mix them.
        info = _expect_dict(await self._call("getblockchaininfo"), "getblockchaininfo")
        best = parse_hash(info.get("bestblockhash"), "getblockchaininfo.bestblockhash")
        height = parse_height(info.get("blocks"), "getblockchaininfo.blocks")
        return self._refs.get(best) or await self._fetch_ref(height, best)

    async def block_ref(self, height: int) -> BlockRef | None:
        if height < 0:
            return None
        try:
            block_hash = parse_hash(await self._call("getblockhash", [height]), f"getblockhash {height}")
        except NodeRejected as exc:
            if exc.code not in NOT_FOUND_CODES | {HEIGHT_OUT_OF_RANGE}:
                raise
            count = parse_height(await self._call("getblockcount"), "getblockcount")
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

    # ------------------------------------------------------------------------------------- scan

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        if to_height < from_height:
            return []
        hashes = await self._block_hashes(from_height, to_height)
        scripts = self._scripts(watch)
        watched = outpoint_keys(watch.outpoints)
        scans: list[BlockScan] = []
        # Batch by batch, so a long catch-up never holds more than one batch of raw blocks.
        while len(scans) < len(hashes):
            batch = self._next_batch(hashes[len(scans) :])
            for block_hash, raw in zip(batch, await self._raw_blocks_for(batch), strict=True):
                scans.append(self._walk(from_height + len(scans), block_hash, raw, scripts, watched, scans))
        return scans

    def _block_source(self, block_hash: str) -> str:
        return f"getblock {block_hash}"

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
            hashes += [parse_hash(a, f"getblockhash {h}") for h, a in zip(heights, answers, strict=True)]
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

    async def _list_mempool(self) -> list[str]:
        answer = await self._call("getrawmempool")
        if not isinstance(answer, list):
            raise ChainDataError(f"getrawmempool: expected a list, got {type(answer).__name__}", cause=answer)
        return [parse_hash(t, "getrawmempool entry") for t in answer]

    def _tx_source(self, txid: str) -> str:
        return f"getrawtransaction {txid}"

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


# ------------------------------------------------------------------------------------------ helpers


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


def _expect_dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ChainDataError(f"{what}: expected an object, got {type(value).__name__}", cause=value)
    return value


def _parse_hex(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ChainDataError(f"{what}: expected hex, got {type(value).__name__}", cause=value)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ChainDataError(f"{what}: not hex: {value[:80]!r}", cause=value[:2000]) from None
