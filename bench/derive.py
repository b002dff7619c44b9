"""Watch-only derivation speed: addresses per second, and the latency of one address at a random index.

What the merchant API's take does per new address is one `Deriver.address(index)` on a key parsed once
(at start or on reload), so that is what is timed: a fresh random index each call, no cache to help.
The target is the take's budget, p99 <= 10 ms at 200 takes/s (issue 10); parsing is timed apart.

Run it alone: `.venv/bin/python -m bench.derive` (about 2 s; not part of `make bench`'s table).
The keys are the public account keys of the BIP test mnemonic (`abandon` x11 `about`), written out here
so that no private material is needed.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from chains.base import Deriver
from chains.bitcoin.derive import parse_bitcoin_key
from chains.evm.derive import parse_evm_key

KEYS: dict[str, tuple[Callable[[str, str], Deriver], str]] = {
    "BTC wpkh (BIP-84)": (
        parse_bitcoin_key,
        "wpkh([73c5da0a/84h/0h/0h]xpub6CatWdiZiodmUeTDp8LT5or8nmbKNcuyvz7WyksVFkKB4RHwCD3XyuvPEbvqAQY3rAPs"
        "hWcMLoP2fMFMKHPJ4ZeZXYVUhLv1VMrjPC7PW6V/0/*)",
    ),
    "BTC tr (BIP-86)": (
        parse_bitcoin_key,
        "tr([73c5da0a/86h/0h/0h]xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UK"
        "DP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ/0/*)",
    ),
    "ETH (BIP-44 account xpub)": (
        parse_evm_key,
        "[73c5da0a/44h/60h/0h]xpub6DCoCpSuQZB2jawqnGMEPS63ePKWkwWPH4TU45Q7LPXWuNd8TMtVxRrgjtEshuqpK3mdhaWHP"
        "FsBngh5GFZaM6si3yZdUsT8ddYM3PwnATt",
    ),
}
TAKE_P99_TARGET_MS = 10.0


@dataclass(frozen=True, slots=True)
class DeriveRun:
    name: str
    addresses: int
    seconds: float
    p50_ms: float
    p99_ms: float
    parse_ms: float

    @property
    def per_s(self) -> float:
        return self.addresses / self.seconds


def time_deriver(name: str, addresses: int, seed: int = 1) -> DeriveRun:
    """`addresses` single derivations at random indexes from one parsed key; the parse timed apart."""
    parse, text = KEYS[name]
    started = time.perf_counter()
    deriver = parse(text, "mainnet")
    parse_ms = (time.perf_counter() - started) * 1000
    indexes = random.Random(seed).sample(range(2**31), addresses)
    latencies = []
    for index in indexes:
        started = time.perf_counter()
        deriver.address(index)
        latencies.append(time.perf_counter() - started)
    quantiles = statistics.quantiles(latencies, n=100)
    return DeriveRun(name, addresses, sum(latencies), quantiles[49] * 1000, quantiles[98] * 1000, parse_ms)


def run_derive_bench(addresses: int = 5000) -> list[DeriveRun]:
    return [time_deriver(name, addresses) for name in KEYS]


def render(runs: list[DeriveRun]) -> str:
    lines = [
        f"{'derivation':<28}{'addresses/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'parse ms':>10}"
        f"   target p99 <= {TAKE_P99_TARGET_MS:g} ms",
    ]
    for run in runs:
        verdict = "ok" if run.p99_ms <= TAKE_P99_TARGET_MS else "OVER"
        lines.append(
            f"{run.name:<28}{run.per_s:>12,.0f}{run.p50_ms:>9.3f}{run.p99_ms:>9.3f}{run.parse_ms:>10.2f}"
            f"   {verdict}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=5000, help="derivations per key (default 5000)")
    print(render(run_derive_bench(parser.parse_args().addresses)))


if __name__ == "__main__":
    main()
