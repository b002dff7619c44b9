"""The checkout page's pure parts (watcher/ui/checkout.py) and its templates, without a browser: what the
customer is told of each status, the return link, the QR code, and the escaping of every string a
merchant or a customer chose. tests/test_checkout_e2e.py drives the page itself in Chromium."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.browser import SCREENSHOTS
from watcher.model import Deposit, DepositStatus, Payment, PaymentStatus
from watcher.ui import checkout, is_public, pages

ROOT = Path(__file__).resolve().parent.parent
REF = "PAY_" + "B" * 32


def payment(status: PaymentStatus = PaymentStatus.PENDING, **changes: object) -> Payment:
    base = Payment(
        id=1, reference=REF, integration_id="i", chain="bitcoin", currency="BTC", address_id=7,
        address="bcrt1qexample", amount=150_000, received=0, status=status, customer_email=None,
        customer_reference="order 7/8", meta_data=None, created_at=1_000.0, expires_at=2_800.0, ended_at=None,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def deposit(confirmations: int, status: DepositStatus = DepositStatus.NOT_CONFIRMED) -> Deposit:
    return Deposit(
        id=1, chain="bitcoin", currency="BTC", address_id=7, address="bcrt1qexample", foreign_id=REF,
        txid="t", tx_index=0, amount=150_000, block_height=None, block_hash=None, confirmations=confirmations,
        status=status, error="", first_seen_at=1.0, updated_at=1.0,
    )  # fmt: skip


L = PaymentStatus.LINKED
CASES = [
    (PaymentStatus.PENDING, [], "waiting", "Waiting for your payment.", 0),
    (L, [deposit(0)], "seen", "Payment seen, waiting for it to be confirmed.", 0),
    (L, [deposit(1)], "confirming", "Confirming: 1 of 3.", 1),
    (L, [deposit(0), deposit(2)], "confirming", "Confirming: 2 of 3.", 2),
    # More than the minimum while the daemon has not written `completed` yet: never "4 of 3".
    (L, [deposit(4)], "confirming", "Confirming: 3 of 3.", 3),
    # A double-spent transaction no longer counts.
    (L, [deposit(2, DepositStatus.CANCELLED)], "seen", "Payment seen, waiting for it to be confirmed.", 0),
    (PaymentStatus.COMPLETED, [deposit(3, DepositStatus.CONFIRMED)], "completed",
     "Payment received. Thank you!", 0),
    (PaymentStatus.ABANDONED, [], "expired", "This payment expired.", 0),
    (PaymentStatus.CANCELED, [], "canceled", "This payment was canceled.", 0),
]  # fmt: skip


@pytest.mark.parametrize(("status", "deposits", "state", "label", "n"), CASES)
def test_progress(status: PaymentStatus, deposits: list[Deposit], state: str, label: str, n: int) -> None:
    now = checkout.progress(payment(status), deposits, 3)
    assert (now.state, now.label, now.confirmations, now.min_confirmations) == (state, label, n, 3)
    assert now.final == status.final


def test_the_return_link_is_filled_in_and_quoted() -> None:
    template = "https://shop.example/orders/{customer_reference}?paid={payment_reference}"
    assert checkout.return_link(template, payment()) == f"https://shop.example/orders/order%207%2F8?paid={REF}"
    assert checkout.return_link("https://shop.example/done", payment()) == "https://shop.example/done"
    assert checkout.return_link(None, payment()) is None
    # It names customer_reference and the payment has none: no link rather than a broken one.
    assert checkout.return_link(template, payment(customer_reference=None)) is None
    hostile = payment(customer_reference="x?next=https://evil.example/#")
    assert checkout.return_link(template, hostile) == (
        f"https://shop.example/orders/x%3Fnext%3Dhttps%3A%2F%2Fevil.example%2F%23?paid={REF}"
    )


def test_the_qr_code_is_an_svg_with_nothing_active() -> None:
    svg = checkout.qr_svg("bitcoin:bcrt1qexample?amount=0.0015").decode()
    assert svg.startswith("<svg") and 'xmlns="http://www.w3.org/2000/svg"' in svg
    assert "<script" not in svg and "href" not in svg and "style" not in svg


def test_templates_escape_every_string() -> None:
    hostile = '<script>alert(1)</script>"'
    p = payment(customer_reference=hostile, customer_email=hostile + "@x.example")
    state = {"state": "waiting", "label": hostile, "final": False, "expires_at_ms": 1, "server_time_ms": 1,
             "return_url": None}  # fmt: skip
    page = pages.render("checkout.html", payment=p, amount="0.0015", uri=hostile, state=state, poll_ms=2000)
    html = page.text
    assert html is not None and "<script>alert" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in html
    # The page's one script is a file of this origin: nothing inline for the CSP to allow.
    assert html.count("<script") == 1 and '<script src="/ui/static/checkout.js?v=' in html


def test_public_paths() -> None:
    assert is_public(f"/pay/{REF}") and is_public("/ui/static/ui.css")
    assert not is_public("/v1/payments") and not is_public("/ui/") and not is_public("/payments")


def test_static_files_are_served_from_the_package_and_the_css_loads_no_font_or_remote_asset() -> None:
    assert set(pages.STATIC) == {"checkout.js", "office.css", "ui.css", "records.js", "records.css"}
    for name, found in pages.STATIC.items():
        text = found.body.decode()
        assert "http://" not in text and "https://" not in text and "@import" not in text, name
        assert "@font-face" not in text and "url(" not in text, name


def test_the_screenshots_folder_is_gitignored() -> None:
    assert "/artifacts/" in (ROOT / ".gitignore").read_text().splitlines()
    assert SCREENSHOTS.parent == ROOT / "artifacts"
