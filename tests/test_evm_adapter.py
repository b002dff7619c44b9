"""The EVM adapter against a real anvil, and its JSON-RPC client against scripted local HTTP servers.

What is the EVM's own is here: tokens and their decimals, Transfer logs and their ordinals, receipts,
eth_getLogs range splitting, nonce replacements of tokens, a chain moving mid-scan. The contract every
adapter shares (identity, refs, ETH transfers, reorgs, fates, outages, the observer) is in tests/chains/.

Payments are made with anvil's dev accounts through devnet.evm_tools; every test pays fresh
random addresses and scans only the blocks it mined, so tests sharing the module's anvil do not see each
other's payments. Tests that rewrite history get an anvil of their own (`fresh_anvil`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chains.base import (
    BlockScan,
    ChainDataError,
    ChainError,
    ChainSettings,
    ConfigMismatch,
    CurrencySpec,
    NodeRejected,
    NodeUnavailable,
    Transfer,
    TxState,
    WatchList,
)
from chains.evm.adapter import EvmAdapter, is_range_refusal, split_range
from chains.evm.address import parse_evm_address, to_checksum
from chains.jsonrpc import JsonRpcClient, ResponseTooLarge
from devnet import anvil as launcher
from devnet import evm_tools as tools
from devnet.anvil import AnvilNode

ETH = 10**18


def new_address() -> str:
    return to_checksum(os.urandom(20))


@dataclass(frozen=True)
class Devnet:
    """An anvil with the test tokens deployed and dev account 0 holding plenty of each."""

    url: str
    accounts: list[str]
    usdt: str
    usdc: str
    fake_usdt: str  # a second contract calling itself USDT, not in the configuration

    @property
    def payer(self) -> str:
        return self.accounts[0]

    def currencies(self, **decimals: int) -> tuple[CurrencySpec, ...]:
        return (
            CurrencySpec("ETH", 18),
            CurrencySpec("USDT", decimals.get("USDT", 6), self.usdt.lower()),
            CurrencySpec("USDC", decimals.get("USDC", 6), self.usdc.lower()),
        )

    def settings(self, url: str | None = None, **overrides: Any) -> ChainSettings:
        values: dict[str, Any] = {
            "name": "ethereum",
            "network": "regtest",
            "rpc_url": url or self.url,
            "currencies": self.currencies(),
            "chain_id": 31337,
            "timeout_s": 10.0,
        }
        values.update(overrides)
        return ChainSettings(**values)


def deploy_devnet(url: str) -> Devnet:
    payer = tools.accounts(url)[0]
    usdt = tools.deploy_token(url, "Tether USD", "USDT", 6)
    usdc = tools.deploy_token(url, "USD Coin", "USDC", 6)
    fake = tools.deploy_token(url, "Tether USD", "USDT", 6)
    for token in (usdt, usdc, fake):
        tools.mint(url, token, payer, 10**15)
    return Devnet(url, tools.accounts(url), usdt, usdc, fake)


@pytest.fixture(scope="module")
def devnet(anvil: AnvilNode) -> Devnet:
    return deploy_devnet(anvil.url)


@pytest.fixture
def fresh_devnet(fresh_anvil: AnvilNode) -> Devnet:
    return deploy_devnet(fresh_anvil.url)


@pytest.fixture
async def adapter(devnet: Devnet) -> AsyncIterator[EvmAdapter]:
    evm = EvmAdapter(devnet.settings())
    await evm.open()
    yield evm
    await evm.close()


@pytest.fixture
async def fresh_adapter(fresh_devnet: Devnet) -> AsyncIterator[EvmAdapter]:
    evm = EvmAdapter(fresh_devnet.settings())
    await evm.open()
    yield evm
    await evm.close()


class Watch:
    """Builds a WatchList and remembers which watch id is which address."""

    def __init__(self) -> None:
        self.by_currency: dict[str, dict[bytes, int]] = {}
        self.next_id = 1

    def add(self, currency: str, address: str) -> int:
        watch_id = self.next_id
        self.next_id += 1
        self.by_currency.setdefault(currency, {})[parse_evm_address(address)] = watch_id
        return watch_id

    def list(self) -> WatchList:
        return WatchList(self.by_currency)


async def scan_blocks_of(
    evm: EvmAdapter, url: str, watch: WatchList, pay: Callable[[], object]
) -> list[BlockScan]:
    """Scan exactly the blocks mined while `pay` runs."""
    start = tools.head_height(url) + 1
    pay()
    return await evm.scan(start, tools.head_height(url), watch)


def transfers(scans: Sequence[BlockScan]) -> list[Transfer]:
    return [t for scan in scans for t in scan.transfers]


def summary(scans: Sequence[BlockScan]) -> list[tuple[str, int, str, int, int]]:
    return [(t.currency, t.watch_id, t.address, t.amount, t.index) for t in transfers(scans)]


# ------------------------------------------------------------------------------ addresses, tokens


def test_watch_key_and_display_address() -> None:
    spec = CurrencySpec("USDT", 6, "0x" + "c0" * 20)
    address = new_address()
    key = EvmAdapter.watch_key(spec, address.lower(), "mainnet")
    assert key == bytes.fromhex(address[2:].lower())
    assert EvmAdapter.display_address(spec, key, "mainnet") == address


async def test_decimals_mismatch_names_currency_and_both_values(devnet: Devnet) -> None:
    evm = EvmAdapter(devnet.settings(currencies=devnet.currencies(USDC=18)))
    await evm.open()  # the identity does not depend on the currencies
    with pytest.raises(ConfigMismatch, match=r"USDC: configured decimals 18, contract .* says 6"):
        await evm.check_currencies()
    await evm.close()


async def test_token_without_contract_code_is_a_config_mismatch(devnet: Devnet) -> None:
    nowhere = new_address().lower()
    evm = EvmAdapter(devnet.settings(currencies=(CurrencySpec("USDT", 6, nowhere),)))
    with pytest.raises(ConfigMismatch, match=rf"USDT: no contract at {nowhere}"):
        await evm.check_currencies()
    await evm.close()


# ------------------------------------------------------------------------------------- payments


@pytest.mark.parametrize("watch_eth", [True, False], ids=["full-blocks", "headers-only"])
async def test_finds_eth_usdt_usdc_with_exact_amounts(
    adapter: EvmAdapter, devnet: Devnet, watch_eth: bool
) -> None:
    """With ETH watched the scan reads full blocks; without, token senders come from a tx lookup."""
    watch = Watch()
    eth_to, usdt_to, usdc_to = new_address(), new_address(), new_address()
    eth_id = watch.add("ETH", eth_to if watch_eth else new_address())
    usdt_id, usdc_id = watch.add("USDT", usdt_to), watch.add("USDC", usdc_to)
    txids: list[str] = []
    sender = devnet.accounts[1]

    def pay() -> None:
        txids.append(tools.send_eth(devnet.url, sender, eth_to, 1_234_567_890_123_456_789))
        txids.append(tools.token_transfer(devnet.url, devnet.usdt, devnet.payer, usdt_to, 12_345_678))
        txids.append(tools.token_transfer(devnet.url, devnet.usdc, devnet.payer, usdc_to, 1))

    scans = await scan_blocks_of(adapter, devnet.url, watch.list(), pay)
    expected = [("USDT", usdt_id, usdt_to, 12_345_678, 0), ("USDC", usdc_id, usdc_to, 1, 0)]
    if watch_eth:
        expected.insert(0, ("ETH", eth_id, eth_to, 1_234_567_890_123_456_789, -1))
    assert summary(scans) == expected
    found = transfers(scans)
    assert [t.txid for t in found] == (txids if watch_eth else txids[1:])
    for transfer in found:
        tx = tools.rpc(devnet.url, "eth_getTransactionByHash", transfer.txid)
        assert transfer.sender == to_checksum(parse_evm_address(tx["from"]))
        assert transfer.nonce == int(tx["nonce"], 16)


async def test_ignores_what_is_not_a_payment_to_a_watched_address(
    adapter: EvmAdapter, devnet: Devnet
) -> None:
    watch = Watch()
    watched, reverting, unwatched = new_address(), new_address(), new_address()
    for currency in ("ETH", "USDT", "USDC"):
        watch.add(currency, watched)
    watch.add("ETH", reverting)
    tools.make_reverting(devnet.url, reverting)
    reverted: list[str] = []

    def pay() -> None:
        tools.send_eth(devnet.url, devnet.payer, unwatched, ETH)  # not watched
        tools.token_transfer(devnet.url, devnet.usdt, devnet.payer, unwatched, 5)
        reverted.append(tools.send_eth(devnet.url, devnet.payer, reverting, ETH))  # reverts
        tools.token_transfer(devnet.url, devnet.fake_usdt, devnet.payer, watched, 7)  # "USDT", other contract
        tools.token_transfer(devnet.url, devnet.usdt, devnet.payer, watched, 0)  # zero-value token transfer
        tools.send_eth(devnet.url, devnet.payer, watched, 0)  # zero-value ETH transaction

    scans = await scan_blocks_of(adapter, devnet.url, watch.list(), pay)
    assert len(scans) == 6
    assert transfers(scans) == []
    # The cases are real: the reverted tx was mined with status 0, the fake token calls itself USDT.
    assert tools.rpc(devnet.url, "eth_getTransactionReceipt", reverted[0])["status"] == "0x0"
    assert tools.token_balance(devnet.url, devnet.fake_usdt, watched) == 7


async def test_batch_transfer_gives_one_transfer_per_recipient(adapter: EvmAdapter, devnet: Devnet) -> None:
    watch = Watch()
    first, second, unwatched = new_address(), new_address(), new_address()
    first_id, second_id = watch.add("USDT", first), watch.add("USDT", second)

    def pay() -> None:
        tools.token_batch_transfer(devnet.url, devnet.usdt, devnet.payer, [first, second], [10, 20])
        # The ordinal counts every Transfer of the contract in the tx, watched or not.
        tools.token_batch_transfer(devnet.url, devnet.usdt, devnet.payer, [unwatched, second], [30, 40])

    scans = await scan_blocks_of(adapter, devnet.url, watch.list(), pay)
    assert summary(scans) == [
        ("USDT", first_id, first, 10, 0),
        ("USDT", second_id, second, 20, 1),
        ("USDT", second_id, second, 40, 1),
    ]
    found = transfers(scans)
    assert found[0].txid == found[1].txid != found[2].txid


async def test_two_payments_to_one_address_are_two_transfers(adapter: EvmAdapter, devnet: Devnet) -> None:
    watch = Watch()
    address = new_address()
    eth_id, usdt_id = watch.add("ETH", address), watch.add("USDT", address)

    def pay() -> None:
        tools.send_eth(devnet.url, devnet.payer, address, 3)
        tools.send_eth(devnet.url, devnet.payer, address, 3)
        tools.token_transfer(devnet.url, devnet.usdt, devnet.payer, address, 5)
        tools.token_batch_transfer(devnet.url, devnet.usdt, devnet.payer, [address, address], [5, 5])

    scans = await scan_blocks_of(adapter, devnet.url, watch.list(), pay)
    assert summary(scans) == [
        ("ETH", eth_id, address, 3, -1),
        ("ETH", eth_id, address, 3, -1),
        ("USDT", usdt_id, address, 5, 0),
        ("USDT", usdt_id, address, 5, 0),
        ("USDT", usdt_id, address, 5, 1),
    ]
    assert len({(t.txid, t.currency, t.index) for t in transfers(scans)}) == 5  # distinct deposit identities


async def test_transfers_are_in_block_order(fresh_adapter: EvmAdapter, fresh_devnet: Devnet) -> None:
    url = fresh_devnet.url
    watch = Watch()
    address = new_address()
    for currency in ("ETH", "USDT", "USDC"):
        watch.add(currency, address)
    tools.set_automine(url, False)
    tools.token_transfer(url, fresh_devnet.usdc, fresh_devnet.payer, address, 1, wait=False)  # tx 0
    tools.send_eth(url, fresh_devnet.accounts[2], address, 2, wait=False)  # tx 1
    tools.token_batch_transfer(url, fresh_devnet.usdt, fresh_devnet.payer, [address] * 2, [3, 4], wait=False)
    tools.mine(url)
    (scan,) = await fresh_adapter.scan(tools.head_height(url), tools.head_height(url), watch.list())
    assert [(t.currency, t.amount, t.index) for t in scan.transfers] == [
        ("USDC", 1, 0),
        ("ETH", 2, -1),
        ("USDT", 3, 0),
        ("USDT", 4, 1),
    ]


async def test_many_watched_addresses(adapter: EvmAdapter, devnet: Devnet) -> None:
    watch = Watch()
    for _ in range(10_000):
        watch.add("ETH", new_address())
        watch.add("USDT", new_address())
    paid = [new_address() for _ in range(3)]
    ids = [watch.add("ETH", address) for address in paid] + [watch.add("USDT", address) for address in paid]
    decoy = [new_address() for _ in range(20)]

    def pay() -> None:
        for address in paid:
            tools.send_eth(devnet.url, devnet.payer, address, 11)
        recipients = decoy + paid
        tools.token_batch_transfer(devnet.url, devnet.usdt, devnet.payer, recipients, [1] * len(recipients))

    scans = await scan_blocks_of(adapter, devnet.url, watch.list(), pay)
    assert [t.watch_id for t in transfers(scans)] == ids
    assert [t.index for t in transfers(scans)][3:] == [20, 21, 22]


# ---------------------------------------------------------------------------------------- tx_fate


def transfer_for(url: str, txid: str, address: str) -> Transfer:
    """A Transfer as the daemon would hold it for a tx it only saw pending."""
    tx = tools.rpc(url, "eth_getTransactionByHash", txid)
    sender = to_checksum(parse_evm_address(tx["from"]))
    return Transfer("ETH", 1, address, int(tx["value"], 16), txid, -1, sender, int(tx["nonce"], 16))


async def scanned(evm: EvmAdapter, url: str, address: str, pay: Callable[[], object]) -> Transfer:
    watch = Watch()
    watch.add("ETH", address)
    watch.add("USDT", address)
    (found,) = transfers(await scan_blocks_of(evm, url, watch.list(), pay))
    return found


async def test_fate_of_pending_then_dropped(fresh_adapter: EvmAdapter, fresh_devnet: Devnet) -> None:
    url, address = fresh_devnet.url, new_address()
    tools.set_automine(url, False)
    pending = transfer_for(url, tools.send_eth(url, fresh_devnet.payer, address, 5, wait=False), address)
    assert (await fresh_adapter.tx_fate(pending)).state is TxState.PENDING
    tools.drop_transaction(url, pending.txid)
    fate = await fresh_adapter.tx_fate(pending)
    assert (fate.state, fate.reason) == (TxState.UNKNOWN, "the node no longer knows the transaction")


@pytest.mark.parametrize("token", [False, True], ids=["eth", "usdt"])
async def test_fate_after_reorg_replacing_the_deposit(
    fresh_adapter: EvmAdapter, fresh_devnet: Devnet, token: bool
) -> None:
    """Scenario (a), replaced: another tx with the same sender and nonce takes the deposit's place."""
    url, address = fresh_devnet.url, new_address()

    def pay() -> None:
        if token:
            tools.token_transfer(url, fresh_devnet.usdt, fresh_devnet.payer, address, 9)
        else:
            tools.send_eth(url, fresh_devnet.accounts[3], address, 9)

    found = await scanned(fresh_adapter, url, address, pay)
    tools.mine(url, 2)
    replacement = tools.reorg_replace(url, 3, found.txid)
    fate = await fresh_adapter.tx_fate(found)
    assert fate.state is TxState.REPLACED
    assert fate.reason == f"nonce {found.nonce} of {found.sender} was used by another transaction"
    assert replacement != found.txid


async def test_fate_and_rescan_after_reorg_reincluding_the_deposit(
    fresh_adapter: EvmAdapter, fresh_devnet: Devnet
) -> None:
    """Scenario (b): the same tx is mined again in another block; the rescan finds the same deposit."""
    url, address = fresh_devnet.url, new_address()

    def pay() -> None:
        tools.token_batch_transfer(url, fresh_devnet.usdt, fresh_devnet.payer, [address] * 2, [1, 2])

    watch = Watch()
    watch.add("USDT", address)
    before = await scan_blocks_of(fresh_adapter, url, watch.list(), pay)
    tools.mine(url, 2)
    top = tools.head_height(url)
    tools.reorg_reinclude(url, 3, [before[0].transfers[0].txid], offset=2)
    assert tools.head_height(url) == top
    fate = await fresh_adapter.tx_fate(before[0].transfers[0])
    assert (fate.state, fate.block_height) == (TxState.MINED, top)
    after = await fresh_adapter.scan(top - 2, top, watch.list())
    assert after[-1].transfers == before[0].transfers  # same txid, currency, index, amount
    assert after[-1].ref.height != before[0].ref.height


# ------------------------------------------------------------------------ ranges and a moving chain


Intercept = Callable[[dict[str, Any]], Awaitable[Any]]


class RpcProxy:
    """A JSON-RPC proxy in front of anvil; `intercept` sees every single call and may answer it itself
    (returning the answer) or let it through (returning None)."""

    def __init__(self, target: str, intercept: Intercept) -> None:
        self.target = target
        self.intercept = intercept
        self.calls: list[dict[str, Any]] = []
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.server = TestServer(app, host="127.0.0.1")
        self.session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("/"))

    async def __aenter__(self) -> RpcProxy:
        await self.server.start_server()
        self.session = aiohttp.ClientSession(headers={"Content-Type": "application/json"})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.session is not None
        await self.session.close()
        await self.server.close()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        payload = orjson.loads(body)
        if isinstance(payload, dict):
            self.calls.append(payload)
            answer = await self.intercept(payload)
            if answer is not None:
                return web.json_response(answer)
        assert self.session is not None
        async with self.session.post(self.target, data=body) as resp:
            return web.Response(body=await resp.read(), content_type="application/json")

    def count(self, method: str) -> int:
        return sum(1 for call in self.calls if call["method"] == method)


def refuse_log_spans_over(max_span: int, code: int = -32005, message: str = "") -> Intercept:
    message = message or "query returned more than 10000 results"

    async def intercept(call: dict[str, Any]) -> Any:
        if call["method"] != "eth_getLogs":
            return None
        query = call["params"][0]
        if int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1 <= max_span:
            return None
        return {"jsonrpc": "2.0", "id": call["id"], "error": {"code": code, "message": message}}

    return intercept


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (-32005, "query returned more than 10000 results"),
        (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range"),
        (-32000, "exceed maximum block range: 2"),
    ],
)
async def test_refused_log_range_is_halved(
    devnet: Devnet, adapter: EvmAdapter, code: int, message: str
) -> None:
    watch = Watch()
    address = new_address()
    watch.add("USDT", address)
    watch.add("USDC", address)

    def pay() -> None:
        for amount in range(1, 9):
            token = devnet.usdt if amount % 2 else devnet.usdc
            tools.token_transfer(devnet.url, token, devnet.payer, address, amount)

    direct = await scan_blocks_of(adapter, devnet.url, watch.list(), pay)
    assert [t.amount for t in transfers(direct)] == list(range(1, 9))
    async with RpcProxy(devnet.url, refuse_log_spans_over(2, code, message)) as proxy:
        evm = EvmAdapter(devnet.settings(url=proxy.url))
        first, last = direct[0].ref.height, direct[-1].ref.height
        assert await evm.scan(first, last, watch.list()) == direct
        refused = proxy.count("eth_getLogs")
        assert refused > 4  # 8 blocks answered in spans of at most 2 after refusals
        assert await evm.scan(first, last, watch.list()) == direct
        assert proxy.count("eth_getLogs") - refused == 4  # the learned span: no refusal the second time
        await evm.close()


async def test_other_log_errors_are_not_split(devnet: Devnet) -> None:
    watch = Watch()
    watch.add("USDT", new_address())
    async with RpcProxy(
        devnet.url, refuse_log_spans_over(0, -32000, "execution aborted (timeout = 5s)")
    ) as proxy:
        evm = EvmAdapter(devnet.settings(url=proxy.url))
        top = tools.head_height(devnet.url)
        with pytest.raises(NodeRejected) as caught:
            await evm.scan(top - 3, top, watch.list())
        assert caught.value.code == -32000
        assert proxy.count("eth_getLogs") == 1
        await evm.close()


@pytest.mark.parametrize(
    ("lo", "hi", "halves"),
    [(0, 1, ((0, 0), (1, 1))), (10, 20, ((10, 15), (16, 20))), (5, 7, ((5, 6), (7, 7)))],
)
def test_split_range(lo: int, hi: int, halves: tuple[tuple[int, int], tuple[int, int]]) -> None:
    assert split_range(lo, hi) == halves
    with pytest.raises(ValueError):
        split_range(lo, lo)


@pytest.mark.parametrize(
    ("error", "refusal"),
    [
        (NodeRejected("eth_getLogs: node error -32005: whatever", code=-32005), True),
        (
            NodeRejected(
                "eth_getLogs: node error -32000: query returned more than 10000 results", code=-32000
            ),
            True,
        ),
        (NodeRejected("eth_getLogs: node error -32602: Log response size exceeded.", code=-32602), True),
        (NodeRejected("eth_getLogs: node error -32000: block range is too wide", code=-32000), True),
        (NodeRejected("eth_getLogs: eth_getLogs is limited to a 10,000 range", code=-32600), True),
        (ResponseTooLarge("eth_getLogs: answer exceeds 268435456 bytes"), True),
        (NodeRejected("eth_getLogs: node error -32000: header not found", code=-32000), False),
        (NodeUnavailable("eth_getLogs: timeout"), False),
    ],
)
def test_is_range_refusal(error: Exception, refusal: bool) -> None:
    assert is_range_refusal(error) is refusal


@pytest.mark.parametrize("rewrite", ["reinclude", "drop"])
async def test_chain_moving_mid_scan_raises(fresh_devnet: Devnet, rewrite: str) -> None:
    """anvil reorganises between the block fetch and eth_getLogs: the scan must not mix two chains,
    whether the logs moved to other blocks or vanished with the old blocks."""
    url, address = fresh_devnet.url, new_address()
    watch = Watch()
    watch.add("USDT", address)
    txid = tools.token_transfer(url, fresh_devnet.usdt, fresh_devnet.payer, address, 5)
    tools.mine(url, 2)
    top = tools.head_height(url)

    async def reorganise_once(call: dict[str, Any]) -> Any:
        if call["method"] == "eth_getLogs" and not done:
            done.append(True)
            if rewrite == "reinclude":
                tools.reorg_reinclude(url, 3, [txid], offset=2)
            else:
                tools.reorg_drop(url, 3)
        return None

    done: list[bool] = []
    async with RpcProxy(url, reorganise_once) as proxy:
        evm = EvmAdapter(fresh_devnet.settings(url=proxy.url))
        with pytest.raises(ChainDataError, match="chain changed") as caught:
            await evm.scan(top - 2, top, watch.list())
        # Moved logs are caught by their block hash; vanished ones by re-reading the range's last block.
        assert ("the scan fetched" if rewrite == "reinclude" else "changed from") in str(caught.value)
        await evm.close()


# ------------------------------------------------------------------------------- JSON-RPC client

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Starts local HTTP servers answering POST / with a scripted handler; yields their URL."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/"))

    yield start
    for server in servers:
        await server.close()


def answering(make: Callable[[Any], Any], status: int = 200) -> Handler:
    """A handler answering with make(request payload) as JSON."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(make(await request.json())), status=status)

    return handler


def raw(body: bytes, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status)

    return handler


async def rpc_outcome(url: str, batch: bool = False, **client_args: Any) -> Any:
    client = JsonRpcClient(url, **client_args)
    try:
        if batch:
            return await client.batch([("a", [1]), ("b", [2])])
        return await client.call("eth_chainId")
    finally:
        await client.close()


async def test_call_and_batch_match_answers_by_id(serve: Callable[[Handler], Awaitable[str]]) -> None:
    def echo(payload: Any) -> Any:
        if isinstance(payload, list):  # answered in reverse order: ids, not positions, must match
            return [
                {"jsonrpc": "2.0", "id": p["id"], "result": [p["method"], p["params"]]} for p in payload[::-1]
            ]
        return {"jsonrpc": "2.0", "id": payload["id"], "result": "0x7a69"}

    url = await serve(answering(echo))
    assert await rpc_outcome(url) == "0x7a69"
    assert await rpc_outcome(url, batch=True) == [["a", [1]], ["b", [2]]]
    client = JsonRpcClient(url)
    assert await client.batch([]) == []
    await client.close()
    assert await client.call("x") == "0x7a69"  # a closed client opens a new session when used again
    await client.close()


@pytest.mark.parametrize(
    ("make", "batch", "error", "code"),
    [
        (
            lambda p: {"jsonrpc": "2.0", "id": p["id"], "error": {"code": -32601, "message": "no"}},
            False,
            NodeRejected,
            -32601,
        ),
        (
            lambda p: [
                {"id": i["id"], "result": 1}
                if i["method"] == "a"
                else {"id": i["id"], "error": {"code": 3, "message": "reverted"}}
                for i in p
            ],
            True,
            NodeRejected,
            3,
        ),
        (
            lambda p: {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch disabled"}},
            True,
            NodeRejected,
            -32600,
        ),
        (lambda p: [{"id": p[0]["id"], "result": 1}], True, ChainDataError, None),  # an answer missing
        (lambda p: [{"id": p[0]["id"], "result": 1}] * 2, True, ChainDataError, None),  # duplicate id
        (lambda p: [{"result": 1}, {"id": p[1]["id"], "result": 2}], True, ChainDataError, None),  # no id
        (lambda p: [{"id": p[0]["id"], "result": 1}, {"id": 999, "result": 2}], True, ChainDataError, None),
        (
            lambda p: {"jsonrpc": "2.0", "id": p["id"]},
            False,
            ChainDataError,
            None,
        ),  # neither result nor error
        (lambda p: {"jsonrpc": "2.0", "id": 12345, "result": 1}, False, ChainDataError, None),  # wrong id
        (lambda p: [1, 2], False, ChainDataError, None),  # a list for a single call
        (lambda p: "0x1", True, ChainDataError, None),  # a string for a batch
    ],
)
async def test_answer_shapes_map_to_chain_errors(
    serve: Callable[[Handler], Awaitable[str]],
    make: Callable[[Any], Any],
    batch: bool,
    error: type[Exception],
    code: int | None,
) -> None:
    url = await serve(answering(make))
    with pytest.raises(error) as caught:
        await rpc_outcome(url, batch=batch)
    if isinstance(caught.value, NodeRejected):
        assert caught.value.code == code
        assert caught.value.cause is not None  # the raw answer is kept


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"<html>bad gateway</html>", 502, NodeUnavailable),
        (b"Service Unavailable", 503, NodeUnavailable),
        (b"Too Many Requests", 429, NodeUnavailable),
        (b"", 401, NodeRejected),
        (b"not found", 404, NodeRejected),
        (b"{not json", 200, ChainDataError),
        # bitcoind answers RPC errors with HTTP 500 and a JSON-RPC body: that is a rejection, not an outage.
        (b'{"result":null,"error":{"code":-5,"message":"No such transaction"},"id":1}', 500, NodeRejected),
    ],
)
async def test_http_failures_map_to_chain_errors(
    serve: Callable[[Handler], Awaitable[str]], body: bytes, status: int, error: type[ChainError]
) -> None:
    url = await serve(raw(body, status))
    with pytest.raises(error) as caught:
        await rpc_outcome(url)
    assert caught.value.cause is not None


async def test_http_401_hints_at_credentials(serve: Callable[[Handler], Awaitable[str]]) -> None:
    with pytest.raises(NodeRejected, match="check rpc_user/rpc_password"):
        await rpc_outcome(await serve(raw(b"", 401)))


async def test_unreachable_node_is_unavailable(serve: Callable[[Handler], Awaitable[str]]) -> None:
    app = web.Application()
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/"))
    await server.close()  # nothing listens on that port any more
    with pytest.raises(NodeUnavailable) as caught:
        await rpc_outcome(url)
    assert isinstance(caught.value.cause, aiohttp.ClientError)


async def test_timeout_is_unavailable(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response({"jsonrpc": "2.0", "id": 1, "result": 1})

    url = await serve(slow)
    client = JsonRpcClient(url, timeout_s=30)
    with pytest.raises(NodeUnavailable):
        await client.call("eth_chainId", timeout_s=0.2)  # the per-call timeout wins
    await client.close()


async def test_response_size_is_bounded(serve: Callable[[Handler], Awaitable[str]]) -> None:
    big = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": "0x" + "ab" * 5000})

    async def streamed(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for start in range(0, len(big), 1000):
            await response.write(big[start : start + 1000])
        await response.write_eof()
        return response

    for handler in (raw(big), streamed):
        with pytest.raises(ResponseTooLarge):
            await rpc_outcome(await serve(handler), max_response_bytes=4096)
    assert await rpc_outcome(await serve(raw(big)), max_response_bytes=len(big)) == "0x" + "ab" * 5000


async def test_fail_over_moves_to_the_next_url_after_an_unavailable_node(
    serve: Callable[[Handler], Awaitable[str]],
) -> None:
    async def answer(request: web.Request) -> web.Response:
        payload = await request.json()
        if payload["method"] == "bad":
            return web.json_response({"jsonrpc": "2.0", "id": payload["id"], "error": {"code": -32601}})
        return web.json_response({"jsonrpc": "2.0", "id": payload["id"], "result": "0x1"})

    down = await serve(raw(b"bad gateway", 502))
    up = await serve(answer)
    switched: list[str] = []
    client = JsonRpcClient([down, up], on_switch=switched.append)
    try:
        with pytest.raises(NodeUnavailable):  # the failing call fails: the caller re-checks the node
            await client.call("eth_chainId")
        assert client.url == up and switched == [up]
        assert await client.call("eth_chainId") == "0x1"
        with pytest.raises(NodeRejected):  # a node that answers is kept, whatever it answers
            await client.call("bad")
        assert client.url == up and switched == [up]
    finally:
        await client.close()


async def test_basic_auth_is_sent(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def check(request: web.Request) -> web.Response:
        ok = request.headers.get("Authorization") == "Basic cnBjdXNlcjpzM2NyZXQ="  # rpcuser:s3cret
        return web.json_response({"jsonrpc": "2.0", "id": (await request.json())["id"], "result": ok})

    assert await rpc_outcome(await serve(check), user="rpcuser", password="s3cret") is True


# ------------------------------------------------------------------------------ the anvil launcher


async def test_anvil_node_async_with_options() -> None:
    async with AnvilNode(chain_id=1337, no_mining=True) as node:
        assert tools.rpc(node.url, "eth_chainId") == hex(1337)
        tools.send_eth(node.url, tools.accounts(node.url)[0], new_address(), 1)
        assert tools.head_height(node.url) == 0  # no mining: the payment waits in the pool
        pid, log_dir = node.pid, node.log_path.parent
        assert pid is not None and log_dir.is_dir()
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)
    assert not log_dir.exists()
    assert node.pid is None


def test_missing_anvil_says_to_run_npm_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ANVIL_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(launcher, "REPO_ROOT", tmp_path)
    with pytest.raises(launcher.AnvilError, match="npm ci"):
        launcher.find_anvil()
    monkeypatch.setenv("ANVIL_BIN", str(tmp_path / "nope"))
    with pytest.raises(launcher.AnvilError, match="ANVIL_BIN"):
        AnvilNode().start()


def test_anvil_failing_to_start_quotes_its_log() -> None:
    node = AnvilNode(extra_args=("--no-such-flag",))
    with pytest.raises(launcher.AnvilError, match=r"(?s)exited with code \d+ while starting.*no-such-flag"):
        node.start()
    assert node.pid is None
    assert "no-such-flag" in node.log_path.read_text()  # a failed start keeps its log for a look
    shutil.rmtree(node.log_path.parent)
