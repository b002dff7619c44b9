"""Runs the README's "Payments for orders" section for real, and holds docs/payments.md to the code.

Every command and snippet is taken from README.md by its `<!-- payments:NAME -->` marker, so the test
breaks when the README drifts from what works. Against real anvil and bcoin nodes and one real daemon
process, with a receiver that verifies X-Coinskro-Signature (devnet's Receiver in coinskro mode) as the
shop's webhook endpoint:

- the README's integration loads as it is written (its `secret_file` through `${CREDENTIALS_DIRECTORY}`),
  with the test's chains and keys in place of the README's mainnet placeholders; its `api-key new` line
  prints the key and the hash line the integration then keeps;
- the README's curl creates a BTC payment (its answer has the fields the README shows; the same request
  again, made through aiohttp, is the idempotent retry and gives the same payment); the README's Python
  example creates an ETH one, prints its address and URI, and polls it until it ends;
- the test pays both on the nodes (and sends a token to the ETH payment's address, which is not its
  currency: nothing of it counts); `payment_completed` arrives signed for each with the amount and
  currency asked; a resend brings the same bytes again (what "fulfil once" guards against); a late
  payment to an ended payment is kept as a deposit where docs/payments.md says it is.

Substituted, and only this: the API's port, the key (the environment variable the README names), the
integration's `api_keys`, `public_keys` and `callback_url` (the test's receiver), `CREDENTIALS_DIRECTORY`
(a directory holding the test's secret), and `deposit-watcher` is this checkout's `python -m watcher`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port
from tests.test_derivation import ROOT_FINGERPRINT, account
from tests.test_quickstart import DEFAULT_API, HASH_LINE, Shell
from watcher import coinskro
from watcher.api.document import document
from watcher.model import PaymentStatus
from watcher.payment_life import DEFAULT_GRACE_S
from watcher.payment_tracker import BLIND_AFTER_MIN_S, BLIND_AFTER_POLLS, NO_MEMPOOL_MARGIN_S, SWEEP_EVERY_S
from watcher.receiver import Received

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAYMENTS_MD = ROOT / "docs" / "payments.md"
API_MD = ROOT / "docs" / "api.md"
SECRET = "whsec-readme-payments"
ORDER = "order-1001"
REFERENCE = re.compile(r"PAY_[A-Z2-7]{32}")
# The README's placeholders for the shop's own mainnet keys; regtest keys of the test mnemonic here (an
# account of their own, as "not a key another integration has" asks).
BITCOIN_KEY = f"wpkh([{ROOT_FINGERPRINT}/84'/1'/1']{account('m/84h/1h/1h', 'tpub')}/0/*)"
ETHEREUM_KEY = account("m/44h/60h/1h")


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"^## Payments for orders \(Coinskro webhooks\)\n(.*?)^## ", text, re.M | re.S)
    assert len(found) == 1, "README.md: no single section 'Payments for orders (Coinskro webhooks)'"
    return str(found[0])


def block(name: str) -> tuple[str, str]:
    """(language, text) of the fenced block right after `<!-- payments:NAME -->` in the README's section."""
    found = re.findall(rf"^<!-- payments:{name} -->\n```(\w+)\n(.*?)^```$", readme_section(), re.M | re.S)
    assert len(found) == 1, f"README.md: no single block marked payments:{name}"
    lang, body = found[0]
    return lang, body


def command(name: str) -> str:
    """The one command line of a `sh` block, continuation lines joined."""
    lang, body = block(name)
    assert lang == "sh", name
    lines = [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    assert len(lines) == 1, (name, lines)
    return lines[0]


def test_the_readme_has_every_payments_block() -> None:
    """The extraction finds what the walk runs (a marker lost in an edit fails here, not silently)."""
    assert command("api-key").startswith("deposit-watcher api-key new --config config.yaml --integration ")
    assert command("create").startswith("curl ") and f"Idempotency-Key: {ORDER}" in command("create")
    assert block("config")[0] == "yaml" and block("answer")[0] == "json"
    python = block("python")
    assert python[0] == "python" and "urllib.request" in python[1] and DEFAULT_API in python[1]


# ------------------------------------------------------------------------------------- the walk


def readme_integration(rx: Receiver) -> dict[str, Any]:
    """The README's integration as written, its placeholders checked and filled in (no API key yet)."""
    config = yaml.safe_load(block("config")[1])
    assert set(config) == {"integrations"}, config
    [integration] = config["integrations"]
    [placeholder] = integration.pop("api_keys")
    assert HASH_LINE.match(placeholder), placeholder  # the README shows the line's real shape
    callback = integration["callback"]
    assert callback["format"] == "coinskro" and "payment_completed" in callback["events"], callback
    assert callback["callback_url"].startswith("https://"), callback
    assert set(integration["public_keys"]) == {"bitcoin", "ethereum"}, integration
    assert set(integration["payments"]) <= {"expires_in_s", "max_expires_in_s", "grace_s", "return_url"}
    assert integration["payments"].get("return_url", "https://").startswith("https://"), integration
    callback["callback_url"] = rx.url
    integration["public_keys"] = {"bitcoin": BITCOIN_KEY, "ethereum": ETHEREUM_KEY}
    return integration  # type: ignore[no-any-return]


def shop_config(
    bcoin: BcoinNode, anvil: AnvilNode, usdt: str, shop: dict[str, Any], status_port: int, api_port: int
) -> dict[str, Any]:
    """The shop's config: the test's chains (one confirmation, to keep it short) and the README's part."""
    return {
        "network": "regtest",
        "database": "watcher.sqlite3",
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "log": {"format": "json", "level": "info"},
        "integrations": [shop],
        "chains": {
            "bitcoin": {
                "adapter": "bitcoin-core", "rpc_url": bcoin.rpc_url, "rpc_user": bcoin.rpc_user,
                "rpc_password": bcoin.rpc_password, "poll_interval_s": 0.2, "timeout_s": 5,
                "start_height": btc.height(bcoin) + 1, "currencies": {"BTC": {"min_confirmations": 1}},
            },
            "ethereum": {
                "adapter": "evm", "rpc_url": anvil.url, "chain_id": anvil.chain_id, "poll_interval_s": 0.2,
                "start_height": evm.head_height(anvil.url) + 1,
                "currencies": {
                    "ETH": {"min_confirmations": 1},
                    "USDT": {"contract": usdt, "decimals": 6, "min_confirmations": 1},
                },
            },
        },
    }  # fmt: skip


async def api(port: int, key: str, method: str, path: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.request(method, f"http://127.0.0.1:{port}{path}", headers=headers) as r:
            return r.status, await r.json()


async def wait_ready(daemon: DaemonProcess, port: int, key: str) -> None:
    """Until the API answers and both chains are followed (before that, a payment is refused: 503)."""
    await daemon.wait_live()
    for _ in range(300):
        try:
            listed, ready = await api(port, key, "GET", "/v1/payments"), await daemon.get("/readyz")
            if listed[0] == ready[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the daemon never got ready\n{daemon.log()[-4000:]}")


def completed(rx: Receiver) -> dict[str, Received]:
    """Verified `payment_completed` webhooks by payment reference."""
    return {
        r.body["data"]["payment_reference"]: r
        for r in rx.delivered
        if r.body["event"] == "payment_completed" and r.signature_ok
    }


@pytest.fixture(scope="module")
def usdt(anvil: AnvilNode) -> str:
    return evm.deploy_token(anvil.url, "USDT", "USDT", 6)


@pytest.mark.timeout(180)
async def test_the_readme_payments_flow_works(
    anvil: AnvilNode, bcoin: BcoinNode, usdt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status_port, api_port = free_port(), free_port()
    shell = Shell(tmp_path, api_port)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "webhook-secret").write_text(SECRET + "\n")  # read and trimmed
    shell.env["CREDENTIALS_DIRECTORY"] = str(credentials)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))  # the daemon's environment
    async with Receiver(secret=SECRET, format="coinskro") as rx:
        integration = readme_integration(rx)
        config_path = tmp_path / "config.yaml"
        config = shop_config(bcoin, anvil, usdt, integration, status_port, api_port)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        # 2. The key, printed once, and the hash line the integration keeps.
        out = await shell.sh(command("api-key"))
        key = re.search(r"^key:\s+(sk_test_\w+)$", out, re.M)
        hash_line = re.search(r"^hash:\s+(\S+)$", out, re.M)
        assert key and hash_line and HASH_LINE.match(hash_line[1]), out
        shell.env["DEPOSIT_WATCHER_KEY"] = key[1]
        integration["api_keys"] = [hash_line[1]]
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        daemon = DaemonProcess(config_path, status_port, tmp_path / "daemon.log")
        daemon.start()
        try:
            await wait_ready(daemon, api_port, key[1])
            await walk_the_payments_section(shell, daemon, anvil, bcoin, usdt, rx, key[1], integration["id"])
        finally:
            assert daemon.stop() == 0, daemon.log()


async def start_python_example(shell: Shell) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", shell.localize(block("python")[1]), cwd=shell.workdir, env=shell.env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def walk_the_payments_section(
    shell: Shell,
    daemon: DaemonProcess,
    anvil: AnvilNode,
    bcoin: BcoinNode,
    usdt: str,
    rx: Receiver,
    key: str,
    shop: str,
) -> None:
    sender = evm.accounts(anvil.url)[0]

    # 3. The README's curl creates a BTC payment; its answer has the fields the README shows.
    made = json.loads(await shell.sh(command("create")))
    shown = json.loads(block("answer")[1])
    assert list(shown) == list(made), (shown, made)
    assert REFERENCE.fullmatch(made["payment_reference"]) and REFERENCE.fullmatch(shown["payment_reference"])
    assert (made["status"], made["amount"], made["currency"]) == ("pending", "0.00150000", "BTC"), made
    assert (made["customer_reference"], made["integration_id"]) == (ORDER, shop), made
    assert made["address"].startswith("bcrt1q"), made
    assert made["payment_uri"] == f"bitcoin:{made['address']}?amount=0.0015", made
    assert json.loads(await shell.curl(command("create"))) == made  # a retry with the same key: the same one
    # The checkout page the README offers, without a key: the payment's amount and address.
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{shell.api_port}/pay/{made['payment_reference']}") as r:
            assert r.status == 200 and made["address"] in await r.text()

    # The README's Python example creates an ETH payment and shows it, then polls until it ends.
    example = await start_python_example(shell)
    assert example.stdout is not None
    first = (await asyncio.wait_for(example.stdout.readline(), 30)).decode()
    shown_pay = re.fullmatch(r"pay 0\.010000000000000000 ETH to (0x[0-9a-fA-F]{40})\n", first)
    assert shown_pay, first
    eth_address = shown_pay[1]
    uri = (await asyncio.wait_for(example.stdout.readline(), 10)).decode().strip()
    assert uri == f"ethereum:{eth_address}@{anvil.chain_id}?value=10000000000000000", uri

    # Paid: the BTC payment exactly; the ETH one after a token that is not its currency.
    btc_txid = btc.pay(bcoin, made["address"], 150_000)
    evm.mint(anvil.url, usdt, sender, 10**7, wait=True)
    evm.token_transfer(anvil.url, usdt, sender, eth_address, 10**7, wait=True)
    eth_txid = evm.send_eth(anvil.url, sender, eth_address, 10**16, wait=True)

    # 4. The webhooks: payment_completed for each, signed, with the amount and currency asked.
    for _ in range(200):
        if len(completed(rx)) == 2 and example.returncode is not None:
            break
        btc.mine(bcoin, 1)
        evm.mine(anvil.url, 1)
        await asyncio.sleep(0.2)
    assert len(completed(rx)) == 2, f"{rx.summary()}\n{daemon.log()[-4000:]}"
    rest, err = await asyncio.wait_for(example.communicate(), 10)
    assert example.returncode == 0, err.decode()
    assert rest.decode().splitlines()[-1] == "completed 0.010000000000000000", rest.decode()
    assert all(r.accepted for r in rx.requests) and {r.body["event"] for r in rx.requests} == {
        "payment_completed"
    }, rx.summary()  # the README's events: payment_completed only
    hooks = completed(rx)
    btc_hook = hooks.pop(made["payment_reference"])
    [(eth_reference, eth_hook)] = hooks.items()
    data = btc_hook.body["data"]
    assert (data["amount"], data["currency"], data["status"]) == (Decimal("0.00150000"), "BTC", "completed")
    assert (data["customer_reference"], data["integration_id"]) == (ORDER, shop), data
    assert b'"amount":0.00150000,' in btc_hook.raw  # the exact decimal text, as a JSON number
    assert eth_hook.body["data"]["amount"] == Decimal("0.010000000000000000")

    # Only the ETH transfer counts for the ETH payment: the token sent to its address is not its currency.
    status, eth_payment = await api(shell.api_port, key, "GET", f"/v1/payments/{eth_reference}")
    assert status == 200 and eth_payment["amount_received"] == "0.010000000000000000", eth_payment
    assert [t["txid"] for t in eth_payment["transactions"]] == [eth_txid], eth_payment

    # 5. Fulfil once: a webhook can come again (here, a resend), with the same bytes and signature.
    status, _ = await api(shell.api_port, key, "POST", f"/v1/payments/{made['payment_reference']}/resend")
    assert status == 202
    await rx.wait_for(lambda r: len(r.delivered) == 3, timeout_s=30)
    again = rx.delivered[-1]
    assert (again.raw, again.signature_header) == (btc_hook.raw, btc_hook.signature_header)

    await late_payment_is_kept(shell, daemon, anvil, rx, key, eth_reference, eth_address, btc_txid)


async def late_payment_is_kept(
    shell: Shell,
    daemon: DaemonProcess,
    anvil: AnvilNode,
    rx: Receiver,
    key: str,
    reference: str,
    address: str,
    btc_txid: str,
) -> None:
    """docs/payments.md, "Late payments": the transactions, the deposits by foreign_id, the feed, the log."""
    sender = evm.accounts(anvil.url)[0]
    late = evm.send_eth(anvil.url, sender, address, 5 * 10**15, wait=True)
    for _ in range(150):
        evm.mine(anvil.url, 1)
        _, found = await api(shell.api_port, key, "GET", f"/v1/deposits?foreign_id={reference}")
        if [d["status"] for d in found["data"] if d["txid"] == late] == ["confirmed"]:
            break
        await asyncio.sleep(0.2)
    assert [(d["txid"], d["status"]) for d in found["data"]][-1] == (late, "confirmed"), found
    _, payment = await api(shell.api_port, key, "GET", f"/v1/payments/{reference}")
    assert payment["status"] == "completed" and payment["amount_received"] == "0.010000000000000000"
    assert [t["txid"] for t in payment["transactions"]][-1] == late, payment
    _, feed = await api(shell.api_port, key, "GET", "/v1/events?after=0")
    [late_id] = [d["id"] for d in found["data"] if d["txid"] == late]
    late_events = [e for e in feed["data"] if e["deposit_id"] == late_id]
    assert late_events and late_events[-1]["status"] == "confirmed", feed
    assert {e["deposit"]["crypto_address"]["foreign_id"] for e in late_events} == {reference}, late_events
    assert '"late_payment"' in daemon.log() and reference in daemon.log()
    assert len(rx.delivered) == 3, rx.summary()  # no webhook for it
    # The BTC payment's deposit is found the same way.
    _, btc_deposits = await api(shell.api_port, key, "GET", "/v1/deposits?currency=BTC")
    assert [d["txid"] for d in btc_deposits["data"]] == [btc_txid], btc_deposits


# ------------------------------------------------------------------------------------- the docs


def api_md_statuses() -> dict[str, int]:
    """Each error code's HTTP status, from docs/api.md's table (held to the OpenAPI document elsewhere)."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", API_MD.read_text(encoding="utf-8"), re.M)
    return {code: int(status) for code, status in rows}


def documented_paths() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch"}
    return {(m.upper(), p) for p, item in document()["paths"].items() for m in item if m in methods}


@pytest.mark.parametrize("where", ["docs/payments.md", "README.md"])
def test_every_api_path_and_error_code_named_exists(where: str) -> None:
    text = PAYMENTS_MD.read_text(encoding="utf-8") if where == "docs/payments.md" else readme_section()
    named = set(re.findall(r"\b(GET|POST|PUT|DELETE|PATCH) (/v1/[^\s`?)]*)", text))
    assert named and named <= documented_paths(), named - documented_paths()
    codes = {code: int(status) for status, code in re.findall(r"`(\d{3})`\s+`([a-z_]+)`", text)}
    statuses = api_md_statuses()
    assert codes and {c: statuses.get(c) for c in codes} == codes, (codes, statuses)
    if where == "docs/payments.md":  # it names every payments path of the API
        payments = {(m, p) for m, p in documented_paths() if p.startswith("/v1/payments")}
        assert payments <= named, payments - named


def test_the_statuses_and_events_named_are_the_codes() -> None:
    text = PAYMENTS_MD.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([a-z]+)` \| (`payment_[a-z]+`|\(none\)) \| [^|]+ \| (yes|no) \|$", text, re.M)
    assert [status for status, _, _ in rows] == [s.value for s in PaymentStatus]
    for status, event, final in rows:
        wanted = "(none)" if status == "pending" else f"`{PaymentStatus(status).event}`"
        assert (event, final == "yes") == (wanted, PaymentStatus(status).final), status
    assert {e.strip("`") for _, e, _ in rows if e != "(none)"} == set(coinskro.EVENTS)
    # Every `payment_…` named is an event, but for the payment's fields and the log's `payment_status`.
    named = set(re.findall(r"`(payment_[a-z_]+)`", text + readme_section()))
    not_events = {"payment_reference", "payment_uri", "payment_status"}
    assert '"payment_status"' in (ROOT / "watcher" / "payment_tracker.py").read_text(encoding="utf-8")
    assert named - not_events == set(coinskro.EVENTS), named
    listed = re.findall(r"^- `([a-z]+)`:|[.] `([a-z]+)`: ", readme_section(), re.M)
    assert {a or b for a, b in listed} == {s.value for s in PaymentStatus}, listed


def test_the_tests_docs_payments_md_cites_exist() -> None:
    cited = set(re.findall(r"`(tests/[\w/]+\.py)`", PAYMENTS_MD.read_text(encoding="utf-8")))
    assert cited and all((ROOT / path).is_file() for path in cited), cited


def test_the_defaults_docs_payments_md_gives_are_the_codes() -> None:
    text = " ".join(PAYMENTS_MD.read_text(encoding="utf-8").split())
    assert coinskro.DEFAULT_RETRY_SCHEDULE_MIN == (1, 5, 30, 120, 1440) and "`[1, 5, 30, 120, 1440]`" in text
    assert DEFAULT_GRACE_S == 24 * 3600 and "24 hours by default" in text
    assert (BLIND_AFTER_POLLS, BLIND_AFTER_MIN_S) == (3, 5.0) and "three poll intervals, at least 5 s" in text
    assert NO_MEMPOOL_MARGIN_S == 60 and "up to a minute earlier" in text
    assert SWEEP_EVERY_S == 5 and "Expiry is checked every 5 s" in text
