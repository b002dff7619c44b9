"""The crash trial in CI, at a smaller count: a fixed seed, plus `TRIAL_SEED` from the environment if set.

The full count runs by hand: `python -m tests.trials.crash_trial --deposits 50 --kills 10 --seed N`.
Real anvil and bcoin nodes, the real daemon process (SIGKILLed and restarted), a faulty receiver; see
tests/trials/crash_trial.py. A failure message names the seed and the command that replays it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.trials.crash_trial import TrialOptions, run_trial
from tests.trials.invariants import Currency, Placement, SentTransfer, check
from watcher.receiver import Received
from watcher.store import Store

FIXED_SEED = 20_240_611
SEEDS = [FIXED_SEED, *([int(os.environ["TRIAL_SEED"])] if os.environ.get("TRIAL_SEED") else [])]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_crash_trial_loses_and_invents_nothing(seed: int, tmp_path: Path) -> None:
    result = await run_trial(
        TrialOptions(deposits=20, kills=4, seed=seed, workdir=tmp_path, final_wait_s=120.0)
    )
    print(result.figures())
    assert result.ok, result.failure_message()
    assert result.kills >= 4, result.figures()
    assert result.report.deposits >= 20 and result.report.due_confirmed > 0, result.figures()


# ------------------------------------------------------------------------ the checker catches violations
# The trial passing means something only if the checker fails when it should: each case below breaks one
# invariant in otherwise clean synthetic evidence and expects exactly that kind of violation.

SECRET = "s\u00e9cret"
USDT = Currency("ethereum", 6, 2)
PAID = SentTransfer("ethereum", "USDT", "0x" + "ab" * 32, 1, "0x" + "cd" * 20, "cust-\u00e9", 12_345_678)
PLACED = Placement(block_height=7, block_hash="0x" + "11" * 32, confirmations=3)


def _body(t: SentTransfer, deposit_id: int, status: str, confirmations: int, **change: Any) -> dict[str, Any]:
    amount = change.pop("amount", "12.345678")
    body: dict[str, Any] = {
        "id": deposit_id,
        "type": "deposit",
        "crypto_address": {"id": 5, "currency": t.currency, "address": t.address,
                           "foreign_id": t.foreign_id, "tag": None},
        "currency_sent": {"currency": t.currency, "amount": amount},
        "currency_received": {"currency": t.currency, "amount": amount, "amount_minus_fee": amount},
        "transactions": [{
            "id": deposit_id, "currency": t.currency, "transaction_type": "blockchain", "type": "deposit",
            "address": t.address, "tag": None, "amount": amount, "txid": change.pop("txid", t.txid),
            "confirmations": str(confirmations), "block_height": PLACED.block_height,
            "block_hash": PLACED.block_hash, "index": t.index, "network": "regtest", "chain": t.chain,
        }],
        "fees": [],
        "error": "",
        "status": status,
    }  # fmt: skip
    return body | change


def _received(body: dict[str, Any]) -> Received:
    raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return Received(body=json.loads(raw), raw=raw, status_code_answered=200, at=0.0)


def _sign(raw: bytes) -> str:
    return hmac.new(SECRET.encode(), raw, hashlib.sha512).hexdigest()


def _clean() -> list[dict[str, Any]]:
    return [_body(PAID, 9, "not_confirmed", 1), _body(PAID, 9, "confirmed", 2)]


CASES: dict[str, tuple[list[dict[str, Any]], Placement, str]] = {
    "clean": (_clean(), PLACED, ""),
    "missed": (_clean()[:1], PLACED, "missed"),
    "invented": ([*_clean(), _body(PAID, 10, "not_confirmed", 1, txid="0x" + "ee" * 32)], PLACED, "invented"),
    "order": ([*_clean(), _body(PAID, 9, "not_confirmed", 1)], PLACED, "not_confirmed after a final"),
    "amount": ([_clean()[0], _body(PAID, 9, "confirmed", 2, amount="12.345679")], PLACED, "amount"),
    "removed": (_clean(), Placement(), "not in the final chain"),
    "bytes": ([*_clean(), _body(PAID, 9, "confirmed", 3)], PLACED, "different bodies"),
    "two_ids": ([*_clean(), _body(PAID, 11, "confirmed", 2)], PLACED, "several ids"),
    "early": ([_clean()[0], _body(PAID, 9, "confirmed", 1)], PLACED, "confirmed with 1 < 2"),
    "both_final": ([*_clean(), _body(PAID, 9, "cancelled", 0, error="gone")], PLACED, "cancelled, but"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_checker_finds_each_kind_of_violation(case: str, tmp_path: Path) -> None:
    bodies, placement, expected = CASES[case]
    store = await Store.open(str(tmp_path / "store.sqlite3"))
    await store.close()
    requests = [_received(b) for b in bodies]
    report = check(
        transfers=[PAID], final={PAID.key: placement}, currencies={"USDT": USDT}, requests=requests,
        signatures={r.raw: {_sign(r.raw)} for r in requests}, key="k", secret=SECRET,
        store_path=tmp_path / "store.sqlite3", daemon_running=True,
    )  # fmt: skip
    if not expected:
        assert report.ok, report.violations
        assert (report.delivered, report.by_status, report.due_confirmed) == (
            2, {"not_confirmed": 1, "confirmed": 1}, 1
        )  # fmt: skip
    else:
        assert any(expected in v for v in report.violations), report.violations


async def test_checker_verifies_signatures_and_the_daemon_itself(tmp_path: Path) -> None:
    store = await Store.open(str(tmp_path / "store.sqlite3"))
    await store.close()
    requests = [_received(b) for b in _clean()]
    forged = {r.raw: {_sign(r.raw + b" ")} for r in requests}
    report = check(
        transfers=[PAID], final={PAID.key: PLACED}, currencies={"USDT": USDT}, requests=requests,
        signatures=forged, key="k", secret=SECRET, store_path=tmp_path / "store.sqlite3",
        daemon_running=False,
    )  # fmt: skip
    assert sum("signature" in v for v in report.violations) == 2, report.violations
    assert "the daemon is not running at the end" in report.violations
