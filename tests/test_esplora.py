"""The esplora adapter, against the local Esplora API (devnet.esplora_api) served from a real bcoin
regtest node: every block, transaction and reorg below is the node's own, read through the API's shape.

Part 1: what is the Esplora adapter's own (the genesis table, agreement with the bitcoin-core adapter on
the same node, request counts and concurrency, mempool paging, HTTP error mapping, fail-over); the
contract it shares with every adapter, and with bitcoin-core the address types, taproot and
double-spends, are in tests/chains/. Part 2: the real daemon process following the regtest chain
through the API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bitcoin.core import b2lx

from chains.base import (
    MempoolScan,
    NodeRejected,
    NodeUnavailable,
    Transfer,
    TxState,
    WatchList,
    WrongChain,
)
from chains.bitcoin import esplora as esplora_module
from chains.bitcoin.adapter import BitcoinCoreAdapter
from chains.bitcoin.esplora import (
    CHAINS_OF_NETWORK,
    CONCURRENCY,
    GENESIS_CHAINS,
    EsploraAdapter,
    EsploraClient,
    check_network,
)
from chains.jsonrpc import ResponseTooLarge
from devnet import btc_tools as bt
from devnet.bcoin import BcoinNode
from devnet.esplora_api import EsploraApi
from devnet.receiver import Receiver
from tests.chains.helpers import BTC, Watched, bitcoin_settings
from tests.daemon_process import DaemonProcess, free_port, write_config

KINDS: tuple[bt.AddressKind, ...] = ("p2pkh", "p2sh-p2wpkh", "p2wpkh", "p2wsh")


@pytest.fixture
async def api(bcoin: BcoinNode) -> AsyncIterator[EsploraApi]:
    async with EsploraApi.for_node(bcoin) as served:
        yield served


@pytest.fixture
async def esplora(api: EsploraApi) -> AsyncIterator[EsploraAdapter]:
    adapter = EsploraAdapter(bitcoin_settings(api.url))
    await adapter.open()
    yield adapter
    await adapter.close()


@dataclass
class Fresh:
    """A bcoin node of the test's own (free to reorganise), its API and an opened adapter."""

    node: BcoinNode
    api: EsploraApi
    adapter: EsploraAdapter


@pytest.fixture
async def fresh(fresh_bcoin: BcoinNode) -> AsyncIterator[Fresh]:
    async with EsploraApi.for_node(fresh_bcoin) as served:
        adapter = EsploraAdapter(bitcoin_settings(served.url))
        await adapter.open()
        yield Fresh(fresh_bcoin, served, adapter)
        await adapter.close()


# ==================================================================================== adapter


def test_watch_keys_are_the_core_adapters() -> None:
    """Both Bitcoin adapters key a watched address by its output script: a store moves between them."""
    for kind in bt.ADDRESS_KINDS:
        address = bt.make_address(kind).address
        key = EsploraAdapter.watch_key(BTC, address, "regtest")
        assert key == BitcoinCoreAdapter.watch_key(BTC, address, "regtest")
        assert EsploraAdapter.display_address(BTC, key, "regtest") == address


async def test_block_ref_below_genesis_is_none(esplora: EsploraAdapter) -> None:
    assert await esplora.block_ref(-1) is None


@pytest.mark.parametrize(("genesis", "chain"), sorted(GENESIS_CHAINS.items()))
@pytest.mark.parametrize("network", sorted(CHAINS_OF_NETWORK))
def test_the_genesis_hash_tells_the_network(genesis: str, chain: str, network: str) -> None:
    accepted = {
        "mainnet": {"main"},
        "testnet": {"testnet3", "testnet4", "signet"},
        "regtest": {"regtest"},
    }[network]
    if chain in accepted:
        check_network("bitcoin", network, genesis)
    else:
        with pytest.raises(WrongChain, match=f"follows Bitcoin '{chain}', the configuration's network is"):
            check_network("bitcoin", network, genesis)


def test_an_unknown_genesis_is_no_network() -> None:
    with pytest.raises(WrongChain, match="of unknown genesis ab"):
        check_network("bitcoin", "testnet", "ab" * 32)


async def test_open_wants_an_esplora_base_url(api: EsploraApi) -> None:
    adapter = EsploraAdapter(bitcoin_settings(api.url.removesuffix("/api")))  # the prefix forgotten
    with pytest.raises(NodeRejected, match="rpc_url must be an Esplora API's base URL") as rejected:
        await adapter.open()
    assert rejected.value.code == 404
    await adapter.close()


async def test_scans_agree_with_the_core_adapter(bcoin: BcoinNode, esplora: EsploraAdapter) -> None:
    """Every output of the last blocks watched at once, plus their inputs as watched outpoints: both
    adapters on the same node must give the very same BlockScans."""
    bt.pay(bcoin, bt.make_address("p2sh-p2wpkh").address, 12_345)
    bt.mine(bcoin)
    tip = bt.height(bcoin)
    scripts: dict[bytes, int] = {}
    outpoints: set[str] = set()
    for h in range(tip - 5, tip + 1):
        for tx in bt.raw_block(bcoin, bt.block_hash(bcoin, h)).vtx:
            outpoints.update(f"{b2lx(i.prevout.hash)}:{i.prevout.n}" for i in tx.vin if not tx.is_coinbase())
            for out in tx.vout:
                if not bytes(out.scriptPubKey).startswith(b"\x6a"):  # OP_RETURN has no address
                    scripts.setdefault(bytes(out.scriptPubKey), len(scripts) + 1)
    watch = WatchList({"BTC": scripts}, frozenset(outpoints))
    core = BitcoinCoreAdapter(
        bitcoin_settings(bcoin.rpc_url, rpc_user=bcoin.rpc_user, rpc_password=bcoin.rpc_password)
    )
    try:
        expected = await core.scan(tip - 5, tip, watch)
    finally:
        await core.close()
    scans = await esplora.scan(tip - 5, tip, watch)
    assert scans == expected
    assert sum(len(s.transfers) for s in scans) > 10 and sum(len(s.spends) for s in scans) > 0


async def test_requests_per_poll(bcoin: BcoinNode, api: EsploraApi, esplora: EsploraAdapter) -> None:
    """An unchanged head costs one request; a new block on a known parent two, then two to scan it."""
    head = await esplora.head()
    api.requests.clear()
    for _ in range(5):
        assert await esplora.head() == head
    assert dict(api.requests) == {"/blocks/tip/hash": 5}
    bt.mine(bcoin)
    api.requests.clear()
    new = await esplora.head()
    assert (new.height, new.parent_hash) == (head.height + 1, head.block_hash)
    assert dict(api.requests) == {"/blocks/tip/hash": 1, "/block/:hash/header": 1}
    api.requests.clear()
    await esplora.scan(new.height, new.height, WatchList({}))
    assert dict(api.requests) == {"/block-height/:height": 1, "/block/:hash/raw": 1}


async def test_a_head_without_known_parent_asks_its_height(bcoin: BcoinNode, api: EsploraApi) -> None:
    adapter = EsploraAdapter(bitcoin_settings(api.url))  # nothing cached yet
    try:
        head = await adapter.head()
        assert (head.height, head.block_hash) == (bt.height(bcoin), bt.best_hash(bcoin))
        assert head.parent_hash == bt.block_hash(bcoin, head.height - 1)
    finally:
        await adapter.close()


async def test_requests_in_flight_are_bounded(
    bcoin: BcoinNode, api: EsploraApi, esplora: EsploraAdapter
) -> None:
    tip = bt.height(bcoin)
    api.max_in_flight = 0
    scans = await esplora.scan(tip - 40, tip, WatchList({}))
    assert len(scans) == 41
    assert 1 <= api.max_in_flight <= CONCURRENCY


async def test_mempool_scan_fetches_only_new_transactions(
    bcoin: BcoinNode, api: EsploraApi, esplora: EsploraAdapter
) -> None:
    watched = Watched(["p2wpkh"])
    first = bt.pay(bcoin, watched.addresses[0].address, 100_000)
    scan = await esplora.mempool_scan(watched.list())
    assert [t.txid for t in scan.transfers] == [first]
    fetched = api.requests["/tx/:txid/raw"]
    second = bt.pay(bcoin, watched.addresses[0].address, 200_000)
    scan = await esplora.mempool_scan(watched.list())
    assert {t.txid for t in scan.transfers} == {first, second}
    assert api.requests["/tx/:txid/raw"] == fetched + 1  # only the new one
    bt.mine(bcoin)
    assert (await esplora.mempool_scan(watched.list())).transfers == ()
    assert api.requests["/tx/:txid/raw"] == fetched + 1


async def test_a_mempool_backlog_is_worked_off_over_polls(
    bcoin: BcoinNode, esplora: EsploraAdapter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EsploraAdapter, "max_new_mempool_txs", 2)
    bt.mine(bcoin)  # an empty mempool: only this test's payments are new
    watched = Watched(["p2wpkh"])
    txids = {bt.pay(bcoin, watched.addresses[0].address, 10_000 + i) for i in range(5)}
    found = [len((await esplora.mempool_scan(watched.list())).transfers) for _ in range(4)]
    assert found == [2, 4, 5, 5]
    assert {t.txid for t in (await esplora.mempool_scan(watched.list())).transfers} == txids
    bt.mine(bcoin)


async def test_mempool_scan_with_nothing_watched_asks_nothing(
    api: EsploraApi, esplora: EsploraAdapter
) -> None:
    api.requests.clear()
    assert await esplora.mempool_scan(WatchList({})) == MempoolScan()
    assert not api.requests


async def test_tx_fate_of_unknown_transactions(api: EsploraApi, esplora: EsploraAdapter) -> None:
    transfer = Transfer("BTC", 1, "bcrt1q", 1, "ab" * 32, 0)
    fate = await esplora.tx_fate(transfer)  # electrs answers {"confirmed": false} for a txid it never saw
    assert (fate.state, fate.reason) == (TxState.ABSENT, "not in the Esplora API's mempool or chain")
    api.faults["/tx/:txid/status"] = 404  # a server that answers 404 instead
    fate = await esplora.tx_fate(transfer)
    assert (fate.state, fate.reason) == (TxState.ABSENT, "not known to the Esplora API")


# ------------------------------------------------------------------------------------ HTTP errors


async def test_the_api_down_is_node_unavailable(fresh: Fresh) -> None:
    adapter, served = fresh.adapter, fresh.api
    await adapter.head()
    await served.stop()  # connection refused
    with pytest.raises(NodeUnavailable, match="GET /blocks/tip/hash"):
        await adapter.head()
    with pytest.raises(NodeUnavailable):
        await adapter.mempool_scan(Watched(["p2wpkh"]).list())
    await served.start()  # back on the same port
    assert (await adapter.head()).height == bt.height(fresh.node)
    fresh.node.stop()  # the API is up but its node is gone: 503
    with pytest.raises(NodeUnavailable, match="HTTP 503"):
        await adapter.block_ref(1)


@pytest.mark.parametrize(
    ("status", "error", "code"),
    [
        (429, NodeUnavailable, None),  # rate limited
        (500, NodeUnavailable, None),
        (502, NodeUnavailable, None),
        (408, NodeUnavailable, None),
        (400, NodeRejected, 400),
        (403, NodeRejected, 403),
    ],
)
async def test_http_errors_map_to_chain_errors(
    api: EsploraApi, esplora: EsploraAdapter, status: int, error: type[Exception], code: int | None
) -> None:
    api.faults["/blocks/tip/hash"] = status
    with pytest.raises(error, match=f"GET /blocks/tip/hash: HTTP {status}") as raised:
        await esplora.head()
    if code is not None:
        assert isinstance(raised.value, NodeRejected) and raised.value.code == code
    assert raised.value.cause[0] == status  # type: ignore[attr-defined]


async def test_requests_reach_the_daemons_observer(api: EsploraApi) -> None:
    seen: list[tuple[str, str]] = []
    adapter = EsploraAdapter(
        bitcoin_settings(api.url, rpc_observer=lambda m, outcome, _: seen.append((m, outcome)))
    )
    try:
        await adapter.open()
        await adapter.head()
        api.faults["/blocks/tip/hash"] = 429
        with pytest.raises(NodeUnavailable):
            await adapter.head()
    finally:
        await adapter.close()
    assert seen[0] == ("GET /block-height/:height", "ok")
    assert ("GET /blocks/tip/hash", "ok") in seen
    assert seen[-1] == ("GET /blocks/tip/hash", "NodeUnavailable")


async def test_answers_are_bounded_in_size(bcoin: BcoinNode, api: EsploraApi) -> None:
    client = EsploraClient(api.url)
    try:
        raw = await client.get("/block/:hash/raw", bt.best_hash(bcoin), max_bytes=1_000_000)
        assert raw is not None and len(raw) > 100
        with pytest.raises(ResponseTooLarge, match="exceeds 100"):
            await client.get("/block/:hash/raw", bt.best_hash(bcoin), max_bytes=100)
        assert await client.get("/block/:hash/raw", "ab" * 32) is None  # 404
    finally:
        await client.close()
    capped = EsploraClient(api.url, max_response_bytes=100)  # the chain's max_response_mb caps every bound
    try:
        with pytest.raises(ResponseTooLarge, match="exceeds 100"):
            await capped.get("/block/:hash/raw", bt.best_hash(bcoin), max_bytes=1_000_000)
    finally:
        await capped.close()


async def test_fail_over_to_the_next_api(bcoin: BcoinNode, api: EsploraApi) -> None:
    async with EsploraApi.for_node(bcoin) as second:
        switched: list[str] = []
        adapter = EsploraAdapter(
            bitcoin_settings(api.url, rpc_urls=(api.url, second.url), on_rpc_url=switched.append)
        )
        try:
            identity = await adapter.open()
            await api.stop()
            with pytest.raises(NodeUnavailable):
                await adapter.head()
            assert switched == [second.url]
            assert await adapter.open() == identity  # the follower checks the new server's chain
            assert (await adapter.head()).block_hash == bt.best_hash(bcoin)
            assert second.requests["/blocks/tip/hash"] == 1
        finally:
            await adapter.close()


async def test_a_slow_answer_is_node_unavailable(api: EsploraApi) -> None:
    client = EsploraClient(api.url, timeout_s=0.2)
    api.delays["/blocks/tip/hash"] = 2.0
    try:
        with pytest.raises(NodeUnavailable, match="GET /blocks/tip/hash: TimeoutError"):
            await client.get("/blocks/tip/hash")
    finally:
        await client.close()


def test_module_constants_are_sane() -> None:
    assert esplora_module.MAX_NEW_MEMPOOL_TXS >= esplora_module.MEMPOOL_CHUNK >= CONCURRENCY >= 1


# ==================================================================================== daemon

KEY, SECRET = "esplora-key", "esplora-secret"
MIN_CONF = 2


@dataclass
class World:
    node: BcoinNode
    api: EsploraApi
    receiver: Receiver
    daemon: DaemonProcess
    addresses: dict[str, bt.WatchedAddress]


@pytest.fixture
async def world(fresh_bcoin: BcoinNode, tmp_path: Path) -> AsyncIterator[World]:
    addresses = bt.make_addresses()
    async with EsploraApi.for_node(fresh_bcoin) as served, Receiver(key=KEY, secret=SECRET) as rx:
        status_port = free_port()
        config = {
            "network": "regtest",
            "database": str(tmp_path / "watcher.sqlite3"),
            "status": {"listen": f"127.0.0.1:{status_port}"},
            "log": {"format": "json", "level": "debug"},
            "merchant": {"callback_url": rx.url, "key": KEY, "secret": SECRET, "timeout_s": 2,
                         "retry_schedule_min": [0.005, 0.01, 0.02, 0.04]},
            "chains": {"bitcoin": {
                "adapter": "esplora", "rpc_url": served.url, "poll_interval_s": 0.2, "timeout_s": 5,
                "start_height": bt.height(fresh_bcoin) + 1, "unconfirmed_expiry_s": 600,
                "currencies": {"BTC": {"min_confirmations": MIN_CONF}},
            }},
            "addresses": [
                {"currency": "BTC", "address": a.address, "foreign_id": f"customer-{kind}"}
                for kind, a in addresses.items()
            ],
        }  # fmt: skip
        daemon = DaemonProcess(
            write_config(tmp_path / "c.yaml", config), status_port, tmp_path / "daemon.log"
        )
        daemon.start()
        try:
            await daemon.wait_live()
            yield World(fresh_bcoin, served, rx, daemon, dict(addresses))
        finally:
            code = daemon.stop()
            assert code == 0, daemon.log()


async def wait_status(w: World, status: str, count: int, timeout_s: float = 40.0) -> None:
    def enough(rx: Receiver) -> bool:
        return sum(1 for r in rx.delivered if r.body["status"] == status) >= count

    try:
        await w.receiver.wait_for(enough, timeout_s)
    except (AssertionError, TimeoutError) as exc:
        raise AssertionError(f"no {count} {status!r} callbacks: {exc}\n{w.daemon.log()}") from exc


def bodies_by_id(rx: Receiver) -> dict[int, list[dict[str, Any]]]:
    seen: dict[int, list[dict[str, Any]]] = {}
    for r in rx.delivered:
        seen.setdefault(r.body["id"], []).append(r.body)
    return seen


async def test_daemon_sees_deposits_in_the_mempool_then_confirmed(world: World) -> None:
    w = world
    sats = {kind: 223_457 + i for i, kind in enumerate(KINDS)}
    paid = {bt.pay(w.node, w.addresses[kind].address, amount): kind for kind, amount in sats.items()}
    await wait_status(w, "not_confirmed", len(paid))
    for body in (r.body for r in w.receiver.delivered):
        assert body["transactions"][0]["confirmations"] == "0"  # seen in the API's mempool
        assert body["transactions"][0]["block_height"] is None
    mined = bt.mine(w.node, MIN_CONF)
    await wait_status(w, "confirmed", len(paid))
    deposits = bodies_by_id(w.receiver)
    assert len(deposits) == len(paid)
    for bodies in deposits.values():
        assert [b["status"] for b in bodies] == ["not_confirmed", "confirmed"]
        final = bodies[-1]
        tx = final["transactions"][0]
        kind = paid[tx["txid"]]
        assert tx["confirmations"] == str(MIN_CONF) and tx["block_hash"] == mined[0]
        assert final["crypto_address"]["address"] == w.addresses[kind].address
        assert final["crypto_address"]["foreign_id"] == f"customer-{kind}"
        assert final["currency_received"]["amount"] == bt.sats_to_btc(sats[kind])
    assert w.api.requests["/block/:hash/raw"] >= MIN_CONF  # it really followed the chain through the API
    _code, status = await w.daemon.get("/status")
    chain = status["chains"]["bitcoin"]
    assert chain["processed_height"] == chain["node_height"] == bt.height(w.node)


async def test_daemon_rides_out_the_api_going_away(world: World) -> None:
    w = world
    await w.api.stop()
    txid = bt.pay(w.node, w.addresses["p2wpkh"].address, 31_000)
    bt.mine(w.node, MIN_CONF)
    for _ in range(100):
        code, body = await w.daemon.get("/readyz")
        if code == 503 and "node unavailable" in body.get("problems", {}).get("bitcoin", ""):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"readyz never said the node is unavailable:\n{w.daemon.log()}")
    assert w.daemon.proc is not None and w.daemon.proc.poll() is None
    await w.api.start()  # the same URL answers again
    await wait_status(w, "confirmed", 1)
    [bodies] = bodies_by_id(w.receiver).values()
    assert bodies[-1]["transactions"][0]["txid"] == txid
