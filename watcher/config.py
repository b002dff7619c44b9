"""The configuration: YAML validated once at start into frozen objects.

The loader (`load_config`) is below the types. An error names the file, the line and the key, and the
daemon refuses to start. No global settings object: the Config is passed to what needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chains.base import ChainSettings, CurrencySpec

DEFAULT_RETRY_SCHEDULE_MIN: tuple[float, ...] = (1, 5, 10, 15, 20, 30, 60, 90, 120, 150, 180, 210, 240)


class ConfigError(Exception):
    """A configuration problem. str() is one line: 'FILE:LINE: KEY: what is wrong'."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {key}: {message}")


@dataclass(frozen=True, slots=True)
class StatusConfig:
    host: str = "127.0.0.1"
    port: int = 8380
    # /readyz fails when a chain's newest block is older than this, or its lag exceeds max_lag_blocks.
    max_head_age_s: float = 3600.0
    max_lag_blocks: int = 20


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


@dataclass(frozen=True, slots=True)
class AddressEntry:
    currency: str
    address: str  # exactly as configured
    foreign_id: str
    source: str  # "FILE:LINE", for error messages


@dataclass(frozen=True, slots=True)
class Config:
    path: str
    network: str
    database: str
    status: StatusConfig
    log: LogConfig
    merchant: MerchantConfig
    chains: tuple[ChainConfig, ...]
    addresses: tuple[AddressEntry, ...]

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
