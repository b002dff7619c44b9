"""The leader's fence as the PostgreSQL store's begin check (store_pg.BeginCheck): no round trip of its own.

`Leadership.before_write` fences a transaction of leader work with one query after BEGIN; the same check
sent with BEGIN and the write lock (one round trip) keeps a block batch at three (store_pg's docstring).
What it checks is watcher/leadership.py's `fence`: the lease row still at the term the work was started
for, a KEY SHARE lock on it to the end of the transaction (a take-over's FOR UPDATE waits for it), and
the transaction's idle time bounded to half a lease. A write that is not leader work (the merchant API,
on any daemon) is not checked. A term already over by this daemon's own clock is refused before anything
is sent; the database's refusal comes back as `Deposed`, and the election's next renewal finds the lease
taken and ends the term here too.
"""

from __future__ import annotations

import asyncpg

from watcher.errors import Deposed
from watcher.leadership import LEADER, Leadership, idle_timeout_s, work_term
from watcher.store_pg import BeginCheck

# The SQLSTATE the check raises (class "DW": deposit-watcher's own, unused by PostgreSQL).
FENCED = "DW001"
_NOTHING = "SELECT 1"


def fence_check(leadership: Leadership) -> BeginCheck:
    """The begin check that fences each transaction of `leadership`'s leader work with its term."""

    def statements() -> str:
        term = work_term()
        if term is None:
            return _NOTHING
        held = leadership.leading_term()
        if held != term:
            raise Deposed(term, held, "that term is over for this daemon (lapsed, taken or resigned)")
        idle_ms = max(1, int(idle_timeout_s(leadership.config) * 1000))
        # Integers only are inlined (the term, the bound); the row's name is a constant of ours.
        return (
            f"DO $$ BEGIN IF (SELECT term FROM leadership WHERE name = '{LEADER}' FOR KEY SHARE)"
            f" IS DISTINCT FROM {int(term)} THEN"
            f" RAISE EXCEPTION 'the lease was taken by another daemon' USING ERRCODE = '{FENCED}'; END IF;"
            f" PERFORM set_config('idle_in_transaction_session_timeout', '{idle_ms}', true); END $$"
        )

    def refused(exc: asyncpg.PostgresError) -> BaseException:
        return Deposed(work_term(), None, str(exc))

    return BeginCheck(statements, FENCED, refused)
