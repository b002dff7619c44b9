"""The verifying merchant endpoint of `deposit-watcher receiver` (docs/callbacks.md, "Trying your set-up").

`CallbackReceiver` checks each POST in one of the two callback formats. `coinspaid` (the default) as a
CoinsPaid merchant SDK does: X-Processing-Key, then the HMAC-SHA512 signature of the exact body bytes,
403 on either mismatch. `coinskro` as docs/webhooks.md's programs do: X-Coinskro-Signature, the
HMAC-SHA256 of the exact body bytes, 401 on a mismatch, no key; the body is parsed with its amount as
a Decimal (a float would lose digits). Either way a signed body that is not a JSON object gets 400, and
anything else 200; each request is handed, as a `Received`, to `on_request`. `serve` runs one in the
foreground and prints one line per callback until SIGINT or SIGTERM.

It ships with the daemon because merchants and operators run it from an installed package. The test
harness of the repository (recording, scripted delivery faults) builds on it: devnet/receiver.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from watcher import coinskro
from watcher.callbacks import KEY_HEADER, SIGNATURE_HEADER, verify

PATH: Final = "/callbacks"
# coinskro: the path of the handlers in Coinskro's documentation.
COINSKRO_PATH: Final = "/webhooks/coinskro"
FORMATS: Final = ("coinspaid", "coinskro")
# Outcomes of a request. Only "answered" means the client got the answer in time.
ANSWERED: Final = "answered"
REJECTED: Final = "rejected"


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the receiver saw it.

    `status_code_answered` is 0 when the connection was dropped without an answer.
    """

    body: dict[str, Any]  # {} when the body is not a JSON object
    raw: bytes
    status_code_answered: int
    at: float  # time.time() on arrival
    key_ok: bool = True
    signature_ok: bool = True
    # "answered", "rejected", or the scripted fault a test receiver answered with instead.
    outcome: str = ANSWERED
    # The X-Processing-Key and X-Processing-Signature headers as received; None when absent.
    key_header: str | None = None
    signature_header: str | None = None
    format: str = "coinspaid"  # the format it was checked as

    @property
    def accepted(self) -> bool:
        """The client got a 2xx for a correctly signed callback: it counts as delivered."""
        return self.outcome == ANSWERED and 200 <= self.status_code_answered < 300

    @property
    def problem(self) -> str:
        """Why the request was rejected, in words for the merchant; "" when it was signed correctly."""
        signature_name = coinskro.SIGNATURE_HEADER if self.format == "coinskro" else SIGNATURE_HEADER
        if self.key_header is None and not self.key_ok:
            return f"no {KEY_HEADER} header"
        if not self.key_ok:
            return f"{KEY_HEADER} {self.key_header!r} is not the expected key"
        if self.signature_header is None and not self.signature_ok:
            return f"no {signature_name} header"
        if not self.signature_ok:
            return "bad signature: another secret, or the body changed on the way"
        if self.outcome == REJECTED:
            return "signed, but the body is not a JSON object"
        return ""

    def answered(self, status: int, outcome: str) -> Received:
        """This request with the answer it got."""
        return replace(self, status_code_answered=status, outcome=outcome)


OnRequest = Callable[[Received], None]


class CallbackReceiver:
    """A merchant endpoint that verifies callbacks, answers 200 to each correctly signed one and passes
    every request to `on_request`.

    Subclasses change the answer (`_answer`), what is kept of each request (`_record`) and the routes
    served besides the callback path (`_add_routes`).
    """

    def __init__(
        self,
        key: str = "",
        secret: str = "",
        *,
        format: str = "coinspaid",
        on_request: OnRequest | None = None,
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"unknown callback format {format!r}; expected one of {', '.join(FORMATS)}")
        if not secret:
            raise ValueError("the secret is empty: every callback is signed with it")
        if format == "coinspaid" and not key:
            raise ValueError("format coinspaid needs the key (X-Processing-Key); coinskro sends none")
        self.key = key
        self.format = format
        self._secret = secret  # private: never printed
        self._on_request = on_request
        self._runner: web.AppRunner | None = None
        self._base_url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (port 0: the kernel picks one; see `.url`)."""
        if self._runner is not None:
            raise RuntimeError("receiver already started")
        app = web.Application()
        self._add_routes(app)
        # A short shutdown timeout: a handler may still be answering (slowly, on purpose) at stop.
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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The callback URL, e.g. http://127.0.0.1:PORT/callbacks (coinskro: /webhooks/coinskro)."""
        if not self._base_url:
            raise RuntimeError("receiver not started")
        return self._base_url + self.path

    @property
    def path(self) -> str:
        return COINSKRO_PATH if self.format == "coinskro" else PATH

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post(self.path, self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        rec, is_object = self._check(raw, request)
        if not (rec.key_ok and rec.signature_ok):
            # 401 as docs/webhooks.md's programs answer; 403 as CoinsPaid's SDKs do.
            status = 401 if self.format == "coinskro" else 403
            self._record(rec.answered(status, REJECTED))
            return web.Response(status=status, text="invalid signature" if status == 401 else "forbidden")
        if not is_object:
            # Signed but not a JSON object: a handler's parser would fail on it.
            self._record(rec.answered(400, REJECTED))
            return web.Response(status=400, text="bad request")
        return await self._answer(request, rec)

    def _check(self, raw: bytes, request: web.Request) -> tuple[Received, bool]:
        """The request as received, its key and signature checked in the receiver's format; and whether
        its body is a JSON object."""
        if self.format == "coinskro":
            # No key in this format; the amount as the exact Decimal its text is.
            body = _parse_object(raw, parse_float=Decimal)
            header = request.headers.get(coinskro.SIGNATURE_HEADER)
            ok = header is not None and coinskro.verify(raw, self._secret, header)
            rec = Received(
                body if body is not None else {}, raw, 0, time.time(), True, ok, ANSWERED, None, header,
                "coinskro",
            )  # fmt: skip
            return rec, body is not None
        body = _parse_object(raw)
        key_header = request.headers.get(KEY_HEADER)
        signature_header = request.headers.get(SIGNATURE_HEADER)
        key_ok = key_header == self.key
        signature_ok = signature_header is not None and verify(raw, self._secret, signature_header)
        rec = Received(
            body if body is not None else {}, raw, 0, time.time(), key_ok, signature_ok, ANSWERED, key_header,
            signature_header,
        )  # fmt: skip
        return rec, body is not None

    async def _answer(self, request: web.Request, rec: Received) -> web.StreamResponse:
        """The answer to a correctly signed JSON callback."""
        self._record(rec.answered(200, ANSWERED))
        return web.Response(status=200, text="ok")

    def _record(self, rec: Received) -> None:
        if self._on_request is not None:
            self._on_request(rec)


def _parse_object(raw: bytes, parse_float: Callable[[str], Any] = float) -> dict[str, Any] | None:
    try:
        value = json.loads(raw, parse_float=parse_float)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both derive from it
        return None
    return value if isinstance(value, dict) else None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ----------------------------------------------------------------------------------- printing


def describe(rec: Received) -> str:
    """One line for a callback: status, currency, amount, short txid, confirmations, id (coinskro: event,
    currency, amount, payment reference, customer reference)."""
    # The body may be anything a client sent: every lookup tolerates a missing or mistyped key.
    if rec.format == "coinskro":
        return _describe_coinskro(rec.body)
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


def _describe_coinskro(b: dict[str, Any]) -> str:
    data = b.get("data")
    data = data if isinstance(data, dict) else {}
    amount = data.get("amount", "?")
    # The digits as sent: str() would write a Decimal 0.00000001 as 1E-8.
    text = f"{amount:f}" if isinstance(amount, Decimal) else str(amount)
    return (
        f"{b.get('event', '?')!s:<18} {data.get('currency', '?')!s:<5} {text:>28} "
        f"ref={data.get('payment_reference', '?')} customer={data.get('customer_reference', '?')}"
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


# ----------------------------------------------------------------------------------- standalone


async def run_standalone(
    host: str,
    port: int,
    key: str,
    secret: str,
    on_callback: OnRequest = print_callback,
    ready: Callable[[CallbackReceiver], None] | None = None,
    *,
    format: str = "coinspaid",
) -> None:
    """Serve callbacks on host:port until cancelled, calling `on_callback` for each request.

    `ready`, if given, is called once listening (with the receiver, e.g. to print its URL).
    """
    rx = CallbackReceiver(key, secret, format=format, on_request=on_callback)
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


def serve(host: str, port: int, key: str, secret: str, *, format: str = "coinspaid") -> int:
    """Serve callbacks on host:port, one line each on stdout, until SIGINT or SIGTERM.

    The exit code: 0 after a signal, 1 when host:port cannot be listened on (the reason on stderr).
    """
    try:
        asyncio.run(_serve_until_signal(host, port, key, secret, format))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


async def _serve_until_signal(host: str, port: int, key: str, secret: str, format: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = asyncio.create_task(run_standalone(host, port, key, secret, ready=_announce, format=format))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({server, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.cancel()
    stopping.cancel()
    # A failure to listen (OSError) is raised here; a cancellation is the normal end.
    with contextlib.suppress(asyncio.CancelledError):
        await server


def _announce(rx: CallbackReceiver) -> None:
    if rx.format == "coinskro":
        print(f"listening on {rx.url} (callback_url, format coinskro); Ctrl-C stops", flush=True)
        return
    print(f"listening on {rx.url} (merchant.callback_url); key {rx.key!r}; Ctrl-C stops", flush=True)
