"""The fail-over trial in CI, at a small count: a fixed seed, plus `TRIAL_SEED` from the environment if set.

The full count runs by hand: `python -m tests.trials.failover_trial --deposits 50 --kills 6 --cuts 4
--pauses 4 --pg-restarts 3 --payments 24 --seed N`. Three real daemon processes on one PostgreSQL server,
real anvil and bcoin nodes, a faulty receiver; the leader SIGKILLed, cut off from the database, paused
beyond its lease, and the server restarted (tests/trials/failover_trial.py). A failure message names the
seed and the command that replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.trials.failover_trial import TAKEOVER_S, FailoverOptions, run_failover_trial

FIXED_SEED = 20_251_207
SEEDS = [FIXED_SEED, *([int(os.environ["TRIAL_SEED"])] if os.environ.get("TRIAL_SEED") else [])]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed-{s}" for s in SEEDS])
async def test_failover_trial_loses_and_invents_nothing(seed: int, tmp_path: Path) -> None:
    options = FailoverOptions(
        deposits=12, kills=2, cuts=1, pauses=1, pg_restarts=1, seed=seed, payments=8, workdir=tmp_path
    )
    result = await run_failover_trial(options)
    print(result.figures())
    assert result.ok, result.failure_message()
    # Every planned fault happened (the crash trial's end adds one more SIGKILL) and each was taken over.
    counts = {kind: result.count(kind) for kind in ("sigkill", "cut", "pause", "pg_restart")}
    assert counts["sigkill"] >= 2 and counts["cut"] == counts["pause"] == counts["pg_restart"] == 1, counts
    assert len(result.takeovers()) >= 4 and max(result.takeovers()) <= TAKEOVER_S, result.figures()
    assert result.report.deposits >= 12 and result.report.due_confirmed > 0, result.figures()
    # The callbacks came from more than one daemon: the take-overs really moved the delivering.
    assert sum(1 for n in result.deliveries_by_node.values() if n > 0) >= 2, result.figures()
    assert result.crash.payments is not None and result.crash.payments.payments == 8, result.figures()
