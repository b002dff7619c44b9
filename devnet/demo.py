"""`make demo` (`python -m devnet`): the whole product on one machine, with real local nodes.

It starts anvil and a Bitcoin regtest node (bcoin), deploys two 6-decimal test tokens standing in for
USDT and USDC, copies config/regtest.yaml to <data>/config.yaml with this run's ports and contracts
(see demo_config.py), runs the daemon on it as its own process (as systemd would) and a merchant receiver
that verifies every signature, sends BTC/ETH/USDT/USDC deposits to the config's addresses, mines blocks
and prints each callback as it arrives. Then everything keeps running, with a block on each chain every
few seconds so more payments confirm, until Ctrl-C (SIGINT) or SIGTERM; `exit_after_deposits` ends the
demo once the scripted deposits are confirmed instead. Either way the daemon is stopped with SIGTERM and
waited for while the receiver still answers (so callbacks in flight are delivered and recorded), then
the receiver and the nodes are stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.demo_config import TEMPLATE, DemoConfigError, Payment, payments, render
from devnet.receiver import Receiver
from watcher.config import Config, load_config
from watcher.errors import ConfigError
from watcher.receiver import describe

SECRET = "devnet-secret"
# The scripted deposits of each round, in base units: 0.25 ETH, 12.5 USDT, 99.000001 USDC, 0.015 BTC.
AMOUNTS = {"ETH": 250_000_000_000_000_000, "USDT": 12_500_000, "USDC": 99_000_001, "BTC": 1_500_000}
BLOCK_EVERY_S = 5.0
DAEMON_STOP_TIMEOUT_S = 30.0  # above merchant.timeout_s: a callback in flight is answered first
CALLBACK_WAIT_S = 60.0
READY_WAIT_S = 60.0


class DemoFailed(Exception):
    """The demo could not go on; the message says why and where to look."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _say(text: str) -> None:
    print(f"[devnet] {text}", flush=True)


@dataclass
class _Devnet:
    """What the demo started: the nodes and the test tokens."""

    evm_url: str
    payer: str  # anvil's first account: holds the ETH and the test tokens
    tokens: dict[str, str]
    bitcoin: BcoinNode


class _Daemon:
    """`deposit-watcher run` as its own process, in its own session (a Ctrl-C reaches only the demo)."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "watcher", "run", "--config", str(config_path)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "DEPOSIT_WATCHER_SECRET": SECRET},
            )  # fmt: skip

    async def stop(self) -> int:
        """SIGTERM, then wait (without blocking the loop: the receiver must still answer), SIGKILL late."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, DAEMON_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _say(f"the daemon did not stop within {DAEMON_STOP_TIMEOUT_S:g} s: killed")
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)
        return self.proc.returncode

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise DemoFailed(f"the daemon exited with code {code}; its log is {self.log_path}")


def _start_chains(node: AnvilNode, bitcoin: BcoinNode) -> _Devnet:
    url = node.url
    _say(f"anvil is up at {url} (pid {node.pid})")
    payer = evm.accounts(url)[0]
    tokens = {"USDT": evm.deploy_token(url, "Tether USD (devnet)", "USDT", 6),
              "USDC": evm.deploy_token(url, "USD Coin (devnet)", "USDC", 6)}  # fmt: skip
    for symbol, token in tokens.items():
        evm.mint(url, token, payer, 10**12)
        _say(f"deployed test token {symbol} at {token} (6 decimals)")
    evm.set_automine(url, False)  # blocks only when the demo mines them
    btc.fund(bitcoin)
    _say(f"bitcoin regtest node (bcoin) is up at {bitcoin.rpc_url} (pid {bitcoin.pid}), wallet funded")
    return _Devnet(url, payer, tokens, bitcoin)


def _write_config(data: Path, net: _Devnet, receiver_url: str) -> tuple[Path, Config]:
    values = {
        "DEVNET_DATABASE": "./watcher.sqlite3",
        "DEVNET_STATUS_LISTEN": f"127.0.0.1:{_free_port()}",
        "DEVNET_CALLBACK_URL": receiver_url,
        "DEVNET_EVM_RPC_URL": net.evm_url,
        "DEVNET_USDT_CONTRACT": net.tokens["USDT"],
        "DEVNET_USDC_CONTRACT": net.tokens["USDC"],
        "DEVNET_BTC_RPC_URL": net.bitcoin.rpc_url,
        "DEVNET_BTC_RPC_PASSWORD": net.bitcoin.rpc_password,
    }
    path = data / "config.yaml"
    path.write_text(render(TEMPLATE, values))
    try:
        config = load_config(str(path), {**os.environ, "DEPOSIT_WATCHER_SECRET": SECRET})
    except ConfigError as exc:
        raise DemoFailed(f"config error: {exc}") from None
    return path, config


async def _wait_ready(status_url: str, daemon: _Daemon) -> None:
    """Until /readyz says 200: every chain has its cursor at the node's head, so nothing paid is missed."""
    deadline = time.monotonic() + READY_WAIT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            daemon.check_alive()
            try:
                async with session.get(f"{status_url}/readyz") as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet
            await asyncio.sleep(0.2)
    raise DemoFailed(f"the daemon was not ready within {READY_WAIT_S:g} s; its log is {daemon.log_path}")


async def _wait_callbacks(rx: Receiver, status: str, count: int, daemon: _Daemon) -> None:
    def enough(r: Receiver) -> bool:
        return sum(1 for x in r.delivered if x.body.get("status") == status) >= count

    try:
        await rx.wait_for(enough, timeout_s=CALLBACK_WAIT_S)
    except TimeoutError:
        daemon.check_alive()
        raise DemoFailed(
            f"{status} callbacks did not arrive; the daemon's log is {daemon.log_path}"
        ) from None


def _pay(net: _Devnet, p: Payment) -> None:
    if p.currency == "BTC":
        btc.pay(net.bitcoin, p.address, p.amount)
    elif p.currency == "ETH":
        evm.send_eth(net.evm_url, net.payer, p.address, p.amount)
    else:
        evm.token_transfer(net.evm_url, net.tokens[p.currency], net.payer, p.address, p.amount)


async def _rounds(net: _Devnet, script: Sequence[Payment], rx: Receiver, daemon: _Daemon, rounds: int) -> int:
    evm_blocks = max(p.min_confirmations for p in script if p.evm)
    btc_blocks = max(p.min_confirmations for p in script if not p.evm)
    unconfirmed = [p.currency for p in script if p.unconfirmed_first]
    for n in range(1, rounds + 1):
        _say(f"round {n}: " + ", ".join(p.describe() for p in script))
        for p in script:
            _pay(net, p)
        evm.mine(net.evm_url, 1)
        expected = ", ".join(unconfirmed)
        _say(f"mined 1 Ethereum block (BTC is seen in the mempool): expect not_confirmed for {expected}")
        await _wait_callbacks(rx, "not_confirmed", len(unconfirmed) * n, daemon)
        for _ in range(evm_blocks - 1):
            await asyncio.sleep(0.5)
            evm.mine(net.evm_url, 1)
        btc.mine(net.bitcoin, btc_blocks)
        _say(f"mined {evm_blocks - 1} more Ethereum and {btc_blocks} Bitcoin block(s): expect confirmed")
        await _wait_callbacks(rx, "confirmed", len(script) * n, daemon)
    bad = [r for r in rx.requests if not r.signature_ok]
    _say(f"scripted deposits done: {len(rx.delivered)} callbacks delivered, all signatures valid: {not bad}")
    return 0 if not bad else 1


def _show_what_next(config_path: Path, net: _Devnet, script: Sequence[Payment]) -> None:
    shown = os.path.relpath(config_path) if config_path.is_relative_to(Path.cwd()) else str(config_path)
    eth = next(p for p in script if p.currency == "ETH")
    to_btc = next(p for p in script if p.currency == "BTC")
    node = net.bitcoin
    send_eth = {"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction",
                "params": [{"from": net.payer, "to": eth.address, "value": hex(10**18)}]}  # fmt: skip
    send_btc = {"method": "sendtoaddress", "params": [to_btc.address, 0.001]}
    lines = [
        f"everything keeps running, a block on each chain every {BLOCK_EVERY_S:g} s; callbacks show up here",
        f"  config: {shown} (config/regtest.yaml with this run's ports and contracts)",
        *(f"  deposit-watcher {cmd} --config {shown}" for cmd in ("status", "deposits", "callbacks")),
        f"  Ethereum (anvil) {net.evm_url}; to send 1 ETH to {eth.foreign_id}:",
        f"    curl -s {net.evm_url} -H 'Content-Type: application/json' -d '{json.dumps(send_eth)}'",
        f"  Bitcoin (bcoin) node {node.rpc_url}, wallet {node.wallet_url}; to send 0.001 BTC to "
        f"{to_btc.foreign_id}:",
        f"    curl -s -u devnet:{node.rpc_password} {node.wallet_url} -d '{json.dumps(send_btc)}'",
        "Ctrl-C to stop",
    ]
    for line in lines:
        _say(line)


async def _keep_mining(net: _Devnet, daemon: _Daemon) -> None:
    """A block on each chain every few seconds, until cancelled (a signal) or the daemon dies."""
    while True:
        await asyncio.sleep(BLOCK_EVERY_S)
        daemon.check_alive()
        await asyncio.to_thread(evm.mine, net.evm_url, 1)
        await asyncio.to_thread(btc.mine, net.bitcoin, 1)


async def _with_daemon(data: Path, net: _Devnet, rounds: int, exit_after_deposits: bool) -> int:
    # The key is the config's, known once the config is written with the receiver's URL: set below, before
    # the daemon starts (a receiver without one is refused).
    async with Receiver(
        key="set-below", secret=SECRET, on_request=lambda r: print(f"  callback: {describe(r)}", flush=True)
    ) as rx:
        config_path, config = _write_config(data, net, rx.url)
        rx.key = config.merchant.key  # the receiver checks what the config sends
        script = payments(config, AMOUNTS)
        _say(f"config written to {config_path}; merchant receiver at {rx.url}")
        daemon = _Daemon(config_path, data / "daemon.log")
        status_url = f"http://{config.status.host}:{config.status.port}"
        _say(f"daemon started (pid {daemon.proc.pid}), log {daemon.log_path}, status {status_url}/status")
        try:
            await _wait_ready(status_url, daemon)
            code = await _rounds(net, script, rx, daemon, rounds)
            if code == 0 and not exit_after_deposits:
                _show_what_next(config_path, net, script)
                await _keep_mining(net, daemon)
            return code
        finally:
            code = await daemon.stop()
            _say(f"daemon stopped (exit code {code})")


async def _demo(rounds: int, data: Path, exit_after_deposits: bool) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping: list[str] = []

    def on_signal(name: str) -> None:
        if stopping:
            _say(f"{name}: already stopping")
            return
        stopping.append(name)
        _say(f"{name}: stopping the daemon, the receiver and the nodes")
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        with AnvilNode() as node, BcoinNode() as bitcoin:
            net = _start_chains(node, bitcoin)
            return await _with_daemon(data, net, rounds, exit_after_deposits)
    except asyncio.CancelledError:
        if not stopping:
            raise
        return 0  # stopped as asked: everything it started was stopped on the way out
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_demo(rounds: int = 1, data_dir: str = "devnet-data", *, exit_after_deposits: bool = False) -> int:
    """Run the demo; 0 when it ended as asked (Ctrl-C, SIGTERM, or confirmed deposits), 1 on a failure."""
    data = Path(data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob("watcher.sqlite3*"):
        stale.unlink()  # every demo starts from an empty store
    started = time.monotonic()
    try:
        code = asyncio.run(_demo(rounds, data, exit_after_deposits))
    except (DemoFailed, DemoConfigError) as exc:
        _say(f"failed: {exc}")
        return 1
    _say(f"stopped after {time.monotonic() - started:.1f} s")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devnet [--deposits N] [--data-dir DIR] [--exit-after-deposits]`, what `make demo` runs."""
    parser = argparse.ArgumentParser(
        prog="python -m devnet", description="local demo: real local nodes, the daemon, a receiver"
    )
    parser.add_argument("--deposits", type=int, default=1, help="rounds of BTC/ETH/USDT/USDC deposits")
    parser.add_argument(
        "--data-dir", default="devnet-data", help="config, store and logs (default devnet-data)"
    )
    parser.add_argument(
        "--exit-after-deposits", action="store_true",
        help="stop once the scripted deposits are confirmed (default: run until Ctrl-C or SIGTERM)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    return run_demo(args.deposits, args.data_dir, exit_after_deposits=args.exit_after_deposits)
