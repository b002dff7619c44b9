"""Chain drivers: what the adapter contract suite needs of one adapter and its node, in chain-neutral terms.

A driver builds the adapter under test (`adapter`), makes the chain do things (pay a watched address,
mine, reorganise, replace, stop the node) and says what the node itself holds (tip, block order, the
Transfer a payment must give), so that tests/chains/test_contract.py states each scenario once for
every adapter. What a chain cannot produce is not faked: the driver leaves the feature out of `features`
and the scenario is not generated for it (tests/chains/conftest.py).

To hold a new adapter to the contract, write a driver for it here (a subclass of ChainDriver) and add
it to DRIVERS with a fixture giving it its node in conftest.py.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from bitcoin.core import b2lx

from chains.base import (
    BaseAdapter,
    ChainSettings,
    CurrencySpec,
    Transfer,
    TxFate,
    TxState,
    WatchList,
)
from chains.bitcoin.adapter import BitcoinCoreAdapter
from chains.bitcoin.address import script_for_address
from chains.bitcoin.esplora import EsploraAdapter
from chains.evm.adapter import EvmAdapter
from chains.evm.address import parse_evm_address, to_checksum
from devnet import btc_tools as bt
from devnet import evm_tools as tools
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.esplora_api import EsploraApi
from tests.daemon_process import free_port
from tests.scripted_chain import Payment, ScriptedChain, ScriptedChainState
from tests.tcp_proxy import TcpProxy

# Scenario features beyond the core every adapter must pass.
MEMPOOL = "mempool"  # unconfirmed payments are reported by mempool_scan
REPLACE = "replace"  # a payment can be replaced by another transaction of the same sender and nonce
BITCOIN = "bitcoin"  # a Bitcoin node with a wallet: address types, outpoints, double-spends


class NodeFront(Protocol):
    """What stands between the adapter and the node and can be switched off and on again: a TCP
    proxy, the Esplora API, the scripted chain's `down` flag."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class ChainDriver(abc.ABC):
    """One adapter under test and the node behind it (module docstring)."""

    name: ClassVar[str]
    adapter_class: ClassVar[type[BaseAdapter]]
    # The entry point the adapter is registered under, None for a test double.
    entry_point: ClassVar[str | None]
    features: ClassVar[frozenset[str]]
    currency: ClassVar[CurrencySpec]
    network: ClassVar[str] = "regtest"
    # (capabilities, native_decimals, default_min_confirmations) the adapter class must declare.
    class_values: ClassVar[tuple[frozenset[str], int, int]]
    genesis_parent: ClassVar[str]
    bad_address: ClassVar[str]
    # What tx_fate says of a transaction the node never saw, and of a deposit whose block was
    # reorganised away without it; whether a MINED fate carries the block height.
    unknown_fate: ClassVar[TxFate]
    dropped_state: ClassVar[TxState]
    mined_fate_has_height: ClassVar[bool]
    unknown_txid: ClassVar[str] = "ab" * 32

    def __init__(self, front: NodeFront) -> None:
        self.front = front
        self._adapters: list[BaseAdapter] = []

    # -------------------------------------------------------------------------------- adapters

    @abc.abstractmethod
    def settings(self, **overrides: Any) -> ChainSettings:
        """The chain's settings for this node; `overrides` replace fields (rpc_observer, network...)."""

    def adapter(self, **overrides: Any) -> BaseAdapter:
        """A new adapter under test (closed by the fixture at the end of the test)."""
        adapter = self.adapter_class(self.settings(**overrides))  # type: ignore[call-arg]
        self._adapters.append(adapter)
        return adapter

    def unreachable_adapter(self) -> BaseAdapter:
        """An adapter whose node is not there: a port nothing listens on."""
        return self.adapter(rpc_url=f"http://127.0.0.1:{free_port()}/", rpc_urls=())

    @abc.abstractmethod
    def wrong_chains(self) -> list[tuple[dict[str, Any], str]]:
        """Settings overrides that configure another chain than the node's, each with the WrongChain
        message (a regex) the adapter must give."""

    async def start(self) -> None:
        """Set up what the test's event loop must own: the node's front."""
        await self.front.start()

    async def aclose(self) -> None:
        for adapter in self._adapters:
            await adapter.close()
        await self.front.stop()

    async def stop_node(self) -> None:
        """The node stops answering: connections refused, open ones cut; the chain stays as it was."""
        await self.front.stop()

    async def start_node(self) -> None:
        """The node answers again, at the same URL."""
        await self.front.start()

    def node_requests(self) -> int | None:
        """Requests the node has answered, where the driver can count them."""
        return None

    # ---------------------------------------------------------------------------------- chain

    @abc.abstractmethod
    def identity(self) -> str:
        """The identity open() must return, read from the node itself."""

    @abc.abstractmethod
    def new_address(self) -> str:
        """A fresh address nobody else pays, in its canonical (display) form."""

    def watch(self, addresses: Sequence[str], outpoints: Sequence[str] = ()) -> WatchList:
        """The WatchList the daemon builds for `addresses` (watch ids 1, 2, ... in order)."""
        keys = {
            self.adapter_class.watch_key(self.currency, address, self.network): watch_id
            for watch_id, address in enumerate(addresses, start=1)
        }
        return WatchList({self.currency.code: keys}, frozenset(outpoints))

    @abc.abstractmethod
    def pay(self, address: str, amount: int) -> str:
        """Pay `amount` base units to `address`; the txid. The payment waits to be mined."""

    @abc.abstractmethod
    def mine(self, blocks: int = 1) -> None:
        """Mine blocks on the tip, the first one holding every waiting payment."""

    @abc.abstractmethod
    def tip(self) -> int:
        """The node's height, asked directly."""

    @abc.abstractmethod
    def block_hash(self, height: int) -> str:
        """The hash of the main-chain block at `height`, asked directly."""

    @abc.abstractmethod
    def past_tip_error(self, tip: int) -> str:
        """The ChainDataError message (a regex) of a scan from `tip` to beyond it."""

    @abc.abstractmethod
    def block_txids(self, height: int) -> list[str]:
        """The txids of the main-chain block at `height`, in block order."""

    @abc.abstractmethod
    def expected(self, txid: str, address: str, watch_id: int, amount: int) -> Transfer:
        """The exact Transfer the adapter must report for a payment, computed from the node's data."""

    @abc.abstractmethod
    def reorg_moving(self, txid: str) -> int:
        """Reorganise the tip block, which holds `txid`, so that it is mined in a new block; that
        block's height."""

    @abc.abstractmethod
    def reorg_dropping(self, txid: str) -> None:
        """Reorganise the tip block, which holds `txid`, away with a longer branch without it."""

    def replace(self, txid: str) -> str:
        """Mine another transaction of the same sender and nonce in place of the waiting `txid` (REPLACE)."""
        raise NotImplementedError(f"{self.name} cannot replace a transaction")

    def replaced_reason(self, transfer: Transfer) -> str:
        return f"nonce {transfer.nonce} of {transfer.sender} was used by another transaction"


# ------------------------------------------------------------------------------------------ scripted


class ScriptedDriver(ChainDriver):
    """ScriptedChain, the in-memory chain of the follower tests."""

    name = "scripted"
    adapter_class = ScriptedChain
    entry_point = None
    features = frozenset({MEMPOOL, REPLACE})
    currency = CurrencySpec("ETH", 18)
    class_values = (frozenset({"mempool"}), 18, 2)
    genesis_parent = "0" * 64
    bad_address = "not an address"
    unknown_fate = TxFate(TxState.UNKNOWN, "not in the scripted node")
    dropped_state = TxState.PENDING  # back in the mempool, as on Bitcoin
    mined_fate_has_height = True

    def __init__(self) -> None:
        self.state = ScriptedChainState()
        super().__init__(_ScriptedFront(self.state))
        self.chain = ScriptedChain(state=self.state)
        self.senders = itertools.count()
        self.forks = itertools.count()

    def settings(self, **overrides: Any) -> ChainSettings:
        values: dict[str, Any] = {
            "name": "scripted",
            "network": self.network,
            "rpc_url": "scripted://",
            "currencies": (self.currency,),
        }
        return ChainSettings(**(values | overrides))

    def adapter(self, **overrides: Any) -> BaseAdapter:
        adapter = ScriptedChain(self.settings(**overrides), state=self.state)
        self._adapters.append(adapter)
        return adapter

    def unreachable_adapter(self) -> BaseAdapter:
        return ScriptedChain(self.settings(), state=ScriptedChainState(down=True))

    def wrong_chains(self) -> list[tuple[dict[str, Any], str]]:
        return [({"network": "mainnet"}, "the node follows regtest, the configuration's network is mainnet")]

    def identity(self) -> str:
        return self.state.identity

    def new_address(self) -> str:
        return f"scripted-{next(self.senders)}"

    def pay(self, address: str, amount: int) -> str:
        sender = f"0xsender{next(self.senders)}"
        txid = _scripted_hash("pay", sender)
        self.state.mempool.append(Payment(txid, self.currency.code, address.encode(), amount, sender=sender))
        return txid

    def mine(self, blocks: int = 1) -> None:
        self.chain.mine(*self.state.mempool)
        for _ in range(blocks - 1):
            self.chain.mine()

    def tip(self) -> int:
        return self.chain.height()

    def block_hash(self, height: int) -> str:
        return self.state.blocks[height][0].block_hash

    def past_tip_error(self, tip: int) -> str:
        return rf"blocks {tip}\.\.{tip + 2} are not all on the scripted chain \(tip {tip}\)"

    def block_txids(self, height: int) -> list[str]:
        return [p.txid for p in self.state.blocks[height][1]]

    def expected(self, txid: str, address: str, watch_id: int, amount: int) -> Transfer:
        (payment,) = [p for p in self._payments() if p.txid == txid]
        return Transfer(
            self.currency.code, watch_id, address, amount, txid, -1, payment.sender, payment.nonce
        )

    def _payments(self) -> list[Payment]:
        return [p for _, ps in self.state.blocks for p in ps] + self.state.mempool

    def reorg_moving(self, txid: str) -> int:
        height = self.tip()
        (payment,) = self.chain.fork(height - 1, salt=f"fork-{next(self.forks)}")
        self.chain.mine()
        return self.chain.mine(payment).height

    def reorg_dropping(self, txid: str) -> None:
        self.chain.fork(self.tip() - 1, salt=f"fork-{next(self.forks)}")
        self.chain.mine()
        self.chain.mine()

    def replace(self, txid: str) -> str:
        (old,) = [p for p in self.state.mempool if p.txid == txid]
        self.state.mempool.remove(old)
        new = Payment(
            _scripted_hash("replace", txid), old.currency, old.sender.encode(), 0, sender=old.sender
        )
        self.chain.mine(new)
        return new.txid


class _ScriptedFront:
    """The scripted node's switch: `down` is what a stopped node looks like through ScriptedChain."""

    def __init__(self, state: ScriptedChainState) -> None:
        self.state = state

    async def start(self) -> None:
        self.state.down = False

    async def stop(self) -> None:
        self.state.down = True


def _scripted_hash(*parts: str) -> str:
    """A txid shaped like a real one (64 hex digits), fixed by `parts`."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ bitcoin


class BitcoinDriver(ChainDriver):
    """A bcoin regtest node with a funded wallet; the subclasses differ in how the adapter reaches it."""

    features = frozenset({MEMPOOL, BITCOIN})
    currency = CurrencySpec("BTC", 8)
    class_values = (frozenset({"mempool"}), 8, 1)
    genesis_parent = "00" * 32
    bad_address = "bcrt1qnotanaddress"
    dropped_state = TxState.PENDING  # bcoin puts the transactions of a block it disconnects back
    # p2tr is left out: bcoin's wallet cannot pay it (btc_tools.taproot_block does).
    kinds: ClassVar[tuple[bt.AddressKind, ...]] = ("p2wpkh", "p2pkh", "p2sh-p2wpkh", "p2wsh")

    # Who the WrongChain message says follows another chain.
    follower: ClassVar[str]

    def __init__(self, node: BcoinNode, front: NodeFront) -> None:
        super().__init__(front)
        self.node = node
        self._kinds = itertools.cycle(self.kinds)

    def wrong_chains(self) -> list[tuple[dict[str, Any], str]]:
        message = "{} follows Bitcoin 'regtest', the configuration's network is {}"
        return [({"network": n}, message.format(self.follower, n)) for n in ("mainnet", "testnet")]

    def _settings(self, url: str, **overrides: Any) -> ChainSettings:
        values: dict[str, Any] = {
            "name": "bitcoin",
            "network": self.network,
            "rpc_url": url,
            "currencies": (self.currency,),
            "timeout_s": 10.0,
        }
        return ChainSettings(**(values | overrides))

    def identity(self) -> str:
        return f"bitcoin:{bt.block_hash(self.node, 0)}"

    def new_address(self) -> str:
        return bt.make_address(next(self._kinds)).address

    def pay(self, address: str, amount: int) -> str:
        return bt.pay(self.node, address, amount)

    def mine(self, blocks: int = 1) -> None:
        bt.mine(self.node, blocks)

    def tip(self) -> int:
        return bt.height(self.node)

    def block_hash(self, height: int) -> str:
        return bt.block_hash(self.node, height)

    def block_txids(self, height: int) -> list[str]:
        block = bt.raw_block(self.node, bt.block_hash(self.node, height))
        return [b2lx(tx.GetTxid()) for tx in block.vtx]

    def expected(self, txid: str, address: str, watch_id: int, amount: int) -> Transfer:
        tx = bt.raw_transaction(self.node, txid)
        inputs = tuple(f"{b2lx(i.prevout.hash)}:{i.prevout.n}" for i in tx.vin)
        vout = bt.find_output(tx, script_for_address(address, self.network))
        return Transfer(self.currency.code, watch_id, address, amount, txid, vout, inputs=inputs)

    def reorg_moving(self, txid: str) -> int:
        height = self.tip()
        bt.reorg(self.node, depth=1, include_txs=[txid], extra_blocks=1)
        return height  # the same height, in a block of another hash

    def reorg_dropping(self, txid: str) -> None:
        bt.reorg(self.node, depth=1)


class BitcoinCoreDriver(BitcoinDriver):
    """The bitcoin-core adapter over bcoin's JSON-RPC, through a proxy the test can switch off."""

    name = "bitcoin-core"
    adapter_class = BitcoinCoreAdapter
    entry_point = "bitcoin-core"
    unknown_fate = TxFate(TxState.ABSENT, "not in the node's mempool or chain")
    mined_fate_has_height = False  # getrawtransaction does not say which block

    follower = "the node"

    def __init__(self, node: BcoinNode) -> None:
        self.proxy = _proxy_to(node.rpc_url)
        super().__init__(node, self.proxy)

    def settings(self, **overrides: Any) -> ChainSettings:
        credentials = {"rpc_user": self.node.rpc_user, "rpc_password": self.node.rpc_password}
        return self._settings(self.proxy.url, **(credentials | overrides))

    def past_tip_error(self, tip: int) -> str:
        return rf"blocks {tip}\.\.{tip + 2} are not all on the node's chain"


class EsploraDriver(BitcoinDriver):
    """The esplora adapter over the local Esplora API served from bcoin."""

    name = "esplora"
    adapter_class = EsploraAdapter
    entry_point = "esplora"
    unknown_fate = TxFate(TxState.ABSENT, "not in the Esplora API's mempool or chain")
    mined_fate_has_height = True

    follower = "the Esplora API"

    def __init__(self, node: BcoinNode) -> None:
        self.api = EsploraApi.for_node(node)  # start() after stop() takes the same port again
        super().__init__(node, self.api)

    def settings(self, **overrides: Any) -> ChainSettings:
        return self._settings(self.api.url, **overrides)

    def node_requests(self) -> int:
        return sum(self.api.requests.values())

    def past_tip_error(self, tip: int) -> str:
        return rf"not all on the API's chain \(none at {tip + 1}\)"


# ---------------------------------------------------------------------------------------------- evm


class EvmDriver(ChainDriver):
    """The evm adapter over an anvil that mines only when told, through a proxy the test can switch off.

    Native ETH only: tokens and logs are the EVM's own business (tests/test_evm_adapter.py)."""

    name = "evm"
    adapter_class = EvmAdapter
    entry_point = "evm"
    features = frozenset({REPLACE})
    currency = CurrencySpec("ETH", 18)
    class_values = (frozenset(), 18, 10)
    genesis_parent = "0x" + "00" * 32
    bad_address = "0x1234"
    unknown_fate = TxFate(TxState.UNKNOWN, "the node no longer knows the transaction")
    dropped_state = TxState.UNKNOWN  # anvil forgets the transactions of the blocks it reorganises away
    mined_fate_has_height = True
    unknown_txid = "0x" + "ab" * 32

    def __init__(self, node: AnvilNode) -> None:
        self.url = node.url
        self.chain_id = node.chain_id
        self.payer = tools.accounts(self.url)[0]
        self.proxy = _proxy_to(self.url)
        super().__init__(self.proxy)

    def settings(self, **overrides: Any) -> ChainSettings:
        values: dict[str, Any] = {
            "name": "ethereum",
            "network": self.network,
            "rpc_url": self.proxy.url,
            "currencies": (self.currency,),
            "chain_id": self.chain_id,
            "timeout_s": 10.0,
        }
        return ChainSettings(**(values | overrides))

    def wrong_chains(self) -> list[tuple[dict[str, Any], str]]:
        return [({"chain_id": 1}, rf"chain id {self.chain_id}.*says 1")]

    def identity(self) -> str:
        genesis = tools.rpc(self.url, "eth_getBlockByNumber", "0x0", False)["hash"]
        return f"evm:{self.chain_id}:{genesis}"

    def new_address(self) -> str:
        return to_checksum(os.urandom(20))

    def pay(self, address: str, amount: int) -> str:
        return tools.send_eth(self.url, self.payer, address, amount, wait=False)

    def mine(self, blocks: int = 1) -> None:
        tools.mine(self.url, blocks)

    def tip(self) -> int:
        return tools.head_height(self.url)

    def block_hash(self, height: int) -> str:
        return str(tools.rpc(self.url, "eth_getBlockByNumber", hex(height), False)["hash"])

    def past_tip_error(self, tip: int) -> str:
        return f"block {tip + 1} is gone"

    def block_txids(self, height: int) -> list[str]:
        return [
            str(t) for t in tools.rpc(self.url, "eth_getBlockByNumber", hex(height), False)["transactions"]
        ]

    def expected(self, txid: str, address: str, watch_id: int, amount: int) -> Transfer:
        tx = tools.rpc(self.url, "eth_getTransactionByHash", txid)
        sender = to_checksum(parse_evm_address(tx["from"]))
        return Transfer(self.currency.code, watch_id, address, amount, txid, -1, sender, int(tx["nonce"], 16))

    def reorg_moving(self, txid: str) -> int:
        height = self.tip()
        self.mine()
        tools.reorg_reinclude(self.url, 2, [txid], offset=1)
        return height + 1

    def reorg_dropping(self, txid: str) -> None:
        self.mine()
        tools.reorg_drop(self.url, 2)

    def replace(self, txid: str) -> str:
        new = tools.replace_pending(self.url, txid)
        self.mine()
        return new


# ------------------------------------------------------------------------------------------ helpers


def _proxy_to(url: str) -> TcpProxy:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return TcpProxy(parts.hostname, parts.port)
