"""Helpers the adapter tests share: Bitcoin settings and watched addresses, a payment to a fresh address,
and a scan of a newly mined block as the follower makes it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bitcoin.core import b2lx

from chains.base import BlockScan, ChainAdapter, ChainSettings, CurrencySpec, Transfer, WatchList
from chains.bitcoin.address import script_for_address
from devnet import btc_tools as bt
from devnet.bcoin import BcoinNode
from tests.chains.drivers import ChainDriver

BTC = CurrencySpec("BTC", 8)


def bitcoin_settings(url: str, network: str = "regtest", **overrides: Any) -> ChainSettings:
    """Settings of a Bitcoin chain (BTC only) at `url`."""
    values: dict[str, Any] = {
        "name": "bitcoin",
        "network": network,
        "rpc_url": url,
        "currencies": (BTC,),
        "timeout_s": 10.0,
    }
    return ChainSettings(**(values | overrides))


class Watched:
    """Fresh Bitcoin addresses (keys held by the test) and the WatchList the daemon would build for them."""

    def __init__(self, kinds: Sequence[bt.AddressKind]) -> None:
        self.addresses = [bt.make_address(kind) for kind in kinds]
        self.by_currency = {
            "BTC": {
                script_for_address(w.address, "regtest"): watch_id
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


@dataclass(frozen=True)
class Deposit:
    """A payment to a fresh watched address, waiting to be mined, and the Transfer it must give."""

    address: str
    watch: WatchList
    txid: str
    expected: Transfer


def pay_a_new_address(driver: ChainDriver, amount: int) -> Deposit:
    address = driver.new_address()
    txid = driver.pay(address, amount)
    return Deposit(address, driver.watch([address]), txid, driver.expected(txid, address, 1, amount))


async def mined_scan(driver: ChainDriver, adapter: ChainAdapter, watch: WatchList) -> BlockScan:
    """Mine one block and scan it (through head(), as the follower does)."""
    driver.mine()
    head = await adapter.head()
    assert head.height == driver.tip()
    (scan,) = await adapter.scan(head.height, head.height, watch)
    assert scan.ref == head
    return scan
