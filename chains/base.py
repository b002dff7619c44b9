"""The contract between the daemon and a chain adapter: value types, the adapter protocol, chain errors.

Everything that crosses the boundary between `watcher/` and `chains/` is defined here. Values are frozen,
slotted dataclasses; amounts are integers in the asset's base units (satoshi, wei, token units). An
adapter knows its node and nothing of merchants, SQL or callbacks.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

# --------------------------------------------------------------------------------------------- errors


class ChainError(Exception):
    """Root of every error an adapter raises; `cause` keeps the raw node answer or exception."""

    def __init__(self, message: str, *, cause: object = None) -> None:
        super().__init__(message)
        self.cause = cause


class NodeUnavailable(ChainError):
    """The node could not be reached or did not answer in time: transient, retry later."""


class NodeRejected(ChainError):
    """The node answered with a JSON-RPC error for a call that should have worked."""

    def __init__(self, message: str, *, code: int | None = None, cause: object = None) -> None:
        super().__init__(message, cause=cause)
        self.code = code


class ChainDataError(ChainError):
    """The node's answer is malformed or contradicts itself (wrong types, a block that does not chain)."""


class WrongChain(ChainError):
    """The node follows another chain than the configuration says (chain id or genesis mismatch)."""


class ConfigMismatch(ChainError):
    """The configuration disagrees with the chain, e.g. a token's decimals differ from the contract's."""


class AddressError(ValueError):
    """An address is malformed, has a bad checksum or belongs to another network."""


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block as the follower tracks it: enough to detect that the chain changed under us."""

    height: int
    block_hash: str
    parent_hash: str


@dataclass(frozen=True, slots=True)
class CurrencySpec:
    """One currency an adapter watches. `contract` is set for tokens (lower-case hex for EVM)."""

    code: str
    decimals: int
    contract: str | None = None


@dataclass(frozen=True, slots=True)
class Transfer:
    """One incoming payment to a watched address, as found in a block or in the mempool.

    Identity of a deposit is (txid, currency, watch_id, index): it stays the same when the transaction is
    mined again in another block. `index` is the output index (vout) for Bitcoin; for EVM it is -1 for
    the transaction's own value and, for a token, the ordinal of this Transfer among the transaction's
    Transfer logs of that token contract (block-wide log indexes change when a transaction moves).
    """

    currency: str
    watch_id: int
    address: str
    amount: int
    txid: str
    index: int
    sender: str | None = None
    nonce: int | None = None
    # Outpoints ("txid:vout") this transaction spends; lets the daemon notice double-spends (Bitcoin).
    inputs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Spend:
    """A transaction that spends one of the watched outpoints (an input of an open deposit).

    When the spender is not the deposit's own transaction, the deposit was double-spent or replaced.
    """

    outpoint: str  # "txid:vout"
    txid: str  # the spending transaction


@dataclass(frozen=True, slots=True)
class BlockScan:
    """The result of scanning one block: its ref, the watched transfers it contains (in block order)
    and the spends of watched outpoints it contains."""

    ref: BlockRef
    transfers: tuple[Transfer, ...]
    spends: tuple[Spend, ...] = ()


@dataclass(frozen=True, slots=True)
class MempoolScan:
    """What the node's mempool holds for us: unconfirmed payments and spends of watched outpoints."""

    transfers: tuple[Transfer, ...] = ()
    spends: tuple[Spend, ...] = ()


class TxState(enum.Enum):
    """What the node says of a transaction that left the chain (or was only ever in the mempool)."""

    PENDING = "pending"  # known to the node, waiting in its mempool
    MINED = "mined"  # in a block of the node's main chain
    REPLACED = "replaced"  # another transaction took its place (same sender and nonce, or same input)
    UNKNOWN = "unknown"  # the node no longer knows it, and on this chain that means it is gone for good
    # Not known to the node now, but it may come back (a Bitcoin transaction evicted from one node's
    # mempool can still be mined): wait, up to the chain's expiry.
    ABSENT = "absent"


@dataclass(frozen=True, slots=True)
class TxFate:
    state: TxState
    reason: str = ""
    block_height: int | None = None


class KeyIndex(Protocol):
    """Watch key -> watch id, as adapters use it: look a key up, test it, count. Nothing else.

    A dict is one; so is `chains.watchset.CompactKeys`, which keeps fingerprints instead of the keys and
    therefore cannot list them: adapters never iterate the watched keys.
    """

    def get(self, key: bytes, /) -> int | None: ...

    def __contains__(self, key: object, /) -> bool: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class WatchList:
    """The watched addresses handed to an adapter: per currency code, watch key -> opaque watch id.

    The watch key is what `ChainAdapter.watch_key` returned for the configured address (a 20-byte EVM
    address, a Bitcoin output script). Lookups in the hot path go through `KeyIndex.get`: a dict for a
    few keys, `chains.watchset.CompactKeys` for millions (`chains.watchset.build_index` picks).
    """

    by_currency: Mapping[str, KeyIndex] = field(default_factory=dict)
    # Outpoints ("txid:vout") spent by open deposits: a scan reports other transactions spending them.
    outpoints: frozenset[str] = frozenset()

    def keys_for(self, currency: str) -> KeyIndex:
        return self.by_currency.get(currency, _NO_KEYS)


_NO_KEYS: KeyIndex = {}


# Told of every node call: (method, outcome "ok" or the ChainError class name, duration in seconds).
RpcObserver = Callable[[str, str, float], None]
# Told of the node URL a client turned to after the one in use became unavailable (fail-over).
RpcUrlObserver = Callable[[str], None]

DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChainSettings:
    """What an adapter is given at construction: the chain's section of the config, already validated."""

    name: str
    network: str  # mainnet | testnet | regtest
    rpc_url: str
    currencies: tuple[CurrencySpec, ...]
    timeout_s: float = 10.0
    rpc_user: str | None = None
    rpc_password: str | None = None
    chain_id: int | None = None
    # Adapter-specific keys from the config that the daemon does not interpret.
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The daemon's metrics hook; adapters pass it to their RPC client. Not part of the settings' identity.
    rpc_observer: RpcObserver | None = field(default=None, compare=False, repr=False)
    # Every node URL in order of preference when several are configured (`rpc_urls`, the first is
    # rpc_url); empty means rpc_url alone. The HTTP transport turns to the next one when the node in use
    # is unavailable (chains.http).
    rpc_urls: tuple[str, ...] = ()
    # The largest node answer read (after decompression); a larger one is ResponseTooLarge.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # The daemon's fail-over hook, like rpc_observer.
    on_rpc_url: RpcUrlObserver | None = field(default=None, compare=False, repr=False)

    @property
    def urls(self) -> tuple[str, ...]:
        """The node URLs in order of preference (at least one)."""
        return self.rpc_urls or (self.rpc_url,)


# --------------------------------------------------------------------------------------------- protocol


@runtime_checkable
class ChainAdapter(Protocol):
    """An async view of one chain through one node. Every method may raise `ChainError`.

    Capabilities an adapter may lack are declared in `capabilities`, never guessed:
    "mempool" means `mempool_scan` finds unconfirmed payments.
    """

    capabilities: ClassVar[frozenset[str]]
    # Decimals of the chain's own coin (a currency configured without `contract`): 8 BTC, 18 ETH.
    native_decimals: ClassVar[int]
    # The minimum used when a currency of this chain omits min_confirmations (callbacks.md).
    default_min_confirmations: ClassVar[int]

    def __init__(self, settings: ChainSettings) -> None: ...

    @staticmethod
    def watch_key(currency: CurrencySpec, address: str, network: str) -> bytes:
        """Validate `address` for `network` and return its key; raise AddressError with the reason."""
        ...

    @staticmethod
    def display_address(currency: CurrencySpec, key: bytes, network: str) -> str:
        """The canonical text form of a watch key (for logs and the CLI)."""
        ...

    async def open(self) -> str:
        """Connect and check the node is on the configured chain (WrongChain otherwise).

        Returns the chain's identity (e.g. "evm:1:0xGENESIS" or "bitcoin:GENESIS") for the store to pin.
        """
        ...

    async def check_currencies(self) -> None:
        """Check the configured currencies against the chain (a token's decimals against its contract);
        ConfigMismatch otherwise. Called once the node's identity is confirmed, so a node on another
        chain is reported as that, not as a missing contract."""
        ...

    async def close(self) -> None: ...

    async def head(self) -> BlockRef:
        """The node's current best block."""
        ...

    async def block_ref(self, height: int) -> BlockRef | None:
        """The main-chain block at `height`, or None when the node's chain is not that high."""
        ...

    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]:
        """Scan the main-chain blocks from_height..to_height (inclusive), in order, one BlockScan each.

        The refs must chain by parent hash; an adapter that sees the chain change mid-scan raises
        ChainDataError rather than return a mixed answer.
        """
        ...

    async def mempool_scan(self, watch: WatchList) -> MempoolScan:
        """Unconfirmed payments to watched addresses and mempool spends of watched outpoints. Called only
        when "mempool" is in capabilities; without it an adapter may raise (BaseAdapter does)."""
        ...

    async def tx_fate(self, transfer: Transfer) -> TxFate:
        """What became of a transfer whose block left the chain, or that was only seen in the mempool."""
        ...

    @classmethod
    def parse_public_key(cls, text: str, network: str) -> Deriver:
        """A watch-only Deriver for the merchant's public key or descriptor `text` on `network`.

        DerivationError when the text cannot be derived from on this chain, PrivateKeyRefused for any
        private key; neither repeats the text."""
        ...


# --------------------------------------------------------------------------------------- base class


class BaseAdapter(abc.ABC):
    """A ChainAdapter with defaults for its optional parts; the Protocol above stays the contract.

    An adapter author subclasses it, sets `native_decimals` and `default_min_confirmations`, implements
    the abstract methods, and overrides the defaults only where the chain needs it: `capabilities` is
    empty (no mempool), `check_currencies` checks nothing, `close` has nothing to release, and
    `mempool_scan` raises, since the daemon calls it only for an adapter that declares "mempool".
    Then the contract suite (tests/chains/) runs against it through a driver of its own.
    """

    capabilities: ClassVar[frozenset[str]] = frozenset()
    native_decimals: ClassVar[int]
    default_min_confirmations: ClassVar[int]

    def __init__(self, settings: ChainSettings) -> None:
        self._settings = settings

    @staticmethod
    @abc.abstractmethod
    def watch_key(currency: CurrencySpec, address: str, network: str) -> bytes: ...

    @staticmethod
    @abc.abstractmethod
    def display_address(currency: CurrencySpec, key: bytes, network: str) -> str: ...

    @abc.abstractmethod
    async def open(self) -> str: ...

    # Deliberately empty defaults (hence noqa B027: not abstract, an adapter need not override them).
    async def check_currencies(self) -> None:  # noqa: B027
        """Nothing to check: the chain's own coin needs no node call."""

    async def close(self) -> None:  # noqa: B027
        """Nothing to release."""

    @abc.abstractmethod
    async def head(self) -> BlockRef: ...

    @abc.abstractmethod
    async def block_ref(self, height: int) -> BlockRef | None: ...

    @abc.abstractmethod
    async def scan(self, from_height: int, to_height: int, watch: WatchList) -> list[BlockScan]: ...

    async def mempool_scan(self, watch: WatchList) -> MempoolScan:
        raise NotImplementedError(
            f"{type(self).__name__} does not declare the 'mempool' capability: its mempool is not watched"
        )

    @abc.abstractmethod
    async def tx_fate(self, transfer: Transfer) -> TxFate: ...

    @classmethod
    def parse_public_key(cls, text: str, network: str) -> Deriver:
        """Only chains that implement it derive addresses; the others refuse every key the same way."""
        raise DerivationError(f"the {cls.__name__} chain adapter cannot derive addresses from a public key")


# --------------------------------------------------------------------------------------- derivation


class DerivationError(ValueError):
    """A public key or descriptor cannot be derived from (malformed, wrong network, hardened steps,
    a script type the adapter does not derive). Messages never repeat the text given: it may hold a
    secret that was mistyped badly enough not to be recognised as one."""


class PrivateKeyRefused(DerivationError):
    """A private key in some form was given: deposit-watcher is watch-only and never takes one.

    `form` names what was recognised ("an extended private key", "a BIP-39 mnemonic", ...); neither
    the message, nor `args`, nor the traceback carries any part of the text given.
    """

    def __init__(self, form: str) -> None:
        super().__init__(
            f"refused: the text given is {form}; deposit-watcher is watch-only and never takes a private "
            "key. Give the account's extended public key instead (an xpub, or a descriptor holding one); "
            "the text is not repeated here, and if it was your real key, treat it as exposed"
        )
        self.form = form


# The largest non-hardened BIP-32 child index: addresses are derived at 0..MAX_DERIVATION_INDEX.
MAX_DERIVATION_INDEX = 2**31 - 1


def check_derivation_index(index: int) -> int:
    """`index` if it is a non-hardened BIP-32 child index, DerivationError otherwise."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index <= MAX_DERIVATION_INDEX:
        raise DerivationError(
            f"a derivation index is an integer 0..{MAX_DERIVATION_INDEX}, got {index!r:.40}"
        )
    return index


@dataclass(frozen=True, slots=True)
class Deriver(abc.ABC):
    """The addresses of one watch-only public key, by index: what an adapter's `parse_public_key` returns.

    `address(index)` is the display address exactly as the adapter's `display_address` shows it, so the
    adapter's `watch_key` accepts it for `network`. `descriptor` is the canonical public form (store it,
    not the text the merchant gave: parsing it again gives the same addresses); `id` is a short stable
    name of the key and script type, the same for every spelling of one key (to show "highest issued
    index per public key"). `origin` is the derivation path down to the parent of the addresses: from
    the key origin when the text gave one ("m/84'/0'/0'/0"), else relative to the key ("…/0").
    """

    id: str
    network: str
    kind: str
    descriptor: str
    origin: str

    @abc.abstractmethod
    def address(self, index: int) -> str:
        """The address at `index` (0..MAX_DERIVATION_INDEX); DerivationError for another index."""

    def path(self, index: int) -> str:
        """The full derivation path of the address at `index`, e.g. "m/84'/1'/0'/0/5"."""
        return f"{self.origin}/{check_derivation_index(index)}"
