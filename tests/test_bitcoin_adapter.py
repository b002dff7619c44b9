"""The bitcoin-core adapter.

Part 1, against a scripted JSON-RPC node on 127.0.0.1: what a bcoin regtest node cannot show, i.e.
Bitcoin Core's error codes (-5, -8, -28), the call counts behind the caches, batch sizes, a node that
contradicts itself. The scripted node serves real blocks and transactions built with python-bitcoinlib.

Part 2, against a real bcoin regtest node (devnet.bcoin, fixtures in tests/conftest.py):
deposits to every address type in the mempool and in blocks, reorgs, double-spends, taproot, fates.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from bitcoin.core import (
    CBlock,
    COutPoint,
    CScriptWitness,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    b2lx,
)
from bitcoin.core.script import CScript

from chains.base import (
    BlockScan,
    ChainDataError,
    ChainSettings,
    ConfigMismatch,
    CurrencySpec,
    MempoolScan,
    NodeRejected,
    NodeUnavailable,
    Spend,
    Transfer,
    TxState,
    WatchList,
    WrongChain,
)
from chains.bitcoin import adapter as adapter_module
from chains.bitcoin.adapter import BitcoinCoreAdapter, MempoolIndex
from chains.bitcoin.address import address_for_script, witness_script
from chains.bitcoin.rawblock import walk_transaction
from chains.registry import adapter_class
from devnet import btc_tools as bt
from devnet.bcoin import BcoinNode

RNG = random.Random(11)
BTC = CurrencySpec("BTC", 8)


def settings(url: str, network: str = "regtest", **overrides: Any) -> ChainSettings:
    values: dict[str, Any] = {
        "name": "bitcoin",
        "network": network,
        "rpc_url": url,
        "currencies": (BTC,),
        "timeout_s": 10.0,
    }
    values.update(overrides)
    return ChainSettings(**values)


def new_script() -> bytes:
    return witness_script(0, RNG.randbytes(20))


def payment_tx(outputs: Sequence[tuple[bytes, int]], prevouts: Sequence[COutPoint] = ()) -> CTransaction:
    prevouts = prevouts or [COutPoint(RNG.randbytes(32), 0)]
    vin = [CTxIn(p, CScript(), 0xFFFFFFFD) for p in prevouts]
    wit = CTxWitness([CTxInWitness(CScriptWitness([RNG.randbytes(71), RNG.randbytes(33)])) for _ in vin])
    return CTransaction(vin, [CTxOut(v, CScript(s)) for s, v in outputs], 0, 2, wit)


def coinbase_tx(height: int) -> CTransaction:
    vin = [CTxIn(COutPoint(), CScript(bytes([1, height % 256]) + b"scripted"), 0xFFFFFFFF)]
    return CTransaction(vin, [CTxOut(50 * 10**8, CScript(new_script()))], 0, 2)


def outpoint(tx: CTransaction, vout: int) -> str:
    return f"{b2lx(tx.GetTxid())}:{vout}"


# ------------------------------------------------------------------------------------ scripted node


class ScriptedNode:
    """Answers the seven calls the adapter uses from python-bitcoinlib blocks, the way Bitcoin Core does
    (or bcoin, with `bcoin_errors`), and counts them. `fail` forces an error object for a method."""

    def __init__(self, chain: str = "regtest", bcoin_errors: bool = False) -> None:
        self.chain_name = chain
        self.bcoin_errors = bcoin_errors
        self.main: list[str] = []  # block hashes by height
        self.blocks: dict[str, bytes] = {}  # every block ever made, stale ones too
        self.mempool: dict[str, bytes] = {}
        self.mined: dict[str, bytes] = {}  # the transaction index
        self.calls: Counter[str] = Counter()
        self.batch_sizes: list[tuple[str, int]] = []
        self.fail: dict[str, tuple[int, str]] = {}
        self.hash_override: dict[int, str] = {}  # getblockhash answers that disagree with the chain
        self.block_override: dict[str, bytes] = {}  # getblock answers that are another block
        self.gone_from_mempool: set[str] = set()  # listed by getrawmempool, unknown to getrawtransaction
        self.server: TestServer | None = None
        self.mine([])  # genesis

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/"))

    def mine(self, txs: Sequence[CTransaction], parent_height: int | None = None) -> str:
        """A block on the tip (or on the block at `parent_height`, which reorganises the chain)."""
        height = len(self.main) if parent_height is None else parent_height + 1
        parent = bytes.fromhex(self.main[height - 1])[::-1] if height > 0 else bytes(32)
        block = CBlock(
            nVersion=0x20000000, hashPrevBlock=parent, nBits=0x207FFFFF, nTime=1_600_000_000 + height,
            nNonce=RNG.randrange(2**32), vtx=[coinbase_tx(height), *txs],
        )  # fmt: skip
        block_hash = b2lx(block.GetHash())
        self.blocks[block_hash] = block.serialize()
        del self.main[height:]
        self.main.append(block_hash)
        for tx in txs:
            txid = b2lx(tx.GetTxid())
            self.mempool.pop(txid, None)
            self.mined[txid] = tx.serialize()
        return block_hash

    def submit(self, tx: CTransaction) -> str:
        txid = b2lx(tx.GetTxid())
        self.mempool[txid] = tx.serialize()
        return txid

    async def __aenter__(self) -> ScriptedNode:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.close()

    async def _handle(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        if isinstance(payload, list):
            self.batch_sizes += [(payload[0]["method"], len(payload))] if payload else []
            return web.Response(body=orjson.dumps([self._answer(c) for c in payload]))
        answer = self._answer(payload)
        # Bitcoin Core answers a single failed call with HTTP 500 and the JSON-RPC error body.
        return web.Response(body=orjson.dumps(answer), status=500 if answer.get("error") else 200)

    def _answer(self, call: dict[str, Any]) -> dict[str, Any]:
        method, params = call["method"], call.get("params", [])
        self.calls[method] += 1
        try:
            if method in self.fail:
                code, message = self.fail[method]
                raise _RpcError(code, message)
            result = getattr(self, f"rpc_{method}")(*params)
        except _RpcError as exc:
            return {"result": None, "error": {"code": exc.code, "message": exc.message}, "id": call["id"]}
        return {"result": result, "error": None, "id": call["id"]}

    def _not_found(self, what: str) -> _RpcError:
        return _RpcError(-1 if self.bcoin_errors else -5, f"{what} not found")

    def rpc_getblockchaininfo(self) -> dict[str, Any]:
        return {"chain": self.chain_name, "blocks": len(self.main) - 1, "bestblockhash": self.main[-1]}

    def rpc_getblockcount(self) -> int:
        return len(self.main) - 1

    def rpc_getbestblockhash(self) -> str:
        return self.main[-1]

    def rpc_getblockhash(self, height: int) -> str:
        if height in self.hash_override:
            return self.hash_override[height]
        if not 0 <= height < len(self.main):
            raise (
                _RpcError(-1, "Not found.")
                if self.bcoin_errors
                else _RpcError(-8, "Block height out of range")
            )
        return self.main[height]

    def rpc_getblock(self, block_hash: str, verbosity: int) -> str:
        assert verbosity == 0
        raw = self.block_override.get(block_hash) or self.blocks.get(block_hash)
        if raw is None:
            raise self._not_found("Block")
        return raw.hex()

    def rpc_getrawmempool(self) -> list[str]:
        return list(self.mempool)

    def rpc_getrawtransaction(self, txid: str, verbose: int) -> str:
        assert verbose == 0
        raw = None if txid in self.gone_from_mempool else self.mempool.get(txid) or self.mined.get(txid)
        if raw is None:
            raise self._not_found("No such mempool or blockchain transaction.")
        return raw.hex()


class _RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@pytest.fixture
async def node() -> AsyncIterator[ScriptedNode]:
    async with ScriptedNode() as scripted:
        yield scripted


@pytest.fixture
async def btc(node: ScriptedNode) -> AsyncIterator[BitcoinCoreAdapter]:
    adapter = BitcoinCoreAdapter(settings(node.url))
    yield adapter
    await adapter.close()


def watching(*scripts: bytes, outpoints: Sequence[str] = ()) -> WatchList:
    return WatchList({"BTC": {s: i for i, s in enumerate(scripts, start=1)}}, frozenset(outpoints))


# ------------------------------------------------------------------------------------ open


def test_registered_as_bitcoin_core() -> None:
    cls = adapter_class("bitcoin-core")
    assert cls is BitcoinCoreAdapter
    assert (cls.capabilities, cls.native_decimals, cls.default_min_confirmations) == (
        frozenset({"mempool"}),
        8,
        1,
    )


async def test_open_returns_the_genesis_identity(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    assert await btc.open() == f"bitcoin:{node.main[0]}"


@pytest.mark.parametrize(
    ("network", "chain", "ok"),
    [
        ("mainnet", "main", True),
        ("mainnet", "test", False),
        ("testnet", "test", True),
        ("testnet", "testnet4", True),
        ("testnet", "signet", True),
        ("testnet", "regtest", False),
        ("regtest", "regtest", True),
        ("regtest", "main", False),
    ],
)
async def test_open_checks_the_chain(network: str, chain: str, ok: bool) -> None:
    async with ScriptedNode(chain) as scripted:
        adapter = BitcoinCoreAdapter(settings(scripted.url, network))
        try:
            if ok:
                assert (await adapter.open()).startswith("bitcoin:")
            else:
                with pytest.raises(WrongChain, match=f"the node follows Bitcoin '{chain}'"):
                    await adapter.open()
        finally:
            await adapter.close()


@pytest.mark.parametrize(
    "currencies",
    [(), (BTC, CurrencySpec("LTC", 8)), (CurrencySpec("USDT", 6, "0x" + "11" * 20),)],
)
async def test_open_wants_exactly_one_native_currency(
    node: ScriptedNode, currencies: tuple[CurrencySpec, ...]
) -> None:
    adapter = BitcoinCoreAdapter(settings(node.url, currencies=currencies))
    with pytest.raises(ConfigMismatch, match="exactly one currency without a contract"):
        await adapter.open()
    await adapter.close()


async def test_warming_up_is_an_outage(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    node.fail = {
        m: (-28, "Loading block index...") for m in ("getblockchaininfo", "getbestblockhash", "getblockhash")
    }
    with pytest.raises(NodeUnavailable, match="warming up"):
        await btc.open()
    with pytest.raises(NodeUnavailable, match="warming up"):
        await btc.head()
    with pytest.raises(NodeUnavailable, match="warming up"):
        await btc.scan(0, 0, watching())


async def test_other_errors_are_rejections(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    node.fail = {"getbestblockhash": (-32601, "Method not found")}
    with pytest.raises(NodeRejected) as rejected:
        await btc.head()
    assert rejected.value.code == -32601


async def test_stopped_node_is_unavailable() -> None:
    async with ScriptedNode() as scripted:
        url = scripted.url
    adapter = BitcoinCoreAdapter(settings(url))
    with pytest.raises(NodeUnavailable):
        await adapter.head()
    await adapter.close()


async def test_rpc_calls_reach_the_daemons_observer(node: ScriptedNode) -> None:
    seen: list[tuple[str, str]] = []
    adapter = BitcoinCoreAdapter(
        settings(node.url, rpc_observer=lambda m, outcome, _: seen.append((m, outcome)))
    )
    await adapter.head()
    node.fail = {"getbestblockhash": (-28, "Loading block index...")}
    with pytest.raises(NodeUnavailable):
        await adapter.head()
    await adapter.close()
    assert seen[0] == ("getbestblockhash", "ok")
    assert seen[-1] == (
        "getbestblockhash",
        "NodeRejected",
    )  # the client sees the rejection; -28 is mapped above it


# ------------------------------------------------------------------------------------ head, refs


async def test_polling_an_unchanged_head_costs_one_call(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    for _ in range(3):
        node.mine([])
    first = await btc.head()
    assert (first.height, first.block_hash, first.parent_hash) == (3, node.main[3], node.main[2])
    node.calls.clear()
    for _ in range(5):
        assert await btc.head() == first
    assert node.calls == Counter({"getbestblockhash": 5})


async def test_scan_reuses_the_block_fetched_for_head(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    script = new_script()
    tx = payment_tx([(script, 1234)])
    node.mine([tx])
    head = await btc.head()
    assert node.calls["getblock"] == 1
    (scan,) = await btc.scan(head.height, head.height, watching(script))
    assert node.calls["getblock"] == 1  # not fetched again
    assert scan.ref == head
    assert [(t.txid, t.amount) for t in scan.transfers] == [(b2lx(tx.GetTxid()), 1234)]


async def test_head_follows_a_new_block(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    old = await btc.head()
    node.mine([])
    new = await btc.head()
    assert (new.height, new.parent_hash) == (old.height + 1, old.block_hash)


@pytest.mark.parametrize("bcoin_errors", [False, True])
async def test_block_ref_above_the_tip_is_none(bcoin_errors: bool) -> None:
    """Core answers getblockhash above the tip with -8, bcoin with -1: both mean "not that high"."""
    async with ScriptedNode(bcoin_errors=bcoin_errors) as scripted:
        scripted.mine([])
        adapter = BitcoinCoreAdapter(settings(scripted.url))
        try:
            assert await adapter.block_ref(2) is None
            assert await adapter.block_ref(-1) is None
            ref = await adapter.block_ref(1)
            assert ref is not None and (ref.block_hash, ref.parent_hash) == (
                scripted.main[1],
                scripted.main[0],
            )
            genesis = await adapter.block_ref(0)
            assert genesis is not None and genesis.parent_hash == "00" * 32
        finally:
            await adapter.close()


async def test_block_ref_not_found_below_the_tip_is_a_contradiction(
    node: ScriptedNode, btc: BitcoinCoreAdapter
) -> None:
    node.mine([])
    node.fail = {"getblockhash": (-5, "not found")}
    with pytest.raises(ChainDataError, match="failed below the tip"):
        await btc.block_ref(1)


async def test_a_block_that_is_not_the_one_asked_for(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    node.mine([])
    node.block_override[node.main[1]] = node.blocks[node.main[0]]
    with pytest.raises(ChainDataError, match="returned block"):
        await btc.block_ref(1)


async def test_garbage_block_is_chain_data_error(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    node.mine([])
    node.block_override[node.main[1]] = node.blocks[node.main[1]][:-3]
    with pytest.raises(ChainDataError, match="truncated"):
        await btc.scan(1, 1, watching())


# ------------------------------------------------------------------------------------ scan


async def test_scan_finds_payments_and_spends_in_order(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    a, b = new_script(), new_script()
    funding = payment_tx([(a, 5000), (b, 7000)])
    node.mine([funding])
    spender = payment_tx([(new_script(), 4000), (a, 900)], [COutPoint(funding.GetTxid(), 1)])
    node.mine([])
    node.mine([spender])
    watch = watching(a, b, outpoints=[outpoint(funding, 1)])
    scans = await btc.scan(1, 3, watch)
    assert [s.ref.height for s in scans] == [1, 2, 3]
    assert [s.ref.parent_hash for s in scans] == node.main[0:3]
    assert [s.ref.block_hash for s in scans] == node.main[1:4]
    funding_txid, spender_txid = b2lx(funding.GetTxid()), b2lx(spender.GetTxid())
    assert scans[0].transfers == (
        Transfer(
            "BTC",
            1,
            address_for_script(a, "regtest"),
            5000,
            funding_txid,
            0,
            inputs=(outpoint_of(funding, 0),),
        ),
        Transfer(
            "BTC",
            2,
            address_for_script(b, "regtest"),
            7000,
            funding_txid,
            1,
            inputs=(outpoint_of(funding, 0),),
        ),
    )
    assert scans[1].transfers == () and scans[1].spends == ()
    assert [(t.txid, t.index, t.amount) for t in scans[2].transfers] == [(spender_txid, 1, 900)]
    assert scans[2].transfers[0].inputs == (outpoint(funding, 1),)
    assert scans[2].spends == (Spend(outpoint(funding, 1), spender_txid),)


def outpoint_of(tx: CTransaction, input_index: int) -> str:
    prevout = tx.vin[input_index].prevout
    return f"{b2lx(prevout.hash)}:{prevout.n}"


async def test_scan_of_an_empty_range(btc: BitcoinCoreAdapter) -> None:
    assert await btc.scan(5, 4, watching()) == []


async def test_scan_beyond_the_tip_is_chain_data_error(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    with pytest.raises(ChainDataError, match="not all on the node's chain"):
        await btc.scan(0, 3, watching())


async def test_chain_changing_during_the_scan(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    for _ in range(4):
        node.mine([])
    old_branch = list(node.main)
    node.mine([], parent_height=1)  # a new block 2 on block 1: a reorg
    node.mine([])
    # getblockhash answered for 1..2 on the new chain, for 3 still on the old one.
    node.hash_override[3] = old_branch[3]
    with pytest.raises(ChainDataError, match="the chain changed during the scan"):
        await btc.scan(1, 3, watching())


async def test_blocks_are_fetched_in_bounded_batches(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    for _ in range(120):
        node.mine([])
    scans = await btc.scan(1, 120, watching())
    assert [s.ref.height for s in scans] == list(range(1, 121))
    sizes = [n for method, n in node.batch_sizes if method == "getblock"]
    assert sum(sizes) == 120 and max(sizes) <= adapter_module.MAX_BLOCKS_PER_BATCH
    assert sizes[0] == adapter_module.BLOCK_BATCH_HEX_BYTES // adapter_module.FIRST_BLOCK_HEX_ESTIMATE


# ------------------------------------------------------------------------------------ mempool


async def test_mempool_scan_fetches_only_new_transactions(
    node: ScriptedNode, btc: BitcoinCoreAdapter
) -> None:
    a = new_script()
    first = payment_tx([(a, 100)])
    node.submit(first)
    node.submit(payment_tx([(new_script(), 5)]))
    watch = watching(a)
    scan = await btc.mempool_scan(watch)
    assert [(t.txid, t.index, t.amount, t.watch_id) for t in scan.transfers] == [
        (b2lx(first.GetTxid()), 0, 100, 1)
    ]
    assert node.calls["getrawtransaction"] == 2
    second = payment_tx([(new_script(), 1), (a, 250)])
    node.submit(second)
    scan = await btc.mempool_scan(watch)
    assert node.calls["getrawtransaction"] == 3  # only the new one
    assert {(t.txid, t.index, t.amount) for t in scan.transfers} == {
        (b2lx(first.GetTxid()), 0, 100),
        (b2lx(second.GetTxid()), 1, 250),
    }
    node.mine([first])  # leaves the mempool
    scan = await btc.mempool_scan(watch)
    assert [t.txid for t in scan.transfers] == [b2lx(second.GetTxid())]
    assert node.calls["getrawtransaction"] == 3


async def test_mempool_scan_skips_a_transaction_that_vanished(
    node: ScriptedNode, btc: BitcoinCoreAdapter
) -> None:
    a = new_script()
    txs = [payment_tx([(a, 10 + i)]) for i in range(7)]
    for tx in txs:
        node.submit(tx)
    node.gone_from_mempool = {b2lx(txs[2].GetTxid()), b2lx(txs[5].GetTxid())}
    scan = await btc.mempool_scan(watching(a))
    assert sorted(t.amount for t in scan.transfers) == [10, 11, 13, 14, 16]


async def test_mempool_spends_follow_the_watched_outpoints(
    node: ScriptedNode, btc: BitcoinCoreAdapter
) -> None:
    deposit = payment_tx([(new_script(), 1000)])
    conflict = payment_tx([(new_script(), 990)], [deposit.vin[0].prevout])
    node.submit(conflict)
    a = new_script()
    by_currency = {"BTC": {a: 1}}
    assert (await btc.mempool_scan(WatchList(by_currency))).spends == ()
    watched = WatchList(by_currency, frozenset({outpoint_of(deposit, 0)}))
    scan = await btc.mempool_scan(watched)
    assert scan.spends == (Spend(outpoint_of(deposit, 0), b2lx(conflict.GetTxid())),)
    assert node.calls["getrawtransaction"] == 1  # answered from what was remembered
    node.mempool.clear()  # the conflict left the mempool
    assert (await btc.mempool_scan(watched)).spends == ()


async def test_mempool_rematches_after_a_watch_reload(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    a, b = new_script(), new_script()
    tx = payment_tx([(b, 300)])
    node.submit(tx)
    assert (await btc.mempool_scan(watching(a))).transfers == ()
    reloaded = watching(a, b)  # a new by_currency mapping: the daemon reloaded its addresses
    assert [(t.txid, t.amount, t.watch_id) for t in (await btc.mempool_scan(reloaded)).transfers] == [
        (b2lx(tx.GetTxid()), 300, 2)
    ]


async def test_mempool_scan_with_nothing_watched_asks_nothing(
    node: ScriptedNode, btc: BitcoinCoreAdapter
) -> None:
    node.submit(payment_tx([(new_script(), 1)]))
    assert await btc.mempool_scan(WatchList({})) == await btc.mempool_scan(watching())
    assert node.calls["getrawmempool"] == 0


def key(prevout: COutPoint) -> bytes:
    return bytes(prevout.hash) + prevout.n.to_bytes(4, "little")


def test_mempool_index_bookkeeping() -> None:
    """Replace-by-fee as the adapter sees it: `one` leaves (retain) before `replacement` arrives (add)."""
    a = new_script()
    one = payment_tx([(a, 5)])
    other = COutPoint(RNG.randbytes(32), 9)
    replacement = payment_tx([(new_script(), 4)], [one.vin[0].prevout, other])
    watched = {key(one.vin[0].prevout): "first:0", key(other): "other:9"}
    index = MempoolIndex()
    index.add(walk_transaction(one.serialize(), {a: 1}))
    assert len(index) == 1 and [p.value for p in index.payments()] == [5]
    assert list(index.spends(watched)) == [Spend("first:0", b2lx(one.GetTxid()))]
    index.retain(frozenset({b2lx(replacement.GetTxid())}))
    assert b2lx(one.GetTxid()) not in index and list(index.spends(watched)) == []
    index.add(walk_transaction(replacement.serialize(), {a: 1}))
    assert list(index.payments()) == []
    assert list(index.spends(watched)) == [
        Spend("first:0", b2lx(replacement.GetTxid())),
        Spend("other:9", b2lx(replacement.GetTxid())),
    ]
    index.retain(frozenset())
    assert len(index) == 0 and list(index.spends(watched)) == []


# ------------------------------------------------------------------------------------ fates


async def test_tx_fate(node: ScriptedNode, btc: BitcoinCoreAdapter) -> None:
    a = new_script()
    pending, mined, unknown = (payment_tx([(a, v)]) for v in (1, 2, 3))
    node.submit(pending)
    node.submit(mined)
    node.mine([mined])

    def transfer(tx: CTransaction) -> Transfer:
        return Transfer("BTC", 1, address_for_script(a, "regtest"), 1, b2lx(tx.GetTxid()), 0)

    assert (await btc.tx_fate(transfer(pending))).state is TxState.PENDING
    fate = await btc.tx_fate(transfer(mined))
    assert (fate.state, fate.block_height) == (TxState.MINED, None)
    fate = await btc.tx_fate(transfer(unknown))
    assert (fate.state, fate.reason) == (TxState.ABSENT, "not in the node's mempool or chain")
    assert node.calls["getrawmempool"] == 1  # one snapshot served the three questions


async def test_tx_fate_on_bcoin_errors() -> None:
    async with ScriptedNode(bcoin_errors=True) as scripted:
        adapter = BitcoinCoreAdapter(settings(scripted.url))
        try:
            transfer = Transfer("BTC", 1, "x", 1, "ab" * 32, 0)
            assert (await adapter.tx_fate(transfer)).state is TxState.ABSENT
        finally:
            await adapter.close()


# ==================================================================================== real bcoin node


def node_settings(node: BcoinNode, network: str = "regtest") -> ChainSettings:
    return settings(node.rpc_url, network, rpc_user=node.rpc_user, rpc_password=node.rpc_password)


@pytest.fixture
async def live(bcoin: BcoinNode) -> AsyncIterator[BitcoinCoreAdapter]:
    adapter = BitcoinCoreAdapter(node_settings(bcoin))
    await adapter.open()
    yield adapter
    await adapter.close()


@pytest.fixture
async def fresh_live(fresh_bcoin: BcoinNode) -> AsyncIterator[BitcoinCoreAdapter]:
    adapter = BitcoinCoreAdapter(node_settings(fresh_bcoin))
    await adapter.open()
    yield adapter
    await adapter.close()


class Watched:
    """Fresh addresses (keys held by the test) and the WatchList the daemon would build for them."""

    def __init__(self, kinds: Sequence[bt.AddressKind]) -> None:
        self.addresses = [bt.make_address(kind) for kind in kinds]
        self.by_currency = {
            "BTC": {
                BitcoinCoreAdapter.watch_key(BTC, w.address, "regtest"): watch_id
                for watch_id, w in enumerate(self.addresses, start=1)
            }
        }

    def list(self, outpoints: Sequence[str] = ()) -> WatchList:
        return WatchList(self.by_currency, frozenset(outpoints))

    def expected(self, node: BcoinNode, txid: str, watch_id: int, amount: int) -> Transfer:
        """The Transfer the adapter must report, computed with python-bitcoinlib from the node's tx."""
        w = self.addresses[watch_id - 1]
        tx = bt.raw_transaction(node, txid)
        inputs = tuple(f"{b2lx(i.prevout.hash)}:{i.prevout.n}" for i in tx.vin)
        vout = bt.find_output(tx, w.script_pubkey)
        return Transfer("BTC", watch_id, w.address, amount, txid, vout, inputs=inputs)


async def mined_scan(adapter: BitcoinCoreAdapter, node: BcoinNode, watch: WatchList) -> BlockScan:
    """Mine one block and scan it (through head(), as the follower does)."""
    bt.mine(node)
    head = await adapter.head()
    assert head.height == bt.height(node)
    (scan,) = await adapter.scan(head.height, head.height, watch)
    assert scan.ref == head
    return scan


async def test_live_open(bcoin: BcoinNode, live: BitcoinCoreAdapter) -> None:
    assert await live.open() == f"bitcoin:{bt.block_hash(bcoin, 0)}"
    for network in ("mainnet", "testnet"):
        adapter = BitcoinCoreAdapter(node_settings(bcoin, network))
        with pytest.raises(
            WrongChain, match=f"the node follows Bitcoin 'regtest', the configuration's network is {network}"
        ):
            await adapter.open()
        await adapter.close()


async def test_live_deposits_of_every_type_in_the_mempool_then_in_a_block(
    bcoin: BcoinNode, live: BitcoinCoreAdapter
) -> None:
    kinds: list[bt.AddressKind] = ["p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh"]
    watched = Watched(kinds)
    amounts = [1_234_567, 2_000_001, 333_333, 40_000_009]
    txids = [bt.pay(bcoin, w.address, amount) for w, amount in zip(watched.addresses, amounts, strict=True)]
    expected = [
        watched.expected(bcoin, txid, watch_id, amount)
        for watch_id, (txid, amount) in enumerate(zip(txids, amounts, strict=True), start=1)
    ]
    assert expected[0].address[0] in "mn" and expected[1].address[0] == "2"
    assert all(t.address.startswith("bcrt1q") for t in expected[2:])
    in_mempool = await live.mempool_scan(watched.list())
    assert sorted(in_mempool.transfers, key=lambda t: t.watch_id) == expected
    for transfer in expected:
        assert (await live.tx_fate(transfer)).state is TxState.PENDING
    scan = await mined_scan(live, bcoin, watched.list())
    assert sorted(scan.transfers, key=lambda t: t.watch_id) == expected
    assert (await live.mempool_scan(watched.list())).transfers == ()  # mined: out of the mempool
    for transfer in expected:
        assert (await live.tx_fate(transfer)).state is TxState.MINED


async def test_live_two_outputs_of_one_tx_and_a_second_payment(
    bcoin: BcoinNode, live: BitcoinCoreAdapter
) -> None:
    watched = Watched(["p2wpkh", "p2pkh"])
    first, second = (w.address for w in watched.addresses)
    txid = bt.pay_many(bcoin, {first: 50_000, second: 60_000})
    again = bt.pay(bcoin, first, 70_000)
    scan = await mined_scan(live, bcoin, watched.list())
    assert sorted(scan.transfers, key=lambda t: (t.txid != txid, t.watch_id)) == [
        watched.expected(bcoin, txid, 1, 50_000),
        watched.expected(bcoin, txid, 2, 60_000),
        watched.expected(bcoin, again, 1, 70_000),
    ]
    vouts = {t.index for t in scan.transfers if t.txid == txid}
    assert len(vouts) == 2  # one transfer per output, each with its own vout


async def test_live_taproot_payment_in_a_constructed_block(
    bcoin: BcoinNode, live: BitcoinCoreAdapter
) -> None:
    watched = Watched(["p2tr"])
    (w,) = watched.addresses
    assert w.address.startswith("bcrt1p")
    block_hash, txid = bt.taproot_block(bcoin, w.script_pubkey, 54_321)
    head = await live.head()
    assert head.block_hash == block_hash
    (scan,) = await live.scan(head.height, head.height, watched.list())
    assert scan.transfers == (watched.expected(bcoin, txid, 1, 54_321),)
    assert scan.transfers[0].address == w.address


async def test_live_scan_agrees_with_python_bitcoinlib(bcoin: BcoinNode, live: BitcoinCoreAdapter) -> None:
    """Every output of the last blocks that has an address, watched at once: the walk must find exactly
    what the decoded blocks hold (coinbases with witness commitments, the wallet's segwit transactions)."""
    bt.pay(bcoin, bt.make_address("p2sh-p2wpkh").address, 12_345)
    bt.mine(bcoin)
    tip = bt.height(bcoin)
    heights = range(tip - 4, tip + 1)
    blocks = [bt.raw_block(bcoin, bt.block_hash(bcoin, h)) for h in heights]
    scripts: dict[bytes, int] = {}
    expected = set()
    for block in blocks:
        for tx in block.vtx:
            for vout, out in enumerate(tx.vout):
                script = bytes(out.scriptPubKey)
                if script.startswith(b"\x6a"):
                    continue  # OP_RETURN (the witness commitment): no address, so never a watch key
                scripts.setdefault(script, len(scripts) + 1)
                expected.add((b2lx(tx.GetTxid()), vout, out.nValue, scripts[script]))
    scans = await live.scan(heights.start, heights.stop - 1, WatchList({"BTC": scripts}))
    found = {(t.txid, t.index, t.amount, t.watch_id) for s in scans for t in s.transfers}
    assert found == expected
    assert [s.ref.block_hash for s in scans] == [b2lx(b.GetHash()) for b in blocks]


async def test_live_refs(bcoin: BcoinNode, live: BitcoinCoreAdapter) -> None:
    tip = bt.height(bcoin)
    assert await live.block_ref(tip + 1) is None  # bcoin's -1 for a height above the tip
    ref = await live.block_ref(tip)
    assert ref is not None and (ref.block_hash, ref.parent_hash) == (
        bt.block_hash(bcoin, tip),
        bt.block_hash(bcoin, tip - 1),
    )
    scans = await live.scan(1, tip, WatchList({}))
    assert [s.ref.height for s in scans] == list(range(1, tip + 1))
    assert all(b.ref.parent_hash == a.ref.block_hash for a, b in itertools.pairwise(scans))


async def test_live_tx_fate_of_an_unknown_transaction(live: BitcoinCoreAdapter) -> None:
    transfer = Transfer("BTC", 1, "bcrt1q", 1, "ab" * 32, 0)
    fate = await live.tx_fate(transfer)
    assert (fate.state, fate.reason) == (TxState.ABSENT, "not in the node's mempool or chain")


async def test_live_reorg_moves_the_deposit_to_another_block(
    fresh_bcoin: BcoinNode, fresh_live: BitcoinCoreAdapter
) -> None:
    watched = Watched(["p2wpkh"])
    txid = bt.pay(fresh_bcoin, watched.addresses[0].address, 88_888)
    expected = watched.expected(fresh_bcoin, txid, 1, 88_888)
    before = await mined_scan(fresh_live, fresh_bcoin, watched.list())
    assert before.transfers == (expected,)
    new_blocks = bt.reorg(fresh_bcoin, depth=1, include_txs=[txid], extra_blocks=1)
    head = await fresh_live.head()
    assert head.block_hash == new_blocks[-1]
    scans = await fresh_live.scan(before.ref.height, head.height, watched.list())
    assert scans[0].ref.block_hash == new_blocks[0] != before.ref.block_hash
    assert scans[0].ref.parent_hash == before.ref.parent_hash
    assert scans[0].transfers == (expected,)  # same txid, vout and amount in the new block
    assert scans[1].transfers == ()


async def test_live_reorged_out_deposit_returns_to_the_mempool(
    fresh_bcoin: BcoinNode, fresh_live: BitcoinCoreAdapter
) -> None:
    watched = Watched(["p2pkh"])
    txid = bt.pay(fresh_bcoin, watched.addresses[0].address, 77_777)
    expected = watched.expected(fresh_bcoin, txid, 1, 77_777)
    await mined_scan(fresh_live, fresh_bcoin, watched.list())
    bt.reorg(fresh_bcoin, depth=1)  # the new branch does not hold it
    assert (await fresh_live.mempool_scan(watched.list())).transfers == (expected,)
    assert (await fresh_live.tx_fate(expected)).state is TxState.PENDING


async def test_live_double_spend_reorg_reports_the_spend(
    fresh_bcoin: BcoinNode, fresh_live: BitcoinCoreAdapter
) -> None:
    watched = Watched(["p2wpkh"])
    txid = bt.pay(fresh_bcoin, watched.addresses[0].address, 99_999)
    deposit = (await mined_scan(fresh_live, fresh_bcoin, watched.list())).transfers[0]
    assert deposit.txid == txid and deposit.inputs
    conflict, new_blocks = bt.double_spend_reorg(fresh_bcoin, txid)
    head = await fresh_live.head()
    assert head.block_hash == new_blocks[-1]
    # The daemon now watches the open deposit's inputs.
    watch = watched.list(deposit.inputs)
    scans = await fresh_live.scan(head.height - len(new_blocks) + 1, head.height, watch)
    assert scans[0].transfers == ()
    assert scans[0].spends == (Spend(deposit.inputs[0], conflict),)
    assert (await fresh_live.mempool_scan(watch)) == MempoolScan()
    fate = await fresh_live.tx_fate(deposit)
    assert fate.state is TxState.ABSENT, fate


async def test_live_double_spend_of_a_mempool_deposit(
    fresh_bcoin: BcoinNode, fresh_live: BitcoinCoreAdapter
) -> None:
    watched = Watched(["p2sh-p2wpkh"])
    txid = bt.pay(fresh_bcoin, watched.addresses[0].address, 12_121)
    (deposit,) = (await fresh_live.mempool_scan(watched.list())).transfers
    watch = watched.list(deposit.inputs)
    mempool_spends = (await fresh_live.mempool_scan(watch)).spends
    assert mempool_spends == (Spend(deposit.inputs[0], txid),)  # its own spend: the ledger ignores it
    conflict, new_blocks = bt.double_spend_reorg(fresh_bcoin, txid)
    head = await fresh_live.head()
    (scan,) = await fresh_live.scan(head.height, head.height, watch)
    assert scan.ref.block_hash == new_blocks[0]
    assert scan.spends == (Spend(deposit.inputs[0], conflict),)
    assert (await fresh_live.mempool_scan(watch)).transfers == ()
    assert (await fresh_live.tx_fate(deposit)).state is TxState.ABSENT


async def test_live_stopped_node_is_unavailable(
    fresh_bcoin: BcoinNode, fresh_live: BitcoinCoreAdapter
) -> None:
    await fresh_live.head()
    fresh_bcoin.stop()
    with pytest.raises(NodeUnavailable):
        await fresh_live.head()
    with pytest.raises(NodeUnavailable):
        await fresh_live.mempool_scan(Watched(["p2wpkh"]).list())
