"""The one HTTP transport to a chain's nodes, under the JSON-RPC client (chains.jsonrpc) and the Esplora
client (chains.bitcoin.esplora), which keep only their framing.

It owns everything the two clients share:

* the node URLs, one in use at a time, and fail-over: when the node in use is unavailable (below) the
  request still fails and the next URL is used from the next request on, reported to `on_switch`. The
  request is not repeated on the other node at once on purpose: the caller (the follower) first checks
  the new node's chain identity, before it reads any block from it;
* auth: `user:password@` in a URL is that URL's HTTP Basic auth, otherwise the configured user and
  password are; the credentials are taken out of the URL, so aiohttp and its error texts never hold them;
* one aiohttp session (keep-alive), made on first use and closed by `close()`; at most `concurrency`
  requests in flight when one is given (public APIs answer bursts with 429);
* the observer, told of every request's metric name, outcome ("ok" or the error's class, the framing's
  errors included) and duration;
* one retry of a safe request whose keep-alive connection the node closed while idle;
* bounded reads: an answer over its bound (after decompression) is ResponseTooLarge, found while reading,
  so a runaway answer cannot exhaust memory; timeouts per request;
* ONE mapping from HTTP status and connection errors to the chain errors of chains.base:

      cannot connect, timeout, the connection dropped, HTTP 5xx/408/429 -> NodeUnavailable (retry later)
      any other status that is not 2xx                                -> NodeRejected(code=status)
      an answer over its size bound                                   -> ResponseTooLarge (ChainDataError)

  with the raw cause kept: `(status, the body's first 2000 bytes)`, or the aiohttp exception. A framing
  claims the answers it reads itself (`framed`): a JSON-RPC error object sent with HTTP 500, Esplora's 404;
* error texts without the URL's secrets (chains.redaction): they reach logs and the status port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from chains.base import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ChainDataError,
    ChainError,
    ChainSettings,
    NodeRejected,
    NodeUnavailable,
    RpcObserver,
    RpcUrlObserver,
)
from chains.redaction import scrub

__all__ = ["HttpAnswer", "HttpTransport", "ResponseTooLarge", "TransportOptions", "transport_options"]

T = TypeVar("T")
TRANSIENT_STATUS = frozenset({408, 429})
CAUSE_BYTES = 2000  # of a failed answer's body kept as the error's cause
_SNIPPET_BYTES = 200  # of it quoted in the message
_READ_CHUNK = 1 << 20


class ResponseTooLarge(ChainDataError):
    """The node's answer exceeded its size bound; ask for a smaller range."""


class TransportOptions(TypedDict, total=False):
    """HttpTransport's settings other than the URLs and headers: what a client built on it passes on."""

    timeout_s: float
    user: str | None
    password: str | None
    max_response_bytes: int
    observer: RpcObserver | None
    on_switch: RpcUrlObserver | None
    concurrency: int | None


def transport_options(settings: ChainSettings) -> TransportOptions:
    """The transport's settings from a chain's: credentials, limits and the daemon's hooks."""
    return TransportOptions(
        timeout_s=settings.timeout_s,
        user=settings.rpc_user,
        password=settings.rpc_password,
        max_response_bytes=settings.max_response_bytes,
        observer=settings.rpc_observer,
        on_switch=settings.on_rpc_url,
    )


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """A node's answer, read in full: the status and the body (within its bound)."""

    status: int
    body: bytes
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class _Node:
    url: str  # as configured: what `url` and the fail-over reporter show (the watcher redacts it)
    target: str  # without user:password@: what aiohttp is given
    authorization: str | None


def _basic(user: str, password: str) -> str:
    # Built by hand: aiohttp 3.14 deprecates BasicAuth, older versions lack encode_basic_auth.
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _node(url: str, user: str | None, password: str | None) -> _Node:
    """The URL's own credentials win over the configured ones: with several providers, each has its own."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return _Node(url, url, None if user is None else _basic(user, password or ""))
    name, _, secret = userinfo.partition(":")
    target = urlunsplit(parts._replace(netloc=hostport))
    return _Node(url, target, _basic(unquote(name), unquote(secret)))


def _join(base: str, path: str) -> str:
    """`path` appended to the base URL's path; a query (`?apikey=...`) stays at the end."""
    if not path:
        return base
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


class HttpTransport:
    """HTTP requests to one node at a time (`urls`: one URL, or several for fail-over); safe for
    concurrent use from one event loop. See the module docstring for what it owns."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout_s: float = 10.0,
        user: str | None = None,
        password: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        observer: RpcObserver | None = None,
        on_switch: RpcUrlObserver | None = None,
        concurrency: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        given = (urls,) if isinstance(urls, str) else tuple(urls)
        if not given:
            raise ValueError("an HTTP transport needs at least one URL")
        self._nodes = tuple(_node(url, user, password) for url in given)
        self._active = 0
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._observer = observer
        self._on_switch = on_switch
        self._concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency) if concurrency else None
        self._headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The URL in use, as configured."""
        return self._nodes[self._active].url

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def request(
        self,
        method: str,
        path: str = "",
        *,
        decode: Callable[[HttpAnswer], T],
        metric: str,
        label: str,
        body: bytes | None = None,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
        safe: bool | None = None,
        framed: Callable[[HttpAnswer], bool] | None = None,
    ) -> T:
        """`decode` of the answer to `method` on the node's URL + `path`.

        `decode` sees 2xx answers and those `framed` claims; other statuses are chain errors (module
        docstring). `metric` names the request to the observer, `label` starts every error message.
        `max_bytes` bounds the answer (never above the transport's max_response_bytes). `safe`: whether
        repeating the request is harmless (default: GET only).
        """
        limit = min(max_bytes or self._max_response_bytes, self._max_response_bytes)
        repeat = method == "GET" if safe is None else safe
        async with self._slots or contextlib.nullcontext(), self._observed(metric):
            node = self._nodes[self._active]
            try:
                answer = await self._send(node, method, path, body, limit, timeout_s, repeat, label)
                if not answer.ok and not (framed is not None and framed(answer)):
                    raise _status_error(answer, label, node.url)
                return decode(answer)
            except NodeUnavailable:
                self._fail_over(node)
                raise

    # ------------------------------------------------------------------------------------ internals

    @contextlib.asynccontextmanager
    async def _observed(self, metric: str) -> AsyncIterator[None]:
        if self._observer is None:
            yield
            return
        started = time.monotonic()
        outcome = "ok"
        try:
            yield
        except ChainError as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._observer(metric, outcome, time.monotonic() - started)

    def _fail_over(self, failed: _Node) -> None:
        # Once for the concurrent requests that failed on the same node.
        if len(self._nodes) > 1 and self._nodes[self._active] is failed:
            self._active = (self._active + 1) % len(self._nodes)
            if self._on_switch is not None:
                self._on_switch(self.url)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._concurrency) if self._concurrency else None
            self._session = aiohttp.ClientSession(
                headers=self._headers, connector=connector, raise_for_status=False
            )
        return self._session

    async def _send(
        self,
        node: _Node,
        method: str,
        path: str,
        body: bytes | None,
        limit: int,
        timeout_s: float | None,
        repeat: bool,
        label: str,
    ) -> HttpAnswer:
        url = _join(node.target, path)
        timeout = aiohttp.ClientTimeout(total=self._timeout_s if timeout_s is None else timeout_s)
        headers = {"Authorization": node.authorization} if node.authorization else None
        # A safe request is sent twice at most: the second covers a keep-alive connection the node closed
        # while idle, which fails on its first reuse.
        for attempt in (1, 2):
            try:
                async with self._get_session().request(
                    method, url, data=body, headers=headers, timeout=timeout
                ) as resp:
                    raw = await _read_bounded(resp, limit, label)
                    return HttpAnswer(resp.status, raw, resp.headers.get("Retry-After"))
            except aiohttp.ServerDisconnectedError as exc:
                if not repeat or attempt == 2:
                    raise NodeUnavailable(f"{label}: the node closed the connection", cause=exc) from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # aiohttp quotes the URL in some errors (a redirect loop, a connect timeout): scrubbed.
                message = scrub(f"{label}: {type(exc).__name__}: {exc}", node.url)
                raise NodeUnavailable(message, cause=exc) from exc
        raise AssertionError("unreachable")


async def _read_bounded(resp: aiohttp.ClientResponse, limit: int, label: str) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise ResponseTooLarge(f"{label}: answer of {resp.content_length} bytes exceeds {limit}")
    chunks = bytearray()
    async for chunk in resp.content.iter_chunked(_READ_CHUNK):
        chunks += chunk
        if len(chunks) > limit:
            raise ResponseTooLarge(f"{label}: answer exceeds {limit} bytes")
    return bytes(chunks)


def _status_error(answer: HttpAnswer, label: str, url: str) -> ChainError:
    """Pure: the chain error for a status the framing did not claim (module docstring)."""
    status, cause = answer.status, (answer.status, answer.body[:CAUSE_BYTES])
    # Scrubbed: a provider refusing a key may quote it back.
    snippet = scrub(answer.body[:_SNIPPET_BYTES].decode("utf-8", "replace"), url)
    if status >= 500 or status in TRANSIENT_STATUS:
        hint = f" (Retry-After: {answer.retry_after[:20]})" if answer.retry_after else ""
        return NodeUnavailable(f"{label}: HTTP {status}{hint}: {snippet}", cause=cause)
    hint = " (check rpc_user/rpc_password)" if status in (401, 403) else ""
    return NodeRejected(f"{label}: HTTP {status}{hint}: {snippet}", code=status, cause=cause)
