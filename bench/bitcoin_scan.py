"""Bitcoin block scanning benchmark: the raw-bytes walk against python-bitcoinlib, and catch-up speed.

Run by hand: `.venv/bin/python bench/bitcoin_scan.py` (options: --txs, --watched, --blocks, --runs).
In one run it builds a mainnet-sized block (~1.5 MB, ~3,000 transactions with segwit inputs and mixed
P2WPKH/P2PKH/P2SH/P2TR outputs) and prints:

1. python-bitcoinlib `CBlock.deserialize` time for the block (median of --runs);
2. `rawblock.walk_block` time against 1,000,000 watched scripts, a few of them paid in the block;
3. their ratio (target, see bench/README.md: the scan at most 0.15x);
4. catch-up: 100 such blocks served by a tiny aiohttp JSON-RPC server on 127.0.0.1 (getblockhash and
   `getblock HASH 0` from prebuilt blocks), scanned through the real `BitcoinCoreAdapter.scan` in
   batches of 10 blocks (the example config's batch_blocks), in blocks per second.

`run_bitcoin_bench` takes its sizes as arguments so tests/test_bitcoin_rawblock.py can run it small.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import queue
import random
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from bitcoin.core import (
    CBlock,
    COutPoint,
    CScriptWitness,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
)
from bitcoin.core.script import CScript

from chains.base import ChainSettings, CurrencySpec, WatchList
from chains.bitcoin import rawblock
from chains.bitcoin.adapter import BitcoinCoreAdapter

OUTPUT_KINDS = ("p2wpkh", "p2pkh", "p2sh", "p2tr")
SCAN_TARGET_RATIO = 0.15
BATCH_BLOCKS = 10


# ------------------------------------------------------------------------------------------ blocks


def random_script(rng: random.Random, kind: str) -> bytes:
    """A random output script of `kind` (one of OUTPUT_KINDS)."""
    if kind == "p2wpkh":
        return b"\x00\x14" + rng.randbytes(20)
    if kind == "p2pkh":
        return b"\x76\xa9\x14" + rng.randbytes(20) + b"\x88\xac"
    if kind == "p2sh":
        return b"\xa9\x14" + rng.randbytes(20) + b"\x87"
    if kind == "p2tr":
        return b"\x51\x20" + rng.randbytes(32)
    raise ValueError(kind)


def _segwit_input(rng: random.Random) -> tuple[CTxIn, CTxInWitness]:
    """Mostly P2WPKH spends (signature + public key); one in ten a 2-of-3 P2WSH multisig spend."""
    txin = CTxIn(COutPoint(rng.randbytes(32), rng.randrange(4)), CScript(), 0xFFFFFFFD)
    if rng.random() < 0.1:
        keys = b"".join(b"\x21\x02" + rng.randbytes(32) for _ in range(3))
        multisig = b"\x52" + keys + b"\x53\xae"
        stack = [b"", rng.randbytes(72), rng.randbytes(72), multisig]
    else:
        stack = [rng.randbytes(72), b"\x02" + rng.randbytes(32)]
    return txin, CTxInWitness(CScriptWitness(stack))


def random_tx(rng: random.Random, paid: Sequence[bytes] = ()) -> CTransaction:
    """A segwit transaction with 1-4 inputs and 1-4 outputs (plus one output per script in `paid`)."""
    inputs = [_segwit_input(rng) for _ in range(rng.randint(1, 4))]
    outputs = [
        CTxOut(rng.randrange(546, 10**9), CScript(random_script(rng, rng.choice(OUTPUT_KINDS))))
        for _ in range(rng.randint(1, 4))
    ]
    for script in paid:
        outputs.insert(rng.randrange(len(outputs) + 1), CTxOut(rng.randrange(546, 10**9), CScript(script)))
    return CTransaction([i for i, _ in inputs], outputs, 0, 2, CTxWitness([w for _, w in inputs]))


def coinbase_tx(height: int) -> CTransaction:
    """A legacy coinbase: BIP-34 height push, the reward, and a witness-commitment-like OP_RETURN."""
    height_push = bytes([3]) + height.to_bytes(3, "little")
    txin = CTxIn(COutPoint(), CScript(height_push + b"bench"), 0xFFFFFFFF)
    outputs = [
        CTxOut(312_500_000, CScript(b"\x00\x14" + bytes(20))),
        CTxOut(0, CScript(b"\x6a\x24\xaa\x21\xa9\xed" + bytes(32))),
    ]
    return CTransaction([txin], outputs, 0, 2)


@dataclass(frozen=True)
class BenchBlock:
    raw: bytes  # the whole block
    body: bytes  # the transaction count and transactions (everything after the header)
    paid: dict[bytes, list[tuple[str, int, int]]]  # watched script -> [(txid, vout, value)]


def build_block(n_txs: int, paid_scripts: Sequence[bytes], seed: int = 1) -> BenchBlock:
    """A block of `n_txs` transactions (coinbase included); each of `paid_scripts` is paid once."""
    rng = random.Random(seed)
    payers = set(rng.sample(range(1, n_txs), min(len(paid_scripts), n_txs - 1)))
    scripts = iter(paid_scripts)
    txs = [coinbase_tx(1)]
    for i in range(1, n_txs):
        txs.append(random_tx(rng, [next(scripts)] if i in payers else []))
    block = CBlock(nVersion=0x20000000, hashPrevBlock=bytes(32), nBits=0x1703A30C, vtx=txs)
    block = CBlock(
        nVersion=block.nVersion,
        hashPrevBlock=block.hashPrevBlock,
        hashMerkleRoot=block.calc_merkle_root(),
        nTime=1_700_000_000,
        nBits=block.nBits,
        vtx=txs,
    )
    raw = block.serialize()
    paid: dict[bytes, list[tuple[str, int, int]]] = {}
    for tx in txs:
        for vout, out in enumerate(tx.vout):
            if bytes(out.scriptPubKey) in paid_scripts:
                txid = tx.GetTxid()[::-1].hex()
                paid.setdefault(bytes(out.scriptPubKey), []).append((txid, vout, out.nValue))
    return BenchBlock(raw, raw[80:], paid)


def chained_headers(count: int, body: bytes) -> list[bytes]:
    """`count` 80-byte headers, each naming the previous one as parent, all over the same transactions."""
    merkle = hashlib.sha256(body).digest()  # not a real merkle root: the walk never checks it
    headers, parent = [], bytes(32)
    for i in range(count):
        header = struct.pack("<I32s32sIII", 0x20000000, parent, merkle, 1_700_000_000 + i, 0x1703A30C, i)
        headers.append(header)
        parent = hashlib.sha256(hashlib.sha256(header).digest()).digest()
    return headers


def watched_scripts(count: int, paid: Sequence[bytes], seed: int = 2) -> dict[bytes, int]:
    """`count` watched P2WPKH scripts (random) including the `paid` ones; watch ids 1..count."""
    rng = random.Random(seed)
    scripts = {b"\x00\x14" + rng.randbytes(20): i for i in range(1, count - len(paid) + 1)}
    for script in paid:
        scripts[script] = len(scripts) + 1
    return scripts


# ------------------------------------------------------------------------------------------ timing


def median_time_s(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class BlockServer:
    """A JSON-RPC server on 127.0.0.1 answering getblockhash and `getblock HASH 0` for prebuilt blocks
    that share one body (so 100 blocks of 1.5 MB do not need 300 MB of hex)."""

    def __init__(self, headers: Sequence[bytes], body: bytes) -> None:
        self._hashes = [hashlib.sha256(hashlib.sha256(h).digest()).digest()[::-1].hex() for h in headers]
        self._headers = {bh: h.hex() for bh, h in zip(self._hashes, headers, strict=True)}
        self._body_hex = body.hex()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> BlockServer:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        payload = orjson.loads(await request.read())
        answer = [self._answer(c) for c in payload] if isinstance(payload, list) else self._answer(payload)
        return web.Response(body=orjson.dumps(answer), content_type="application/json")

    def _answer(self, call: dict[str, Any]) -> dict[str, Any]:
        method, params = call["method"], call["params"]
        if method == "getblockhash" and 0 <= params[0] < len(self._hashes):
            return {"jsonrpc": "2.0", "id": call["id"], "result": self._hashes[params[0]]}
        if method == "getblock" and params[0] in self._headers:
            result = self._headers[params[0]] + self._body_hex
            return {"jsonrpc": "2.0", "id": call["id"], "result": result}
        return {"jsonrpc": "2.0", "id": call["id"], "error": {"code": -5, "message": "not found"}}


def _serve_blocks(n_blocks: int, body: bytes, port_queue: Any) -> None:
    """Child process: serve the blocks until terminated (the node is another process in real life)."""

    async def serve() -> None:
        async with BlockServer(chained_headers(n_blocks, body), body) as server:
            port_queue.put(server.url)
            await asyncio.Event().wait()

    asyncio.run(serve())


async def catch_up_rate(n_blocks: int, body: bytes, scripts: dict[bytes, int]) -> tuple[float, int]:
    """(blocks per second, transfers found) scanning `n_blocks` through the real adapter from a block
    server running in a child process."""
    context = multiprocessing.get_context("spawn")
    urls = context.Queue()
    child = context.Process(target=_serve_blocks, args=(n_blocks, body, urls), daemon=True)
    child.start()
    try:
        url = await asyncio.to_thread(_first_answer, urls, child)
        return await _scan_all(url, n_blocks, scripts)
    finally:
        child.terminate()
        child.join(10)


def _first_answer(answers: Any, child: Any, timeout_s: float = 60.0) -> str:
    """The child's first message; fails at once if the child died instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return str(answers.get(True, 0.2))
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the block server process exited with code {child.exitcode}") from None
    raise TimeoutError("the block server process did not start")


async def _scan_all(url: str, n_blocks: int, scripts: dict[bytes, int]) -> tuple[float, int]:
    settings = ChainSettings("bitcoin", "mainnet", url, (CurrencySpec("BTC", 8),), timeout_s=60)
    adapter = BitcoinCoreAdapter(settings)
    watch = WatchList({"BTC": scripts})
    found = 0
    try:
        await adapter.scan(0, 0, watch)  # connect (keep-alive) before the clock starts
        start = time.perf_counter()
        for first in range(1, n_blocks, BATCH_BLOCKS):
            last = min(first + BATCH_BLOCKS, n_blocks) - 1
            found += sum(len(s.transfers) for s in await adapter.scan(first, last, watch))
        elapsed = time.perf_counter() - start
    finally:
        await adapter.close()
    return (n_blocks - 1) / elapsed, found


# ------------------------------------------------------------------------------------------ run


@dataclass(frozen=True)
class BitcoinBenchResult:
    block_bytes: int
    tx_count: int
    output_count: int
    watched: int
    paid_found: int
    deserialize_s: float
    scan_s: float
    catch_up_blocks_per_s: float
    catch_up_transfers: int

    @property
    def ratio(self) -> float:
        return self.scan_s / self.deserialize_s


def run_bitcoin_bench(
    n_txs: int = 3000, n_watched: int = 1_000_000, n_blocks: int = 100, runs: int = 5, n_paid: int = 5
) -> BitcoinBenchResult:
    rng = random.Random(3)
    paid = [random_script(rng, OUTPUT_KINDS[i % len(OUTPUT_KINDS)]) for i in range(n_paid)]
    block = build_block(n_txs, paid)
    scripts = watched_scripts(n_watched, paid)
    matches = rawblock.walk_block(block.raw, scripts)
    expected = sorted(hit for hits in block.paid.values() for hit in hits)
    found = sorted((p.txid, p.vout, p.value) for p in matches.payments)
    if found != expected:
        raise AssertionError(f"the walk found {found}, the block pays {expected}")
    deserialize_s = median_time_s(lambda: CBlock.deserialize(block.raw), runs)
    scan_s = median_time_s(lambda: rawblock.walk_block(block.raw, scripts), max(runs, 5))
    rate, transfers = asyncio.run(catch_up_rate(n_blocks, block.body, scripts))
    outputs = sum(len(tx.vout) for tx in CBlock.deserialize(block.raw).vtx)
    return BitcoinBenchResult(
        len(block.raw), matches.tx_count, outputs, len(scripts), len(found),
        deserialize_s, scan_s, rate, transfers,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--txs", type=int, default=3000)
    parser.add_argument("--watched", type=int, default=1_000_000)
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    r = run_bitcoin_bench(args.txs, args.watched, args.blocks, args.runs)
    verdict = "OK" if r.ratio <= SCAN_TARGET_RATIO else "OVER TARGET"
    print(f"block: {r.block_bytes / 1e6:.2f} MB, {r.tx_count} transactions, {r.output_count} outputs")
    print(f"python-bitcoinlib CBlock.deserialize: {r.deserialize_s * 1000:8.1f} ms")
    print(
        f"rawblock.walk_block vs {r.watched:,} watched scripts: {r.scan_s * 1000:8.1f} ms "
        f"({r.paid_found} payments found)"
    )
    print(f"ratio scan/deserialize: {r.ratio:.3f} (target <= {SCAN_TARGET_RATIO}) {verdict}")
    print(
        f"catch-up through BitcoinCoreAdapter.scan over local JSON-RPC: {r.catch_up_blocks_per_s:.1f} "
        f"blocks/s ({args.blocks} blocks, {r.catch_up_transfers} transfers)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
