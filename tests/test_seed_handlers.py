"""Coinskro's own webhook handlers, copied unchanged from its Webhooks documentation, receive the
daemon's webhooks behind the documented signature check.

Each handler (Flask, Express, PHP, Go: tests/seed_handlers/) runs as published, on port 3000, one at a
time, behind its front (tests/seed_handlers/fronts/: the check of docs/examples/webhook_verify.*). It is
given bodies built and signed by watcher.coinskro (the bytes the daemon stores and sends): two
`payment_completed` and a `payment_linked`, which the handlers ignore. Each must answer 200 and print the
line its own code prints for each `payment_completed`; a tampered body, another secret or no signature
must get 401 from the front and never reach the handler. The fronts' copies of the documented check
must be the documentation's lines.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import pytest

from tests.seed_servers import FRONTS, HANDLERS, ROOT, SEEDS, SeedServer, run_seed_handler
from watcher import coinskro
from watcher.model import PaymentStatus

SECRET = "seed-handler-secret-\u00e9"  # non-ASCII: the checks must hash bytes
INTEGRATION = "123e4567-e89b-12d3-a456-426614174000"


def webhook(event: str, reference: str, currency: str, amount: int, decimals: int) -> bytes:
    return coinskro.build_body(
        event=event, at=1_770_374_100, payment_reference=reference, integration_id=INTEGRATION,
        amount=amount, decimals=decimals, currency=currency, status=PaymentStatus(event[len("payment_"):]),
        customer_email="customer@example.com", customer_reference="CUST_12345",
        meta_data='{"order_id": "123"}',
    )  # fmt: skip


# Payments paid exactly: 0.00150000 BTC, 12.345678 USDT. Their payment_linked is not printed.
LINKED = webhook("payment_linked", "PAY_btc", "BTC", 150_000, 8)
COMPLETED = (
    webhook("payment_completed", "PAY_btc", "BTC", 150_000, 8),
    webhook("payment_completed", "PAY_usdt", "USDT", 12_345_678, 6),
)
# What each handler's own code prints for them. They read `amount` as a float (docs/webhooks.md tells
# receivers to read it as a decimal instead): Python, JavaScript and PHP print its shortest form, the Go
# handler formats it with "%.2f".
PRINTED_AMOUNTS = {
    "flask": ("0.0015", "12.345678"),
    "express": ("0.0015", "12.345678"),
    "php": ("0.0015", "12.345678"),
    "go": ("0.00", "12.35"),
}


@pytest.fixture(scope="module", params=HANDLERS, ids=[h.name for h in HANDLERS])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeedServer]:
    """One handler behind its check for the module's tests; pytest stops it before starting the next."""
    with run_seed_handler(request.param, SECRET, tmp_path_factory.mktemp(request.param.name)) as running:
        yield running


def post(url: str, raw: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    """POST the exact bytes with these headers (and Content-Type); (status, answer text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=raw, headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace").strip()
    finally:
        conn.close()


def signed(raw: bytes, secret: str = SECRET) -> dict[str, str]:
    """The headers the daemon sends with this body."""
    return coinskro.headers(raw, secret)


def received(answer: tuple[int, str]) -> bool:
    """The handlers' answer: 200 with {"received": true}."""
    status, text = answer
    return status == 200 and json.loads(text) == {"received": True}


def test_handler_prints_each_payment_completed(server: SeedServer) -> None:
    before = len(server.printed())
    for raw in (LINKED, *COMPLETED):
        answer = post(server.url, raw, signed(raw))
        assert received(answer), (answer, server.outputs())
    lines = server.wait_printed(before + len(COMPLETED))[before:]
    expected = [
        f"Payment {json.loads(raw)['data']['payment_reference']} completed for ${amount}"
        for raw, amount in zip(COMPLETED, PRINTED_AMOUNTS[server.handler.name], strict=True)
    ]
    assert lines == expected, server.outputs()


def _forgeries() -> dict[str, tuple[bytes, dict[str, str]]]:
    """Requests the check must refuse: payment_completed bodies for references never sent genuinely."""
    genuine = webhook("payment_completed", "PAY_forged", "BTC", 150_000, 8)
    linked = webhook("payment_linked", "PAY_forged", "BTC", 150_000, 8)
    return {
        "amount changed": (genuine.replace(b'"amount":0.00150000', b'"amount":9.00150000'), signed(genuine)),
        "payment_linked made payment_completed": (
            linked.replace(b'"payment_linked"', b'"payment_completed"').replace(b'"linked"', b'"completed"'),
            signed(linked),
        ),
        "another secret": (genuine, signed(genuine, "another-secret")),
        "no signature": (genuine, {}),
        "empty signature": (genuine, {coinskro.SIGNATURE_HEADER: ""}),
    }  # fmt: skip


def test_tampered_webhooks_are_refused_and_never_reach_the_handler(server: SeedServer) -> None:
    forgeries = _forgeries()
    for what, (raw, _) in forgeries.items():
        assert json.loads(raw)["event"] == "payment_completed", what  # the handler would print each
    before = len(server.printed())
    for what, (raw, headers) in forgeries.items():
        assert post(server.url, raw, headers) == (401, "invalid signature"), what
    # A genuine one after them: still serving, and its line is the only new one (output is in order).
    genuine = COMPLETED[0]
    assert received(post(server.url, genuine, signed(genuine)))
    lines = server.wait_printed(before + 1)[before:]
    assert lines == [f"Payment PAY_btc completed for ${PRINTED_AMOUNTS[server.handler.name][0]}"], (
        server.outputs()
    )
    assert "PAY_forged" not in server.output.read_text("utf-8", "replace")


# ------------------------------------------------------------- the fronts' copies of the documented check


def _lines_from(text: str, first: str) -> str:
    """The lines of `text` from the one starting with `first` through the next line that is "}"."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip("\n") == "}")
    return "".join(lines[start : end + 1])


# (front, documented program, the first line of each part of the check the front copies)
COPIED_CHECKS = (
    ("express_front.js", "webhook_verify.js", ("const SECRET = ", "function signatureOk(")),
    ("php_front.php", "webhook_verify.php", ("$secret = getenv(", "$rawBody = file_get_contents(")),
    ("go_front.go", "webhook_verify.go", ("func signatureOK(",)),
)


@pytest.mark.parametrize(("front", "documented", "firsts"), COPIED_CHECKS, ids=[c[0] for c in COPIED_CHECKS])
def test_front_copies_the_documented_check_verbatim(front: str, documented: str, firsts: tuple[str]) -> None:
    doc_text = (ROOT / "docs" / "examples" / documented).read_text("utf-8")
    front_text = (FRONTS / front).read_text("utf-8")
    for first in firsts:
        part = _lines_from(doc_text, first)
        assert part in front_text, f"{front}: not the lines of docs/examples/{documented}:\n{part}"


def test_flask_front_uses_the_documented_function() -> None:
    text = (FRONTS / "flask_front.py").read_text("utf-8")
    assert re.search(r'load\("webhook_verify", ROOT / "docs" / "examples" / "webhook_verify.py"\)', text)
    assert "documented.signature_ok(" in text and "hmac" not in text


# SHA-256 of each handler's code block as published (the file without its leading comment): an edit to a
# handler, even of whitespace, fails here. They were copied by program from the documentation's blocks.
PUBLISHED_SHA256 = {
    "flask_app.py": "d2bd4714f901a465d38645628b5b6c80aaeb69240a6d4150fd6ffc894f1b88d0",
    "express_app.js": "d4ed7d0c5a13119129e1c0426c4a93f36f891de2df2362bb5f6ec7e38e94d148",
    "handler.php": "7cb4e515712fdb8a674a342084990193367ced3a68c3d0c2a9ff72437fa02e14",
    "main.go": "1e2738a6e63797767bf7f76e81eb93af1becb1fe8b52f3c2be562818d476f09a",
}


@pytest.mark.parametrize("name", PUBLISHED_SHA256)
def test_handler_is_the_published_code_unchanged(name: str) -> None:
    """Only a leading comment is ours (none in PHP, where text before `<?php` would be output)."""
    code = (SEEDS / name).read_text("utf-8")
    comment = re.match(r"((#|//)[^\n]*\n)*\n", code)
    published = code[comment.end() if comment else 0 :]
    assert hashlib.sha256(published.encode("utf-8")).hexdigest() == PUBLISHED_SHA256[name], name
