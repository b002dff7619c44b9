"""The demo's config: config/regtest.yaml with the values of one run filled in, and what the demo reads back.

The demo runs the file users read: it copies config/regtest.yaml, replacing each `${DEVNET_...}` reference
(with or without its `:-default`) by what this run picked (ports, token contracts, the store path), and
leaves every other line as written. The copy holds plain values, so `deposit-watcher status --config` on
it works from any shell without the demo's environment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devnet import REPO_ROOT
from watcher.config import Config

TEMPLATE = REPO_ROOT / "config" / "regtest.yaml"


class DemoConfigError(Exception):
    """config/regtest.yaml does not have what the demo fills in or pays to."""


def render(template: Path, values: Mapping[str, str]) -> str:
    """The template's text with each `${NAME}` / `${NAME:-default}` of `values` replaced by its value."""
    text = template.read_text()
    for name, value in values.items():
        pattern = re.compile(r"\$\{" + re.escape(name) + r"(?::-[^}]*)?\}")
        # A replacement string reads backslashes as escapes: the value is taken literally.
        text, found = pattern.subn(value.replace("\\", "\\\\"), text)
        if not found:
            raise DemoConfigError(f"{template}: no ${{{name}}} to fill in (the demo sets it)")
    header = (
        f"# Written by `make demo` (python -m devnet) from {template}, with the DEVNET_* values of its run.\n"
    )
    return header + text


@dataclass(frozen=True, slots=True)
class Payment:
    """One scripted deposit: `amount` base units of `currency` to the first address configured for it."""

    currency: str
    amount: int
    address: str
    foreign_id: str
    decimals: int
    min_confirmations: int
    evm: bool

    def describe(self) -> str:
        return f"{short_amount(self.amount, self.decimals)} {self.currency} to {self.foreign_id}"

    @property
    def unconfirmed_first(self) -> bool:
        """Whether a `not_confirmed` comes first: an EVM payment is first seen in a block (1
        confirmation), a Bitcoin one in the mempool (0)."""
        return self.min_confirmations > (1 if self.evm else 0)


def payments(config: Config, amounts: Mapping[str, int]) -> list[Payment]:
    """The scripted deposits, each to the first address the config watches for its currency."""
    found = []
    for currency, amount in amounts.items():
        entry = next((a for a in config.addresses if a.currency == currency), None)
        if entry is None:
            raise DemoConfigError(f"{config.path}: addresses: the demo pays {currency}, none is listed")
        chain, cur = config.currency(currency)
        found.append(
            Payment(currency, amount, entry.address, entry.foreign_id, cur.decimals, cur.min_confirmations,
                    chain.adapter == "evm")
        )  # fmt: skip
    return found


def short_amount(amount: int, decimals: int) -> str:
    """Base units as the shortest exact decimal: 250000000000000000 wei -> "0.25"."""
    whole, fraction = divmod(amount, 10**decimals)
    digits = f"{fraction:0{decimals}d}".rstrip("0") if decimals else ""
    return f"{whole}.{digits}" if digits else str(whole)
