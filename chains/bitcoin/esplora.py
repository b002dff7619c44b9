"""The Bitcoin chain adapter for the Esplora REST API (`adapter: esplora`): the API that mempool.space and
Blockstream serve (`rpc_url: https://mempool.space/signet/api`), so a trial needs no Bitcoin node.

Only raw data is read, from eight GET endpoints under `rpc_url`:

    /blocks/tip/hash         the best block's hash (text)
    /blocks/tip/height       its height (text)
    /block-height/:height    the main-chain block hash at a height (text; 404 above the tip)
    /block/:hash/header      the 80-byte header (hex): a block's parent without fetching the block
    /block/:hash/raw         the block (bytes)
    /mempool/txids           every txid in the mempool (JSON array)
    /tx/:txid/raw            a transaction (bytes)
    /tx/:txid/status         {"confirmed", "block_height", "block_hash"} (JSON)

Blocks and transactions are walked by chains.bitcoin.rawblock exactly as the `bitcoin-core` adapter
walks them (chains.bitcoin.common), so amounts come from the serialisation, never from the API's JSON,
and the identity is the same ("bitcoin:" + genesis hash): a store can move between the two adapters.
The genesis hash also tells the network: mainnet, testnet3, testnet4, signet (every signet shares the
default signet's genesis) or regtest.

Trust: the API is a third party's view of the chain. What it says is checked where it can be: each
block's hash against the one asked for and its parent against the block before, so answers from
several servers behind one URL (public APIs are load-balanced) that disagree show up as a retry, never
as a deposit. Whether a block is valid or on the most-work chain is the API's word alone.

Errors (`EsploraClient`, on the node transport chains.http): cannot connect, timeouts, HTTP 408, 429
(rate limited) and 5xx are NodeUnavailable (the follower retries with backoff); 404 is "not found", which
each call interprets (above the tip, unknown transaction, or a wrong `rpc_url`); other HTTP errors are
NodeRejected with the status as `code`; malformed answers and answers over their size bound (per
endpoint, and never over the chain's max_response_mb) are ChainDataError. Every request is reported to
the daemon's RPC observer as "GET /block/:hash/raw" and so on. With several `rpc_urls` (say two public
providers), the next one is used from the first NodeUnavailable on; the follower checks the new server's
chain before it reads a block from it.

Requests: public servers rate-limit, so at most CONCURRENCY requests are in flight, polling an
unchanged head costs one request, a new block on a known parent costs two (tip hash, header) before
its scan (hash, raw block), and a mempool scan fetches only transactions it has not seen, at most
MAX_NEW_MEMPOOL_TXS per poll (a backlog is worked off over the next polls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar, Unpack
from urllib.parse import quote

import orjson

from chains.base import (
    BlockRef,
    BlockScan,
    ChainDataError,
    ChainError,
    ChainSettings,
    ConfigMismatch,
    NodeRejected,
    Transfer,
    TxFate,
    TxState,
    WatchList,
    WrongChain,
)
from chains.bitcoin import rawblock
from chains.bitcoin.common import BitcoinAdapterBase, outpoint_keys, parse_hash, parse_height
from chains.http import HttpAnswer, HttpTransport, TransportOptions, transport_options

# Requests in flight at once: public servers answer a burst with 429.
CONCURRENCY = 4
# New mempool transactions fetched per round (progress is kept between rounds) and per poll.
MEMPOOL_CHUNK = 4 * CONCURRENCY
MAX_NEW_MEMPOOL_TXS = 400
# Answer size bounds, in bytes. A block's serialisation is at most 4 MB (the weight limit), and so is a
# transaction's; the mempool list is ~67 bytes per txid (mainnet: a few hundred thousand).
SMALL_ANSWER_BYTES = 64 * 1024
MAX_BLOCK_BYTES = 8 * 1024 * 1024
MAX_TX_BYTES = 4 * 1024 * 1024
MAX_MEMPOOL_LIST_BYTES = 64 * 1024 * 1024

GENESIS_CHAINS = {
    "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f": "main",
    "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943": "testnet3",
    "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043": "testnet4",
    "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6": "signet",
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206": "regtest",
}
# The config's network -> the chains it accepts (testnet3, testnet4 and signet share address formats).
CHAINS_OF_NETWORK = {
    "mainnet": frozenset({"main"}),
    "testnet": frozenset({"testnet3", "testnet4", "signet"}),
    "regtest": frozenset({"regtest"}),
}
_USER_AGENT = "deposit-watcher (esplora adapter)"

T = TypeVar("T")


class EsploraClient:
    """GET requests to an Esplora API over keep-alive connections, at most `concurrency` at a time.

    `get` answers the body, or None for HTTP 404; every other failure is a chain error (module
    docstring). Endpoints are written as patterns ("/block/:hash/raw") filled from the arguments in
    order; the pattern is what the observer is told. `base_url`: one API, or several for fail-over.
    Only the framing lives here (paths, 404); the rest is chains.http's.
    """

    def __init__(self, base_url: str | Sequence[str], **options: Unpack[TransportOptions]) -> None:
        options.setdefault("concurrency", CONCURRENCY)
        self._http = HttpTransport(base_url, headers={"User-Agent": _USER_AGENT}, **options)

    @classmethod
    def for_settings(cls, settings: ChainSettings) -> EsploraClient:
        return cls(settings.urls, **transport_options(settings))

    async def close(self) -> None:
        await self._http.close()

    @property
    def url(self) -> str:
        """The API in use."""
        return self._http.url

    async def get(self, endpoint: str, *args: str | int, max_bytes: int = SMALL_ANSWER_BYTES) -> bytes | None:
        path = _fill(endpoint, args)
        return await self._http.request(
            "GET",
            path,
            metric=f"GET {endpoint}",
            label=f"GET {path}",
            max_bytes=max_bytes,
            framed=_not_found,
            decode=_body_unless_not_found,
        )


class EsploraAdapter(BitcoinAdapterBase):
    """ChainAdapter for Bitcoin through an Esplora REST API (see chains.base.ChainAdapter)."""

    mempool_chunk = MEMPOOL_CHUNK
    max_new_mempool_txs = MAX_NEW_MEMPOOL_TXS

    def __init__(self, settings: ChainSettings) -> None:
        super().__init__(settings)
        self._api = EsploraClient.for_settings(settings)

    # -------------------------------------------------------------------------------- lifecycle

    async def open(self) -> str:
        self._check_currencies()
        if self._network not in CHAINS_OF_NETWORK:
            raise ConfigMismatch(f"{self._settings.name}: unknown network {self._network!r}")
        genesis = await self._hash_at(0)
        if genesis is None:
            raise self._not_an_api("/block-height/0")
        check_network(self._settings.name, self._network, genesis)
        return f"bitcoin:{genesis}"

    async def close(self) -> None:
        await self._api.close()

    # ----------------------------------------------------------------------------------- blocks

    async def head(self) -> BlockRef:
        best = parse_hash(_text(await self._required("/blocks/tip/hash"), "/blocks/tip/hash"), "tip hash")
        cached = self._refs.get(best)
        if cached is not None:
            return cached
        header = await self._header(best)
        parent = self._refs.get(header.parent_hash)
        if parent is not None:  # the usual case: one new block on one we know
            return self._remember(BlockRef(parent.height + 1, best, header.parent_hash))
        # Height and hash are two answers: a block arriving between them is caught by asking which block
        # is at that height, a pair that always belongs together.
        height = await self._tip_height()
        at_height = await self._hash_at(height)
        if at_height is None:
            raise ChainDataError(f"the API's tip at height {height} went away while asked; retry", cause=best)
        if at_height == best:
            return self._remember(BlockRef(height, best, header.parent_hash))
        return self._refs.get(at_height) or await self._fetch_ref(height, at_height)

    async def block_ref(self, height: int) -> BlockRef | None:
        if height < 0:
            return None
        block_hash = await self._hash_at(height)
        if block_hash is None:
            tip = await self._tip_height()
            if height > tip:
                return None
            raise ChainDataError(f"GET /block-height/{height} answered 404 below the tip {tip}", cause=height)
        return self._refs.get(block_hash) or await self._fetch_ref(height, block_hash)

    async def _fetch_ref(self, height: int, block_hash: str) -> BlockRef:
        header = await self._header(block_hash)
        return self._remember(BlockRef(height, block_hash, header.parent_hash))

    async def _header(self, block_hash: str) -> rawblock.BlockHeader:
        what = f"GET /block/{block_hash}/header"
        body = await self._api.get("/block/:hash/header", block_hash)
        if body is None:
            raise ChainDataError(f"{what}: 404 for a block the API named", cause=block_hash)
        try:
            raw = bytes.fromhex(_text(body, what))
        except ValueError:
            raise ChainDataError(f"{what}: not hex: {body[:100]!r}", cause=body[:2000]) from None
        if len(raw) != rawblock.HEADER_SIZE:
            raise ChainDataError(f"{what}: a header is 80 bytes, got {len(raw)}", cause=body[:2000])
        header = rawblock.parse_header(raw)
        if header.block_hash != block_hash:
            raise ChainDataError(f"{what} returned block {header.block_hash}", cause=block_hash)
        return header

    async def _hash_at(self, height: int) -> str | None:
        """The main-chain block hash at `height`, None above the API's tip."""
        body = await self._api.get("/block-height/:height", height)
        if body is None:
            return None
        return parse_hash(_text(body, f"GET /block-height/{height}"), f"GET /block-height/{height}")

    async def _tip_height(self) -> int:
        text = _text(await self._required("/blocks/tip/height"), "GET /blocks/tip/height")
        if not text.isascii() or not text.isdigit():
            raise ChainDataError(f"GET /blocks/tip/height: not a height: {text[:80]!r}", cause=text[:200])
        return parse_height(int(text), "GET /blocks/tip/height")

    # ------------------------------------------------------------------------------------- scan

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        if to_height < from_height:
            return []
        heights = range(from_height, to_height + 1)
        hashes = await _all(self._hash_at(h) for h in heights)
        missing = [h for h, block_hash in zip(heights, hashes, strict=True) if block_hash is None]
        if missing:
            raise ChainDataError(
                f"blocks {from_height}..{to_height} are not all on the API's chain (none at {missing[0]})",
                cause=missing,
            )
        named = [h for h in hashes if h is not None]
        scripts = self._scripts(watch)
        watched = outpoint_keys(watch.outpoints)
        scans: list[BlockScan] = []
        # A window of CONCURRENCY blocks at a time: a long catch-up never holds more raw blocks than that.
        for start in range(0, len(named), CONCURRENCY):
            window = named[start : start + CONCURRENCY]
            for block_hash, raw in zip(window, await _all(map(self._raw_block, window)), strict=True):
                scans.append(self._walk(from_height + len(scans), block_hash, raw, scripts, watched, scans))
        return scans

    async def _raw_block(self, block_hash: str) -> bytes:
        raw = await self._api.get("/block/:hash/raw", block_hash, max_bytes=MAX_BLOCK_BYTES)
        if raw is None:
            raise ChainDataError(f"the API no longer has block {block_hash} it named", cause=block_hash)
        return raw

    def _block_source(self, block_hash: str) -> str:
        return f"GET /block/{block_hash}/raw"

    # ---------------------------------------------------------------------------------- mempool

    async def _list_mempool(self) -> list[str]:
        body = await self._required("/mempool/txids", max_bytes=MAX_MEMPOOL_LIST_BYTES)
        answer = _json(body, "GET /mempool/txids")
        if not isinstance(answer, list):
            kind = type(answer).__name__
            raise ChainDataError(f"GET /mempool/txids: expected a list, got {kind}", cause=body[:2000])
        return [parse_hash(t, "GET /mempool/txids entry") for t in answer]

    async def _raw_txs(self, txids: Sequence[str]) -> list[bytes | None]:
        return await _all(self._api.get("/tx/:txid/raw", txid, max_bytes=MAX_TX_BYTES) for txid in txids)

    def _tx_source(self, txid: str) -> str:
        return f"GET /tx/{txid}/raw"

    # ------------------------------------------------------------------------------------- fate

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        """PENDING if in the API's mempool, MINED (with its height) if the API places it in a block of
        its main chain, else ABSENT: a 404, or `{"confirmed": false}`, which Esplora also answers for a
        transaction it does not know. Never UNKNOWN: another node may still mine it."""
        txid = transfer.txid
        if txid in await self._recent_mempool_txids():
            return TxFate(TxState.PENDING, "in the Esplora API's mempool")
        what = f"GET /tx/{txid}/status"
        body = await self._api.get("/tx/:txid/status", txid)
        if body is None:
            return TxFate(TxState.ABSENT, "not known to the Esplora API")
        status = _json(body, what)
        if not isinstance(status, dict) or not isinstance(status.get("confirmed"), bool):
            raise ChainDataError(
                f'{what}: expected {{"confirmed": bool, ...}}, got {body[:200]!r}', cause=body
            )
        if not status["confirmed"]:
            return TxFate(TxState.ABSENT, "not in the Esplora API's mempool or chain")
        height = parse_height(status.get("block_height"), f"{what} block_height")
        block_hash = parse_hash(status.get("block_hash"), f"{what} block_hash")
        return TxFate(TxState.MINED, f"in block {block_hash}, says the Esplora API", block_height=height)

    # ---------------------------------------------------------------------------------- helpers

    async def _required(self, endpoint: str, max_bytes: int = SMALL_ANSWER_BYTES) -> bytes:
        """An endpoint that always exists on an Esplora API: a 404 means rpc_url points elsewhere."""
        body = await self._api.get(endpoint, max_bytes=max_bytes)
        if body is None:
            raise self._not_an_api(endpoint)
        return body

    def _not_an_api(self, endpoint: str) -> NodeRejected:
        return NodeRejected(
            f"{self._settings.name}: GET {endpoint} answered 404: rpc_url must be an Esplora API's base URL, "
            "e.g. https://mempool.space/signet/api or https://blockstream.info/testnet/api",
            code=404,
        )


# ------------------------------------------------------------------------------------------ helpers


def check_network(name: str, network: str, genesis: str) -> None:
    """Pure: raise WrongChain unless the chain of genesis hash `genesis` is one the config's network takes."""
    expected = CHAINS_OF_NETWORK[network]
    chain = GENESIS_CHAINS.get(genesis)
    if chain not in expected:
        follows = repr(chain) if chain else f"of unknown genesis {genesis}"
        raise WrongChain(
            f"{name}: the Esplora API follows Bitcoin {follows}, the configuration's network is {network} "
            f"({', '.join(sorted(expected))})",
            cause=genesis,
        )


def _fill(endpoint: str, args: Sequence[str | int]) -> str:
    """ "/block/:hash/raw" with ("00ab...",) -> "/block/00ab.../raw"."""
    values = iter(args)
    parts = [quote(str(next(values)), safe="") if p.startswith(":") else p for p in endpoint.split("/")]
    if next(values, None) is not None:
        raise ValueError(f"{endpoint}: too many arguments {args!r}")
    return "/".join(parts)


def _not_found(answer: HttpAnswer) -> bool:
    # 404 is an answer, not a failure: each call says what it means (above the tip, an unknown
    # transaction, or an rpc_url that is not an Esplora API).
    return answer.status == 404


def _body_unless_not_found(answer: HttpAnswer) -> bytes | None:
    return None if answer.status == 404 else answer.body


def _text(body: bytes, what: str) -> str:
    try:
        return body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ChainDataError(f"{what}: not text: {body[:80]!r}", cause=body[:2000]) from None


def _json(body: bytes, what: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ChainDataError(f"{what}: not JSON: {body[:80]!r}", cause=exc) from None


async def _all(calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of `calls`, run together (the client's semaphore bounds the requests in flight), in
    order. The first failure cancels the others and is raised as itself, not as an ExceptionGroup."""
    pending = list(calls)
    if len(pending) <= 1:
        return [await call for call in pending]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(call) for call in pending]
    except BaseExceptionGroup as failed:
        chain_errors = [e for e in failed.exceptions if isinstance(e, ChainError)]
        if not chain_errors:
            raise
        first = chain_errors[0]
    else:
        return [task.result() for task in tasks]
    raise first  # outside the handler: it keeps its own cause and gets no group as context
