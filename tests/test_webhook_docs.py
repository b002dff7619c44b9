"""docs/webhooks.md against the real thing: its verification programs, its examples and its facts.

Each documented program (Python, Node, PHP, Go: docs/examples/webhook_verify.*) runs as a real server
process, one per program for the module, and gets real webhook bodies built by watcher.coinskro (the
bytes the daemon stores and sends) signed by watcher.coinskro.sign: ETH with 18 decimals, BTC down to
one satoshi, USDT with 6, a meta_data that itself mentions an amount, non-ASCII text and secret. Each
must answer 200 with the amount's exact text and reject a tampered body, another secret and a missing
or wrong signature with 401. The doc's code blocks must be the files themselves, its worked signature
example must be right, and its payload, events and retry schedule must be the code's.
"""

from __future__ import annotations

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
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from devnet.receiver import Receiver
from tests.daemon_process import free_port
from watcher import coinskro
from watcher.callbacks import format_amount
from watcher.config import PaymentsConfig, load_config
from watcher.model import PaymentStatus
from watcher.receiver import print_callback

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "webhooks.md"
EXAMPLES = ROOT / "docs" / "examples"
INSTALL_HINT = "scripts/install-system-packages.sh (as root; `make test` runs it)"
# Non-ASCII in the secret and in the body: the programs must hash bytes, never re-encoded text.
SECRET = "webhook-secret-\u00e9\u00df"
INTEGRATION = "123e4567-e89b-12d3-a456-426614174000"
WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class Webhook:
    raw: bytes
    amount: str  # the amount's exact text in the body

    @property
    def data(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.raw)["data"]
        return data

    @property
    def event(self) -> str:
        return str(json.loads(self.raw)["event"])


def webhook(
    event: str, reference: str, currency: str, amount: int, decimals: int, **extra: str | None
) -> Webhook:
    status = PaymentStatus(event.removeprefix("payment_"))
    fields: dict[str, str | None] = {"customer_email": None, "customer_reference": None, "meta_data": None}
    fields.update(extra)
    raw = coinskro.build_body(
        event=event, at=1_770_374_100, payment_reference=reference, integration_id=INTEGRATION,
        amount=amount, decimals=decimals, currency=currency, status=status, **fields,
    )  # fmt: skip
    return Webhook(raw, format_amount(amount, decimals))


WEBHOOKS = [
    webhook("payment_completed", "PAY_eth18", "ETH", 10**18 + 1, 18, customer_email="kunde@example.de",
            customer_reference="kunde-m\u00fcller", meta_data='{"order_id": "123", "amount": 99.5}'),
    webhook("payment_completed", "PAY_ethbig", "ETH", 123_456_789 * 10**18 + 123_456_789_012_345_678, 18),
    webhook("payment_linked", "PAY_btc", "BTC", 150_000, 8, customer_reference="CUST_12345"),
    webhook("payment_abandoned", "PAY_sat", "BTC", 1, 8, meta_data="\u2603 order 7"),
    webhook("payment_canceled", "PAY_usdt", "USDT", 12_345_678, 6, customer_email="a@b.example"),
]  # fmt: skip


def test_the_bodies_carry_the_amounts_as_exact_json_numbers() -> None:
    """What the programs are given: amounts a float cannot hold, written as JSON numbers."""
    texts = [w.amount for w in WEBHOOKS]
    assert texts == ["1.000000000000000001", "123456789.123456789012345678", "0.00150000", "0.00000001",
                     "12.345678"]  # fmt: skip
    for w in WEBHOOKS:
        assert f'"amount":{w.amount},'.encode() in w.raw
        assert json.loads(w.raw, parse_float=Decimal)["data"]["amount"] == Decimal(w.amount)
    assert float(WEBHOOKS[0].amount) == 1.0  # what a float-based handler would have read


def hmac_sha256(raw: bytes, secret: str = SECRET) -> str:
    """Computed here, independently of watcher.coinskro."""
    return hmac.new(secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()


# ------------------------------------------------------------------- the documented programs


@dataclass(frozen=True, slots=True)
class Program:
    file: str
    fence: str  # the code block's language in docs/webhooks.md
    tool: str  # the executable it needs


PROGRAMS = (
    Program("webhook_verify.py", "python", "python3"),
    Program("webhook_verify.js", "javascript", "node"),
    Program("webhook_verify.php", "php", "php"),
    Program("webhook_verify.go", "go", "go"),
)


@dataclass(frozen=True, slots=True)
class Server:
    program: Program
    port: int
    output: Path

    def verified_lines(self) -> list[str]:
        return [line for line in self.output.read_text("utf-8").splitlines() if "verified " in line]


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
        # Built once per run (`go run` compiles at every start); offline, caches under the test's directory.
        binary = build_dir / "webhook-verify-go"
        env = {**os.environ, "GOCACHE": str(build_dir / "gocache"), "GOPATH": str(build_dir / "gopath"),
               "GOPROXY": "off", "GOFLAGS": "", "GOENV": "off", "GO111MODULE": ""}  # fmt: skip
        built = subprocess.run(
            [tool, "build", "-o", str(binary), source], env=env, capture_output=True, text=True, timeout=180
        )
        assert built.returncode == 0, f"go build {program.file}:\n{built.stderr}"
        return [str(binary)]
    return [tool, source]


@pytest.fixture(scope="module", params=PROGRAMS, ids=[p.fence for p in PROGRAMS])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One documented program as a real server on 127.0.0.1 for the whole module."""
    program: Program = request.param
    tmp = tmp_path_factory.mktemp(program.fence)
    port = free_port()
    command = _command(program, port, tmp)
    output = tmp / f"{program.file}.out"
    env = {**os.environ, "WEBHOOK_SECRET": SECRET, "PORT": str(port)}
    with open(output, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        _wait_listening(proc, port, output)
        yield Server(program, port, output)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, output: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{output.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.args} did not listen on {port} within {WAIT_S} s:\n{output.read_text()}")


def post(port: int, raw: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    """POST the exact bytes with these headers (and Content-Type); (status, answer text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.request(
            "POST", "/webhooks/coinskro", body=raw, headers={"Content-Type": "application/json", **headers}
        )
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    finally:
        conn.close()


def signed(w: Webhook) -> dict[str, str]:
    """The headers the daemon sends with this body (watcher.coinskro.headers)."""
    return coinskro.headers(w.raw, SECRET)


def _new_lines(server: Server, before: int) -> list[str]:
    """The program's verified lines after the first `before`; its output may lag its answer a moment."""
    deadline = time.monotonic() + WAIT_S
    lines = server.verified_lines()[before:]
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = server.verified_lines()[before:]
    return lines


def test_program_reports_each_exact_amount(server: Server) -> None:
    before = len(server.verified_lines())
    for w in WEBHOOKS:
        assert post(server.port, w.raw, signed(w)) == (200, w.amount), w.raw
    deadline = time.monotonic() + WAIT_S
    while len(server.verified_lines()) < before + len(WEBHOOKS) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = server.verified_lines()[before:]
    assert len(lines) == len(WEBHOOKS), server.output.read_text()
    for line, w in zip(lines, WEBHOOKS, strict=True):
        expected = f"verified {w.event} {w.data['payment_reference']} {w.data['currency']} {w.amount}"
        assert line.endswith(expected), (line, expected)


def _forgeries(w: Webhook) -> dict[str, tuple[bytes, dict[str, str]]]:
    amount = w.amount.encode()
    sent = signed(w)
    return {
        "amount changed": (w.raw.replace(b":" + amount, b":9" + amount), sent),
        "one byte added": (w.raw + b" ", sent),
        "event changed": (w.raw.replace(b"payment_completed", b"payment_canceled", 1), sent),
        "another secret": (w.raw, {coinskro.SIGNATURE_HEADER: hmac_sha256(w.raw, "another-secret")}),
        "HMAC-SHA512 (the coinspaid signature)": (
            w.raw, {coinskro.SIGNATURE_HEADER: hmac.new(SECRET.encode(), w.raw, hashlib.sha512).hexdigest()}
        ),
        "no signature header": (w.raw, {}),
        "empty signature": (w.raw, {coinskro.SIGNATURE_HEADER: ""}),
        "half a signature": (w.raw, {coinskro.SIGNATURE_HEADER: sent[coinskro.SIGNATURE_HEADER][:32]}),
    }  # fmt: skip


def test_program_rejects_forged_webhooks(server: Server) -> None:
    genuine = WEBHOOKS[0]
    assert signed(genuine)[coinskro.SIGNATURE_HEADER] == hmac_sha256(genuine.raw)
    before = len(server.verified_lines())
    for what, (raw, headers) in _forgeries(genuine).items():
        assert post(server.port, raw, headers) == (401, "invalid signature"), what
    assert post(server.port, genuine.raw, signed(genuine)) == (200, genuine.amount)  # still serving
    assert len(_new_lines(server, before)) == 1, server.output.read_text()


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.fence for p in PROGRAMS])
def test_doc_shows_each_program_verbatim(program: Program) -> None:
    text = (EXAMPLES / program.file).read_text("utf-8")
    assert f"```{program.fence}\n{text}```\n" in DOC.read_text("utf-8"), (
        f"docs/webhooks.md: the {program.fence} block is not docs/examples/{program.file}; paste the file"
    )


# ------------------------------------------------------------------------- the doc's examples


def test_doc_signature_example_is_right() -> None:
    doc = DOC.read_text("utf-8")
    secret = re.search(r"the secret\s+`([^`]+)`", doc)
    body = re.search(r"```text\n(\{.*?\})\n```", doc)
    signature = re.search(r"```text\n([0-9a-f]{64})\n```", doc)
    assert secret and body and signature, "docs/webhooks.md: the worked signature example is missing"
    raw = body.group(1).encode()
    assert coinskro.sign(raw, secret.group(1)) == signature.group(1) == hmac_sha256(raw, secret.group(1))
    # It is a body the daemon builds: the same bytes from its fields.
    data = json.loads(raw, parse_float=Decimal)["data"]
    decimals = -Decimal(data["amount"]).as_tuple().exponent
    assert isinstance(decimals, int)
    rebuilt = coinskro.build_body(
        event=json.loads(raw)["event"], at=1_770_374_100, payment_reference=data["payment_reference"],
        integration_id=data["integration_id"], amount=int(data["amount"].scaleb(decimals)),
        decimals=decimals, currency=data["currency"], status=PaymentStatus(data["status"]),
        customer_email=data["customer_email"], customer_reference=data["customer_reference"],
        meta_data=data["meta_data"],
    )  # fmt: skip
    assert rebuilt == raw


def test_doc_payload_example_has_the_keys_and_types_the_daemon_sends() -> None:
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text("utf-8"), flags=re.DOTALL)
    [example] = [json.loads(b, parse_float=Decimal) for b in blocks if '"payment_reference"' in b]
    real = json.loads(WEBHOOKS[0].raw, parse_float=Decimal)
    assert list(example) == list(real) and list(example["data"]) == list(real["data"])
    assert isinstance(example["data"]["amount"], Decimal) and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", example["timestamp"]
    )
    assert example["event"] in coinskro.EVENTS and example["event"] == f"payment_{example['data']['status']}"


def test_doc_names_every_event_and_the_retry_schedule() -> None:
    doc = " ".join(DOC.read_text("utf-8").split())  # lines wrapped anywhere
    for event in coinskro.EVENTS:
        assert f"`{event}`" in doc, event
    schedule = ", ".join(f"{m:g}" for m in coinskro.DEFAULT_RETRY_SCHEDULE_MIN)
    assert f"`retry_schedule_min: [{schedule}]`" in doc
    assert "1 minute, 5 minutes, 30 minutes, 2 hours, 24 hours" in doc
    assert coinskro.SIGNATURE_HEADER in doc and "HMAC-SHA256" in doc


def test_doc_setup_example_is_a_valid_config_of_the_defaults(tmp_path: Path) -> None:
    [block] = re.findall(r"```yaml\n(.*?)```", DOC.read_text("utf-8"), flags=re.DOTALL)
    (tmp_path / "webhook-secret").write_text("s\n")
    chains = (
        "chains:\n  bitcoin: {adapter: bitcoin-core, rpc_url: 'http://127.0.0.1:8332', currencies: {BTC: {}}}"
    )
    text = "network: mainnet\ndatabase: w.sqlite3\n" + block + chains + "\n"
    (tmp_path / "config.yaml").write_text(text)
    [shop] = load_config(str(tmp_path / "config.yaml"), {"CREDENTIALS_DIRECTORY": str(tmp_path)}).integrations
    assert (shop.callback.format, shop.callback.key, shop.callback.secret) == ("coinskro", "", "s")
    # What the doc writes out is what the daemon does without it.
    assert shop.callback.events == coinskro.DEFAULT_EVENTS
    assert shop.callback.retry_schedule_min == coinskro.DEFAULT_RETRY_SCHEDULE_MIN
    assert shop.payments == PaymentsConfig()


async def test_doc_receiver_example_is_what_the_receiver_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The "Trying your set-up" output: these webhooks, sent to the receiver, print exactly those lines."""
    [block] = re.findall(r"```text\n(listening on .*?)```", DOC.read_text("utf-8"), flags=re.DOTALL)
    listening, *lines = block.splitlines()
    sent = [  # (event, reference, currency, amount, decimals, customer_reference, secret)
        ("payment_linked", "PAY_8fQk2sLx", "BTC", 150_000, 8, "order-1017", SECRET),
        ("payment_completed", "PAY_8fQk2sLx", "BTC", 150_000, 8, "order-1017", SECRET),
        ("payment_completed", "PAY_3vTz9aWm", "ETH", 10**18 + 1, 18, "order-1018", SECRET),
        ("payment_completed", "PAY_3vTz9aWm", "ETH", 10**18 + 1, 18, "order-1018", "old-secret"),
    ]
    async with Receiver(secret=SECRET, format="coinskro", on_request=print_callback) as rx:
        port = urlsplit(rx.url).port
        assert listening == f"listening on {rx.url} (callback_url, format coinskro); Ctrl-C stops".replace(
            f":{port}/", ":8390/"
        )
        async with aiohttp.ClientSession() as session:
            for event, reference, currency, amount, decimals, customer, secret in sent:
                w = webhook(event, reference, currency, amount, decimals, customer_reference=customer)
                async with session.post(rx.url, data=w.raw, headers=coinskro.headers(w.raw, secret)):
                    pass
    assert capsys.readouterr().out.splitlines() == lines
