"""docs/callbacks.md against the real thing: its examples, its verification programs, the receiver tool.

One real set-up per module: a real anvil and a real bcoin regtest node, the real daemon process paying
attention to both, and the real Receiver capturing what the daemon sends (the exact body bytes and the
headers): BTC, ETH, USDT and USDC deposits, not_confirmed then confirmed, and cancelled ones (a Bitcoin
double-spend, an Ethereum transaction replaced in a reorg). Those requests are then replayed, byte for
byte, to the documented Python, Node, PHP and Go handlers (each a real server process) and to
`deposit-watcher receiver`; every one must accept them and reject a tampered body, another secret, a
missing signature and a wrong key. The doc's code blocks must be the example files themselves, its
example bodies must have the shape of the real ones, and no tracked file may point outside the repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.daemon_process import DaemonProcess, free_port, write_config
from watcher.callbacks import KEY_HEADER, SIGNATURE_HEADER, sign

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "callbacks.md"
EXAMPLES = ROOT / "docs" / "examples"
INSTALL_HINT = "scripts/install-system-packages.sh (as root; `make test` runs it)"
# Non-ASCII in the secret and in a foreign_id: the programs must hash bytes, never re-encoded text.
KEY, SECRET = "shop-key", "docs-secret-\u00e9\u00df"
MIN_CONF = 2
DECIMALS = {"BTC": 8, "ETH": 18, "USDT": 6, "USDC": 6}


@dataclass(frozen=True, slots=True)
class Callback:
    """One request exactly as the daemon sent it."""

    raw: bytes
    key: str
    signature: str

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed


# ------------------------------------------------------------------------- real callbacks, once


@pytest.fixture(scope="module")
def callbacks(tmp_path_factory: pytest.TempPathFactory) -> list[Callback]:
    """Every callback a real daemon delivered for BTC, ETH, USDT and USDC payments on real nodes."""
    tmp = tmp_path_factory.mktemp("callback-docs")
    with AnvilNode() as anvil, BcoinNode() as bcoin:
        btc.fund(bcoin)
        return asyncio.run(_capture(anvil, bcoin, tmp))


async def _capture(anvil: AnvilNode, bcoin: BcoinNode, tmp: Path) -> list[Callback]:
    url = anvil.url
    acct = evm.accounts(url)
    usdt = evm.deploy_token(url, "Tether USD", "USDT", 6)
    usdc = evm.deploy_token(url, "USD Coin", "USDC", 6)
    for token in (usdt, usdc):
        evm.mint(url, token, acct[0], 10**15)
    evm.set_automine(url, False)  # confirmations are counted by the blocks mined below
    btc_kept, btc_spent = btc.make_address("p2wpkh").address, btc.make_address("p2pkh").address
    # The payment to be double-spent spends a coin of the test's own key, not the node wallet's: the
    # wallet would go on spending the change of its evicted transaction, which never confirms.
    key, coin = btc.funded_key_utxo(bcoin, 2_000_000 + btc.DEFAULT_FEE)
    facts = {"url": url, "a": acct[1], "b": acct[2], "usdt": usdt, "usdc": usdc, "btc_kept": btc_kept,
             "btc_spent": btc_spent, "evm_start": evm.head_height(url) + 1,
             "btc_start": btc.height(bcoin) + 1, "key": key, "coin": coin}  # fmt: skip
    async with Receiver(key=KEY, secret=SECRET) as rx:
        status_port = free_port()
        config = _config(facts, bcoin, rx.url, status_port, tmp)
        daemon = DaemonProcess(write_config(tmp / "watcher.yaml", config), status_port, tmp / "daemon.log")
        daemon.start()
        try:
            await daemon.wait_live()
            await _pay(rx, url, bcoin, facts, acct)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\ndaemon log:\n{daemon.log()}") from None
        finally:
            code = daemon.stop()
        assert code == 0, daemon.log()
        assert all(r.accepted for r in rx.requests), rx.summary()
        return [Callback(r.raw, r.key_header or "", r.signature_header or "") for r in rx.delivered]


async def _pay(rx: Receiver, url: str, bcoin: BcoinNode, facts: dict[str, Any], acct: list[str]) -> None:
    # A Bitcoin payment double-spent while in the mempool: not_confirmed at 0, then cancelled.
    payment = btc.build_payment(facts["coin"], facts["key"], [(btc.script_of(facts["btc_spent"]), 2_000_000)])
    spent = btc.send_raw(bcoin, payment)
    await _wait(rx, "not_confirmed", 1)
    btc.double_spend_reorg(bcoin, spent, key=facts["key"])
    await _wait(rx, "cancelled", 1)
    btc.pay(bcoin, facts["btc_kept"], 1_500_000)
    evm.send_eth(url, acct[0], facts["a"], 1_500_000_000_000_000_001)
    evm.token_transfer(url, facts["usdt"], acct[0], facts["a"], 12_345_678)
    evm.token_transfer(url, facts["usdc"], acct[0], facts["b"], 250_000_001)
    evm.mine(url, 1)
    await _wait(rx, "not_confirmed", 5)
    # An Ethereum payment in a block of its own, then replaced (same sender and nonce) in a reorg.
    replaced = evm.send_eth(url, acct[4], facts["b"], 10**16)
    evm.mine(url, 1)
    await _wait(rx, "not_confirmed", 6)
    evm.reorg_replace(url, 1, replaced)
    evm.mine(url, MIN_CONF)
    btc.mine(bcoin, MIN_CONF)
    await _wait(rx, "confirmed", 4)
    await _wait(rx, "cancelled", 2)


async def _wait(rx: Receiver, status: str, count: int) -> None:
    def enough(r: Receiver) -> bool:
        return sum(1 for x in r.delivered if x.body.get("status") == status) >= count

    await rx.wait_for(enough, timeout_s=40)


def _config(
    facts: dict[str, Any], bcoin: BcoinNode, receiver_url: str, status_port: int, tmp: Path
) -> dict[str, Any]:
    return {
        "network": "regtest",
        "database": str(tmp / "watcher.sqlite3"),
        "status": {"listen": f"127.0.0.1:{status_port}"},
        "log": {"format": "json", "level": "info"},
        "merchant": {"callback_url": receiver_url, "key": KEY, "secret": SECRET, "timeout_s": 2,
                     "retry_schedule_min": [0.005, 0.01, 0.02]},
        "chains": {
            "ethereum": {
                "adapter": "evm", "rpc_url": facts["url"], "chain_id": 31337, "poll_interval_s": 0.2,
                "start_height": facts["evm_start"], "unconfirmed_expiry_s": 600,
                "currencies": {
                    "ETH": {"min_confirmations": MIN_CONF},
                    "USDT": {"contract": facts["usdt"], "decimals": 6, "min_confirmations": MIN_CONF},
                    "USDC": {"contract": facts["usdc"], "decimals": 6, "min_confirmations": MIN_CONF},
                },
            },
            "bitcoin": {
                "adapter": "bitcoin-core", "rpc_url": bcoin.rpc_url, "rpc_user": bcoin.rpc_user,
                "rpc_password": bcoin.rpc_password, "poll_interval_s": 0.2, "timeout_s": 5,
                "start_height": facts["btc_start"], "unconfirmed_expiry_s": 600,
                "currencies": {"BTC": {"min_confirmations": MIN_CONF}},
            },
        },
        "addresses": [
            {"currency": "ETH", "address": facts["a"], "foreign_id": "customer-2048"},
            {"currency": "USDT", "address": facts["a"], "foreign_id": "customer-2048"},
            {"currency": "ETH", "address": facts["b"], "foreign_id": "kunde-m\u00fcller"},
            {"currency": "USDC", "address": facts["b"], "foreign_id": "kunde-m\u00fcller"},
            {"currency": "BTC", "address": facts["btc_kept"], "foreign_id": "customer-2048"},
            {"currency": "BTC", "address": facts["btc_spent"], "foreign_id": "customer-7"},
        ],
    }  # fmt: skip


def _signed(raw: bytes, secret: str = SECRET) -> str:
    """An HMAC-SHA512 computed here, independently of watcher.callbacks."""
    return hmac.new(secret.encode("utf-8"), raw, hashlib.sha512).hexdigest()


def test_real_callbacks_cover_every_currency_and_status(callbacks: list[Callback]) -> None:
    seen = {(c.body["currency_received"]["currency"], c.body["status"]) for c in callbacks}
    assert seen == {(cur, st) for cur in DECIMALS for st in ("not_confirmed", "confirmed")} | {
        ("BTC", "cancelled"),
        ("ETH", "cancelled"),
    }
    amounts = {c.body["currency_received"]["amount"] for c in callbacks}
    assert {"0.01500000", "0.02000000", "1.500000000000000001", "12.345678", "250.000001"} <= amounts
    for c in callbacks:
        assert c.key == KEY and hmac.compare_digest(c.signature, _signed(c.raw))
    by_id: dict[int, list[str]] = {}
    for c in callbacks:
        by_id.setdefault(c.body["id"], []).append(c.body["status"])
    assert sorted(by_id.values()) == sorted(
        [["not_confirmed", "confirmed"]] * 4 + [["not_confirmed", "cancelled"]] * 2
    )


# ------------------------------------------------------------------- the documented programs


@dataclass(frozen=True, slots=True)
class Program:
    file: str
    fence: str  # the code block's language in docs/callbacks.md
    tool: str  # the executable it needs


PROGRAMS = (
    Program("verify.py", "python", "python3"),
    Program("verify.js", "javascript", "node"),
    Program("verify.php", "php", "php"),
    Program("verify.go", "go", "go"),
)


def _require(tool: str) -> str:
    """The tool's path; without it the test fails in CI (env CI set) and is skipped elsewhere."""
    if tool == "python3":
        return sys.executable
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed: run {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _command(program: Program, port: int, build_dir: Path) -> list[str]:
    tool = _require(program.tool)
    source = str(EXAMPLES / program.file)
    if program.tool == "php":
        return [tool, "-S", f"127.0.0.1:{port}", source]
    if program.tool == "go":
        binary = build_dir / "verify-go"
        # Offline and self-contained: only the standard library, caches under the test's directory.
        env = {**os.environ, "GOCACHE": str(build_dir / "gocache"), "GOPATH": str(build_dir / "gopath"),
               "GOPROXY": "off", "GOFLAGS": "", "GOENV": "off", "GO111MODULE": ""}  # fmt: skip
        built = subprocess.run(
            [tool, "build", "-o", str(binary), source], env=env, capture_output=True, text=True, timeout=180
        )
        assert built.returncode == 0, f"go build {program.file}:\n{built.stderr}"
        return [str(binary)]
    return [tool, source]


@contextlib.contextmanager
def serving(program: Program, tmp: Path, secret: str = SECRET) -> Iterator[tuple[int, Path]]:
    """The example program as a real server on 127.0.0.1: (port, file of its output)."""
    port = free_port()
    command = _command(program, port, tmp)
    output = tmp / f"{program.file}.out"
    env = {**os.environ, "CALLBACK_KEY": KEY, "CALLBACK_SECRET": secret, "PORT": str(port)}
    with open(output, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        _wait_listening(proc, port, output)
        yield port, output
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, output: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{output.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.args} did not listen on {port} within {timeout_s} s:\n{output.read_text()}")


def post(port: int, raw: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    """POST the exact bytes with these headers (and Content-Type); (status, answer text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/callbacks", body=raw, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    finally:
        conn.close()


def _as_sent(c: Callback) -> dict[str, str]:
    return {KEY_HEADER: c.key, SIGNATURE_HEADER: c.signature}


def _verified_lines(output: Path) -> list[str]:
    return [line for line in output.read_text("utf-8").splitlines() if "verified " in line]


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.fence for p in PROGRAMS])
def test_program_accepts_every_real_callback(
    program: Program, callbacks: list[Callback], tmp_path: Path
) -> None:
    with serving(program, tmp_path) as (port, output):
        for c in callbacks:
            assert post(port, c.raw, _as_sent(c)) == (200, "OK"), c.body
    lines = _verified_lines(output)
    assert len(lines) == len(callbacks), output.read_text()
    for line, c in zip(lines, callbacks, strict=True):
        received = c.body["currency_received"]
        expected = f"verified {c.body['id']} {c.body['status']} {received['currency']} {received['amount']}"
        assert line.endswith(expected), (line, expected)


def _forgeries(c: Callback) -> dict[str, tuple[bytes, dict[str, str]]]:
    amount = c.body["currency_received"]["amount"].encode()
    more = b"9" + amount
    sent = _as_sent(c)
    without_signature = {KEY_HEADER: c.key}
    return {
        "amount changed": (c.raw.replace(amount, more), sent),
        "one byte added": (c.raw + b" ", sent),
        "another secret": (c.raw, {KEY_HEADER: c.key, SIGNATURE_HEADER: _signed(c.raw, "another-secret")}),
        "no signature header": (c.raw, without_signature),
        "empty signature": (c.raw, {**without_signature, SIGNATURE_HEADER: ""}),
        "half a signature": (c.raw, {**without_signature, SIGNATURE_HEADER: c.signature[:64]}),
        "wrong key": (c.raw, {**sent, KEY_HEADER: "other-key"}),
        "no key header": (c.raw, {SIGNATURE_HEADER: c.signature}),
    }


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.fence for p in PROGRAMS])
def test_program_rejects_forged_callbacks(
    program: Program, callbacks: list[Callback], tmp_path: Path
) -> None:
    genuine = next(c for c in callbacks if c.body["status"] == "confirmed")
    with serving(program, tmp_path) as (port, output):
        for what, (raw, headers) in _forgeries(genuine).items():
            assert post(port, raw, headers) == (403, "invalid signature"), what
        assert post(port, genuine.raw, _as_sent(genuine)) == (200, "OK")  # still serving
    assert len(_verified_lines(output)) == 1, output.read_text()


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.fence for p in PROGRAMS])
def test_doc_shows_each_program_verbatim(program: Program) -> None:
    text = (EXAMPLES / program.file).read_text("utf-8")
    assert f"```{program.fence}\n{text}```\n" in DOC.read_text("utf-8"), (
        f"docs/callbacks.md: the {program.fence} block is not docs/examples/{program.file}; paste the file"
    )


# ------------------------------------------------------------------------- the doc's examples


def _doc_bodies() -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text("utf-8"), flags=re.DOTALL)
    return [b for b in map(json.loads, blocks) if isinstance(b, dict) and b.get("type") == "deposit"]


def _shape(value: Any) -> Any:
    """Keys in order and value types, recursively: what a handler's parser depends on."""
    if isinstance(value, dict):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_doc_examples_have_the_shape_of_real_callbacks(callbacks: list[Callback]) -> None:
    documented = _doc_bodies()
    kinds = {(b["currency_received"]["currency"], b["status"]) for b in documented}
    assert {cur for cur, _ in kinds} == set(DECIMALS) and {st for _, st in kinds} == {
        "not_confirmed", "confirmed", "cancelled"
    }, kinds  # fmt: skip
    for body in documented:
        currency, status = body["currency_received"]["currency"], body["status"]
        real = [
            c.body
            for c in callbacks
            if (c.body["currency_received"]["currency"], c.body["status"]) == (currency, status)
        ]
        assert real, f"docs/callbacks.md shows a {currency} {status} callback the daemon never sent"
        assert _shape(body) in [_shape(r) for r in real], f"docs/callbacks.md: {currency} {status} differs"
        pattern = rf"\d+\.\d{{{DECIMALS[currency]}}}"
        received = body["currency_received"]
        amounts = [body["currency_sent"]["amount"], received["amount"], received["amount_minus_fee"],
                   body["transactions"][0]["amount"]]  # fmt: skip
        for amount in amounts:
            assert re.fullmatch(pattern, amount), f"{currency} amount {amount!r} in docs/callbacks.md"


def test_doc_signature_example_is_right() -> None:
    doc = DOC.read_text("utf-8")
    secret = re.search(r"the secret\s+`([^`]+)`", doc)
    body = re.search(r"```text\n(\{.*?\})\n```", doc)
    signature = re.search(r"```text\n([0-9a-f]{128})\n```", doc)
    assert secret and body and signature, "docs/callbacks.md: the worked signature example is missing"
    assert sign(body.group(1).encode(), secret.group(1)) == signature.group(1)
    assert _signed(body.group(1).encode(), secret.group(1)) == signature.group(1)


# ------------------------------------------------------------------ deposit-watcher receiver


def test_receiver_command_verifies_real_callbacks(callbacks: list[Callback], tmp_path: Path) -> None:
    port = free_port()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")  # trimmed, as merchant.secret_file is
    output = tmp_path / "receiver.out"
    command = [sys.executable, "-m", "watcher", "receiver", "--listen", f"127.0.0.1:{port}", "--key", KEY,
               "--secret-file", str(secret_file)]  # fmt: skip
    with open(output, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        _wait_listening(proc, port, output)
        for c in callbacks:
            assert post(port, c.raw, _as_sent(c))[0] == 200
        forged = _forgeries(callbacks[0])
        for what in ("amount changed", "another secret", "no signature header", "wrong key", "no key header"):
            assert post(port, *forged[what])[0] == 403, what
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
    text = output.read_text("utf-8")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].startswith(f"listening on http://127.0.0.1:{port}/callbacks"), text
    verified = [line for line in lines if line.startswith("verified ")]
    assert len(verified) == len(callbacks), text
    for line, c in zip(verified, callbacks, strict=True):
        assert line.split()[1] == c.body["status"] and line.endswith(f"id={c.body['id']}"), line
    rejected = [line for line in lines if line.startswith("REJECTED 403 ")]
    assert [line.split("[", 1)[1].split("]", 1)[0] for line in rejected] == [
        "bad signature: another secret, or the body changed on the way",
        "bad signature: another secret, or the body changed on the way",
        f"no {SIGNATURE_HEADER} header",
        f"{KEY_HEADER} 'other-key' is not the expected key",
        f"no {KEY_HEADER} header",
    ], text
    assert SECRET not in text


def test_receiver_command_refuses_bad_arguments(tmp_path: Path) -> None:
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.write_text("\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {
            ("--listen", "8390", "--secret", "s"): "--listen '8390': expected HOST:PORT",
            ("--secret-file", str(missing)): f"--secret-file {missing}: cannot read it",
            ("--secret-file", str(empty)): f"--secret-file {empty}: the file is empty",
            ("--secret", ""): "--secret: the secret is empty",
            ("--listen", f"127.0.0.1:{port}", "--secret", "s"): f"cannot listen on 127.0.0.1:{port}",
        }
        for args, message in cases.items():
            done = subprocess.run(
                [sys.executable, "-m", "watcher", "receiver", "--key", KEY, *args],
                capture_output=True, text=True, timeout=30, cwd=ROOT,
            )  # fmt: skip
            assert (done.returncode, done.stdout) == (1, ""), (args, done)
            assert done.stderr.startswith(f"error: {message}"), (args, done.stderr)


# ------------------------------------------------------------------ the repository stands alone

# Built from pieces so that this file does not match itself.
OUTSIDE = re.compile(
    "|".join([r"\.\./shared", "/wor" + "k/", "shared/" + "reference", r"/home/\w", r"/Users/\w"])
)


def test_no_tracked_file_points_outside_the_repository() -> None:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    hits = []
    for name in filter(None, listed.decode().split("\0")):
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree, not yet committed
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue  # binary
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:140]}")
    assert not hits, "references outside the repository:\n" + "\n".join(hits)
