"""The back office's overview (watcher/ui/office.py, charts.py and the store's office_* reads) on the
harness's real API listener and SQLite store: the callbacks' counts and the failing list per viewer (an
integration sees only its own), the deliveries per 10 minutes, the chains' rows from Health, escaping, and
the charts' geometry. tests/test_office_e2e_overview.py checks the page against a real daemon and nodes."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.test_api_document import SHOP_A, SHOP_B, ApiHarness, open_harness
from tests.test_office_auth import PASSWORD, Browser, browser
from watcher.config import UiConfig
from watcher.health import Health
from watcher.lag_history import LagHistory
from watcher.model import AttemptResult, DepositStatus, PaymentStatus
from watcher.operator_password import hash_password
from watcher.ui import charts
from watcher.ui.office import chain_rows, duration_text, section

HOSTILE = "<script>alert('name')</script>"


@pytest.fixture
async def harness(tmp_path: Path, store_location: str) -> AsyncIterator[ApiHarness]:
    # Both backends: the counts and buckets' SQL is translated for PostgreSQL (watcher/pg_dialect.py).
    async with open_harness(tmp_path, store_location) as h:
        h.reconfigure(ui=UiConfig(operator_password=hash_password(PASSWORD)))
        yield h


async def callback(
    harness: ApiHarness, shop: str, foreign_id: str, answers: list[int | None], retry: bool
) -> int:
    """A deposit of `shop` whose callback got `answers` (HTTP statuses; None: no answer); the last failure
    is retried later (`retry`) or given up. Its outbox id."""
    issued, _ = await harness.book.take(harness.integration(shop), "ETH", foreign_id)
    deposit = await harness.pay(issued, 10**15, (DepositStatus.CONFIRMED,))
    entry = (await harness.store.outbox_entries(deposit_id=deposit.id))[-1]
    for n, status in enumerate(answers):
        last = n == len(answers) - 1
        result = AttemptResult(entry.id, time.time(), 5.0, status, "" if status == 200 else "boom", "excerpt")
        await harness.store.record_attempts([(result, time.time() + 600 if retry or not last else None)])
    return entry.id


def stat(page: str, field: str) -> int:
    found = re.search(rf'<dd data-field="{field}">(\d+)</dd>', page)
    assert found is not None, field
    return int(found[1])


def failing_ids(page: str) -> set[int]:
    return {int(n) for n in re.findall(r'<tr data-outbox="(\d+)">', page)}


async def overview(b: Browser) -> str:
    answer = await b.get("/ui/")
    assert answer.status == 200, answer.text
    return answer.text


async def test_each_viewer_sees_its_own_callbacks_and_the_operator_all(harness: ApiHarness) -> None:
    a = harness.integration(SHOP_A)
    harness.reconfigure(integrations=(replace(a, name=HOSTILE), harness.integration(SHOP_B)))
    delivered_a = await callback(harness, SHOP_A, "a1", [500, 200], retry=False)
    retrying_a = await callback(harness, SHOP_A, "a2", [None], retry=True)
    failed_b = await callback(harness, SHOP_B, "b1", [503, 503], retry=False)
    pending_b = await callback(harness, SHOP_B, "b2", [], retry=True)  # never tried: not failing
    operator, shop_a, shop_b = browser(harness), browser(harness), browser(harness)
    await operator.sign_in(PASSWORD)
    await shop_a.sign_in(harness.keys[SHOP_A])
    await shop_b.sign_in(harness.keys[SHOP_B])

    page = await overview(operator)
    counts = await harness.store.outbox_counts()
    assert stat(page, "pending") == counts["pending"] == 2
    assert stat(page, "failed") == counts["failed"] == 1
    assert stat(page, "delivered") == counts["delivered"] == 1
    assert stat(page, "retrying") == 1
    assert failing_ids(page) == {retrying_a, failed_b}
    # The integration's name is text, escaped, in the operator's failing list.
    assert '<td data-label="Integration">&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;</td>' in page
    assert HOSTILE not in page and "<script" not in page
    assert re.search(r'id="delivered-total">1<', page) and re.search(r'id="failed-total">4<', page)

    page = await overview(shop_a)
    assert (stat(page, "pending"), stat(page, "failed"), stat(page, "delivered"), stat(page, "retrying")) == (
        1, 0, 1, 1,
    )  # fmt: skip
    assert failing_ids(page) == {retrying_a}
    assert re.search(r'id="delivered-total">1<', page) and re.search(r'id="failed-total">2<', page)
    assert '<span class="office-viewer" id="viewer">&lt;script&gt;alert(' in page and "<script" not in page

    page = await overview(shop_b)
    assert (stat(page, "pending"), stat(page, "failed"), stat(page, "delivered"), stat(page, "retrying")) == (
        1, 1, 0, 0,
    )  # fmt: skip
    assert failing_ids(page) == {failed_b}
    assert delivered_a not in failing_ids(page) and pending_b not in failing_ids(page)
    assert re.search(r'id="delivered-total">0<', page) and re.search(r'id="failed-total">2<', page)
    assert "Integration</th>" not in page  # an integration's view has no integration column


async def test_the_delivery_buckets_count_attempts_since_the_start(harness: ApiHarness) -> None:
    outbox_id = await callback(harness, SHOP_A, "x", [], retry=True)
    now = time.time()
    # Logged in time order, as the dispatcher logs them (the store finds the window's start by id).
    for at, status in ((now - 7 * 3600, 200), (now - 15 * 60, 502), (now, 500)):  # the first: too old
        await harness.store.record_attempts([(AttemptResult(outbox_id, at, 5.0, status, "", ""), now + 60)])
    since = int(now) - 3600
    buckets = await harness.store.office_delivery_buckets(None, since, 600)
    assert sum(ok for ok, _ in buckets.values()) == 0
    assert sum(bad for _, bad in buckets.values()) == 2  # the first answer (now) and the recent one
    assert buckets[int((now - 15 * 60 - since) // 600)] == (0, 1)
    assert await harness.store.office_delivery_buckets(SHOP_B, since, 600) == {}
    assert await harness.store.office_delivery_buckets(None, int(now) + 3600, 600) == {}


def test_chain_rows_follow_health(tmp_path: Path) -> None:
    from tests.test_config import MINIMAL, write
    from watcher.config import load_config

    config = load_config(write(tmp_path, MINIMAL.replace("http://127.0.0.1:8545", "http://u:pw@127.0.0.1:8545")),
                         {"DEPOSIT_WATCHER_SECRET": "s"})  # fmt: skip
    health = Health()
    now = 1_000_000.0
    (row,) = chain_rows(config, health, now)
    assert (row.state, row.node_height, row.lag) == ("starting", None, None)
    assert "pw" not in row.node and "127.0.0.1:8545" in row.node
    h = health.chain("ethereum")
    h.saw_head(120, "0xaa", now - 30)
    h.processed_height = 118
    (row,) = chain_rows(config, health, now)
    assert (row.state, row.node_height, row.processed_height, row.lag, row.reason) == (
        "following", 120, 118, 2, None,
    )  # fmt: skip
    assert duration_text(row.head_age_s) == "30 s"
    h.processed_height = 90  # lag 30 > max_lag_blocks 20
    (row,) = chain_rows(config, health, now)
    assert row.state == "behind" and row.reason == "lag 30 blocks exceeds 20"
    h.halted_reason = "reorg deeper than 256 blocks"
    (row,) = chain_rows(config, health, now)
    assert (row.state, row.reason) == ("halted", "reorg deeper than 256 blocks")


def test_sections() -> None:
    assert section("/ui/") == "overview"
    assert section("/ui/deposits") == section("/ui/deposits/12") == "deposits"
    assert section("/ui/payments/PAY_x") == "payments" and section("/ui/addresses") == "addresses"
    assert section("/ui/depositsx") == ""


def test_nice_max() -> None:
    assert [charts.nice_max(v) for v in (0, 1, 2, 3, 6, 11, 20, 21, 99, 101)] == [
        1,
        1,
        2,
        5,
        10,
        20,
        20,
        50,
        100,
        200,
    ]


def test_the_lag_chart_draws_a_line_per_chain_with_gaps() -> None:
    now, span = 10_000.0, 3600.0
    series = {
        "bitcoin": [(now - 4000, 9), (now - 3600, 0), (now - 1800, 4), (now - 1200, None), (now, 2)],
        "ethereum": [(now - 60, 1)],
    }
    chart = charts.lag_chart(series, now, span)
    assert chart.samples == 5  # the one before the span is left out
    btc, eth = chart.lines
    assert btc.name == "bitcoin" and btc.last == 2 and len(btc.segments) == 2  # a gap where not known
    f = chart.frame
    first = btc.segments[0].split()[0]
    assert first == f"{f.left:.1f},{f.bottom_y:.1f}"  # lag 0 at the span's start: bottom left
    assert btc.segments[1] == f"{f.left + f.plot_w:.1f},{f.top + f.plot_h * (1 - 2 / 5):.1f}"  # y max 5
    assert eth.color != btc.color
    assert [t.label for t in f.x_ticks] == ["-1 h", "now"]
    empty = charts.lag_chart({}, now, span)
    assert empty.lines == () and empty.samples == 0


def test_the_delivery_chart_stacks_failed_on_delivered() -> None:
    chart = charts.delivery_chart({0: (3, 1), 5: (0, 2)}, 0.0, 600, 6)
    assert (chart.delivered, chart.failed) == (3, 3)
    first, last = chart.bars
    f = chart.frame
    assert first.delivered_y + first.delivered_h == f.bottom_y
    assert first.failed_y + first.failed_h == first.delivered_y
    assert first.delivered_h == pytest.approx(3 * first.failed_h, abs=0.2)
    assert last.delivered_h == 0 and last.x > first.x
    assert first.title == "60 to 50 min ago: 3 delivered, 1 failed"


def test_the_lag_history_keeps_the_last_hours() -> None:
    health = Health()
    history = LagHistory(health, every_s=60, span_s=180)
    health.chain("bitcoin").saw_head(10, "h", 0.0)
    health.chain("bitcoin").processed_height = 7
    for minute in range(10):
        history.sample(minute * 60.0)
    (samples,) = history.series().values()
    assert samples == [(360.0, 3), (420.0, 3), (480.0, 3), (540.0, 3)]


async def test_a_failing_payment_webhook_links_to_the_payments_page(harness: ApiHarness) -> None:
    payment, _ = await harness.server.payments.create(
        harness.integration(SHOP_B), amount="0.01", currency="ETH", idempotency_key="order-1"
    )
    async with harness.store.transaction() as tx:
        outbox_id = await tx.queue_payment_webhook(payment.id, PaymentStatus.LINKED, b"{}", time.time())
    failure = AttemptResult(outbox_id, time.time(), 5.0, None, "connection refused", "")
    await harness.store.record_attempts([(failure, time.time() + 600)])
    (found,) = await harness.store.office_failing_callbacks(SHOP_B, 10)
    assert (found.payment_id, found.payment_reference, found.integration_id) == (
        payment.id,
        payment.reference,
        SHOP_B,
    )
    assert (found.last_http_status, found.last_error, found.state) == (None, "connection refused", "pending")
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_B])
    page = await overview(b)
    assert f'<a href="/ui/payments/{payment.reference}">payment {payment.id}</a>' in page
    assert "connection refused" in page
    assert await harness.store.office_failing_callbacks(SHOP_A, 10) == []
