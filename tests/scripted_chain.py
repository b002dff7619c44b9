"""An in-memory chain that follows the adapter contract, for follower and ledger tests.

It is a test double, used where a scenario must be exact and fast (forks at chosen heights, a node that
goes away); every behaviour it scripts is also exercised against real nodes in the integration tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

from chains.base import (
    BlockRef,
    BlockScan,
    ChainSettings,
    CurrencySpec,
    MempoolScan,
    NodeUnavailable,
    Spend,
    Transfer,
    TxFate,
    TxState,
    WatchList,
)


@dataclass
class Payment:
    """A payment on the scripted chain: `key` is the watch key of the receiving address."""

    txid: str
    currency: str
    key: bytes
    amount: int
    index: int = -1
    sender: str = "0xsender"
    nonce: int = 0
    inputs: tuple[str, ...] = ()


@dataclass
class ScriptedChainState:
    blocks: list[tuple[BlockRef, list[Payment]]] = field(default_factory=list)
    mempool: list[Payment] = field(default_factory=list)
    # txid -> fate override for transactions in no block (default: PENDING if in mempool else UNKNOWN)
    fates: dict[str, TxFate] = field(default_factory=dict)
    down: bool = False
    identity: str = "scripted:1"
    salt: str = "main"


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class ScriptedChain:
    """The adapter. Tests drive `state` through the helper methods below."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"mempool"})
    native_decimals: ClassVar[int] = 18
    default_min_confirmations: ClassVar[int] = 2
    shared: ClassVar[ScriptedChainState | None] = None

    def __init__(self, settings: ChainSettings | None = None) -> None:
        self.state = ScriptedChain.shared or ScriptedChainState()
        if not self.state.blocks:
            self.mine()  # genesis

    @staticmethod
    def watch_key(currency: CurrencySpec, address: str, network: str) -> bytes:
        return address.encode()

    @staticmethod
    def display_address(currency: CurrencySpec, key: bytes, network: str) -> str:
        return key.decode()

    # ------------------------------------------------------------------------------- scripting

    def mine(self, *payments: Payment) -> BlockRef:
        parent = self.state.blocks[-1][0].block_hash if self.state.blocks else "0" * 64
        height = len(self.state.blocks)
        ref = BlockRef(height, _hash(self.state.salt, height, parent, [p.txid for p in payments]), parent)
        self.state.blocks.append((ref, list(payments)))
        mined = {p.txid for p in payments}
        self.state.mempool = [p for p in self.state.mempool if p.txid not in mined]
        return ref

    def fork(self, height: int, salt: str) -> list[Payment]:
        """Drop blocks above `height` (their payments return to the mempool); new blocks get new hashes."""
        dropped = [p for _, ps in self.state.blocks[height + 1 :] for p in ps]
        del self.state.blocks[height + 1 :]
        self.state.salt = salt
        self.state.mempool.extend(dropped)
        return dropped

    def height(self) -> int:
        return len(self.state.blocks) - 1

    # ------------------------------------------------------------------------------- contract

    def _check(self) -> None:
        if self.state.down:
            raise NodeUnavailable("scripted node is down")

    async def open(self) -> str:
        self._check()
        return self.state.identity

    async def check_currencies(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def head(self) -> BlockRef:
        self._check()
        return self.state.blocks[-1][0]

    async def block_ref(self, height: int) -> BlockRef | None:
        self._check()
        return self.state.blocks[height][0] if 0 <= height < len(self.state.blocks) else None

    def _transfers(self, payments: list[Payment], watch: WatchList) -> tuple[Transfer, ...]:
        found = []
        for p in payments:
            watch_id = watch.keys_for(p.currency).get(p.key)
            if watch_id is not None and p.amount > 0:
                found.append(
                    Transfer(
                        p.currency, watch_id, p.key.decode(), p.amount, p.txid, p.index, p.sender, p.nonce,
                        p.inputs,
                    )
                )
        return tuple(found)

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        self._check()
        return [
            BlockScan(ref, self._transfers(payments, watch), self._spends(payments, watch))
            for ref, payments in self.state.blocks[from_height : to_height + 1]
        ]

    async def mempool_scan(self, watch: WatchList) -> MempoolScan:
        self._check()
        return MempoolScan(
            self._transfers(self.state.mempool, watch), self._spends(self.state.mempool, watch)
        )

    def _spends(self, payments: list[Payment], watch: WatchList) -> tuple[Spend, ...]:
        return tuple(Spend(o, p.txid) for p in payments for o in p.inputs if o in watch.outpoints)

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        self._check()
        for ref, payments in self.state.blocks:
            if any(p.txid == transfer.txid for p in payments):
                return TxFate(TxState.MINED, block_height=ref.height)
        if transfer.txid in self.state.fates:
            return self.state.fates[transfer.txid]
        if any(p.txid == transfer.txid for p in self.state.mempool):
            return TxFate(TxState.PENDING)
        return TxFate(TxState.UNKNOWN, "not in the scripted node")
