"""Three real daemon processes on one PostgreSQL database, one leader among them, and a real anvil.

Each daemon serves the merchant API and the status port; only the leader follows the chain and delivers
callbacks. An address taken on a standby's API is watched by the leader's follower (through the store); the
leader is SIGKILLed while the merchant fails its callbacks, a standby takes over within `takeover_s` and
delivers what is pending and what follows; every delivery of one callback has the same bytes, whichever
daemon sent it. The killed daemon comes back as a standby.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from tests.test_derivation import account
from watcher.apikeys import new_api_key

KEY, SECRET = "leader-key", "leader-secret"
SHOP = "7c2e3f40-1a5b-4c6d-8e7f-9a0b1c2d3e4f"
API_KEY, API_HASH = new_api_key(live=False)
MIN_CONF = 2
LEASE_S, POLL_S, TAKEOVER_S = 3.0, 0.5, 5.0
NAMES = ("node-a", "node-b", "node-c")


@dataclass
class Node:
    name: str
    daemon: DaemonProcess
    api_port: int

    async def status(self) -> dict[str, Any] | None:
        try:
            code, body = await self.daemon.get("/status")
        except (aiohttp.ClientError, TimeoutError):
            return None
        return body if code == 200 else None

    async def role(self) -> str | None:
        status = await self.status()
        return None if status is None else str(status["leadership"]["role"])

    async def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            url = f"http://127.0.0.1:{self.api_port}{path}"
            async with session.request(method, url, json=body, headers=headers) as r:
                return r.status, await r.json()

    def taken_at(self) -> list[float]:
        """Wall times of this daemon's `leadership_taken` log lines."""
        return [
            datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
            for line in map(json.loads, _json_lines(self.daemon.log_path))
            if line.get("event") == "leadership_taken"
        ]

    def delivered_here(self) -> int:
        """How many callback deliveries this daemon's log records (over all its runs)."""
        return sum('"callback_delivered"' in line for line in self.daemon.log_path.read_text().splitlines())


def _json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


@dataclass
class Cluster:
    anvil: AnvilNode
    rx: Receiver
    nodes: list[Node]

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.daemon.proc is not None and n.daemon.proc.poll() is None]

    async def leader(self, among: list[Node] | None = None, timeout_s: float = 30.0) -> Node:
        """The one daemon whose /status says leader (waiting for an election); never two at once."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            roles = {n.name: await n.role() for n in among or self.alive()}
            leaders = [n for n in among or self.alive() if roles[n.name] == "leader"]
            assert len(leaders) <= 1, f"two leaders at once: {roles}"
            if leaders:
                return leaders[0]
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"no leader within {timeout_s} s:\n" + "\n".join(n.daemon.log() for n in self.nodes)
        )


def _config(pg_url: str, anvil: AnvilNode, rx: Receiver, name: str, status_port: int, api_port: int) -> Any:
    return {
        "network": "regtest",
        "database": {"url": pg_url},
        "leadership": {"name": name, "lease_s": LEASE_S, "poll_interval_s": POLL_S, "takeover_s": TAKEOVER_S},
        "status": {"listen": f"127.0.0.1:{status_port}", "max_head_age_s": 3600},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "log": {"format": "json", "level": "debug"},
        "integrations": [{
            "id": SHOP,
            "callback": {"callback_url": rx.url, "key": KEY, "secret": SECRET, "timeout_s": 2,
                         "retry_schedule_min": [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1]},
            "api_keys": [API_HASH.line()],
            "public_keys": {"ethereum": account("m/44h/60h/0h")},
        }],
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": anvil.url, "chain_id": 31337, "poll_interval_s": 0.2,
                "start_height": evm.head_height(anvil.url) + 1,
                "currencies": {"ETH": {"min_confirmations": MIN_CONF}},
            }
        },
    }  # fmt: skip


@pytest.fixture
async def cluster(anvil: AnvilNode, pg_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Receiver(key=KEY, secret=SECRET) as rx:
        nodes = []
        for name in NAMES:
            status_port, api_port = free_port(), free_port()
            config = _config(pg_url, anvil, rx, name, status_port, api_port)
            path = write_config(tmp_path / f"{name}.yaml", config)
            nodes.append(Node(name, DaemonProcess(path, status_port, tmp_path / f"{name}.log"), api_port))
        for node in nodes:
            node.daemon.start()
        try:
            for node in nodes:
                await node.daemon.wait_live()
            yield Cluster(anvil, rx, nodes)
        finally:
            codes = {n.name: n.daemon.stop() for n in nodes}
            assert all(code == 0 for code in codes.values()), (codes, [n.daemon.log() for n in nodes])


def _by_callback(rx: Receiver) -> dict[tuple[int, str], set[bytes]]:
    """The bytes of every request per (deposit id, status): one set of one element per callback."""
    seen: dict[tuple[int, str], set[bytes]] = {}
    for r in rx.requests:
        if r.body:
            seen.setdefault((int(r.body["id"]), str(r.body["status"])), set()).add(r.raw)
    return seen


def _confirmed_txids(rx: Receiver) -> set[str]:
    return {r.body["transactions"][0]["txid"] for r in rx.delivered if r.body["status"] == "confirmed"}


async def _mine_until(c: Cluster, txids: set[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not txids <= _confirmed_txids(c.rx):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n.name}\n{n.daemon.log()}" for n in c.nodes)
            raise AssertionError(
                f"not all confirmed: {txids - _confirmed_txids(c.rx)}\n{c.rx.summary()}\n{logs}"
            )
        evm.mine(c.anvil.url, 1)
        await asyncio.sleep(0.3)


async def test_one_leader_delivers_what_a_standby_took_and_a_standby_takes_over_after_sigkill(
    cluster: Cluster,
) -> None:
    c = cluster
    leader = await c.leader()
    standbys = [n for n in c.nodes if n is not leader]
    for node in standbys:
        # A standby that started before the election ended sees the holder at its next poll.
        status = await node.status()
        for _ in range(100):
            seen = status is not None and status["leadership"]["holder"] == leader.name and status["ready"]
            if seen:
                break
            await asyncio.sleep(0.1)
            status = await node.status()
        assert status is not None and status["leadership"]["role"] == "standby", status
        assert status["leadership"]["holder"] == leader.name and status["ready"], status
        assert (await node.daemon.get("/readyz"))[0] == 200
    code, body = await leader.daemon.get("/status")
    assert body["leadership"]["node"] == leader.name and body["leadership"]["term"] >= 1, body
    term = body["leadership"]["term"]

    # An address taken on a standby's API, paid at once: the leader's follower must see it.
    code, taken = await standbys[0].api("POST", "/v1/addresses", {"currency": "ETH", "foreign_id": "cust-1"})
    assert code == 201, taken
    sender = evm.accounts(c.anvil.url)[0]
    first = evm.send_eth(c.anvil.url, sender, taken["address"], 10**15 + 1)
    await _mine_until(c, {first})
    assert leader.delivered_here() >= 1 and all(n.delivered_here() == 0 for n in standbys)

    # The merchant fails for a while: the next callbacks wait in the outbox, retried by the leader;
    # then the leader dies and a standby takes over and delivers them (and those still to come).
    c.rx.plan([500] * 6)
    second = evm.send_eth(c.anvil.url, sender, taken["address"], 10**15 + 2)
    await c.rx.wait_for(lambda rx: any(r.body and r.body["transactions"][0]["txid"] == second
                                       for r in rx.requests), 30)  # fmt: skip
    leader.daemon.kill()
    killed_at = time.time()
    new_leader = await c.leader(standbys, timeout_s=TAKEOVER_S * 4)
    # Measured by the new leader's own log line (wall clock), not by this test's polling.
    took_s = max(at for at in new_leader.taken_at() if at >= killed_at) - killed_at
    assert took_s <= TAKEOVER_S, f"take-over after {took_s:.2f} s, configured {TAKEOVER_S} s"
    code, body = await new_leader.daemon.get("/status")
    assert body["leadership"]["term"] > term, body

    # Taken on the remaining standby this time, paid after the take-over.
    other = next(n for n in standbys if n is not new_leader)
    code, taken2 = await other.api("POST", "/v1/addresses", {"currency": "ETH", "foreign_id": "cust-2"})
    assert code == 201, taken2
    third = evm.send_eth(c.anvil.url, sender, taken2["address"], 10**15 + 3)
    await _mine_until(c, {second, third})
    assert new_leader.delivered_here() >= 2 and other.delivered_here() == 0

    # The killed daemon comes back as a standby.
    leader.daemon.start()
    await leader.daemon.wait_live()
    for _ in range(50):
        if await leader.role() == "standby":
            break
        await asyncio.sleep(0.1)
    assert await leader.role() == "standby"
    assert (await c.leader()).name == new_leader.name

    for (deposit_id, status), raws in _by_callback(c.rx).items():
        assert len(raws) == 1, f"deposit {deposit_id} {status}: {len(raws)} different bodies"
    bodies = [json.loads(r.raw) for r in c.rx.delivered]
    assert {b["crypto_address"]["foreign_id"] for b in bodies} == {"cust-1", "cust-2"}


async def test_metrics_and_readyz_show_each_role(cluster: Cluster) -> None:
    c = cluster
    leader = await c.leader()
    async with aiohttp.ClientSession() as session:
        for node in c.nodes:
            async with session.get(f"http://127.0.0.1:{node.daemon.status_port}/metrics") as r:
                text = await r.text()
            expected = "1.0" if node is leader else "0.0"
            assert f'deposit_watcher_leader{{node="{node.name}"}} {expected}' in text, text
            assert (await node.daemon.get("/readyz"))[0] == 200
