"""A real merchant callback receiver on aiohttp, for tests, the demo and merchants trying their set-up.

It checks each POST the way a CoinsPaid merchant SDK does (X-Processing-Key, then the HMAC-SHA512
signature of the exact body bytes, 403 on either mismatch), records every request, and answers valid
ones according to a scripted plan so delivery faults can be tested against real HTTP: error statuses,
a slow answer, a dropped connection, a redirect, a huge error page. Once the plan is used up it answers 200.

    async with Receiver(key="k", secret="s") as rx:
        rx.plan([500, "drop", 200])
        ...  # point the dispatcher at rx.url
        await rx.wait_delivered(1, timeout_s=5)

`run_standalone` / `python -m devnet.receiver` serve forever and print one line per callback;
`serve` is what `deposit-watcher receiver` runs (docs/callbacks.md, "Trying your set-up").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
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
    # The X-Processing-Key and X-Processing-Signature headers as received; None when absent.
    key_header: str | None = None
    signature_header: str | None = None

    @property
    def accepted(self) -> bool:
        """The client got a 2xx for a correctly signed callback: it counts as delivered."""
        return self.outcome == ANSWERED and 200 <= self.status_code_answered < 300

    @property
    def problem(self) -> str:
        """Why the request was rejected, in words for the merchant; "" when it was signed correctly."""
        if self.key_header is None and not self.key_ok:
            return f"no {KEY_HEADER} header"
        if not self.key_ok:
            return f"{KEY_HEADER} {self.key_header!r} is not the expected key"
        if self.signature_header is None and not self.signature_ok:
            return f"no {SIGNATURE_HEADER} header"
        if not self.signature_ok:
            return "bad signature: another secret, or the body changed on the way"
        if self.outcome == REJECTED:
            return "signed, but the body is not a JSON object"
        return ""


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
        key_header = request.headers.get(KEY_HEADER)
        signature_header = request.headers.get(SIGNATURE_HEADER)
        key_ok = key_header == self.key
        signature_ok = signature_header is not None and verify(raw, self._secret, signature_header)
        rec = Received(
            body, raw, 0, time.time(), key_ok, signature_ok, ANSWERED, key_header, signature_header
        )
        if not (key_ok and signature_ok):
            self._record(_with(rec, 403, REJECTED))
            return web.Response(status=403, text="forbidden")
        if parsed is None:
            # Signed but not a JSON object: a handler's parser would fail on it.
            self._record(_with(rec, 400, REJECTED))
            return web.Response(status=400, text="bad request")
        entry = self._plan.popleft() if self._plan else 200
        return await self._answer(request, entry, rec)

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
    return replace(rec, status_code_answered=status, outcome=outcome)


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
    """Default `on_callback` for `run_standalone`: one line, "verified" or why the request was rejected."""
    if rec.accepted:
        mark = "verified"
    elif rec.problem:
        mark = f"REJECTED {rec.status_code_answered} [{rec.problem}]"
    else:
        mark = f"[{rec.outcome} {rec.status_code_answered}]"
    print(f"{mark} {describe(rec)}", flush=True)


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


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets) as (host, port); ValueError saying what is expected."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8390")
    return host.removeprefix("[").removesuffix("]"), int(port)


def read_secret_file(path: str) -> str:
    """The secret in `path`, trimmed as the daemon trims `merchant.secret_file`; ValueError naming it."""
    try:
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--secret-file {path}: cannot read it ({exc})") from None
    if not secret:
        raise ValueError(f"--secret-file {path}: the file is empty")
    return secret


def serve(host: str, port: int, key: str, secret: str) -> int:
    """Serve callbacks on host:port, one line each on stdout, until SIGINT or SIGTERM.

    The exit code: 0 after a signal, 1 when host:port cannot be listened on (the reason on stderr).
    """
    try:
        asyncio.run(_serve_until_signal(host, port, key, secret))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(host: str, port: int, key: str, secret: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = asyncio.create_task(run_standalone(host, port, key, secret, ready=_announce))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({server, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.cancel()
    stopping.cancel()
    # A failure to listen (OSError) is raised here; a cancellation is the normal end.
    with contextlib.suppress(asyncio.CancelledError):
        await server


def _announce(rx: Receiver) -> None:
    print(f"listening on {rx.url} (merchant.callback_url); key {rx.key!r}; Ctrl-C stops", flush=True)


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
