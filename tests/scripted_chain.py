"""An in-memory chain that follows the adapter contract, for follower and ledger tests.

It is a test double, used where a scenario must be exact and fast (forks at chosen heights, a node that
goes away); the adapter contract suite (tests/chains/) holds it to the same scenarios as the real
adapters, so what the follower tests script is what a real node does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

from chains.base import (
    AddressError,
    BaseAdapter,
    BlockRef,
    BlockScan,
    ChainDataError,
    ChainSettings,
    CurrencySpec,
    MempoolScan,
    NodeUnavailable,
    Spend,
    Transfer,
    TxFate,
    TxState,
    WatchList,
    WrongChain,
)

# What a ScriptedChain built without settings (as the follower tests do) is configured for.
DEFAULT_SETTINGS = ChainSettings(
    name="scripted", network="regtest", rpc_url="scripted://", currencies=(CurrencySpec("ETH", 18),)
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
    # The network the node follows: open() refuses a configuration for another one, like a real node.
    network: str = "regtest"
    salt: str = "main"


def _hash(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class ScriptedChain(BaseAdapter):
    """The adapter. Tests drive `state` through the helper methods below."""

    capabilities: ClassVar[frozenset[str]] = frozenset({"mempool"})
    native_decimals: ClassVar[int] = 18
    default_min_confirmations: ClassVar[int] = 2
    shared: ClassVar[ScriptedChainState | None] = None

    def __init__(
        self, settings: ChainSettings | None = None, *, state: ScriptedChainState | None = None
    ) -> None:
        super().__init__(settings or DEFAULT_SETTINGS)
        self.state = state or ScriptedChain.shared or ScriptedChainState()
        if not self.state.blocks:
            self.mine()  # genesis

    @staticmethod
    def watch_key(currency: CurrencySpec, address: str, network: str) -> bytes:
        # Like a real adapter, a malformed address is refused rather than watched forever in vain.
        if not address or not address.isascii() or not address.isprintable() or " " in address:
            raise AddressError(f"not a scripted address: {address!r:.80}")
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

    def _call(self, method: str) -> None:
        """One "node call": refused while the node is down, and told to the observer either way, as
        chains.jsonrpc tells the daemon of every call it makes."""
        outcome = "NodeUnavailable" if self.state.down else "ok"
        observer = self._settings.rpc_observer
        if observer is not None:
            observer(method, outcome, 0.0)
        if self.state.down:
            raise NodeUnavailable("scripted node is down")

    async def open(self) -> str:
        self._call("open")
        if self._settings.network != self.state.network:
            raise WrongChain(
                f"{self._settings.name}: the node follows {self.state.network}, "
                f"the configuration's network is {self._settings.network}",
                cause=self.state.network,
            )
        return self.state.identity

    async def head(self) -> BlockRef:
        self._call("head")
        return self.state.blocks[-1][0]

    async def block_ref(self, height: int) -> BlockRef | None:
        self._call("block_ref")
        return self.state.blocks[height][0] if 0 <= height < len(self.state.blocks) else None

    def _transfers(self, payments: list[Payment], watch: WatchList) -> tuple[Transfer, ...]:
        found = []
        for p in payments:
            watch_id = watch.keys_for(p.currency).get(p.key)
            if watch_id is not None and p.amount > 0:
                found.append(
                    Transfer(
                        p.currency,
                        watch_id,
                        p.key.decode(),
                        p.amount,
                        p.txid,
                        p.index,
                        p.sender,
                        p.nonce,
                        p.inputs,
                    )
                )
        return tuple(found)

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        self._call("scan")
        if to_height < from_height:
            return []
        if from_height < 0 or to_height > self.height():
            # A real node has no such blocks and every adapter says so rather than answer fewer blocks.
            raise ChainDataError(
                f"blocks {from_height}..{to_height} are not all on the scripted chain (tip {self.height()})"
            )
        return [
            BlockScan(ref, self._transfers(payments, watch), self._spends(payments, watch))
            for ref, payments in self.state.blocks[from_height : to_height + 1]
        ]

    async def mempool_scan(self, watch: WatchList) -> MempoolScan:
        self._call("mempool_scan")
        return MempoolScan(
            self._transfers(self.state.mempool, watch), self._spends(self.state.mempool, watch)
        )

    def _spends(self, payments: list[Payment], watch: WatchList) -> tuple[Spend, ...]:
        return tuple(Spend(o, p.txid) for p in payments for o in p.inputs if o in watch.outpoints)

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        self._call("tx_fate")
        for ref, payments in self.state.blocks:
            if any(p.txid == transfer.txid for p in payments):
                return TxFate(TxState.MINED, block_height=ref.height)
        if transfer.txid in self.state.fates:
            return self.state.fates[transfer.txid]
        if any(p.txid == transfer.txid for p in self.state.mempool):
            return TxFate(TxState.PENDING)
        if self._nonce_used(transfer):
            reason = f"nonce {transfer.nonce} of {transfer.sender} was used by another transaction"
            return TxFate(TxState.REPLACED, reason)
        return TxFate(TxState.UNKNOWN, "not in the scripted node")

    def _nonce_used(self, transfer: Transfer) -> bool:
        """Whether a mined transaction of the transfer's sender took its nonce, as an EVM node tells."""
        if transfer.sender is None or transfer.nonce is None:
            return False
        return any(
            p.sender == transfer.sender and p.nonce == transfer.nonce and p.txid != transfer.txid
            for _, payments in self.state.blocks
            for p in payments
        )
