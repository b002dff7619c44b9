"""`deposit-watcher devnet`: the whole product on one machine, with real local nodes.

It starts anvil and a Bitcoin regtest node (bcoin), deploys two 6-decimal test tokens standing in for
USDT and USDC, writes a regtest config, runs the daemon as its own process (as systemd would), runs a
merchant receiver that verifies every signature, sends BTC/ETH/USDT/USDC deposits, mines blocks and
prints each callback as it arrives.
Ctrl-C stops everything it started. Files (config, store, daemon log) go to ./devnet-data/.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from watcher.devnet import btc_tools as btc
from watcher.devnet import evm_tools as evm
from watcher.devnet.anvil import AnvilNode
from watcher.devnet.bcoin import BcoinNode
from watcher.devnet.receiver import Receiver, describe

KEY = "devnet-key"
SECRET = "devnet-secret"
MIN_CONF = 3
BTC_MIN_CONF = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str) -> None:
    print(f"[devnet] {text}", flush=True)


@dataclass
class _Devnet:
    """What the demo started and made: the nodes, the tokens, the customers' addresses."""

    evm_url: str
    acct: list[str]
    tokens: dict[str, str]
    bitcoin: BcoinNode
    btc_address: str


def _config(data: Path, net: _Devnet, receiver_url: str, status_port: int, evm_start: int,
            btc_start: int) -> dict[str, Any]:  # fmt: skip
    c1, c2 = net.acct[1:3]
    return {
        "network": "regtest",
        "database": str(data / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{status_port}", "max_head_age_s": 3600},
        "log": {"format": "console", "level": "info"},
        "merchant": {
            "callback_url": receiver_url, "key": KEY, "secret": "${DEPOSIT_WATCHER_SECRET:-devnet-secret}",
            "timeout_s": 5, "retry_schedule_min": [0.05, 0.1, 0.25, 0.5, 1],
        },
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": net.evm_url, "chain_id": 31337, "poll_interval_s": 0.5,
                "start_height": evm_start,
                "currencies": {
                    "ETH": {"min_confirmations": MIN_CONF},
                    "USDT": {"contract": net.tokens["USDT"], "decimals": 6, "min_confirmations": MIN_CONF},
                    "USDC": {"contract": net.tokens["USDC"], "decimals": 6, "min_confirmations": MIN_CONF},
                },
            },
            "bitcoin": {
                "adapter": "bitcoin-core", "rpc_url": net.bitcoin.rpc_url, "rpc_user": net.bitcoin.rpc_user,
                "rpc_password": net.bitcoin.rpc_password, "poll_interval_s": 0.5, "start_height": btc_start,
                "currencies": {"BTC": {"min_confirmations": BTC_MIN_CONF}},
            },
        },
        "addresses": [
            {"currency": "ETH", "address": c1, "foreign_id": "customer-1"},
            {"currency": "USDT", "address": c1, "foreign_id": "customer-1"},
            {"currency": "USDC", "address": c2, "foreign_id": "customer-2"},
            {"currency": "BTC", "address": net.btc_address, "foreign_id": "customer-3"},
        ],
    }  # fmt: skip


class _Daemon:
    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "DEPOSIT_WATCHER_SECRET": SECRET},
            )  # fmt: skip

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


async def _wait_callbacks(rx: Receiver, status: str, count: int, daemon: _Daemon) -> None:
    def enough(r: Receiver) -> bool:
        return sum(1 for x in r.delivered if x.body.get("status") == status) >= count

    try:
        await rx.wait_for(enough, timeout_s=60)
    except TimeoutError:
        _say(f"callbacks did not arrive; the daemon's log is {daemon.log_path}")
        raise


async def _demo(rounds: int, data: Path) -> int:
    with AnvilNode() as node, BcoinNode() as bitcoin:
        net = _start_chains(node.url, bitcoin)
        async with Receiver(
            key=KEY, secret=SECRET, on_request=lambda r: print(f"  callback: {describe(r)}", flush=True)
        ) as rx:
            config_path = data / "devnet.yaml"
            status_port = _free_port()
            config = _config(
                data, net, rx.url, status_port, evm.head_height(net.evm_url) + 1, btc.height(bitcoin) + 1
            )
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            _say(f"config written to {config_path}; merchant receiver at {rx.url}")
            daemon = _Daemon(config_path, data / "daemon.log")
            _say(f"daemon started (pid {daemon.proc.pid}), log {daemon.log_path}")
            _say(f"status port: http://127.0.0.1:{status_port}/status")
            try:
                return await _rounds(net, rx, daemon, rounds)
            finally:
                code = daemon.stop()
                _say(f"daemon stopped (exit code {code})")


def _start_chains(url: str, bitcoin: BcoinNode) -> _Devnet:
    _say(f"anvil is up at {url}")
    acct = evm.accounts(url)
    tokens = {"USDT": evm.deploy_token(url, "Tether USD (devnet)", "USDT", 6),
              "USDC": evm.deploy_token(url, "USD Coin (devnet)", "USDC", 6)}  # fmt: skip
    for symbol, token in tokens.items():
        evm.mint(url, token, acct[0], 10**12)
        _say(f"deployed test token {symbol} at {token} (6 decimals)")
    evm.set_automine(url, False)  # blocks only when the demo mines them
    btc.fund(bitcoin)
    address = btc.make_address("p2wpkh").address
    _say(f"bitcoin regtest node (bcoin) is up at {bitcoin.rpc_url}, wallet funded")
    _say(f"BTC deposit address of customer-3: {address}")
    return _Devnet(url, acct, tokens, bitcoin, address)


async def _rounds(net: _Devnet, rx: Receiver, daemon: _Daemon, rounds: int) -> int:
    url, acct, tokens = net.evm_url, net.acct, net.tokens
    for n in range(1, rounds + 1):
        _say(f"round {n}: 0.25 ETH and 12.5 USDT to customer-1, 99.000001 USDC to customer-2,")
        _say("         0.015 BTC to customer-3 (seen in the mempool first)")
        btc.pay(net.bitcoin, net.btc_address, 1_500_000)
        evm.send_eth(url, acct[0], acct[1], 250_000_000_000_000_000)
        evm.token_transfer(url, tokens["USDT"], acct[0], acct[1], 12_500_000)
        evm.token_transfer(url, tokens["USDC"], acct[0], acct[2], 99_000_001)
        evm.mine(url, 1)
        _say("mined 1 Ethereum block: expect not_confirmed for all four")
        await _wait_callbacks(rx, "not_confirmed", 4 * n, daemon)
        for _ in range(MIN_CONF - 1):
            await asyncio.sleep(0.5)
            evm.mine(url, 1)
        btc.mine(net.bitcoin, BTC_MIN_CONF)
        _say(
            f"mined {MIN_CONF - 1} more Ethereum blocks and {BTC_MIN_CONF} Bitcoin block(s): expect confirmed"
        )
        await _wait_callbacks(rx, "confirmed", 4 * n, daemon)
    bad = [r for r in rx.requests if not r.signature_ok]
    _say(f"done: {len(rx.delivered)} callbacks delivered, all signatures valid: {not bad}")
    return 0 if not bad else 1


def run_demo(rounds: int = 1, data_dir: str = "devnet-data") -> int:
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob("watcher.sqlite3*"):
        stale.unlink()  # every demo starts from an empty store
    started = time.monotonic()
    try:
        code = asyncio.run(_demo(rounds, data))
    except KeyboardInterrupt:
        _say("interrupted: everything started was stopped")
        return 130
    except TimeoutError:
        return 1
    _say(f"finished in {time.monotonic() - started:.1f} s")
    return code
