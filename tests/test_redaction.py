"""Node URLs without their secrets (chains.redaction): a table of URLs that must and must not be
redacted, and the daemon run against a node on a path with a fake API key, whose /status, log and
check-config output must never show the key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chains.redaction import looks_like_key, redact_url, scrub, secrets_of
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.logs import redact_url as logs_redact_url

INFURA_KEY = "9aa3d95b3bc440fa88ea12eaa4456161"
ALCHEMY_KEY = "aB3dE_fGh1jKlMn0pQrStUvWxYz-1234"
QUICKNODE_TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # Shown as they are: nothing secret.
        ("http://127.0.0.1:8545/", "http://127.0.0.1:8545/"),
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("http://[::1]:8545/", "http://[::1]:8545/"),
        ("https://mempool.space/signet/api", "https://mempool.space/signet/api"),
        ("https://blockstream.info/testnet/api/", "https://blockstream.info/testnet/api/"),
        ("https://api.avax.network/ext/bc/C/rpc", "https://api.avax.network/ext/bc/C/rpc"),
        ("https://rpc.example/ethereum-mainnet", "https://rpc.example/ethereum-mainnet"),  # no digit
        ("https://rpc.example/abc123", "https://rpc.example/abc123"),  # short
        ("http://127.0.0.1:18443/wallet/merchant", "http://127.0.0.1:18443/wallet/merchant"),
        # A bitcoind wallet's name is a name, even one that looks like a key.
        (
            "http://127.0.0.1:18443/wallet/merchant_wallet_2024",
            "http://127.0.0.1:18443/wallet/merchant_wallet_2024",
        ),
        ("https://rpc.example/?chain=1&format=json", "https://rpc.example/?chain=1&format=json"),
        # Credentials: gone, as before.
        ("http://user:pass@127.0.0.1:8332/", "http://127.0.0.1:8332/"),
        ("http://user@127.0.0.1:8332/", "http://127.0.0.1:8332/"),
        ("http://u:p@[::1]:8332/wallet/w", "http://[::1]:8332/wallet/w"),  # the brackets stay
        # Keys in the path: ***.
        (f"https://mainnet.infura.io/v3/{INFURA_KEY}", "https://mainnet.infura.io/v3/***"),
        (f"https://eth-mainnet.g.alchemy.com/v2/{ALCHEMY_KEY}", "https://eth-mainnet.g.alchemy.com/v2/***"),
        (f"https://name.quiknode.pro/{QUICKNODE_TOKEN}/", "https://name.quiknode.pro/***/"),
        (f"https://rpc.ankr.com/eth/{'ab' * 32}", "https://rpc.ankr.com/eth/***"),
        (f"https://go.getblock.io/{'deadbeef' * 3}", "https://go.getblock.io/***"),  # hex without digits
        (f"https://u:p@mainnet.infura.io/v3/{INFURA_KEY}", "https://mainnet.infura.io/v3/***"),
        # Secrets in the query: by the parameter's name, or by the value's look.
        ("https://api.example/rpc?apikey=short1&chain=1", "https://api.example/rpc?apikey=***&chain=1"),
        ("https://api.example/rpc?api_key=x&token=y", "https://api.example/rpc?api_key=***&token=***"),
        ("https://api.example/rpc?access_token=x", "https://api.example/rpc?access_token=***"),
        ("https://api.example/rpc?x-api-key=x", "https://api.example/rpc?x-api-key=***"),
        ("https://api.example/rpc?auth=x", "https://api.example/rpc?auth=***"),
        (f"https://api.example/rpc?k={INFURA_KEY}", "https://api.example/rpc?k=***"),
        # Not a URL at all: nothing of it is shown.
        ("http://[::1", "<unparsable URL>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert logs_redact_url(url) == shown  # the watcher's logs and status port use the same rule
    for secret in secrets_of(url):
        assert secret not in shown


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (INFURA_KEY, True),
        (ALCHEMY_KEY, True),
        ("a" * 24, True),  # hex
        ("1" * 24, True),
        ("a1" * 8, True),  # 16 characters, letters and digits
        ("a1" * 7 + "a", False),  # 15
        ("ethereum-mainnet", False),
        ("g" * 30, False),  # no digit, not hex
        ("has.dots.1234567890", False),
        ("", False),
    ],
)
def test_looks_like_key(text: str, key: bool) -> None:
    assert looks_like_key(text) is key


def test_scrub_hides_the_url_and_each_secret() -> None:
    url = f"http://watcher:pw-1234@127.0.0.1:8545/v3/{INFURA_KEY}?token=tok-5678"
    text = f"failed: {url}; again at http://127.0.0.1:8545/v3/{INFURA_KEY}?token=tok-5678 (pw-1234)"
    assert scrub(text, url) == (
        "failed: http://127.0.0.1:8545/v3/***?token=***; "
        "again at http://127.0.0.1:8545/v3/***?token=*** (***)"
    )
    plain = "http://127.0.0.1:8545/"
    assert scrub(f"failed: {plain}", plain) == f"failed: {plain}"
    # A secret under 4 characters is not hunted in texts: it would garble them.
    assert scrub("a b c", "http://u:p@h/") == "a b c"


# ================================================================================ the daemon


@pytest.fixture
async def keyed_nodes() -> AsyncIterator[tuple[list[str], list[str]]]:
    """Two fake providers on 127.0.0.1 that take a key in their path: the first answers 503 quoting the
    path (a broken gateway), the second 401 quoting the key (Infura's "invalid project id"). Yields
    their URLs and the paths they were asked."""
    paths: list[str] = []

    async def gateway(request: web.Request) -> web.Response:
        paths.append(request.path_qs)
        return web.Response(status=503, text=f"no upstream for {request.path_qs}")

    async def provider(request: web.Request) -> web.Response:
        paths.append(request.path_qs)
        return web.Response(status=401, text=f"invalid project id {request.path.rsplit('/', 1)[-1]}")

    servers = []
    for handler in (gateway, provider):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    urls = [
        str(servers[0].make_url(f"/v3/{INFURA_KEY}")),
        str(servers[1].make_url(f"/v2/{ALCHEMY_KEY}")) + "?apikey=query-secret-42",
    ]
    try:
        yield urls, paths
    finally:
        for server in servers:
            await server.close()


async def test_the_daemon_never_shows_a_key_from_a_node_url(
    tmp_path: Path, keyed_nodes: tuple[list[str], list[str]]
) -> None:
    urls, paths = keyed_nodes
    secrets = (INFURA_KEY, ALCHEMY_KEY, "query-secret-42")
    status_port = free_port()
    config = {
        "network": "regtest",
        "database": str(tmp_path / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "debug"},
        "merchant": {"callback_url": "http://127.0.0.1:9/callback", "key": "k", "secret": "s" * 32},
        "chains": {"ethereum": {
            "adapter": "evm", "rpc_urls": urls, "poll_interval_s": 0.2, "timeout_s": 2,
            "currencies": {"ETH": None},
        }},
        "addresses": [],
    }  # fmt: skip
    path = write_config(tmp_path / "config.yaml", config)
    daemon = DaemonProcess(path, status_port, tmp_path / "daemon.log")
    daemon.start()
    try:
        await daemon.wait_live()
        status = await _status_once(status_port, lambda s: "HTTP 401" in str(s["chains"]["ethereum"]))
    finally:
        assert daemon.stop() == 0, daemon.log()
    summary = check_config(path)
    chain = status["chains"]["ethereum"]
    # The exercise happened: both nodes were asked on their key paths, the daemon failed over to the
    # second, and its error (quoting the key, as providers do) reached /status.
    assert any(INFURA_KEY in p for p in paths) and any(ALCHEMY_KEY in p for p in paths), paths
    assert chain["rpc_urls"] == [
        urls[0].split("/v3/")[0] + "/v3/***",
        urls[1].split("/v2/")[0] + "/v2/***?apikey=***",
    ]
    assert chain["rpc_url"] == chain["rpc_urls"][1]
    assert "HTTP 401" in chain["last_error"] and "invalid project id ***" in chain["last_error"]
    log = (tmp_path / "daemon.log").read_text()
    assert '"node_failover"' in log and '"node_error"' in log and "HTTP 503" in log
    assert summary.returncode == 0 and "/v3/***" in summary.stdout, summary
    for name, text in (
        ("/status", str(status)),
        ("log", log),
        ("check-config", summary.stdout + summary.stderr),
    ):
        leaked = [s for s in secrets if s in text]
        assert not leaked, (name, leaked, text)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watcher", "check-config", "--config", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=dict(os.environ))


async def _status_once(port: int, ready: Any, timeout_s: float = 30.0) -> Any:
    """The /status JSON once `ready(status)` holds."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/status") as r:
                status = await r.json()
            if ready(status):
                return status
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached within {timeout_s} s: {status}")
            await asyncio.sleep(0.1)
