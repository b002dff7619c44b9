"""What the real-daemon test modules share: the regtest config of both chains, the merchant API client,
the wait until the daemon serves, and a local HTTP endpoint for a shop's callbacks.

Each module still writes its own integrations (their callbacks, keys and public keys are its subject);
what they all repeated is the rest: anvil and bcoin as the chains, 0.2 s polls, the start heights, the
ports. tests/daemon_process.py runs the daemon itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from tests.daemon_process import DaemonProcess


def regtest_chains(
    anvil: AnvilNode,
    bcoin: BcoinNode,
    min_confirmations: int,
    *,
    tokens: Mapping[str, str] | None = None,
    bitcoin_rpc_url: str | None = None,
    timeout_s: float = 2,
) -> dict[str, Any]:
    """The `chains:` section for both local nodes, from their next block on: BTC on bcoin (through
    `bitcoin_rpc_url`, a proxy, when given), ETH and the 6-decimal `tokens` (code -> contract) on anvil."""
    evm_currencies: dict[str, Any] = {"ETH": {"min_confirmations": min_confirmations}}
    for code, contract in (tokens or {}).items():
        evm_currencies[code] = {"contract": contract, "decimals": 6, "min_confirmations": min_confirmations}
    return {
        "bitcoin": {
            "adapter": "bitcoin-core", "rpc_url": bitcoin_rpc_url or bcoin.rpc_url,
            "rpc_user": bcoin.rpc_user, "rpc_password": bcoin.rpc_password, "poll_interval_s": 0.2,
            "timeout_s": timeout_s,
            "start_height": btc.height(bcoin) + 1,
            "currencies": {"BTC": {"min_confirmations": min_confirmations}},
        },
        "ethereum": {
            "adapter": "evm", "rpc_url": anvil.url, "chain_id": 31337, "poll_interval_s": 0.2,
            "start_height": evm.head_height(anvil.url) + 1, "currencies": evm_currencies,
        },
    }  # fmt: skip


def daemon_config(
    database: str | Path,
    status_port: int,
    api_port: int,
    integrations: list[dict[str, Any]],
    chains: dict[str, Any],
    *,
    log_level: str = "info",
    **sections: Any,
) -> dict[str, Any]:
    """A whole regtest config: the store, the status port (ready while 5 blocks behind at most), the API,
    JSON logs; `sections` adds or replaces top-level sections (`ui`, ...)."""
    return {
        "network": "regtest",
        "database": str(database),
        "status": {"listen": f"127.0.0.1:{status_port}", "max_lag_blocks": 5},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "log": {"format": "json", "level": log_level},
        "integrations": integrations,
        "chains": chains,
        **sections,
    }


class ApiClient:
    """The merchant API of a daemon on 127.0.0.1, with one integration's key."""

    def __init__(self, api_port: int, key: str) -> None:
        self.origin = f"http://127.0.0.1:{api_port}"
        self.key = key

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, Any]:
        """(status, JSON answer); `key` replaces the client's own for this call."""
        headers = {"Authorization": f"Bearer {key or self.key}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            async with session.request(method, self.origin + path, json=body, headers=headers) as r:
                return r.status, await r.json()


async def wait_ready(daemon: DaemonProcess, api: ApiClient | None = None, probe: str = "/v1/keys") -> None:
    """Until the daemon's /readyz answers 200 (both chains followed: before that, a payment is refused
    with 503) and, with `api`, the API answers `probe` with 200."""
    for _ in range(300):
        try:
            api_up = api is None or (await api.call("GET", probe))[0] == 200
            if api_up and (await daemon.get("/readyz"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the daemon never got ready\n{daemon.log()[-4000:]}")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(routes: Mapping[str, Handler]) -> web.AppRunner:
    """A local HTTP server answering POSTs to each path with its handler (a shop's callback URLs); its
    port: `runner.addresses[0][1]`. Stop it with `await runner.cleanup()`."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def served_url(runner: web.AppRunner, path: str) -> str:
    return f"http://127.0.0.1:{runner.addresses[0][1]}{path}"
