"""The configuration: YAML validated once at start into frozen objects.

The loader (`load_config`) is below the types. An error names the file, the line and the key, and the
daemon refuses to start. No global settings object: the Config is passed to what needs it.
"""

from __future__ import annotations

import codecs
import glob
import math
import os
import re
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import yaml

from chains import registry
from chains.base import (
    MAX_DERIVATION_INDEX,
    AddressError,
    ChainAdapter,
    ChainSettings,
    CurrencySpec,
    DerivationError,
    Deriver,
)
from chains.redaction import redact_url
from watcher import coinskro, yaml_events
from watcher.address_list import DEFAULT_INTEGRATION_ID, AddressEntry, AddressList, AddressListBuilder
from watcher.apikeys import ApiKeyHash, parse_key_hash
from watcher.database_url import DATABASE_TIMEOUT_S, is_database_url, safe_database_url
from watcher.errors import ConfigError, NestingError
from watcher.operator_password import OperatorPassword, parse_password_line
from watcher.payment_life import DEFAULT_GRACE_S

__all__ = ["DEFAULT_INTEGRATION_ID", "AddressEntry", "AddressList", "Config", "load_config", "summary"]

IPNetwork = IPv4Network | IPv6Network
DEFAULT_RETRY_SCHEDULE_MIN: tuple[float, ...] = (1, 5, 10, 15, 20, 30, 60, 90, 120, 150, 180, 210, 240)


@dataclass(frozen=True, slots=True)
class StatusConfig:
    host: str = "127.0.0.1"
    port: int = 8380
    # /readyz fails when a chain's newest block is older than this, or its lag exceeds max_lag_blocks.
    max_head_age_s: float = 3600.0
    max_lag_blocks: int = 20


@dataclass(frozen=True, slots=True)
class LeadershipConfig:
    """`leadership:`, for several daemons on one PostgreSQL store (watcher/leadership.py): how long a
    leader's lease lasts, how often a standby looks for a lapsed one, and the take-over bound the two
    must keep. The renewal period, the query timeout and the safety margin follow from `lease_s`."""

    name: str | None = None  # this daemon's name in the lease row; None: hostname:pid
    lease_s: float = 10.0
    poll_interval_s: float = 1.0
    takeover_s: float = 15.0

    @property
    def renew_interval_s(self) -> float:
        # Three renewals per lease: two may fail (a dropped connection, a slow query) before it lapses.
        return self.lease_s / 3

    @property
    def query_timeout_s(self) -> float:
        return self.lease_s / 5

    @property
    def margin_s(self) -> float:
        """How long before the database's expiry a leader stops acting on its own clock: room for the
        two clocks running at slightly different rates and for the event loop being late."""
        return self.lease_s / 10

    @property
    def worst_takeover_s(self) -> float:
        """From a leader's death to a standby's take-over, at most: the lease it renewed just before
        dying runs out, a standby's next poll sees that, and its acquiring query completes."""
        return self.lease_s + self.poll_interval_s + self.query_timeout_s


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "json"  # json | console
    level: str = "info"


@dataclass(frozen=True, slots=True)
class MerchantConfig:
    callback_url: str
    key: str
    secret: str = field(repr=False)  # never printed
    timeout_s: float = 10.0
    retry_schedule_min: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_MIN
    concurrency: int = 20
    # On mainnet the callback URL must be https unless this is set: a callback over plain http can be read
    # and replayed on the way (its signature proves the sender, it hides nothing).
    allow_http: bool = False
    # The callbacks' shape and signature: "coinspaid" (docs/callbacks.md, deposits to standing addresses)
    # or "coinskro" (docs/webhooks.md, payments for orders).
    format: str = "coinspaid"
    # coinskro: the payment events sent (`events:`); the others are recorded, not sent.
    events: tuple[str, ...] = coinskro.DEFAULT_EVENTS


# DEFAULT_INTEGRATION_ID (from address_list) is the integration a `merchant:` section is, and the one the
# store's rows from before integrations belong to: give an `integrations:` entry this id to keep them.
LOOPBACK_NETWORKS: tuple[IPNetwork, ...] = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The merchant API's listener (`api:`). It listens only when some integration has an API key."""

    host: str = "127.0.0.1"
    port: int = 8381
    max_body_bytes: int = 64 * 1024
    # Per API key: a token bucket of `burst` requests refilled at `rate_per_s`.
    rate_per_s: float = 50.0
    burst: int = 100


@dataclass(frozen=True, slots=True)
class UiConfig:
    """The back office (`ui:`, docs/back-office.md): who may sign in as the operator, and the sessions."""

    # The hash of the operator's password (None: no operator sign-in, only integrations' API keys).
    operator_password: OperatorPassword | None = None
    operator_allow_from: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS  # where the operator may sign in from
    # Mark the session cookie Secure even on plain HTTP: the daemon is behind a TLS-terminating proxy.
    secure_cookie: bool = False
    session_idle_s: float = 1800.0  # a session unused this long ends
    session_max_s: float = 12 * 3600.0  # and any session ends this long after its sign-in


@dataclass(frozen=True, slots=True)
class PublicKeyConfig:
    """A public key (descriptor or extended key) an integration's addresses of one chain are derived from."""

    chain: str
    deriver: Deriver
    # The first index to issue: a merchant coming from another system skips what it already handed out.
    first_index: int = 0


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    """An integration's payments for orders (`payments:`): their expiry and the grace to confirm."""

    expires_in_s: float = 1800.0  # when a request gives none (Coinskro: 30 minutes)
    max_expires_in_s: float = 7 * 24 * 3600.0
    # A payment seen before its expiry but not yet confirmed (watcher/payment_life.py says why 24 h).
    grace_s: float = DEFAULT_GRACE_S
    # Where the checkout page (`/pay/{reference}`) links the customer once the payment ended: a URL whose
    # path or query may hold {payment_reference} and {customer_reference} (watcher/ui/checkout.py).
    return_url: str | None = None


@dataclass(frozen=True, slots=True)
class IntegrationConfig:
    """One merchant (or one shop of a merchant): its API keys, clients, callbacks and public keys.
    Addresses, deposits and callbacks belong to one integration; no integration sees another's."""

    id: str  # a lower-case UUID, sent back as integration_id where a format has it
    name: str  # a label for logs, /status and the CLI; defaults to the id
    callback: MerchantConfig
    api_keys: tuple[ApiKeyHash, ...] = ()
    allow_from: tuple[IPNetwork, ...] = LOOPBACK_NETWORKS  # client networks allowed to call the API
    public_keys: tuple[PublicKeyConfig, ...] = ()
    payments: PaymentsConfig = PaymentsConfig()

    def public_key(self, chain: str) -> PublicKeyConfig | None:
        return next((k for k in self.public_keys if k.chain == chain), None)


@dataclass(frozen=True, slots=True)
class CurrencyConfig:
    code: str
    decimals: int
    min_confirmations: int
    contract: str | None = None  # EVM tokens: lower-case 0x hex

    def spec(self) -> CurrencySpec:
        return CurrencySpec(code=self.code, decimals=self.decimals, contract=self.contract)


@dataclass(frozen=True, slots=True)
class ChainConfig:
    name: str
    adapter: str
    settings: ChainSettings  # what the adapter is built from (secrets resolved)
    poll_interval_s: float
    currencies: tuple[CurrencyConfig, ...]
    # The first block to scan when the store has no cursor for this chain yet; None = the node's head.
    start_height: int | None = None
    # Blocks fetched per follower step when catching up.
    batch_blocks: int = 100
    # Block refs kept for reorg detection; a reorg deeper than this halts the chain.
    reorg_depth_limit: int = 256
    # A deposit out of the chain (and not in a block) longer than this is cancelled.
    unconfirmed_expiry_s: float = 86400.0
    # The back office's link to a transaction: a URL with `{txid}` (None: watcher/ui/explorer.py's default
    # for the network, if it has one).
    explorer_url: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    network: str
    database: str
    status: StatusConfig
    log: LogConfig
    chains: tuple[ChainConfig, ...]
    addresses: AddressList  # a compact sequence of AddressEntry, of every integration
    integrations: tuple[IntegrationConfig, ...]  # at least one; a `merchant:` section is one
    api: ApiConfig = ApiConfig()
    ui: UiConfig = UiConfig()
    # None: this daemon runs alone (no leader election).
    leadership: LeadershipConfig | None = None
    # database.id_offset: new deposit and address ids are above it (see Store.open).
    id_offset: int = 0
    # The PostgreSQL password (database.password_file), for a `database.url`; never shown (repr=False).
    database_password: str | None = field(default=None, repr=False)
    database_timeout_s: float = DATABASE_TIMEOUT_S  # database.timeout_s (PostgreSQL)

    @property
    def merchant(self) -> MerchantConfig:
        """The first integration's callback settings (a `merchant:` config has only that one)."""
        return self.integrations[0].callback

    def integration(self, integration_id: str) -> IntegrationConfig:
        for i in self.integrations:
            if i.id == integration_id:
                return i
        raise KeyError(integration_id)

    def chain(self, name: str) -> ChainConfig:
        for c in self.chains:
            if c.name == name:
                return c
        raise KeyError(name)

    def currency(self, code: str) -> tuple[ChainConfig, CurrencyConfig]:
        for c in self.chains:
            for cur in c.currencies:
                if cur.code == code:
                    return c, cur
        raise KeyError(code)


# --------------------------------------------------------------------------------------------- loader

NETWORKS = ("mainnet", "testnet", "regtest")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_TOKEN_DECIMALS = 36
DEFAULT_POLL_INTERVAL_S = 5.0

_TOP_REQUIRED = ("network", "database", "chains")
_TOP_OPTIONAL = (
    "merchant",
    "integrations",
    "api",
    "ui",
    "status",
    "log",
    "addresses",
    "addresses_files",
    "leadership",
)
_DATABASE_KEYS = ("path", "url", "password_file", "id_offset", "timeout_s")
_STATUS_KEYS = ("listen", "max_head_age_s", "max_lag_blocks")
_LOG_KEYS = ("format", "level")
_LEADERSHIP_KEYS = ("name", "lease_s", "poll_interval_s", "takeover_s")
# Below a second a lease is mostly network latency and event-loop delay; an hour is no fail-over at all.
MIN_LEASE_S = 1.0
MAX_LEASE_S = 3600.0
_CALLBACK_REQUIRED = ("callback_url",)
_CALLBACK_OPTIONAL = (
    "key",
    "secret",
    "secret_file",
    "timeout_s",
    "retry_schedule_min",
    "concurrency",
    "allow_http",
    "format",
    "events",
)
# What an integration has besides its callback; a `merchant:` section takes them beside the callback keys.
_ACCESS_KEYS = ("api_keys", "api_keys_file", "allow_from", "public_keys", "payments")
_MERCHANT_OPTIONAL = _CALLBACK_OPTIONAL + _ACCESS_KEYS
_INTEGRATION_REQUIRED = ("id", "callback")
_INTEGRATION_OPTIONAL = ("name", *_ACCESS_KEYS, "addresses", "addresses_files")
_API_KEYS = ("listen", "max_body_kb", "rate_per_s", "burst")
_PUBLIC_KEY_KEYS = ("key", "first_index")
_UI_KEYS = (
    "operator_password_file",
    "operator_allow_from",
    "secure_cookie",
    "session_idle_s",
    "session_max_s",
)
MAX_SESSION_S = 7 * 24 * 3600.0
CALLBACK_FORMATS = ("coinspaid", "coinskro")
# A callback format's default retry schedule: CoinsPaid's 14 attempts over 4 hours, the Coinskro seed's
# 6 attempts over 24 hours.
_DEFAULT_SCHEDULES = {
    "coinspaid": DEFAULT_RETRY_SCHEDULE_MIN,
    "coinskro": coinskro.DEFAULT_RETRY_SCHEDULE_MIN,
}
_PAYMENTS_KEYS = ("expires_in_s", "max_expires_in_s", "grace_s", "return_url")
# The placeholders a payments.return_url may hold, filled in (URL-quoted) from the payment.
RETURN_URL_FIELDS = ("payment_reference", "customer_reference")
# Upper bounds of the payments settings. An open payment keeps a derived address watched and its order
# waiting: 30 days is far past any checkout; a grace beyond 30 days would hold an order for a transaction
# that, unconfirmed that long, nodes have long dropped from their mempools (Bitcoin Core: 14 days).
MAX_PAYMENT_EXPIRY_S = 30 * 24 * 3600.0
MAX_GRACE_S = 30 * 24 * 3600.0
MAX_BODY_KB = 1024
_CHAIN_REQUIRED = ("adapter", "currencies")
_CHAIN_OPTIONAL = (
    "rpc_url",
    "rpc_urls",
    "rpc_user",
    "rpc_password",
    "rpc_password_file",
    "rpc_cookie_file",
    "chain_id",
    "poll_interval_s",
    "timeout_s",
    "start_height",
    "batch_blocks",
    "reorg_depth_limit",
    "unconfirmed_expiry_s",
    "max_response_mb",
    "explorer_url",
)
_CURRENCY_KEYS = ("min_confirmations", "contract", "decimals")
_ADDRESS_KEYS = ("currency", "address", "foreign_id")
_ADDRESS_KEY_SET = frozenset(_ADDRESS_KEYS)

_TAG = "tag:yaml.org,2002:"
_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "nothing (null)",
    "seq": "a list",
    "map": "a mapping",
    "timestamp": "a date",
}
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# libyaml composes a 100,000-address list ~5x faster (7 s, not 37 s) with the same marks; fall back without.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# libyaml's composer recurses on the C stack once per nesting level: past ~25,000 levels (8 MB stack) the
# process crashes. Nesting takes at least one byte per level, so only longer files need their depth counted.
MAX_NESTING = 10_000
# Merge keys (`<<: *anchor`) are copied when flattened: merges of merges double at each level, so a few
# lines could ask for billions of pairs. Counted (and refused) before PyYAML flattens them.
MAX_MERGED = 10_000
# Callbacks carry ids as JSON numbers, which JavaScript (and any double-based parser) reads exactly only
# up to 2**53: an offset up to 10**15 leaves some 8 * 10**15 ids below that.
MAX_ID_OFFSET = 10**15


@dataclass(frozen=True, slots=True)
class _Source:
    """One YAML file being read: the name errors show, where its relative paths start, the environment."""

    file: str
    base_dir: str
    environ: Mapping[str, str]
    # One constructor per file: it caches every node it builds, so a shared one would grow forever.
    constructor: yaml.constructor.SafeConstructor = field(default_factory=yaml.constructor.SafeConstructor)


@dataclass(frozen=True, slots=True)
class _Node:
    """A YAML node with the dotted key path that leads to it, so every error can name file, line and key."""

    src: _Source
    node: yaml.Node
    key: str
    key_line: int | None = None  # the line of the key this value belongs to

    @property
    def line(self) -> int:
        """Where errors about this value point. A block mapping or list starts on the line after its key,
        at its first entry: an error about the whole (a key missing from it) points at its key instead."""
        if self.key_line is not None and isinstance(self.node, yaml.CollectionNode):
            return self.key_line
        return int(self.node.start_mark.line) + 1

    @property
    def kind(self) -> str:
        return str(self.node.tag).removeprefix(_TAG)

    def error(self, message: str) -> ConfigError:
        return self.error_at(self.line, self.key, message)

    def error_at(self, line: int, key: str, message: str) -> ConfigError:
        return ConfigError(self.src.file, line, key or "(top level)", message)

    def child(self, name: str, node: yaml.Node, key_line: int | None = None) -> _Node:
        return _Node(self.src, node, f"{self.key}.{name}" if self.key else name, key_line)

    def item(self, index: int, node: yaml.Node) -> _Node:
        return _Node(self.src, node, f"{self.key}[{index}]")


@dataclass(frozen=True, slots=True)
class _Asset:
    """What address validation needs to know of a configured currency."""

    spec: CurrencySpec
    adapter: type[ChainAdapter]
    chain: str  # the configured chain's name


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML config at `path`; raise ConfigError naming file, line and key."""
    env = os.environ if environ is None else environ
    root = _compose(path, env, None)
    if root is None:
        raise ConfigError(path, None, "config", "the file is empty; expected a mapping of settings")
    top = _mapping(root, _TOP_REQUIRED, _TOP_OPTIONAL)
    network = _choice(top["network"], NETWORKS)
    chains, assets = _chains(top["chains"], network)
    database, id_offset, database_password, database_timeout_s = _database(top["database"])
    claims = _Claims()
    if _integrations_section(root, top) == "merchant":
        owners: Sequence[tuple[IntegrationConfig, Mapping[str, _Node]]] = [
            (_merchant(top["merchant"], network, assets, claims), top)
        ]
    else:
        owners = _integrations(top["integrations"], network, assets, claims)
    status = _status(top.get("status"))
    return Config(
        path=os.path.abspath(path),
        network=network,
        database=database,
        database_password=database_password,
        database_timeout_s=database_timeout_s,
        status=status,
        log=_log(top.get("log")),
        leadership=_leadership(top.get("leadership")),
        integrations=tuple(integration for integration, _ in owners),
        api=_api(top.get("api"), status),
        ui=_ui(top.get("ui")),
        chains=chains,
        addresses=_all_addresses(top, owners, assets, network),
        id_offset=id_offset,
    )


# --------------------------------------------------------------------------------------------- YAML


def _compose(path: str, environ: Mapping[str, str], opened_by: _Node | None) -> _Node | None:
    """The root node of the file at `path`, None for an empty file. `opened_by` names the referring key."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        if opened_by is not None:
            raise opened_by.error(f"cannot read {path}: {e.strerror}") from None
        raise ConfigError(path, None, "config", f"cannot read the file: {e.strerror}") from None
    src = _Source(path, os.path.dirname(os.path.abspath(path)), environ)
    try:
        if len(data) > MAX_NESTING:
            _check_nesting(path, data)
        node = yaml.compose(data, Loader=_LOADER)
    except yaml.YAMLError as e:
        raise _syntax_error(path, e, _error_key(data, e)) from None
    return None if node is None else _Node(src, node, "")


def _error_key(data: bytes | IO[bytes], e: yaml.YAMLError, root: str = "") -> str:
    """The key path the parser was in at the error: the text up to the error read again (see
    yaml_events.key_path_at). Only ever on an error."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return root
    # Where the failing construct starts (an unclosed quote or bracket) if known, else where it failed.
    mark = e.context_mark or e.problem_mark
    if mark is None:
        return root
    loader = _LOADER(_text_before(data, int(mark.index)))
    try:
        return yaml_events.key_path_at(iter(loader.get_event, None), root)
    finally:
        loader.dispose()


def _text_before(data: bytes | IO[bytes], chars: int) -> str:
    """The first `chars` characters of a UTF-8 file (libyaml's marks count characters)."""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")[:chars]
    data.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    parts: list[str] = []
    size = 0
    while size < chars:
        block = data.read(1 << 16)
        if not block:
            break
        parts.append(decoder.decode(block))
        size += len(parts[-1])
    return "".join(parts)[:chars]


def _check_nesting(path: str, data: bytes) -> None:
    """Refuse a document nested deeper than MAX_NESTING, from the parser's events (no recursion)."""
    depth = 0
    for event in yaml.parse(data, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                line = None if event.start_mark is None else int(event.start_mark.line) + 1
                raise NestingError(path, line, MAX_NESTING)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _merge_size(node: yaml.MappingNode, depth: int = 0, budget: int = MAX_MERGED) -> int:
    """Pairs and merged mappings that flattening `node` visits, counted until it exceeds `budget`."""
    size = 0
    for key_node, value_node in node.value:
        size += 1
        if key_node.tag != _TAG + "merge":
            continue
        subs = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for sub in subs:
            if isinstance(sub, yaml.MappingNode):
                # A merge of itself, or a chain of merges deeper than any real config: refused too.
                size += budget + 1 if depth >= 100 else _merge_size(sub, depth + 1, budget - size)
            if size > budget:
                return size
    return size


def _syntax_error(path: str, e: yaml.YAMLError, key: str) -> ConfigError:
    # Built from the parser's problem and mark only: its full str() quotes source lines, maybe a secret.
    key = key or "(top level)"
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        text = "; ".join(p for p in (e.context, e.problem) if p)
        return ConfigError(path, line, key, f"invalid YAML: {' '.join(text.split())}")
    return ConfigError(path, None, key, f"invalid YAML: {str(e).splitlines()[0]}")


def _type_name(n: _Node) -> str:
    return _TYPE_NAMES.get(n.kind, n.kind)


def _entries(n: _Node) -> dict[str, _Node]:
    """The key -> value nodes of a mapping; duplicate keys are errors, `<<: *anchor` merges are honoured."""
    if not isinstance(n.node, yaml.MappingNode):
        raise n.error(f"expected a mapping, got {_type_name(n)}")
    first_line: dict[str, int] = {}
    merges = False
    for key_node, _ in n.node.value:
        if key_node.tag == _TAG + "merge":
            merges = True
            continue
        name, line = _key_name(n, key_node), int(key_node.start_mark.line) + 1
        if name in first_line:
            key = n.child(name, key_node).key
            raise n.error_at(line, key, f"duplicate key (first at line {first_line[name]})")
        first_line[name] = line
    if merges and _merge_size(n.node) > MAX_MERGED:
        raise n.error(f"merge keys (<<) nest too deep or expand to more than {MAX_MERGED} entries")
    try:
        n.src.constructor.flatten_mapping(n.node)
    except yaml.MarkedYAMLError as e:
        raise _syntax_error(n.src.file, e, n.key) from None
    # After flattening, merged pairs come first, so the node's own keys win as YAML intends.
    entries: dict[str, _Node] = {}
    for key_node, value_node in n.node.value:
        name = _key_name(n, key_node)
        entries[name] = n.child(name, value_node, int(key_node.start_mark.line) + 1)
    return entries


def _key_name(n: _Node, key_node: yaml.Node) -> str:
    # Keys are names, never typed values: the raw text keeps a currency code like `ON` from becoming True.
    if not isinstance(key_node, yaml.ScalarNode):
        raise n.error_at(int(key_node.start_mark.line) + 1, n.key, "a key must be a plain name")
    return str(key_node.value)


def _mapping(n: _Node, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, _Node]:
    """A mapping with a fixed set of keys: unknown keys and missing required keys are errors."""
    fields = _entries(n)
    allowed = required + optional
    for name, value in fields.items():
        if name not in allowed:
            raise n.error_at(_key_line(n, name), value.key, f"unknown key (allowed: {', '.join(allowed)})")
    for name in required:
        if name not in fields:
            raise n.error(f"missing required key {name}")
    return {name: value for name, value in fields.items() if value.kind != "null" or name in required}


def _key_line(n: _Node, name: str) -> int:
    for key_node, _ in n.node.value:
        if key_node.value == name:
            return int(key_node.start_mark.line) + 1
    return n.line


def _list(n: _Node) -> list[_Node]:
    if not isinstance(n.node, yaml.SequenceNode):
        raise n.error(f"expected a list, got {_type_name(n)}")
    return [n.item(i, child) for i, child in enumerate(n.node.value)]


def _scalar(n: _Node) -> Any:
    try:
        return n.src.constructor.construct_object(n.node)
    except (yaml.YAMLError, ValueError):
        raise n.error(f"is not a valid {_type_name(n)}") from None


# --------------------------------------------------------------------------------------------- values


def _str(n: _Node) -> str:
    """A string with ${NAME} references resolved. Never echoes the value: it may be a secret."""
    if not isinstance(n.node, yaml.ScalarNode):  # even when tagged `!!str {a: 1}`
        shape = "a list" if isinstance(n.node, yaml.SequenceNode) else "a mapping"
        raise n.error(f"expected a string, got {shape}")
    if n.kind != "str":
        hint = " (quote it if it is meant as text)" if n.kind in ("int", "float", "bool") else ""
        raise n.error(f"expected a string, got {_type_name(n)}{hint}")
    return _substitute(n, str(n.node.value))


def _text(n: _Node) -> str:
    text = _str(n)
    if not text.strip():
        raise n.error("must not be empty")
    return text


def _substitute(n: _Node, text: str) -> str:
    if "${" not in text:
        return text
    if "${" in _ENV_REF.sub("", text):
        raise n.error("malformed variable reference (use ${NAME} or ${NAME:-default})")

    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        found = n.src.environ.get(name)
        if default is not None and not found:  # as in the shell, :- also covers a set but empty variable
            return default
        if found is None:
            raise n.error(f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        return found

    return _ENV_REF.sub(value, text)


def _choice(n: _Node, choices: tuple[str, ...]) -> str:
    text = _str(n)
    if text not in choices:
        raise n.error(f"must be one of {', '.join(choices)}, got {text!r}")
    return text


def _int(n: _Node, minimum: int, maximum: int | None = None) -> int:
    if n.kind != "int":  # bool has its own tag, so `true` is refused here
        raise n.error(f"expected an integer, got {_type_name(n)}")
    value = int(_scalar(n))
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise n.error(f"must be {bound}, got {value}")
    return value


def _bool(n: _Node) -> bool:
    if n.kind != "bool":
        raise n.error(f"expected true or false, got {_type_name(n)}")
    return bool(_scalar(n))


def _positive(n: _Node) -> float:
    if n.kind not in ("int", "float"):
        raise n.error(f"expected a number, got {_type_name(n)}")
    try:
        value = float(_scalar(n))
    except OverflowError:  # an integer of hundreds of digits
        raise n.error("is too large a number") from None
    if not math.isfinite(value) or value <= 0:
        raise n.error(f"must be a positive number, got {value:g}")
    return value


def _bounded(n: _Node, maximum: float) -> float:
    """A positive number of at most `maximum`."""
    value = _positive(n)
    if value > maximum:
        raise n.error(f"must be at most {maximum:g}, got {value:g}")
    return value


def _path(n: _Node) -> str:
    text = _text(n)
    if "\0" in text:  # open() and getpwnam() refuse it with a ValueError
        raise n.error("a path must not contain a NUL character")
    path = os.path.expanduser(text)
    return os.path.normpath(os.path.join(n.src.base_dir, path))


def _redact_url(url: str) -> str:
    """The URL without user:password@ and API keys, for messages and the summary (chains.redaction)."""
    return redact_url(url)


def _url(n: _Node) -> str:
    url = _text(n)
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        ok = False
    if not ok:
        raise n.error(f"{_redact_url(url)!r} is not an http:// or https:// URL with a host")
    return url


def _urls(n: _Node) -> tuple[str, ...]:
    """A non-empty list of distinct http(s) URLs (node fail-over, in order of preference)."""
    items = _list(n)
    if not items:
        raise n.error("list at least one node URL")
    urls: list[str] = []
    for item in items:
        url = _url(item)
        if url in urls:
            raise item.error(f"{_redact_url(url)!r} is listed twice")
        urls.append(url)
    return tuple(urls)


def _address_text(n: _Node, what: str) -> str:
    """An address or contract string, catching YAML's reading of an unquoted 0x... as a hex integer."""
    if n.kind == "int" and str(n.node.value).lstrip("+-").lower().startswith("0x"):
        raw = n.node.value
        raise n.error(f'{raw} was read by YAML as a number: quote the {what}, e.g. "{raw}"')
    return _text(n)


# --------------------------------------------------------------------------------------------- sections


def _database(n: _Node) -> tuple[str, int, str | None, float]:
    """`database: FILE`, `database: {path: FILE, id_offset: N}` (SQLite) or `database: {url:
    postgresql://user@host:port/dbname, password_file: FILE, id_offset: N, timeout_s: S}`: the file or
    URL, the id offset, the PostgreSQL password and statement timeout."""
    if not isinstance(n.node, yaml.MappingNode):
        return _path(n), 0, None, DATABASE_TIMEOUT_S
    fields = _mapping(n, (), _DATABASE_KEYS)
    offset = _int(fields["id_offset"], 0, MAX_ID_OFFSET) if "id_offset" in fields else 0
    if _one_of(n, fields, ("path", "url"), required=True) == "path":
        for key in ("password_file", "timeout_s"):
            if key in fields:
                raise fields[key].error(f"{key} is for a PostgreSQL `url`, not an SQLite `path`")
        return _path(fields["path"]), offset, None, DATABASE_TIMEOUT_S
    password = _read_secret(fields["password_file"]) if "password_file" in fields else None
    timeout_s = _positive(fields["timeout_s"]) if "timeout_s" in fields else DATABASE_TIMEOUT_S
    return _database_url(fields["url"]), offset, password, timeout_s


def _database_url(n: _Node) -> str:
    """A postgresql:// URL with a host and a database name, and no password in it (password_file)."""
    url = _text(n)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise n.error(f"{safe_database_url(url)!r} is not a valid URL") from None
    if not is_database_url(url):
        raise n.error(f"{safe_database_url(url)!r} is not a postgresql:// URL (an SQLite file is `path`)")
    if parts.password is not None or "password" in parse_qs(parts.query):  # libpq's ?password= too
        raise n.error("the URL holds a password: remove it and name a file holding it in password_file")
    if not parts.hostname or not parts.path.strip("/") or any(c.isspace() for c in url):
        raise n.error(
            f"{safe_database_url(url)!r} needs a host and a database, e.g. postgresql://user@host/db"
        )
    return url


def _status(n: _Node | None) -> StatusConfig:
    if n is None:
        return StatusConfig()
    fields = _mapping(n, (), _STATUS_KEYS)
    kwargs: dict[str, Any] = {}
    if "listen" in fields:
        kwargs["host"], kwargs["port"] = _listen(fields["listen"])
    if "max_head_age_s" in fields:
        kwargs["max_head_age_s"] = _positive(fields["max_head_age_s"])
    if "max_lag_blocks" in fields:
        kwargs["max_lag_blocks"] = _int(fields["max_lag_blocks"], 1)
    return StatusConfig(**kwargs)


def _listen(n: _Node) -> tuple[str, int]:
    text = _text(n)
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:8380
    # isascii: str.isdigit() also takes digits such as '²' that int() refuses.
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise n.error(f"expected host:port, e.g. 127.0.0.1:8380, got {text!r}")
    return host, int(port)


def _log(n: _Node | None) -> LogConfig:
    if n is None:
        return LogConfig()
    fields = _mapping(n, (), _LOG_KEYS)
    kwargs: dict[str, Any] = {}
    if "format" in fields:
        kwargs["format"] = _choice(fields["format"], LOG_FORMATS)
    if "level" in fields:
        kwargs["level"] = _choice(fields["level"], LOG_LEVELS)
    return LogConfig(**kwargs)


def _leadership(n: _Node | None) -> LeadershipConfig | None:
    if n is None:
        return None
    fields = _mapping(n, (), _LEADERSHIP_KEYS)
    kwargs: dict[str, Any] = {}
    if "name" in fields:
        name = _text(fields["name"])
        if not name.isprintable() or len(name) > 200:
            raise fields["name"].error("must be printable text of at most 200 characters")
        kwargs["name"] = name
    if "lease_s" in fields:
        kwargs["lease_s"] = lease = _bounded(fields["lease_s"], MAX_LEASE_S)
        if lease < MIN_LEASE_S:
            raise fields["lease_s"].error(f"must be at least {MIN_LEASE_S:g}, got {lease:g}")
    for key in ("poll_interval_s", "takeover_s"):
        if key in fields:
            kwargs[key] = _bounded(fields[key], MAX_LEASE_S)
    config = LeadershipConfig(**kwargs)
    if config.poll_interval_s > config.lease_s:
        raise fields["poll_interval_s"].error(
            f"a standby must look at least once per lease: at most lease_s ({config.lease_s:g})"
        )
    if config.takeover_s < config.worst_takeover_s:
        # Point at takeover_s when written; else the defaults it left cannot fit the lease asked for.
        raise fields.get("takeover_s", n).error(
            f"a take-over within takeover_s ({config.takeover_s:g} s) cannot be promised: it may take "
            f"lease_s ({config.lease_s:g}) + poll_interval_s ({config.poll_interval_s:g}) + a query "
            f"(lease_s / 5 = {config.query_timeout_s:g}) = {config.worst_takeover_s:g} s; "
            "raise takeover_s or lower lease_s"
        )
    return config


def _callback(n: _Node, fields: Mapping[str, _Node], network: str) -> MerchantConfig:
    """The callback settings of a `merchant:` section or an integration's `callback:` mapping."""
    callback_format = _choice(fields["format"], CALLBACK_FORMATS) if "format" in fields else "coinspaid"
    # Both formats sign with the secret: a webhook without a signature cannot be told from a forgery.
    which = _one_of(n, fields, ("secret", "secret_file"), required=True)
    secret = _text(fields["secret"]) if which == "secret" else _read_secret(fields["secret_file"])
    kwargs: dict[str, Any] = {
        "format": callback_format,
        "retry_schedule_min": _DEFAULT_SCHEDULES[callback_format],
    }
    if "timeout_s" in fields:
        kwargs["timeout_s"] = _positive(fields["timeout_s"])
    if "retry_schedule_min" in fields:
        kwargs["retry_schedule_min"] = _retry_schedule(fields["retry_schedule_min"])
    if "concurrency" in fields:
        kwargs["concurrency"] = _int(fields["concurrency"], 1)
    if "events" in fields:
        if callback_format != "coinskro":
            raise fields["events"].error(
                f"events are chosen for format: coinskro only (this callback's format is {callback_format})"
            )
        kwargs["events"] = _events(fields["events"])
    kwargs["allow_http"] = "allow_http" in fields and _bool(fields["allow_http"])
    url = _url(fields["callback_url"])
    if network == "mainnet" and urlsplit(url).scheme != "https" and not kwargs["allow_http"]:
        raise fields["callback_url"].error(
            f"must be an https:// URL on mainnet (set {n.key}.allow_http: true to send callbacks over "
            "plain http anyway)"
        )
    return MerchantConfig(url, _callback_key(n, fields, callback_format), secret, **kwargs)


def _callback_key(n: _Node, fields: Mapping[str, _Node], callback_format: str) -> str:
    """The `key` sent as X-Processing-Key: required for coinspaid; coinskro sends none ("" when absent)."""
    if "key" in fields:
        return _text(fields["key"])
    if callback_format == "coinspaid":
        raise n.error("missing required key key (format coinspaid sends it as X-Processing-Key)")
    return ""


def _events(n: _Node) -> tuple[str, ...]:
    """The coinskro events sent: at least one, each known, none twice, in the order given."""
    items = _list(n)
    if not items:
        raise n.error(f"list at least one event (of {', '.join(coinskro.EVENTS)})")
    events: list[str] = []
    for item in items:
        event = _choice(item, coinskro.EVENTS)
        if event in events:
            raise item.error(f"{event} is listed twice")
        events.append(event)
    return tuple(events)


def _retry_schedule(n: _Node) -> tuple[float, ...]:
    items = _list(n)
    if not items:
        raise n.error("must list at least one retry (minutes after the first attempt)")
    minutes: list[float] = []
    for item in items:
        value = _positive(item)
        if minutes and value < minutes[-1]:
            raise item.error(f"must not be less than the retry before it ({minutes[-1]:g} min)")
        minutes.append(value)
    return tuple(minutes)


def _one_of(n: _Node, fields: Mapping[str, _Node], names: tuple[str, ...], *, required: bool) -> str | None:
    given = [name for name in names if name in fields]
    if len(given) > 1:
        raise fields[given[1]].error(f"give only one of {', '.join(names)}")
    if required and not given:
        raise n.error(f"one of {', '.join(names)} is required")
    return given[0] if given else None


def _read_secret(n: _Node) -> str:
    """The content of the file named by a *_file key, stripped; never shown in any message."""
    path = _path(n)
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as e:
        raise n.error(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise n.error(f"{path} is not UTF-8 text") from None
    if not secret:
        raise n.error(f"{path} is empty")
    return secret


def _rpc_auth(n: _Node, fields: Mapping[str, _Node]) -> tuple[str | None, str | None]:
    """(rpc_user, rpc_password) from the password, the password file or a bitcoind cookie file."""
    which = _one_of(n, fields, ("rpc_password", "rpc_password_file", "rpc_cookie_file"), required=False)
    user = _text(fields["rpc_user"]) if "rpc_user" in fields else None
    if which == "rpc_password":
        return user, _str(fields[which])
    if which == "rpc_password_file":
        return user, _read_secret(fields[which])
    if which == "rpc_cookie_file":
        if user is not None:
            raise fields["rpc_user"].error("the cookie file holds the user: remove rpc_user or the cookie")
        cookie_user, sep, password = _read_secret(fields[which]).partition(":")
        if not sep or not cookie_user or not password:
            raise fields[which].error("the cookie file does not hold user:password")
        return cookie_user, password
    return user, None


# --------------------------------------------------------------------------------------------- integrations

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(slots=True)
class _Claims:
    """What must be unique across all integrations, with where each was given first ('FILE:LINE') and by
    which integration: its id, each API key hash, each public key (by Deriver.id)."""

    ids: dict[str, str] = field(default_factory=dict)
    key_hashes: dict[bytes, tuple[str, str]] = field(default_factory=dict)
    public_keys: dict[str, tuple[str, str]] = field(default_factory=dict)


def _integrations_section(root: _Node, top: Mapping[str, _Node]) -> str:
    """'merchant' or 'integrations': exactly one of the two sections is given."""
    given = [name for name in ("merchant", "integrations") if name in top]
    if not given:
        raise root.error(
            "one of merchant, integrations is required (merchant: for one shop, integrations: for several)"
        )
    if len(given) > 1:
        raise top["integrations"].error(
            "give only one of merchant, integrations (a merchant: section is one integration)"
        )
    return given[0]


def _merchant(n: _Node, network: str, assets: Mapping[str, _Asset], claims: _Claims) -> IntegrationConfig:
    """A `merchant:` section: the callback keys of today, plus the API's keys beside them."""
    fields = _mapping(n, _CALLBACK_REQUIRED, _MERCHANT_OPTIONAL)
    callback = _callback(n, {k: v for k, v in fields.items() if k not in _ACCESS_KEYS}, network)
    claims.ids[DEFAULT_INTEGRATION_ID] = f"{n.src.file}:{n.line}"
    integration = IntegrationConfig(DEFAULT_INTEGRATION_ID, "merchant", callback)
    return _with_access(integration, fields, network, assets, claims)


def _integrations(
    n: _Node, network: str, assets: Mapping[str, _Asset], claims: _Claims
) -> list[tuple[IntegrationConfig, Mapping[str, _Node]]]:
    """Each `integrations:` entry, with its fields (where its addresses are read from)."""
    items = _list(n)
    if not items:
        raise n.error("list at least one integration")
    found: list[tuple[IntegrationConfig, Mapping[str, _Node]]] = []
    for item in items:
        fields = _mapping(item, _INTEGRATION_REQUIRED, _INTEGRATION_OPTIONAL)
        integration_id = _uuid(fields["id"])
        if integration_id in claims.ids:
            raise fields["id"].error(
                f"integration id {integration_id} is already used at {claims.ids[integration_id]}"
            )
        claims.ids[integration_id] = f"{item.src.file}:{fields['id'].line}"
        name = _text(fields["name"]) if "name" in fields else integration_id
        cb = fields["callback"]
        callback = _callback(cb, _mapping(cb, _CALLBACK_REQUIRED, _CALLBACK_OPTIONAL), network)
        integration = IntegrationConfig(integration_id, name, callback)
        found.append((_with_access(integration, fields, network, assets, claims), fields))
    return found


def _uuid(n: _Node) -> str:
    text = _text(n).strip()
    if not _UUID.fullmatch(text):
        raise n.error(f"expected a UUID such as 3f2c9a1e-5b7d-4c1a-9e8f-0a1b2c3d4e5f, got {text[:60]!r}")
    return text.lower()


def _with_access(
    integration: IntegrationConfig,
    fields: Mapping[str, _Node],
    network: str,
    assets: Mapping[str, _Asset],
    claims: _Claims,
) -> IntegrationConfig:
    """The integration with its API keys, client networks and public keys from `fields`."""
    kwargs: dict[str, Any] = {"api_keys": _api_keys(fields, network, integration.id, claims)}
    if "allow_from" in fields:
        kwargs["allow_from"] = _allow_from(fields["allow_from"])
    if "public_keys" in fields:
        kwargs["public_keys"] = _public_keys(fields["public_keys"], network, assets, integration.id, claims)
    if "payments" in fields:
        kwargs["payments"] = _payments(fields["payments"])
    return replace(integration, **kwargs)


def _payments(n: _Node) -> PaymentsConfig:
    """`payments:` an integration's payment expiry (default and bound) and grace period, in seconds."""
    # `payments:` with nothing after it means all defaults.
    fields = {} if n.kind == "null" else _mapping(n, (), _PAYMENTS_KEYS)
    kwargs: dict[str, Any] = {}
    if "return_url" in fields:
        kwargs["return_url"] = _return_url(fields["return_url"])
    bounds = {
        "expires_in_s": MAX_PAYMENT_EXPIRY_S,
        "max_expires_in_s": MAX_PAYMENT_EXPIRY_S,
        "grace_s": MAX_GRACE_S,
    }
    for name, bound in bounds.items():
        if name in fields:
            kwargs[name] = _bounded(fields[name], bound)
    payments = PaymentsConfig(**kwargs)
    if payments.expires_in_s > payments.max_expires_in_s:
        where = fields.get("expires_in_s") or fields["max_expires_in_s"]
        raise where.error(
            f"expires_in_s ({payments.expires_in_s:g} s) must not exceed max_expires_in_s "
            f"({payments.max_expires_in_s:g} s)"
        )
    return payments


def _return_url(n: _Node) -> str:
    """An http(s) URL whose path or query may name {payment_reference} and {customer_reference}. Never in
    the host: a customer_reference (typed by the merchant's customers, often) must not choose where the
    customer is sent."""
    url = _url(n)
    try:
        parts = list(string.Formatter().parse(url))
    except ValueError as e:
        raise n.error(f"has an unbalanced brace ({e}); write a literal brace as {{{{ or }}}}") from None
    for _, name, spec, conversion in parts:
        if name is not None and (name not in RETURN_URL_FIELDS or spec or conversion):
            raise n.error(
                f"has an unknown placeholder {{{name}}}; the only ones are "
                + " and ".join("{" + f + "}" for f in RETURN_URL_FIELDS)
                + ", written plain (no format or conversion)"
            )
    if "{" in urlsplit(url).netloc:
        raise n.error("has a placeholder in its host; placeholders go in the path or the query")
    return url


# ---------------------------------------------------------------------------------- API key hashes


def _api_keys(
    fields: Mapping[str, _Node], network: str, integration_id: str, claims: _Claims
) -> tuple[ApiKeyHash, ...]:
    """The key hashes of `api_keys` and of each `api_keys_file`, in that order. Errors name the item or
    the file and line, and never repeat the text: a key pasted by mistake must not reach a log."""
    found: list[ApiKeyHash] = []

    def claim(key_hash: ApiKeyHash, where: str, error: Callable[[str], ConfigError]) -> None:
        _check_key_network(key_hash, network, error)
        first = claims.key_hashes.get(key_hash.digest)
        if first is not None:
            owner = "" if first[1] == integration_id else f" (integration {first[1]})"
            raise error(f"this API key hash ({key_hash.prefix}...) is already listed at {first[0]}{owner}")
        claims.key_hashes[key_hash.digest] = (where, integration_id)
        found.append(key_hash)

    for item in _list(fields["api_keys"]) if "api_keys" in fields else []:
        claim(_key_hash(item), f"{item.src.file}:{item.line}", item.error)
    for opened_by, path in _key_files(fields.get("api_keys_file")):
        for number, key_hash in _read_key_file(opened_by, path):
            claim(key_hash, f"{path}:{number}", partial(ConfigError, path, number, opened_by.key))
    return tuple(found)


def _key_hash(n: _Node) -> ApiKeyHash:
    try:
        return parse_key_hash(_text(n))
    except ValueError as e:  # parse_key_hash's message never repeats the line
        raise n.error(str(e)) from None


def _check_key_network(key_hash: ApiKeyHash, network: str, error: Callable[[str], ConfigError]) -> None:
    """A test key on a mainnet daemon, or a live key on a test network, is refused: the prefix is how a
    merchant's code tells real money from a trial, and a mix-up must fail at start, not at a payment."""
    if network == "mainnet" and not key_hash.live:
        raise error(
            "a test key (sk_test_...) on network: mainnet; a mainnet daemon takes live keys "
            "(sk_live_...) only"
        )
    if network != "mainnet" and key_hash.live:
        raise error(
            f"a live key (sk_live_...) on network: {network}; only test keys (sk_test_...) are taken there"
        )


def _key_files(n: _Node | None) -> Iterator[tuple[_Node, str]]:
    """`api_keys_file`: one path or a list of paths, each with the node that names it."""
    if n is None:
        return
    items = _list(n) if isinstance(n.node, yaml.SequenceNode) else [n]
    for item in items:
        yield item, _path(item)


def _read_key_file(opened_by: _Node, path: str) -> Iterator[tuple[int, ApiKeyHash]]:
    """(line number, hash) of each hash line of a key file; `#` starts a comment, blank lines are skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise opened_by.error(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise opened_by.error(f"{path} is not UTF-8 text") from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            yield number, parse_key_hash(line)
        except ValueError as e:  # parse_key_hash's message never repeats the line
            raise ConfigError(path, number, opened_by.key, str(e)) from None


# ---------------------------------------------------------------------------------- clients, public keys


def _allow_from(n: _Node) -> tuple[IPNetwork, ...]:
    items = _list(n)
    if not items:
        raise n.error("list at least one address or network (leave allow_from out for loopback only)")
    networks: list[IPNetwork] = []
    for item in items:
        text = _text(item).strip()
        try:
            networks.append(ip_network(text))
        except ValueError:
            raise item.error(_bad_network(text)) from None
    return tuple(networks)


def _bad_network(text: str) -> str:
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        return f"{text[:60]!r} is not an IP address or a network in CIDR notation (e.g. 10.0.0.0/8)"
    return f"{text!r} has host bits set: the network is {loose}"


def _public_keys(
    n: _Node, network: str, assets: Mapping[str, _Asset], integration_id: str, claims: _Claims
) -> tuple[PublicKeyConfig, ...]:
    """`public_keys:` chain name -> descriptor or extended public key, or {key, first_index}."""
    adapters = {asset.chain: asset.adapter for asset in assets.values()}
    keys: list[PublicKeyConfig] = []
    for chain, value in _entries(n).items():
        adapter = adapters.get(chain)
        if adapter is None:
            raise value.error(f"no chain {chain!r} is configured (chains: {', '.join(adapters)})")
        key_node, first_index = value, 0
        if isinstance(value.node, yaml.MappingNode):
            fields = _mapping(value, ("key",), ("first_index",))
            key_node = fields["key"]
            if "first_index" in fields:
                first_index = _int(fields["first_index"], 0, MAX_DERIVATION_INDEX)
        try:
            # The adapter's messages never repeat the text (it may be a private key given by mistake).
            deriver: Deriver = adapter.parse_public_key(_text(key_node).strip(), network)
        except DerivationError as e:
            raise key_node.error(str(e)) from None
        first = claims.public_keys.get(deriver.id)
        if first is not None and first[1] != integration_id:
            raise key_node.error(
                f"this public key ({deriver.id}) is already integration {first[1]}'s, at {first[0]}: "
                "two integrations deriving the same addresses would see each other's deposits"
            )
        claims.public_keys.setdefault(deriver.id, (f"{key_node.src.file}:{key_node.line}", integration_id))
        keys.append(PublicKeyConfig(chain, deriver, first_index))
    return tuple(keys)


# --------------------------------------------------------------------------------------------- api


def _api(n: _Node | None, status: StatusConfig) -> ApiConfig:
    if n is None:
        api = ApiConfig()
        listen = None
    else:
        fields = _mapping(n, (), _API_KEYS)
        kwargs: dict[str, Any] = {}
        listen = fields.get("listen")
        if listen is not None:
            kwargs["host"], kwargs["port"] = _listen(listen)
        if "max_body_kb" in fields:
            kwargs["max_body_bytes"] = _int(fields["max_body_kb"], 1, MAX_BODY_KB) * 1024
        if "rate_per_s" in fields:
            kwargs["rate_per_s"] = _positive(fields["rate_per_s"])
        if "burst" in fields:
            kwargs["burst"] = _int(fields["burst"], 1)
        api = ApiConfig(**kwargs)
    if (api.host, api.port) == (status.host, status.port) and listen is not None:
        raise listen.error(f"the status port listens on {status.host}:{status.port} already")
    return api


def _ui(n: _Node | None) -> UiConfig:
    if n is None or n.kind == "null":
        return UiConfig()
    fields = _mapping(n, (), _UI_KEYS)
    kwargs: dict[str, Any] = {}
    if "operator_password_file" in fields:
        kwargs["operator_password"] = _operator_password(fields["operator_password_file"])
    if "operator_allow_from" in fields:
        kwargs["operator_allow_from"] = _allow_from(fields["operator_allow_from"])
    if "secure_cookie" in fields:
        kwargs["secure_cookie"] = _bool(fields["secure_cookie"])
    for name in ("session_idle_s", "session_max_s"):
        if name in fields:
            kwargs[name] = _bounded(fields[name], MAX_SESSION_S)
    return UiConfig(**kwargs)


def _operator_password(n: _Node) -> OperatorPassword:
    """The hash line of the operator's password file (read again on every reload, as all the config)."""
    path = _path(n)
    try:
        parsed = parse_password_line(_read_secret(n))
    except ValueError as e:
        raise n.error(f"{path}: {e}") from None
    return parsed


# --------------------------------------------------------------------------------------------- chains


def _chains(n: _Node, network: str) -> tuple[tuple[ChainConfig, ...], dict[str, _Asset]]:
    """The chains, and every currency code (unique across chains) with what validates its addresses."""
    entries = _entries(n)
    if not entries:
        raise n.error("configure at least one chain")
    chains: list[ChainConfig] = []
    assets: dict[str, _Asset] = {}
    defined_at: dict[str, str] = {}
    for name, chain_node in entries.items():
        if not _NAME.fullmatch(name):
            raise chain_node.error("a chain name uses letters, digits, '_', '.' and '-' only")
        chain, adapter, code_nodes = _chain(chain_node, name, network)
        for cur in chain.currencies:
            where = code_nodes[cur.code]
            if cur.code in defined_at:
                raise where.error(f"currency code {cur.code} is already defined at {defined_at[cur.code]}")
            defined_at[cur.code] = f"{where.key} (line {where.line})"
            assets[cur.code] = _Asset(cur.spec(), adapter, name)
        chains.append(chain)
    return tuple(chains), assets


def _adapter(n: _Node) -> tuple[str, type[ChainAdapter]]:
    name = _text(n)
    try:
        cls: type[ChainAdapter] = registry.adapter_class(name)
    except registry.UnknownAdapter as e:
        raise n.error(str(e)) from None
    except ImportError as e:  # registered, but its module is missing or broken: a bad install
        raise n.error(f"adapter {name!r} is registered but cannot be loaded: {e}") from None
    return name, cls


def _chain(n: _Node, name: str, network: str) -> tuple[ChainConfig, type[ChainAdapter], dict[str, _Node]]:
    fields = _mapping(n, _CHAIN_REQUIRED, _CHAIN_OPTIONAL)
    adapter_name, adapter = _adapter(fields["adapter"])
    which = _one_of(n, fields, ("rpc_url", "rpc_urls"), required=True)
    urls = (_url(fields["rpc_url"]),) if which == "rpc_url" else _urls(fields["rpc_urls"])
    currencies, code_nodes = _currencies(fields["currencies"], adapter, network)
    rpc_user, rpc_password = _rpc_auth(n, fields)
    settings: dict[str, Any] = {"rpc_user": rpc_user, "rpc_password": rpc_password, "extra": {}}
    if "timeout_s" in fields:
        settings["timeout_s"] = _positive(fields["timeout_s"])
    if "chain_id" in fields:
        settings["chain_id"] = _int(fields["chain_id"], 1)
    if "max_response_mb" in fields:
        settings["max_response_bytes"] = _int(fields["max_response_mb"], 1, 65536) * 1024 * 1024
    if len(urls) > 1:
        settings["rpc_urls"] = urls
    specs = tuple(c.spec() for c in currencies)
    chain_settings = ChainSettings(name, network, urls[0], specs, **settings)
    poll = fields.get("poll_interval_s")
    config = ChainConfig(
        name=name,
        adapter=adapter_name,
        settings=chain_settings,
        poll_interval_s=DEFAULT_POLL_INTERVAL_S if poll is None else _positive(poll),
        currencies=currencies,
        explorer_url=_explorer_url(fields["explorer_url"]) if "explorer_url" in fields else None,
        **_follower_settings(fields),
    )
    return config, adapter, code_nodes


def _follower_settings(fields: Mapping[str, _Node]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if "start_height" in fields:
        kwargs["start_height"] = _int(fields["start_height"], 0)
    if "batch_blocks" in fields:
        kwargs["batch_blocks"] = _int(fields["batch_blocks"], 1)
    if "reorg_depth_limit" in fields:
        kwargs["reorg_depth_limit"] = _int(fields["reorg_depth_limit"], 1)
    if "unconfirmed_expiry_s" in fields:
        kwargs["unconfirmed_expiry_s"] = _positive(fields["unconfirmed_expiry_s"])
    return kwargs


def _explorer_url(n: _Node) -> str:
    """An http(s) URL template with `{txid}` once and no other placeholder."""
    template = _url(n)
    rest = template.replace("{txid}", "")
    if template.count("{txid}") != 1 or "{" in rest or "}" in rest:
        raise n.error(
            "must hold {txid} once and no other {placeholder}, e.g. https://mempool.space/tx/{txid}"
        )
    return template


def _currencies(
    n: _Node, adapter: type[ChainAdapter], network: str
) -> tuple[tuple[CurrencyConfig, ...], dict[str, _Node]]:
    entries = _entries(n)
    if not entries:
        raise n.error("configure at least one currency")
    currencies: list[CurrencyConfig] = []
    native: str | None = None
    contracts: dict[str, str] = {}
    for code, cur_node in entries.items():
        if not _NAME.fullmatch(code):
            raise cur_node.error("a currency code uses letters, digits, '_', '.' and '-' only")
        cur = _currency(cur_node, code, adapter, network)
        if cur.contract is None and native is not None:
            raise cur_node.error(f"{native} is already this chain's native coin; a token needs a contract")
        if cur.contract is not None and cur.contract in contracts:
            raise cur_node.error(f"contract {cur.contract} is already used by {contracts[cur.contract]}")
        if cur.contract is None:
            native = code
        else:
            contracts[cur.contract] = code
        currencies.append(cur)
    return tuple(currencies), entries


def _currency(n: _Node, code: str, adapter: type[ChainAdapter], network: str) -> CurrencyConfig:
    # `BTC:` with nothing after it means all defaults.
    fields = {} if n.kind == "null" else _mapping(n, (), _CURRENCY_KEYS)
    min_conf = adapter.default_min_confirmations
    if "min_confirmations" in fields:
        min_conf = _int(fields["min_confirmations"], 0)
    if "contract" not in fields:
        decimals = adapter.native_decimals
        if "decimals" in fields and _int(fields["decimals"], 0) != decimals:
            raise fields["decimals"].error(f"the chain's native coin has {decimals} decimals")
        return CurrencyConfig(code, decimals, min_conf)
    if "decimals" not in fields:
        raise n.error("a token (a currency with a contract) needs decimals")
    decimals = _int(fields["decimals"], 0, MAX_TOKEN_DECIMALS)
    contract = _address_text(fields["contract"], "contract")
    try:
        adapter.watch_key(CurrencySpec(code, decimals), contract, network)
    except AddressError as e:
        raise fields["contract"].error(str(e)) from None
    return CurrencyConfig(code, decimals, min_conf, contract.lower())


# --------------------------------------------------------------------------------------------- addresses


def _all_addresses(
    top: Mapping[str, _Node],
    owners: Sequence[tuple[IntegrationConfig, Mapping[str, _Node]]],
    assets: Mapping[str, _Asset],
    network: str,
) -> AddressList:
    """Every integration's addresses in one list. The top-level lists belong to the first integration
    (the `merchant:` section's, or the first of `integrations:`), then each integration's own follow."""
    found = AddressListBuilder()
    _owned_addresses(top, owners[0][0].id, assets, network, found)
    for integration, fields in owners:
        if fields is not top:
            _owned_addresses(fields, integration.id, assets, network, found)
    return found.build()


def _owned_addresses(
    fields: Mapping[str, _Node],
    integration: str,
    assets: Mapping[str, _Asset],
    network: str,
    found: AddressListBuilder,
) -> None:
    """The `addresses` and `addresses_files` of one section, as `integration`'s."""
    if "addresses" in fields:
        for item in _list(fields["addresses"]):
            _add_address(item, integration, assets, network, found)
    if "addresses_files" in fields:
        for path, item in _address_files(fields["addresses_files"]):
            _read_address_file(path, item, integration, assets, network, found)


def _address_files(n: _Node) -> Iterator[tuple[str, _Node]]:
    """Each file listed (or matched by a glob) once, in a stable order, with the item that names it."""
    done: set[str] = set()
    for item in _list(n):
        pattern = _path(item)
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        for path in paths:
            if os.path.realpath(path) in done:
                continue
            done.add(os.path.realpath(path))
            yield path, item


def _add_address(
    item: _Node, integration: str, assets: Mapping[str, _Asset], network: str, found: AddressListBuilder
) -> None:
    """Validate one address entry from its node and add it; ConfigError naming file, line and key."""
    fields = _mapping(item, _ADDRESS_KEYS)
    code = _text(fields["currency"])
    asset = assets.get(code)
    if asset is None:
        known = ", ".join(sorted(assets))
        raise fields["currency"].error(f"unknown currency {code!r} (configured: {known})")
    address_node = fields["address"]
    address = _address_text(address_node, "address")
    try:
        watch_key = asset.adapter.watch_key(asset.spec, address, network)
    except AddressError as e:
        raise address_node.error(str(e)) from None
    first = found.first(code, watch_key)
    if first is not None:
        # One (currency, address) has one owner: a payment to it is one merchant's, never two.
        owner = "" if first.integration == integration else f" (integration {first.integration})"
        raise address_node.error(f"{code} {address} is already listed at {first.source}{owner}")
    foreign_id = _foreign_id(fields["foreign_id"])
    found.add(code, address, foreign_id, item.src.file, item.line, watch_key, integration)


def _read_address_file(
    path: str,
    opened_by: _Node,
    integration: str,
    assets: Mapping[str, _Asset],
    network: str,
    found: AddressListBuilder,
) -> None:
    """Read one addresses file as a stream of parser events, one list item at a time: no node tree of the
    whole file is ever built (at a million entries that tree alone took gigabytes)."""
    src = _Source(path, os.path.dirname(os.path.abspath(path)), opened_by.src.environ)
    try:
        with open(path, "rb") as f:
            loader = _LOADER(f)
            try:
                _read_address_items(loader, src, integration, assets, network, found)
            except yaml.YAMLError as e:
                raise _syntax_error(path, e, _error_key(f, e, "addresses")) from None
            finally:
                loader.dispose()
    except OSError as e:
        raise opened_by.error(f"cannot read {path}: {e.strerror}") from None


def _read_address_items(
    loader: Any,
    src: _Source,
    integration: str,
    assets: Mapping[str, _Asset],
    network: str,
    found: AddressListBuilder,
) -> None:
    events = iter(loader.get_event, None)
    root = yaml_events.document_root(events)
    if root is None:
        return  # an empty file, or comments only
    anchors: dict[str, yaml.Node] = {}
    if not isinstance(root, yaml.SequenceStartEvent):
        node = yaml_events.compose(
            yaml_events.subtree(root, events, 0, MAX_NESTING, src.file), loader, anchors
        )
        _list(_Node(src, node, "addresses"))  # raises: not a list
    yaml_events.start_node(root, loader, anchors)  # an item may be an alias of the list itself
    for index, first in enumerate(events):
        if isinstance(first, yaml.SequenceEndEvent):
            break
        item = yaml_events.subtree(first, events, 1, MAX_NESTING, src.file)
        plain = _plain_address(item, loader, assets, network)
        if plain is not None and not found.listed(plain[0], plain[3]):
            code, address, foreign_id, watch_key = plain
            found.add(code, address, foreign_id, src.file, yaml_events.line_of(first), watch_key, integration)
        else:  # anything unusual, or an error: the node path, with its messages
            node = yaml_events.compose(item, loader, anchors)
            _add_address(_Node(src, node, f"addresses[{index}]"), integration, assets, network, found)
    yaml_events.single_document_end(events, root)


def _plain_address(
    item: list[yaml.Event], resolver: Any, assets: Mapping[str, _Asset], network: str
) -> tuple[str, str, str, bytes] | None:
    """(currency, address, foreign_id, watch_key) of an item written the usual way: a mapping of the three
    keys to untagged scalars, all valid. None for anything else (anchors, tags, merge keys, ${VAR}, an
    error): the node path then decides, so both paths accept and refuse exactly the same entries."""
    if len(item) != 8:
        return None
    start, *pairs, _ = item
    if type(start) is not yaml.MappingStartEvent or start.anchor is not None or start.tag is not None:
        return None
    values: dict[str, Any] = {}
    for key, value in zip(pairs[::2], pairs[1::2], strict=True):
        if type(key) is not yaml.ScalarEvent or type(value) is not yaml.ScalarEvent:
            return None
        if key.anchor is not None or key.tag is not None or value.anchor is not None or value.tag is not None:
            return None
        values[key.value] = value
    if values.keys() != _ADDRESS_KEY_SET:
        return None
    code, address = _plain_text(values["currency"], resolver), _plain_text(values["address"], resolver)
    asset = None if code is None else assets.get(code)
    if asset is None or address is None:
        return None
    try:
        watch_key = asset.adapter.watch_key(asset.spec, address, network)
    except AddressError:
        return None
    foreign = values["foreign_id"]
    # As _foreign_id: a number keeps its text as written.
    number = _plain_tag(foreign, resolver) == _TAG + "int"
    foreign_id = foreign.value if number else _plain_text(foreign, resolver)
    if foreign_id is None:
        return None
    return asset.spec.code, address, foreign_id, watch_key


def _plain_tag(event: Any, resolver: Any) -> str:
    """The tag yaml.compose gives an untagged scalar."""
    text: str = event.value
    if not event.implicit[0]:  # quoted
        return _TAG + "str"
    rules = resolver.yaml_implicit_resolvers
    if text and text[0] not in rules and None not in rules:
        return _TAG + "str"  # what resolve() finds too, without its call: no rule for this first character
    return str(resolver.resolve(yaml.ScalarNode, text, event.implicit))


def _plain_text(event: Any, resolver: Any) -> str | None:
    """The text of a string scalar as _text returns it when that needs no substitution; else None."""
    text: str = event.value
    if "${" in text or not text.strip() or _plain_tag(event, resolver) != _TAG + "str":
        return None
    return text


def _foreign_id(n: _Node) -> str:
    if n.kind == "int":
        # Customer ids are often numeric. Keep the text as written: YAML would turn 007 into 7.
        return str(n.node.value)
    return _text(n)


# --------------------------------------------------------------------------------------------- summary


def _database_shown(database: str) -> str:
    return safe_database_url(database) if is_database_url(database) else database


def summary(config: Config) -> str:
    """A short human description for `check-config`. Shows no secret, no URL credentials and no API key
    hash (a key is named by its prefix only)."""
    st = config.status
    lines = [
        f"config: {config.path}",
        f"network: {config.network}",
        f"database: {_database_shown(config.database)}"
        + (f", new ids above {config.id_offset}" if config.id_offset else ""),
        f"status: http://{_host(st.host)}:{st.port}/ (ready: head younger than {st.max_head_age_s:g} s, "
        f"lag at most {_count(st.max_lag_blocks, 'block')})",
        f"log: {config.log.format}, {config.log.level}",
        _api_summary(config),
        _ui_summary(config),
    ]
    if config.leadership is not None:
        lead = config.leadership
        lines.append(
            f"leadership: as {lead.name or 'hostname:pid'}, lease {lead.lease_s:g} s renewed every "
            f"{lead.renew_interval_s:g} s, standbys look every {lead.poll_interval_s:g} s, take-over "
            f"within {lead.takeover_s:g} s"
        )
    owned = config.addresses.owners()
    for integration in config.integrations:
        lines += _integration_summary(integration, owned)
    counts = config.addresses.counts()
    for chain in config.chains:
        lines += _chain_summary(chain, counts)
    lines.append(f"addresses: {len(config.addresses)} watched")
    return "\n".join(lines)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _api_summary(config: Config) -> str:
    api = config.api
    keys = sum(len(i.api_keys) for i in config.integrations)
    state = "listening" if keys else "off until an integration has an API key"
    return (
        f"api: http://{_host(api.host)}:{api.port}/v1 ({state}; bodies up to "
        f"{api.max_body_bytes // 1024} KB, {api.rate_per_s:g} requests/s per key, bursts of {api.burst})"
    )


def _ui_summary(config: Config) -> str:
    ui = config.ui
    operator = (
        f"operator from {', '.join(map(str, ui.operator_allow_from))}"
        if ui.operator_password is not None
        else "no operator password (integrations' API keys only)"
    )
    cookie = ", Secure cookie" if ui.secure_cookie else ""
    return (
        f"back office: /ui/ on the api listener; {operator}; sessions end after {ui.session_idle_s:g} s "
        f"idle, {ui.session_max_s:g} s at most{cookie}"
    )


def _integration_summary(integration: IntegrationConfig, owned: Mapping[str, int]) -> list[str]:
    m = integration.callback
    retries = m.retry_schedule_min
    # coinskro sends no key; its events are what it sends of a payment's changes.
    sent_key = f"key {m.key!r}, " if m.format == "coinspaid" else ""
    events = f", events {', '.join(m.events)}" if m.format == "coinskro" else ""
    callback = (
        f"{_redact_url(m.callback_url)}, {sent_key}format {m.format}{events}, timeout {m.timeout_s:g} s, "
        f"{_count(len(retries), 'retry', 'retries')} over {retries[-1]:g} min, {m.concurrency} concurrent"
        + (", plain http allowed" if m.allow_http else "")
    )
    if integration.id == DEFAULT_INTEGRATION_ID and integration.name == "merchant":
        lines = [f"merchant: {callback}", f"  integration {integration.id}"]
    else:
        lines = [f"integration {integration.id} ({integration.name})", f"  callback: {callback}"]
    prefixes = ", ".join(k.prefix for k in integration.api_keys)
    lines.append(f"  API keys: {len(integration.api_keys)}" + (f" ({prefixes})" if prefixes else ""))
    lines.append(f"  clients from: {', '.join(map(str, integration.allow_from))}")
    for key in integration.public_keys:
        d = key.deriver
        lines.append(f"  public key {key.chain}: {d.kind}, id {d.id}, first index {key.first_index}")
    p = integration.payments
    lines.append(
        f"  payments: expire after {p.expires_in_s:g} s unless asked (at most {p.max_expires_in_s:g} s), "
        f"{p.grace_s:g} s grace to confirm one seen in time"
        + (f", checkout returns to {p.return_url}" if p.return_url else "")
    )
    lines.append(f"  addresses: {owned.get(integration.id, 0)} listed in the config")
    return lines


def _count(n: int, singular: str, plural: str | None = None) -> str:
    """`1 block`, `2 blocks`, `0 blocks`: the summary is read by people."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def _chain_summary(chain: ChainConfig, counts: Mapping[str, int]) -> list[str]:
    s = chain.settings
    chain_id = f", chain id {s.chain_id}" if s.chain_id is not None else ""
    start = f", start at {chain.start_height}" if chain.start_height is not None else ""
    lines = [
        f"chain {chain.name}: adapter {chain.adapter}, rpc {', '.join(map(_redact_url, s.urls))}{chain_id}, "
        f"poll every {chain.poll_interval_s:g} s{start}"
    ]
    for cur in chain.currencies:
        kind = f"token {cur.contract}" if cur.contract else "native"
        lines.append(
            f"  {cur.code}: {kind}, {_count(cur.decimals, 'decimal')}, "
            f"{_count(cur.min_confirmations, 'confirmation')}, "
            f"{_count(counts.get(cur.code, 0), 'address', 'addresses')}"
        )
    return lines
