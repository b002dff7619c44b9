"""A real merchant callback receiver on aiohttp, for tests and the demo.

It checks each POST the way a CoinsPaid merchant SDK does (X-Processing-Key, then the HMAC-SHA512
signature of the exact body bytes, 403 on either mismatch), records every request, and answers valid
ones according to a scripted plan so delivery faults can be tested against real HTTP: error statuses,
a slow answer, a dropped connection, a redirect, a huge error page. Once the plan is used up it answers 200.

    async with Receiver(key="k", secret="s") as rx:
        rx.plan([500, "drop", 200])
        ...  # point the dispatcher at rx.url
        await rx.wait_delivered(1, timeout_s=5)

`run_standalone` / `python -m watcher.devnet.receiver` serve forever and print one line per callback.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from watcher.callbacks import KEY_HEADER, SIGNATURE_HEADER, verify

PATH: Final = "/callbacks"
REDIRECT_TARGET: Final = "/elsewhere"
# Named plan actions; an int in a plan is a plain HTTP status to answer with.
ACTIONS: Final = frozenset({"timeout", "drop", "redirect", "huge"})
PlanEntry = int | str

# Outcomes recorded per request. Only "answered" means the client got the answer in time.
ANSWERED: Final = "answered"
REJECTED: Final = "rejected"


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the receiver saw it.

    `status_code_answered` is 0 when the connection was dropped without an answer. For "timeout" it
    is the status sent after the delay, which the client has normally stopped waiting for.
    """

    body: dict[str, Any]  # {} when the body is not a JSON object
    raw: bytes
    status_code_answered: int
    at: float  # time.time() on arrival
    key_ok: bool = True
    signature_ok: bool = True
    # "answered", "rejected", or the plan action used: "timeout", "drop", "redirect", "huge".
    outcome: str = ANSWERED

    @property
    def accepted(self) -> bool:
        """The client got a 2xx for a correctly signed callback: it counts as delivered."""
        return self.outcome == ANSWERED and 200 <= self.status_code_answered < 300


OnRequest = Callable[[Received], None]


class Receiver:
    """A merchant endpoint on loopback that verifies, records and answers callbacks per a plan."""

    def __init__(
        self,
        key: str,
        secret: str,
        *,
        slow_answer_s: float = 30.0,
        huge_bytes: int = 8 * 1024 * 1024,
        on_request: OnRequest | None = None,
    ) -> None:
        self.key = key
        self._secret = secret  # private: never printed
        # "timeout" answers after this long; keep it above the client's timeout.
        self.slow_answer_s = slow_answer_s
        self.huge_bytes = huge_bytes
        self._on_request = on_request
        self.requests: list[Received] = []
        # Requests that followed our 302: a callback client should not follow redirects.
        self.redirect_follows = 0
        self._plan: collections.deque[PlanEntry] = collections.deque()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    # ----------------------------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0: the kernel picks one; see `.url`)."""
        if self._runner is not None:
            raise RuntimeError("receiver already started")
        app = web.Application()
        app.router.add_post(PATH, self._handle)
        app.router.add_route("*", REDIRECT_TARGET, self._handle_redirect_target)
        # A short shutdown timeout: a "timeout" handler may still be sleeping when the test ends.
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{_url_host(bound_host)}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening; handlers still running are cancelled after a short grace period."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The callback URL, e.g. http://127.0.0.1:PORT/callbacks."""
        if not self._base_url:
            raise RuntimeError("receiver not started")
        return self._base_url + PATH

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

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        parsed = _parse_object(raw)
        body = parsed if parsed is not None else {}
        key_ok = request.headers.get(KEY_HEADER) == self.key
        signature_ok = verify(raw, self._secret, request.headers.get(SIGNATURE_HEADER, ""))
        if not (key_ok and signature_ok):
            self._record(Received(body, raw, 403, time.time(), key_ok, signature_ok, REJECTED))
            return web.Response(status=403, text="forbidden")
        if parsed is None:
            # Signed but not a JSON object: a handler's parser would fail on it.
            self._record(Received(body, raw, 400, time.time(), outcome=REJECTED))
            return web.Response(status=400, text="bad request")
        entry = self._plan.popleft() if self._plan else 200
        return await self._answer(request, entry, Received(body, raw, 0, time.time()))

    async def _answer(self, request: web.Request, entry: PlanEntry, rec: Received) -> web.StreamResponse:
        if isinstance(entry, int):
            self._record(_with(rec, entry, ANSWERED))
            return _status_response(entry)
        if entry == "drop":
            self._record(_with(rec, 0, entry))
            if request.transport is not None:
                request.transport.close()
            # Nothing reaches the client: the transport is closed before aiohttp writes this.
            return web.Response(status=500)
        if entry == "redirect":
            self._record(_with(rec, 302, entry))
            raise web.HTTPFound(location=REDIRECT_TARGET)
        if entry == "huge":
            self._record(_with(rec, 500, entry))
            return web.Response(status=500, body=b"E" * self.huge_bytes, content_type="text/plain")
        # "timeout": recorded on arrival so wait_for sees it while the answer is still pending.
        self._record(_with(rec, 200, entry))
        await asyncio.sleep(self.slow_answer_s)
        return _status_response(200)

    async def _handle_redirect_target(self, request: web.Request) -> web.StreamResponse:
        self.redirect_follows += 1
        self._changed.set()
        return web.Response(status=200, text="redirect followed")

    def _record(self, rec: Received) -> None:
        self.requests.append(rec)
        self._changed.set()
        if self._on_request is not None:
            self._on_request(rec)


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


def _with(rec: Received, status: int, outcome: str) -> Received:
    return Received(rec.body, rec.raw, status, rec.at, rec.key_ok, rec.signature_ok, outcome)


def _status_response(status: int) -> web.Response:
    if status in (204, 304):
        return web.Response(status=status)  # these statuses must not carry a body
    return web.Response(status=status, text="ok" if status < 300 else "error")


def _parse_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both derive from it
        return None
    return value if isinstance(value, dict) else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ----------------------------------------------------------------------------------- standalone


def describe(rec: Received) -> str:
    """One line for a callback: status, currency, amount, short txid, confirmations, id."""
    # The body may be anything a client sent: every lookup tolerates a missing or mistyped key.
    b = rec.body
    txs = b.get("transactions")
    tx = txs[0] if isinstance(txs, list) and txs and isinstance(txs[0], dict) else {}
    received = b.get("currency_received")
    received = received if isinstance(received, dict) else {}
    txid = str(tx.get("txid", "?"))
    short = txid if len(txid) <= 16 else f"{txid[:10]}…{txid[-4:]}"
    amount = received.get("amount", "?")
    return (
        f"{b.get('status', '?')!s:<13} {received.get('currency', '?')!s:<5} {amount!s:>28} "
        f"tx={short} conf={tx.get('confirmations', '?')} id={b.get('id', '?')}"
    )


def print_callback(rec: Received) -> None:
    """Default `on_callback` for `run_standalone`: rejected requests are printed too, marked."""
    mark = "" if rec.accepted else f"[{rec.outcome} {rec.status_code_answered}] "
    print(f"{mark}{describe(rec)}", flush=True)


async def run_standalone(
    host: str,
    port: int,
    key: str,
    secret: str,
    on_callback: OnRequest = print_callback,
    ready: Callable[[Receiver], None] | None = None,
) -> None:
    """Serve callbacks on host:port until cancelled, calling `on_callback` for each request.

    `ready`, if given, is called once listening (with the receiver, e.g. to print its URL).
    """
    rx = Receiver(key, secret, on_request=on_callback)
    await rx.start(host, port)
    try:
        if ready is not None:
            ready(rx)
        await asyncio.Event().wait()  # until cancelled
    finally:
        await rx.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m watcher.devnet.receiver --port 8390 --key K` (secret from $RECEIVER_SECRET)."""
    parser = argparse.ArgumentParser(description="Print signed deposit callbacks as they arrive.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--key", required=True, help="expected X-Processing-Key")
    args = parser.parse_args(argv)
    # The secret comes from the environment so it does not show in the process list.
    secret = os.environ.get("RECEIVER_SECRET")
    if not secret:
        parser.error("set RECEIVER_SECRET to the merchant secret")

    def announce(rx: Receiver) -> None:
        print(f"listening on {rx.url}", flush=True)

    try:
        asyncio.run(run_standalone(args.host, args.port, args.key, secret, ready=announce))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
