"""Runs the README's merchant quick start for real: its commands, its config and its Python example.

Every command and snippet is taken from README.md by its `<!-- quickstart:NAME -->` marker, so the test
breaks when the README drifts from what works. Against real anvil and bcoin nodes and one real daemon
process (`python -m watcher run`), with a verifying receiver as the merchant's callback endpoint:

- `api-key new` prints the key and the hash line; the config gets the README's `merchant:` keys with that
  hash line and the test's public keys (regtest ones in place of the README's mainnet placeholders);
- the README's curl takes a BTC address, its Python example an ETH one, for one customer (curl's request
  is also made through aiohttp, which stands in where curl is not installed); the CLI lines run beside
  the daemon (the same address again, the list, register, import, export);
- both addresses are paid at once and their signed `confirmed` callbacks carry the customer's foreign_id;
- the README's PUT registers an address paid before, with `from_height`: its payment is reported once;
- the README's event feed command shows every status change of those deposits; `/status` and `/v1/keys`
  show the highest issued index the gap-limit paragraph talks about.

Substituted, and only this: the API's port (a free one instead of 8381), the key (the environment variable
the README names), `$ADDRESS` and `from_height`/`--from-height` (the registered address and the block of
its payment), and `deposit-watcher` is this checkout's `python -m watcher`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from chains.evm.address import to_checksum
from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port
from tests.test_derivation import ROOT_FINGERPRINT, account

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_API = "127.0.0.1:8381"
CUSTOMER = "customer-2048"
HASH_LINE = re.compile(r"^sk_(live|test)_[A-Za-z0-9]{4}:[0-9a-f]{64}$")
# The README's placeholders for a merchant's own mainnet keys; regtest keys of the test mnemonic here.
BITCOIN_KEY = f"wpkh([{ROOT_FINGERPRINT}/84'/1'/0']{account('m/84h/1h/0h', 'tpub')}/0/*)"
ETHEREUM_KEY = account("m/44h/60h/0h")


def snippet(name: str) -> tuple[str, str]:
    """(language, text) of the fenced block right after `<!-- quickstart:NAME -->` in the README."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(rf"^<!-- quickstart:{name} -->\n```(\w+)\n(.*?)^```$", text, re.M | re.S)
    assert len(found) == 1, f"README.md: no single block marked quickstart:{name}"
    lang, body = found[0]
    return lang, body


def commands(name: str) -> list[str]:
    """The command lines of a `sh` block: continuation lines joined, trailing `# comments` dropped."""
    lang, body = snippet(name)
    assert lang == "sh", name
    joined = body.replace("\\\n", " ")
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def test_the_readme_has_every_quickstart_block() -> None:
    """The extraction finds what the walk runs (a marker lost in an edit fails here, not silently)."""
    assert commands("api-key") == ["deposit-watcher api-key new --config config.yaml"]
    assert len(commands("take")) == len(commands("register")) == len(commands("events")) == 1
    assert {c.split()[2] for c in commands("cli")} == {"take", "list", "register", "import", "export"}
    assert "urllib.request" in snippet("python")[1] and DEFAULT_API in snippet("python")[1]
    assert snippet("config")[0] == "yaml" and snippet("answer")[0] == "json"


class Shell:
    """The merchant's shell: a directory holding config.yaml, `deposit-watcher` on PATH (this checkout)."""

    def __init__(self, workdir: Path, api_port: int) -> None:
        self.workdir = workdir
        self.api_port = api_port
        self.env: dict[str, str] = {
            "PATH": f"{workdir / 'bin'}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
        }
        shim = workdir / "bin" / "deposit-watcher"
        shim.parent.mkdir()
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m watcher "$@"\n')
        shim.chmod(0o755)

    def localize(self, text: str) -> str:
        return text.replace(DEFAULT_API, f"127.0.0.1:{self.api_port}")

    async def run(self, argv: list[str], what: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.workdir, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{out.decode()}{err.decode()}"
        return out.decode()

    async def sh(self, command: str) -> str:
        if command.startswith("curl ") and shutil.which("curl") is None:
            return await self.curl(command)
        return await self.run(["/bin/bash", "-euo", "pipefail", "-c", self.localize(command)], command)

    async def curl(self, command: str) -> str:
        """Without curl on this machine: the same request (method, URL, headers, body) through aiohttp."""
        words = shlex.split(self.localize(command))
        for name, value in self.env.items():
            words = [w.replace(f"${name}", value) for w in words]
        method, url, headers, body = "GET", "", {}, None
        options = iter(words[1:])
        for word in options:
            if word == "-X":
                method = next(options)
            elif word == "-H":
                name, _, value = next(options).partition(":")
                headers[name.strip()] = value.strip()
            elif word == "-d":
                body, method = next(options), method if method != "GET" else "POST"
            elif word != "-s":
                assert not url and word.startswith("http://"), f"a curl option not known here: {word}"
                url = word
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            async with session.request(method, url, headers=headers, data=body) as r:
                return await r.text()

    async def python(self, code: str) -> str:
        return await self.run([sys.executable, "-c", self.localize(code)], "the README's Python example")


def base_config(bcoin: BcoinNode, anvil: AnvilNode, rx: Receiver, status_port: int, api_port: int) -> Any:
    """What a merchant has before the quick start: a working config without the API."""
    return {
        "network": "regtest",
        "database": "watcher.sqlite3",
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "log": {"format": "json", "level": "info"},
        "merchant": {"callback_url": rx.url, "key": rx.key, "secret": "quickstart-secret", "timeout_s": 2,
                     "retry_schedule_min": [0.005, 0.01]},
        "chains": {
            "bitcoin": {
                "adapter": "bitcoin-core", "rpc_url": bcoin.rpc_url, "rpc_user": bcoin.rpc_user,
                "rpc_password": bcoin.rpc_password, "poll_interval_s": 0.2, "timeout_s": 5,
                "start_height": btc.height(bcoin) + 1, "currencies": {"BTC": {"min_confirmations": 1}},
            },
            "ethereum": {
                "adapter": "evm", "rpc_url": anvil.url, "chain_id": anvil.chain_id, "poll_interval_s": 0.2,
                "start_height": evm.head_height(anvil.url) + 1,
                "currencies": {"ETH": {"min_confirmations": 1}},
            },
        },
    }  # fmt: skip


def with_readme_keys(config: Any, hash_line: str) -> Any:
    """The config edited as the README says: its `merchant:` keys added, its placeholders filled in."""
    added = yaml.safe_load(snippet("config")[1])
    assert set(added) == {"merchant"}, added
    merchant = added["merchant"]
    [placeholder] = merchant["api_keys"]
    assert HASH_LINE.match(placeholder), placeholder  # the README shows the line's real shape
    assert set(merchant["public_keys"]) == {"bitcoin", "ethereum"}, merchant
    assert merchant["public_keys"]["bitcoin"].startswith("wpkh(["), merchant
    merchant["api_keys"] = [hash_line]
    merchant["public_keys"] = {"bitcoin": BITCOIN_KEY, "ethereum": ETHEREUM_KEY}
    config["merchant"] |= merchant
    return config


async def api_get(port: int, key: str, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
            return r.status, await r.json()


async def wait_api(daemon: DaemonProcess, port: int, key: str) -> None:
    await daemon.wait_live()
    for _ in range(100):
        try:
            if (await api_get(port, key, "/v1/keys"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the merchant API never answered\n{daemon.log()}")


def confirmed(rx: Receiver) -> dict[tuple[str, str], dict[str, Any]]:
    """Verified `confirmed` callbacks by (currency, foreign_id)."""
    return {
        (r.body["currency_sent"]["currency"], r.body["crypto_address"]["foreign_id"]): r.body
        for r in rx.delivered
        if r.body["status"] == "confirmed" and r.signature_ok and r.key_ok
    }


@pytest.mark.timeout(120)
async def test_the_readme_quick_start_works(anvil: AnvilNode, bcoin: BcoinNode, tmp_path: Path) -> None:
    status_port, api_port = free_port(), free_port()
    shell = Shell(tmp_path, api_port)
    async with Receiver(key="quickstart-key", secret="quickstart-secret") as rx:
        config_path = tmp_path / "config.yaml"
        config = base_config(bcoin, anvil, rx, status_port, api_port)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        # 1. The key, printed once, and the hash line the config keeps.
        [make_key] = commands("api-key")
        out = await shell.sh(make_key)
        key = re.search(r"^key:\s+(sk_test_\w+)$", out, re.M)
        hash_line = re.search(r"^hash:\s+(\S+)$", out, re.M)
        assert key and hash_line and HASH_LINE.match(hash_line[1]), out
        assert hash_line[1].startswith(key[1][:12]), out  # the key's prefix names its hash line
        shell.env["DEPOSIT_WATCHER_KEY"] = key[1]
        config_path.write_text(yaml.safe_dump(with_readme_keys(config, hash_line[1]), sort_keys=False))

        daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
        daemon.start()
        try:
            await wait_api(daemon, api_port, key[1])
            await walk_the_quick_start(shell, daemon, anvil, bcoin, rx, key[1])
        finally:
            assert daemon.stop() == 0, daemon.log()


async def walk_the_quick_start(
    shell: Shell, daemon: DaemonProcess, anvil: AnvilNode, bcoin: BcoinNode, rx: Receiver, key: str
) -> None:
    sender = evm.accounts(anvil.url)[0]

    # 2. curl takes the customer's BTC address, the Python example its ETH one; both are paid at once.
    [take] = commands("take")
    taken = json.loads(await shell.sh(take))
    assert (taken["currency"], taken["foreign_id"], taken["source"]) == ("BTC", CUSTOMER, "api"), taken
    assert taken["address"].startswith("bcrt1q") and taken["derivation_path"].endswith("/0/0"), taken
    assert json.loads(await shell.curl(take)) == taken  # the stand-in for curl asks the same
    shown = json.loads(snippet("answer")[1])  # the answer the README shows has the real one's fields
    assert shown.keys() == taken.keys() and shown["foreign_id"] == CUSTOMER, (shown, taken)
    eth_address = (await shell.python(snippet("python")[1])).strip()
    assert re.fullmatch(r"0x[0-9a-fA-F]{40}", eth_address), eth_address
    btc.pay(bcoin, taken["address"], 150_000)
    evm.send_eth(anvil.url, sender, eth_address, 10**16)

    # An address made elsewhere, paid before it is registered: found by the PUT's from_height.
    elsewhere = to_checksum(secrets.token_bytes(20))
    evm.send_eth(anvil.url, sender, elsewhere, 2 * 10**16, wait=True)
    paid_at = evm.head_height(anvil.url)
    evm.mine(anvil.url, 2)
    shell.env["ADDRESS"] = elsewhere
    [register] = commands("register")
    assert re.search(r'"from_height": \d+', register), register
    register = re.sub(r'"from_height": \d+', f'"from_height": {paid_at}', register)
    registered = json.loads(await shell.sh(register))
    assert (registered["address"], registered["foreign_id"]) == (elsewhere, "customer-77"), registered

    # The CLI lines, beside the daemon: the same address, the list, register, import, export.
    imported = btc.make_address("p2wpkh").address
    csv_file = shell.workdir / "addresses.csv"
    csv_file.write_text(f"currency,address,foreign_id\r\nBTC,{imported},customer-9\r\n")
    for line in commands("cli"):
        out = await shell.sh(re.sub(r"--from-height \d+", f"--from-height {paid_at}", line))
        action = line.split()[2]
        if action in ("take", "list"):
            assert taken["address"] in out and CUSTOMER in out, (line, out)
        elif action == "register":
            assert elsewhere in out and "customer-77" in out, (line, out)
        elif action == "import":
            assert "1 added" in out, (line, out)
    exported = [json.loads(row) for row in (shell.workdir / "addresses.ndjson").read_text().splitlines()]
    assert {(a["currency"], a["address"]) for a in exported} == {
        ("BTC", taken["address"]), ("ETH", eth_address), ("ETH", elsewhere), ("BTC", imported),
    }  # fmt: skip

    # 3. The callbacks: signed, confirmed, each with its customer's foreign_id.
    wanted = {("BTC", CUSTOMER), ("ETH", CUSTOMER), ("ETH", "customer-77")}
    for _ in range(150):
        if wanted <= set(confirmed(rx)):
            break
        btc.mine(bcoin, 1)
        evm.mine(anvil.url, 1)
        await asyncio.sleep(0.2)
    bodies = confirmed(rx)
    assert wanted <= set(bodies), f"{rx.summary()}\n{daemon.log()}"
    assert bodies[("BTC", CUSTOMER)]["crypto_address"]["address"] == taken["address"]
    assert bodies[("ETH", CUSTOMER)]["crypto_address"]["address"].lower() == eth_address.lower()
    assert bodies[("ETH", "customer-77")]["currency_sent"]["amount"] == "0.020000000000000000"
    past = [r for r in rx.delivered if r.body["crypto_address"]["foreign_id"] == "customer-77"]
    assert len({r.body["id"] for r in past}) == 1, rx.summary()  # the old payment is reported once

    # The event feed: every status change of these deposits, in order, ending with `confirmed`.
    [events] = commands("events")
    feed = json.loads(await shell.sh(events))
    ids = [e["id"] for e in feed["data"]]
    assert ids == sorted(ids) and feed["last_id"] == ids[-1], feed
    last: dict[int, str] = {}
    for event in feed["data"]:
        last[event["deposit_id"]] = event["status"]
    assert {bodies[w]["id"] for w in wanted} <= {d for d, s in last.items() if s == "confirmed"}, feed

    # The gap-limit paragraph: one BTC address issued, at index 0.
    _, status = await daemon.get("/status")
    [shop] = status["integrations"]
    highest = {k["chain"]: k["highest_index"] for k in shop["public_keys"]}
    assert highest == {"bitcoin": 0, "ethereum": 0}, status
    _, keys = await api_get(shell.api_port, key, "/v1/keys")
    assert {(k["chain"], k["highest_index"], k["gap_limit_hint"]) for k in keys["data"]} == {
        ("bitcoin", 0, 20), ("ethereum", 0, 20),
    }  # fmt: skip
