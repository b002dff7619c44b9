"""The test merchant receiver: watcher.receiver's verifying endpoint, recording every request and
answering by a script, so delivery faults are tested against real HTTP.

Valid callbacks are answered according to a plan: error statuses, a slow answer, a dropped connection, a
redirect, a huge error page; once the plan is used up, 200. Tests, the demo and the bench use it.

    async with Receiver(key="k", secret="s") as rx:
        rx.plan([500, "drop", 200])
        ...  # point the dispatcher at rx.url
        await rx.wait_delivered(1, timeout_s=5)

`Receiver(secret="s", format="coinskro")` checks Coinskro webhooks instead (X-Coinskro-Signature, no
key; at /webhooks/coinskro; each body with its amount as a Decimal).

`python -m devnet.receiver` serves forever in its own process and prints one line per callback (the
secret from $RECEIVER_SECRET): `deposit-watcher receiver`'s server, for tests that need another process.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
from collections.abc import Callable, Iterable
from typing import Final

from aiohttp import web

from watcher.receiver import ANSWERED, CallbackReceiver, OnRequest, Received, describe, serve

REDIRECT_TARGET: Final = "/elsewhere"
# Named plan actions; an int in a plan is a plain HTTP status to answer with.
ACTIONS: Final = frozenset({"timeout", "drop", "redirect", "huge"})
PlanEntry = int | str


class Receiver(CallbackReceiver):
    """A merchant endpoint on loopback that verifies, records and answers callbacks per a plan.

    A request's `outcome` is "answered", "rejected", or the plan action used ("timeout", "drop",
    "redirect", "huge"). For "timeout", `status_code_answered` is the status sent after the delay, which
    the client has normally stopped waiting for.
    """

    def __init__(
        self,
        key: str = "",
        secret: str = "",
        *,
        format: str = "coinspaid",
        slow_answer_s: float = 30.0,
        huge_bytes: int = 8 * 1024 * 1024,
        on_request: OnRequest | None = None,
    ) -> None:
        super().__init__(key, secret, format=format, on_request=on_request)
        # "timeout" answers after this long; keep it above the client's timeout.
        self.slow_answer_s = slow_answer_s
        self.huge_bytes = huge_bytes
        self.requests: list[Received] = []
        # Requests that followed our 302: a callback client should not follow redirects.
        self.redirect_follows = 0
        self._plan: collections.deque[PlanEntry] = collections.deque()
        self._changed = asyncio.Event()

    # ----------------------------------------------------------------------------------- scripting

    def plan(self, entries: Iterable[PlanEntry]) -> None:
        """Queue answers for the next valid requests, one entry per request, after those already queued.

        An entry is an HTTP status (200..599) or an action: "timeout" (answer 200 after `slow_answer_s`),
        "drop" (close the connection without answering), "redirect" (302 to another path), "huge"
        (500 with a `huge_bytes` body). Rejected requests (403, 400) do not consume the plan.
        """
        checked = [_check_entry(e) for e in entries]
        self._plan.extend(checked)

    def clear_plan(self) -> None:
        """Forget queued answers: from now on every valid request gets 200."""
        self._plan.clear()

    @property
    def pending_plan(self) -> list[PlanEntry]:
        return list(self._plan)

    @property
    def delivered(self) -> list[Received]:
        """Callbacks the client got a 2xx for, with a valid key and signature, in arrival order."""
        return [r for r in self.requests if r.accepted]

    async def wait_for(self, predicate: Callable[[Receiver], bool], timeout_s: float) -> None:
        """Wait until `predicate(self)` holds; TimeoutError (listing what arrived) after `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"receiver: condition not met after {timeout_s}s; {self.summary()}") from None

    async def wait_delivered(self, count: int, timeout_s: float) -> list[Received]:
        """Wait until at least `count` callbacks are delivered; returns `.delivered`."""
        await self.wait_for(lambda rx: len(rx.delivered) >= count, timeout_s)
        return self.delivered

    def summary(self) -> str:
        """What arrived so far, one short entry per request, for failure messages."""
        if not self.requests:
            return "nothing received"
        lines = [f"{len(self.requests)} request(s):"]
        lines += [f"  {r.outcome} {r.status_code_answered}: {describe(r)}" for r in self.requests]
        return "\n".join(lines)

    # ----------------------------------------------------------------------------------- handling

    def _add_routes(self, app: web.Application) -> None:
        super()._add_routes(app)
        app.router.add_route("*", REDIRECT_TARGET, self._handle_redirect_target)

    async def _answer(self, request: web.Request, rec: Received) -> web.StreamResponse:
        entry = self._plan.popleft() if self._plan else 200
        if isinstance(entry, int):
            self._record(rec.answered(entry, ANSWERED))
            return _status_response(entry)
        if entry == "drop":
            self._record(rec.answered(0, entry))
            if request.transport is not None:
                request.transport.close()
            # Nothing reaches the client: the transport is closed before aiohttp writes this.
            return web.Response(status=500)
        if entry == "redirect":
            self._record(rec.answered(302, entry))
            raise web.HTTPFound(location=REDIRECT_TARGET)
        if entry == "huge":
            self._record(rec.answered(500, entry))
            return web.Response(status=500, body=b"E" * self.huge_bytes, content_type="text/plain")
        # "timeout": recorded on arrival so wait_for sees it while the answer is still pending.
        self._record(rec.answered(200, entry))
        await asyncio.sleep(self.slow_answer_s)
        return _status_response(200)

    async def _handle_redirect_target(self, request: web.Request) -> web.StreamResponse:
        self.redirect_follows += 1
        self._changed.set()
        return web.Response(status=200, text="redirect followed")

    def _record(self, rec: Received) -> None:
        self.requests.append(rec)
        self._changed.set()
        super()._record(rec)


def _check_entry(entry: PlanEntry) -> PlanEntry:
    if isinstance(entry, bool):
        raise ValueError(f"bad plan entry {entry!r}")
    if isinstance(entry, int):
        if not 200 <= entry <= 599:
            raise ValueError(f"plan status must be 200..599, got {entry}")
        return entry
    if entry not in ACTIONS:
        raise ValueError(f"unknown plan action {entry!r}; expected a status or one of {sorted(ACTIONS)}")
    return entry


def _status_response(status: int) -> web.Response:
    if status in (204, 304):
        return web.Response(status=status)  # these statuses must not carry a body
    return web.Response(status=status, text="ok" if status < 300 else "error")


def main(argv: list[str] | None = None) -> None:
    """`python -m devnet.receiver --port 8390 --key K` (secret from $RECEIVER_SECRET)."""
    parser = argparse.ArgumentParser(description="Print signed deposit callbacks as they arrive.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--key", required=True, help="expected X-Processing-Key")
    args = parser.parse_args(argv)
    # The secret comes from the environment so it does not show in the process list.
    secret = os.environ.get("RECEIVER_SECRET")
    if not secret:
        parser.error("set RECEIVER_SECRET to the merchant secret")
    sys.exit(serve(args.host, args.port, args.key, secret))


if __name__ == "__main__":
    main()
