"""Security defaults: the status port stays on loopback unless configured, secrets never leave the process,
and a mainnet callback URL must be https unless the config says otherwise.

The secrets test runs the real daemon process with distinctive secrets (the merchant secret, an RPC
password, a password inside a node URL), exercises it (deposits on a real anvil, a failing merchant, node
errors through a switchable HTTP proxy, a broken config on reload and at start), then greps every output
for them: the daemon's log, /status, /metrics, /readyz, every CLI command's output, config errors, the
callbacks the merchant received and the database files.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.config import StatusConfig, load_config, summary
from watcher.errors import ConfigError

MERCHANT_SECRET = "S3CR3T-merchant-8c41d7"
RPC_PASSWORD = "S3CR3T-rpc-password-2b90"
URL_PASSWORD = "S3CR3T-url-password-f3e5"
CALLBACK_PASSWORD = "S3CR3T-callback-password-0d6a"
SECRETS = (MERCHANT_SECRET, RPC_PASSWORD, URL_PASSWORD, CALLBACK_PASSWORD)
KEY = "shop-key"
ENV = {
    "DW_SECRET": MERCHANT_SECRET,
    "BTC_RPC_PASSWORD": RPC_PASSWORD,
    "URL_PASSWORD": URL_PASSWORD,
    "CALLBACK_PASSWORD": CALLBACK_PASSWORD,
}


def leaks(text: str | bytes) -> list[str]:
    """The secrets (or their base64 in a Basic auth header) found in `text`."""
    data = text.encode() if isinstance(text, str) else text
    found = [s for s in SECRETS if s.encode() in data]
    found += [
        f"base64 of {s}"
        for s in SECRETS
        for user in ("watcher", "merchant")
        if base64.b64encode(f"{user}:{s}".encode()) in data
    ]
    return found


# =================================================================================== the status port


def test_status_listens_on_loopback_by_default(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    write_config(path, minimal_config(tmp_path, "http://127.0.0.1:1/cb", "http://127.0.0.1:1"))
    config = load_config(str(path), ENV)
    assert (
        (config.status.host, config.status.port)
        == ("127.0.0.1", 8380)
        == (
            StatusConfig().host,
            StatusConfig().port,
        )
    )


# Run inside a network namespace of its own (so port 8380 is free whatever else runs on the machine), with
# a second address on its loopback device: a port bound to 127.0.0.1 answers there and refuses at
# 10.99.0.1, one bound to 0.0.0.0 answers at both.
NETNS_PROBE = textwrap.dedent(
    """
    import json, socket, subprocess, sys, time, urllib.request
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"], check=True)
    daemon = subprocess.Popen([sys.executable, "-m", "watcher", "run", "--config", sys.argv[1]],
                              stdout=open(sys.argv[2], "ab"), stderr=subprocess.STDOUT)
    def answers(host):
        try:
            with urllib.request.urlopen(f"http://{host}:8380/livez", timeout=2) as r:
                return r.status
        except OSError as e:
            return str(e)
    try:
        for _ in range(300):
            if answers("127.0.0.1") == 200 or daemon.poll() is not None:
                break
            time.sleep(0.1)
        result = {"127.0.0.1": answers("127.0.0.1"), "10.99.0.1": answers("10.99.0.1")}
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
    print(json.dumps(result))
    """
)


def netns_probe(tmp_path: Path, status: dict[str, Any] | None) -> dict[str, Any]:
    config = minimal_config(tmp_path, "http://127.0.0.1:1/cb", "http://127.0.0.1:1")
    if status is not None:
        config["status"] = status
    path = write_config(tmp_path / "config.yaml", config)
    log = tmp_path / "daemon.log"
    try:
        done = subprocess.run(
            ["unshare", "--net", sys.executable, "-c", NETNS_PROBE, str(path), str(log)],
            capture_output=True,
            text=True,
            timeout=90,
            env={**os.environ, **ENV},
            cwd=Path(__file__).resolve().parent.parent,
        )
    except FileNotFoundError:
        pytest.fail("`unshare` (util-linux) is needed: the test runs the daemon in a network namespace")
    assert done.returncode == 0, (
        f"the network-namespace probe failed (this test needs root for `unshare --net`):\n"
        f"{done.stderr[-3000:]}\n{log.read_text()[-3000:] if log.exists() else ''}"
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_daemon_answers_on_loopback_only_unless_configured(tmp_path: Path) -> None:
    default = netns_probe(tmp_path, None)
    assert default["127.0.0.1"] == 200
    assert "Connection refused" in str(default["10.99.0.1"]), default
    # The control: configured to listen everywhere, the same probe reaches it on the other address.
    everywhere = netns_probe(tmp_path, {"listen": "0.0.0.0:8380"})
    assert everywhere == {"127.0.0.1": 200, "10.99.0.1": 200}


# ============================================================================ https on mainnet


def minimal_config(
    tmp_path: Path, callback_url: str, rpc_url: str = "http://127.0.0.1:8545", network: str = "regtest"
) -> dict[str, Any]:
    return {
        "network": network,
        "database": str(tmp_path / "watcher.sqlite3"),
        "merchant": {"callback_url": callback_url, "key": KEY, "secret": "${DW_SECRET}"},
        "chains": {"ethereum": {"adapter": "evm", "rpc_url": rpc_url, "currencies": {"ETH": None}}},
    }


def load(tmp_path: Path, config: dict[str, Any]) -> Any:
    path = write_config(tmp_path / "config.yaml", config)
    return load_config(str(path), ENV)


@pytest.mark.parametrize("allow_http", [None, False])
def test_mainnet_refuses_a_plain_http_callback_url(tmp_path: Path, allow_http: bool | None) -> None:
    config = minimal_config(tmp_path, "http://shop.example/cb", network="mainnet")
    if allow_http is not None:
        config["merchant"]["allow_http"] = allow_http
    with pytest.raises(ConfigError) as info:
        load(tmp_path, config)
    message = str(info.value)
    lines = (tmp_path / "config.yaml").read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if "callback_url:" in text)
    assert message == (
        f"{tmp_path / 'config.yaml'}:{line}: merchant.callback_url: must be an https:// URL on mainnet "
        "(set merchant.allow_http: true to send callbacks over plain http anyway)"
    )


def test_mainnet_takes_https_or_an_explicit_allow_http(tmp_path: Path) -> None:
    https = load(tmp_path, minimal_config(tmp_path, "https://shop.example/cb", network="mainnet"))
    assert https.merchant.allow_http is False
    config = minimal_config(tmp_path, "http://shop.example/cb", network="mainnet")
    config["merchant"]["allow_http"] = True
    allowed = load(tmp_path, config)
    assert allowed.merchant.callback_url == "http://shop.example/cb" and allowed.merchant.allow_http
    assert "plain http allowed" in summary(allowed)
    assert "plain http allowed" not in summary(https)


@pytest.mark.parametrize("network", ["testnet", "regtest"])
def test_http_is_fine_off_mainnet(tmp_path: Path, network: str) -> None:
    loaded = load(tmp_path, minimal_config(tmp_path, "http://127.0.0.1:9/cb", network=network))
    assert loaded.merchant.allow_http is False


@pytest.mark.parametrize(("value", "expected"), [("yes please", "a string"), (1, "an integer")])
def test_allow_http_must_be_a_boolean(tmp_path: Path, value: object, expected: str) -> None:
    config = minimal_config(tmp_path, "https://shop.example/cb", network="mainnet")
    config["merchant"]["allow_http"] = value
    with pytest.raises(ConfigError, match=f"merchant.allow_http: expected true or false, got {expected}"):
        load(tmp_path, config)


def test_the_mainnet_example_documents_allow_http() -> None:
    text = (Path(__file__).resolve().parent.parent / "config" / "mainnet.yaml").read_text()
    [line] = [ln for ln in text.splitlines() if "allow_http" in ln]
    assert line.strip().startswith("allow_http: false") and "#" in line


# ==================================================================================== secrets


class NodeProxy:
    """An HTTP proxy in front of anvil whose answers can be switched to faults (HTTP errors, garbage)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"  # pass | 500 | 401 | garbage
        self.authorizations: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.authorizations.add(request.headers.get("Authorization", ""))
        body = await request.read()
        if self.mode == "500":
            return web.Response(status=500, text="internal error of the node")
        if self.mode == "401":
            return web.Response(status=401, text="unauthorized")
        if self.mode == "garbage":
            return web.Response(status=200, text="<html>not json</html>")
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        async with self._session.post(self.upstream, data=body, headers=headers) as r:
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")


@pytest.fixture
async def node_proxy(fresh_anvil: AnvilNode) -> AsyncIterator[NodeProxy]:
    proxy = NodeProxy(fresh_anvil.url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def cli(config: Path, *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "watcher", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
    )
    return done.returncode, done.stdout + done.stderr


async def http_get(port: int, path: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as r:
            return f"{r.status} {await r.text()}"


async def eventually(what: str, check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout_s} s: {what}")


def secrets_config(
    tmp_path: Path, proxy: NodeProxy, rx: Receiver, status_port: int, start: int
) -> dict[str, Any]:
    dead = free_port()  # nothing listens there: the bitcoin chain's node is down throughout
    return {
        "network": "regtest",
        "database": str(tmp_path / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "debug"},
        "merchant": {
            # A merchant behind HTTP basic auth: a password inside the callback URL.
            "callback_url": rx.url.replace("http://", "http://merchant:${CALLBACK_PASSWORD}@"),
            "key": KEY, "secret": "${DW_SECRET}", "timeout_s": 1,
            "retry_schedule_min": [0.003, 0.006, 0.01, 0.02, 0.04, 0.08],
        },
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": f"http://watcher:${{URL_PASSWORD}}@127.0.0.1:{proxy.port}/",
                "chain_id": 31337, "poll_interval_s": 0.2, "timeout_s": 2, "start_height": start,
                "currencies": {"ETH": {"min_confirmations": 1}},
            },
            "bitcoin": {
                "adapter": "bitcoin-core", "rpc_url": f"http://127.0.0.1:{dead}", "rpc_user": "watcher",
                "rpc_password": "${BTC_RPC_PASSWORD}", "poll_interval_s": 0.5, "timeout_s": 1,
                "currencies": {"BTC": {"min_confirmations": 1}},
            },
        },
        "addresses": [],
    }  # fmt: skip


# Config mistakes made around the secrets: each is refused, and the message must not carry a secret.
BROKEN = {
    "bad port in a URL with a password": ("chains.ethereum.rpc_url", "http://watcher:${URL_PASSWORD}@127.0.0.1:x/"),
    "callback URL with the secret as password": ("merchant.callback_url", "ftp://shop:${DW_SECRET}@shop.example/"),
    "secret and secret_file": ("merchant.secret_file", "/nonexistent"),
    "password and cookie file": ("chains.bitcoin.rpc_cookie_file", "/nonexistent"),
    "wrong type next to the secret": ("merchant.key", 12),
    "mainnet with plain http": ("network", "mainnet"),
}  # fmt: skip


def broken_variant(good: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(good))
    *parents, last = key.split(".")
    target = config
    for name in parents:
        target = target[name]
    target[last] = value
    if key == "network":
        config["merchant"]["callback_url"] = f"http://shop:{MERCHANT_SECRET}@shop.example/cb"
    return config


async def test_secrets_never_leave_the_process(
    tmp_path: Path, node_proxy: NodeProxy, fresh_anvil: AnvilNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    url = fresh_anvil.url
    acct = evm.accounts(url)
    outputs: dict[str, str | bytes] = {}
    status_port = free_port()
    async with Receiver(key=KEY, secret=MERCHANT_SECRET, slow_answer_s=3.0, huge_bytes=1_000_000) as rx:
        config = secrets_config(tmp_path, node_proxy, rx, status_port, evm.head_height(url) + 1)
        config["addresses"] = [
            {"currency": "ETH", "address": acct[1], "foreign_id": "customer-1"},
            {"currency": "ETH", "address": acct[2], "foreign_id": "customer-2"},
        ]
        path = write_config(tmp_path / "config.yaml", config)
        good_text = path.read_text()
        daemon = DaemonProcess(path, status_port, tmp_path / "daemon.log")
        rx.plan([500, "huge", "redirect", "drop", "timeout", 403])  # a failing merchant, then 200s
        daemon.start()
        try:
            await daemon.wait_live()
            # Deposits, delivered after the merchant's failures.
            evm.send_eth(url, acct[0], acct[1], 10**18)
            evm.send_eth(url, acct[0], acct[2], 2 * 10**18)
            await rx.wait_delivered(2, timeout_s=60)
            outputs["/status while the merchant failed"] = await http_get(status_port, "/status")

            # Node errors: HTTP 500, 401 and garbage from the node, each until /status shows it.
            for mode, shown in (("500", "HTTP 500"), ("401", "HTTP 401"), ("garbage", "not JSON")):
                node_proxy.mode = mode

                async def node_error_shown(shown: str = shown) -> str | None:
                    body = await http_get(status_port, "/status")
                    return body if shown in body else None

                outputs[f"/status with node answering {mode}"] = await eventually(mode, node_error_shown)
                outputs[f"/readyz with node answering {mode}"] = await http_get(status_port, "/readyz")
                outputs[f"/metrics with node answering {mode}"] = await http_get(status_port, "/metrics")
            node_proxy.mode = "pass"
            evm.send_eth(url, acct[0], acct[1], 3 * 10**18)
            await rx.wait_delivered(3, timeout_s=60)

            # A broken config on reload is refused (and logged); the good one is taken back.
            bad = broken_variant(config, "merchant.callback_url", "ftp://shop:${DW_SECRET}@shop.example/")
            write_config(path, bad)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGHUP)
            await eventually("reload refused", lambda: _logged(daemon, "config_reload_refused"))
            path.write_text(good_text)
            daemon.proc.send_signal(signal.SIGHUP)
            await eventually("reload done", lambda: _logged(daemon, "config_reloaded"))

            for name in ("/status", "/readyz", "/livez", "/metrics"):
                outputs[name] = await http_get(status_port, name)
            for args in (
                ["check-config"], ["status"], ["status", "--json"], ["deposits"], ["deposits", "--json"],
                ["callbacks"], ["callbacks", "--json"], ["callbacks", "--failed"], ["resend", "1"],
                ["resend", "1", "--json"],
            ):  # fmt: skip
                delivered = len(rx.delivered)
                code, text = cli(path, *args)
                outputs[" ".join(args)] = text
                assert code in (0, 1), (args, code, text)  # status: 1 while the bitcoin node is down
                if args[0] == "resend":
                    # Each resend delivered before the next: a resend still pending when another is
                    # queued is superseded by it (one delivery for two, by design), which a loaded
                    # machine made likely (the test then waited for a fifth delivery that never came).
                    await rx.wait_delivered(delivered + 1, timeout_s=30)
        finally:
            code = daemon.stop()
        assert code == 0, daemon.log()

        # Config errors: at start, and from check-config, for mistakes made around the secrets.
        for case, (key, value) in BROKEN.items():
            write_config(path, broken_variant(config, key, value))
            code, text = cli(path, "check-config")
            assert code == 1 and text.startswith("config error: ") and text.count("\n") == 1, (case, text)
            outputs[f"check-config: {case}"] = text
        code, text = cli(path, "run")
        assert code == 1
        outputs["run with a broken config"] = text
        path.write_text(good_text.replace("secret: ${DW_SECRET}", f'secret: "{MERCHANT_SECRET}\n'))
        code, text = cli(path, "check-config")
        assert code == 1 and "invalid YAML" in text  # the secret written in the file, in a broken line
        outputs["check-config: broken YAML on the secret's line"] = text

        outputs["daemon log"] = (tmp_path / "daemon.log").read_text()
        for request in rx.requests:
            outputs[f"callback body {request.at}"] = request.raw
        outputs.update(database_files(tmp_path))

    # The exercise happened: the merchant failed and recovered, the node failed, the reload was refused.
    log = str(outputs["daemon log"])
    for event in ("callback_failed", "callback_delivered", "node_error", "config_reload_refused"):
        assert f'"{event}"' in log, event
    basic = base64.b64encode(f"watcher:{URL_PASSWORD}".encode()).decode()
    assert f"Basic {basic}" in node_proxy.authorizations  # the URL's password did reach the node
    assert len(outputs) > 30
    found = {name: leaks(text) for name, text in outputs.items() if leaks(text)}
    assert not found, found


def database_files(directory: Path) -> dict[str, bytes]:
    return {f"database file {f.name}": f.read_bytes() for f in directory.glob("watcher.sqlite3*")}


async def _logged(daemon: DaemonProcess, event: str) -> bool:
    return f'"{event}"' in daemon.log_path.read_text()
