"""The node HTTP transport (chains.http) against real HTTP servers on 127.0.0.1: the one mapping from
HTTP status and connection errors to chain errors, fail-over order, bounded reads, auth, the observer,
retries of safe requests, the concurrency bound, and the URL's secrets kept out of error texts.

The framings above it (JSON-RPC, Esplora) are tested in test_evm_adapter.py and test_esplora.py.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from chains.base import ChainDataError, ChainError, NodeRejected, NodeUnavailable
from chains.http import HttpAnswer, HttpTransport, ResponseTooLarge

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[..., Awaitable[str]]
LABEL = "GET /thing"
FAKE_KEY = "9aa3d95b3bc440fa88ea12eaa4456161"  # the shape of an Infura project id
FAKE_TOKEN = "aB3dE_fGh1jKlMn0pQrStUvWxYz-1234"  # the shape of an Alchemy key


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Starts local HTTP servers answering every method and path with `handler`; yields their URL."""
    servers: list[TestServer] = []

    async def start(handler: Handler, path: str = "/") -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url(path))

    yield start
    for server in servers:
        await server.close()


def raw(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, status=status, headers=headers)

    return handler


def echo_header(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=request.headers.get(name, "<none>"))

    return handler


def keep(answer: HttpAnswer) -> HttpAnswer:
    return answer


async def fetch(
    url: str | list[str],
    path: str = "",
    *,
    method: str = "GET",
    framed: Callable[[HttpAnswer], bool] | None = None,
    **transport_args: Any,
) -> HttpAnswer:
    transport = HttpTransport(url, **transport_args)
    try:
        return await transport.request(
            method, path, metric="GET /thing", label=LABEL, decode=keep, framed=framed
        )
    finally:
        await transport.close()


async def closed_port_url(path: str = "/") -> str:
    server = TestServer(web.Application(), host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url(path))
    await server.close()  # nothing listens on that port any more
    return url


# ------------------------------------------------------------------------------- status -> error


@pytest.mark.parametrize(
    ("status", "body", "headers", "error", "code", "text"),
    [
        (500, b"oops", None, NodeUnavailable, None, "GET /thing: HTTP 500: oops"),
        (502, b"<html>bad gateway</html>", None, NodeUnavailable, None, "HTTP 502: <html>bad gateway"),
        (503, b"", {"Retry-After": "120"}, NodeUnavailable, None, "HTTP 503 (Retry-After: 120): "),
        (408, b"timeout", None, NodeUnavailable, None, "HTTP 408: timeout"),
        (
            429,
            b"slow down",
            {"Retry-After": "5"},
            NodeUnavailable,
            None,
            "HTTP 429 (Retry-After: 5): slow down",
        ),
        (400, b"bad request", None, NodeRejected, 400, "GET /thing: HTTP 400: bad request"),
        (401, b"", None, NodeRejected, 401, "HTTP 401 (check rpc_user/rpc_password): "),
        (403, b"no", None, NodeRejected, 403, "HTTP 403 (check rpc_user/rpc_password): no"),
        (404, b"not found", None, NodeRejected, 404, "HTTP 404: not found"),
        (418, b"teapot", None, NodeRejected, 418, "HTTP 418: teapot"),
    ],
)
async def test_http_status_maps_to_one_chain_error(
    serve: Serve,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None,
    error: type[ChainError],
    code: int | None,
    text: str,
) -> None:
    url = await serve(raw(body, status, headers))
    with pytest.raises(error) as raised:
        await fetch(url)
    assert type(raised.value) is error
    assert text in str(raised.value)
    assert raised.value.cause == (status, body)  # the raw status and body are kept
    if code is not None:
        assert isinstance(raised.value, NodeRejected) and raised.value.code == code


async def test_a_long_error_body_is_quoted_short_and_kept_longer(serve: Serve) -> None:
    body = b"x" * 5000
    with pytest.raises(NodeUnavailable) as raised:
        await fetch(await serve(raw(body, 500)))
    assert str(raised.value) == "GET /thing: HTTP 500: " + "x" * 200
    assert raised.value.cause == (500, b"x" * 2000)


@pytest.mark.parametrize("status", [200, 201, 204])
async def test_2xx_answers_reach_the_framing(serve: Serve, status: int) -> None:
    body = b"" if status == 204 else b"fine"
    answer = await fetch(await serve(raw(body, status)))
    assert answer.status == status and answer.body == body and answer.ok


@pytest.mark.parametrize(
    ("status", "claimed", "outcome"),
    [
        (404, True, 404),  # Esplora's "not found" is an answer
        (500, True, 500),  # bitcoind's JSON-RPC error under HTTP 500
        (500, False, NodeUnavailable),
        (404, False, NodeRejected),
    ],
)
async def test_the_framing_claims_the_statuses_it_reads(
    serve: Serve, status: int, claimed: bool, outcome: int | type[ChainError]
) -> None:
    url = await serve(raw(b"body", status))
    seen: list[int] = []

    def framed(answer: HttpAnswer) -> bool:
        seen.append(answer.status)
        return claimed and answer.body == b"body"

    if isinstance(outcome, int):
        assert (await fetch(url, framed=framed)).status == outcome
    else:
        with pytest.raises(outcome):
            await fetch(url, framed=framed)
    assert seen == [status]


# ------------------------------------------------------------------------- connection errors


async def test_an_unreachable_node_is_unavailable() -> None:
    with pytest.raises(NodeUnavailable, match="GET /thing: ClientConnectorError") as raised:
        await fetch(await closed_port_url())
    assert isinstance(raised.value.cause, aiohttp.ClientError)


async def test_a_slow_node_is_unavailable_and_the_request_timeout_wins(serve: Serve) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    url = await serve(slow)
    with pytest.raises(NodeUnavailable, match="GET /thing: TimeoutError"):
        await fetch(url, timeout_s=0.2)
    transport = HttpTransport(url, timeout_s=30)
    try:
        with pytest.raises(NodeUnavailable, match="TimeoutError"):
            await transport.request("GET", metric="m", label=LABEL, decode=keep, timeout_s=0.2)
    finally:
        await transport.close()


class DroppingServer:
    """A raw TCP server that reads a request's head and closes the connection without answering, for
    the first `drops` requests, then answers 200 "ok": what a node does to an idle keep-alive socket."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests += 1
                if self.requests <= self.drops:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass  # the client closed its connection
        writer.close()


@pytest.mark.parametrize(
    ("method", "safe", "drops", "requests", "answered"),
    [
        ("POST", None, 1, 1, False),  # a POST is not repeated unless the caller says it is safe
        ("POST", True, 1, 2, True),  # JSON-RPC reads are: the dropped connection is retried once
        ("POST", True, 2, 2, False),  # ...once only
        # A GET is safe (aiohttp >= 3.10 also repeats it once by itself, so the count is not asserted).
        ("GET", None, 1, None, True),
    ],
)
async def test_safe_requests_are_retried_once_on_a_dropped_connection(
    method: str, safe: bool | None, drops: int, requests: int | None, answered: bool
) -> None:
    dropping = DroppingServer(drops)
    async with dropping as url:
        transport = HttpTransport(url)
        try:
            outcome = transport.request(method, metric="m", label=LABEL, decode=keep, body=b"{}", safe=safe)
            if answered:
                assert (await outcome).body == b"ok"
            else:
                with pytest.raises(NodeUnavailable, match=f"{LABEL}: the node closed the connection"):
                    await outcome
        finally:
            await transport.close()
    assert requests is None or dropping.requests == requests


# -------------------------------------------------------------------------------------- fail-over


async def test_fail_over_goes_through_the_urls_in_order_and_wraps(serve: Serve) -> None:
    down = {"a": True, "b": True, "c": False}

    def node(name: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            if request.path == "/reject":
                return web.Response(status=400, text="no")
            return web.Response(status=503 if down[name] else 200, text=name)

        return handler

    a, b, c = [await serve(node(name)) for name in "abc"]
    switched: list[str] = []
    transport = HttpTransport([a, b, c], on_switch=switched.append)

    async def get(path: str = "", decode: Callable[[HttpAnswer], Any] = keep) -> Any:
        return await transport.request("GET", path, metric="m", label=LABEL, decode=decode)

    try:
        assert transport.url == a
        with pytest.raises(NodeUnavailable):  # the failing request fails: the caller re-checks the node
            await get()
        assert transport.url == b and switched == [b]
        with pytest.raises(NodeUnavailable):
            await get()
        assert (await get()).body == b"c" and switched == [b, c]
        with pytest.raises(NodeRejected):  # a node that answers is kept, whatever it answers
            await get("/reject")

        def spoiled(answer: HttpAnswer) -> None:
            raise ChainDataError("malformed", cause=answer.body)

        with pytest.raises(ChainDataError):  # so is one whose answer the framing finds malformed
            await get(decode=spoiled)
        assert transport.url == c and switched == [b, c]
        down["c"], down["a"] = True, False
        with pytest.raises(NodeUnavailable):
            await get()
        assert transport.url == a and switched == [b, c, a]  # after the last URL, the first again
        assert (await get()).body == b"a"
    finally:
        await transport.close()


async def test_concurrent_failures_on_one_node_switch_once(serve: Serve) -> None:
    async def slow_503(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        return web.Response(status=503)

    down, up = await serve(slow_503), await serve(raw(b"up"))
    switched: list[str] = []
    transport = HttpTransport([down, up], on_switch=switched.append)
    try:
        results = await asyncio.gather(
            *(transport.request("GET", metric="m", label=LABEL, decode=keep) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, NodeUnavailable) for r in results)
        assert switched == [up] and transport.url == up
    finally:
        await transport.close()


async def test_one_url_never_switches(serve: Serve) -> None:
    switched: list[str] = []
    url = await serve(raw(b"", 503))
    transport = HttpTransport(url, on_switch=switched.append)
    try:
        with pytest.raises(NodeUnavailable):
            await transport.request("GET", metric="m", label=LABEL, decode=keep)
        assert switched == [] and transport.url == url
    finally:
        await transport.close()


def test_a_transport_needs_a_url() -> None:
    with pytest.raises(ValueError, match="at least one URL"):
        HttpTransport([])


@pytest.mark.parametrize(
    ("base", "path", "asked"),
    [
        ("/", "", "/"),
        ("/api", "/blocks/tip/hash", "/api/blocks/tip/hash"),
        ("/api/", "/blocks/tip/hash", "/api/blocks/tip/hash"),
        ("/api?apikey=k1", "/blocks/tip/hash", "/api/blocks/tip/hash?apikey=k1"),  # the query stays last
        ("/rpc?apikey=k1", "", "/rpc?apikey=k1"),
    ],
)
async def test_the_path_is_appended_to_the_base_urls_path(
    serve: Serve, base: str, path: str, asked: str
) -> None:
    async def echo_path(request: web.Request) -> web.Response:
        return web.Response(text=request.path_qs)

    url = await serve(echo_path, base)
    assert (await fetch(url, path)).body.decode() == asked


# ----------------------------------------------------------------------------------- bounded reads


def streamed(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse up front
        await response.prepare(request)
        for start in range(0, len(body), 1000):
            await response.write(body[start : start + 1000])
        await response.write_eof()
        return response

    return handler


def gzipped(body: bytes) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})

    return handler


@pytest.mark.parametrize(
    ("make", "size", "limits", "text"),
    [
        (raw, 5000, {"max_response_bytes": 4096}, "answer of 5000 bytes exceeds 4096"),  # Content-Length
        (streamed, 5000, {"max_response_bytes": 4096}, "answer exceeds 4096 bytes"),  # while reading
        (gzipped, 50_000, {"max_response_bytes": 4096}, "answer exceeds 4096 bytes"),  # after decompression
        (raw, 5000, {"max_bytes": 100}, "exceeds 100"),  # the request's own bound
        (raw, 5000, {"max_bytes": 10_000, "max_response_bytes": 100}, "exceeds 100"),  # capped by the chain's
        (raw, 4096, {"max_response_bytes": 4096}, None),  # at the bound: read
        (streamed, 4096, {"max_bytes": 4096}, None),
    ],
)
async def test_answers_are_bounded_while_read(
    serve: Serve, make: Callable[[bytes], Handler], size: int, limits: dict[str, int], text: str | None
) -> None:
    body = b"a" * size
    transport = HttpTransport(
        await serve(make(body)), max_response_bytes=limits.get("max_response_bytes", 1 << 20)
    )
    outcome = transport.request(
        "GET", metric="m", label=LABEL, decode=keep, max_bytes=limits.get("max_bytes")
    )
    try:
        if text is None:
            assert (await outcome).body == body
        else:
            with pytest.raises(ResponseTooLarge, match=text) as raised:
                await outcome
            assert str(raised.value).startswith(LABEL)
            assert isinstance(raised.value, ChainDataError)
    finally:
        await transport.close()


# ------------------------------------------------------------------------------------------- auth


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("userinfo", "configured", "expected"),
    [
        ("", {}, "<none>"),
        ("", {"user": "rpcuser", "password": "s3cret"}, basic("rpcuser", "s3cret")),
        ("", {"user": "rpcuser"}, basic("rpcuser", "")),
        ("watcher:pw%40x@", {}, basic("watcher", "pw@x")),  # percent-encoded in the URL
        (
            "watcher:url-pw@",
            {"user": "rpcuser", "password": "s3cret"},
            basic("watcher", "url-pw"),
        ),  # URL's win
    ],
)
async def test_the_authorization_header(
    serve: Serve, userinfo: str, configured: dict[str, Any], expected: str
) -> None:
    url = (await serve(echo_header("Authorization"))).replace("http://", "http://" + userinfo)
    assert (await fetch(url, **configured)).body.decode() == expected


async def test_each_url_keeps_its_own_credentials_across_fail_over(serve: Serve) -> None:
    down = (await serve(raw(b"", 503))).replace("http://", "http://first:one@")
    up = await serve(echo_header("Authorization"))
    transport = HttpTransport([down, up], user="rpcuser", password="s3cret")
    try:
        with pytest.raises(NodeUnavailable):
            await transport.request("GET", metric="m", label=LABEL, decode=keep)
        answer = await transport.request("GET", metric="m", label=LABEL, decode=keep)
        assert answer.body.decode() == basic("rpcuser", "s3cret")
        assert transport.url == up
    finally:
        await transport.close()


async def test_the_framings_headers_are_sent(serve: Serve) -> None:
    url = await serve(echo_header("User-Agent"))
    assert (await fetch(url, headers={"User-Agent": "deposit-watcher test"})).body == b"deposit-watcher test"


# --------------------------------------------------------------------------------- the observer


async def test_the_observer_is_told_of_every_request(serve: Serve) -> None:
    async def answer(request: web.Request) -> web.Response:
        status = {"/ok": 200, "/down": 503, "/bad": 400}.get(request.path, 200)
        return web.Response(status=status, text="x")

    url = await serve(answer)
    seen: list[tuple[str, str, float]] = []
    transport = HttpTransport(url, observer=lambda *call: seen.append(call))

    def spoiled(answer: HttpAnswer) -> None:
        raise ChainDataError("malformed")

    try:
        for path, decode in (("/ok", keep), ("/down", keep), ("/bad", keep), ("/ok", spoiled)):
            try:
                await transport.request("GET", path, metric=f"GET {path}", label=LABEL, decode=decode)
            except ChainError:
                pass
    finally:
        await transport.close()
    outcomes = [(metric, outcome) for metric, outcome, _ in seen]
    assert outcomes == [
        ("GET /ok", "ok"),
        ("GET /down", "NodeUnavailable"),
        ("GET /bad", "NodeRejected"),
        ("GET /ok", "ChainDataError"),  # the framing's verdict counts
    ]
    assert all(0 <= duration < 10 for _, _, duration in seen)


async def test_at_most_concurrency_requests_are_in_flight(serve: Serve) -> None:
    in_flight, most = 0, 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.Response(text="x")

    url = await serve(slow)
    for concurrency, expected in ((2, 2), (None, 6)):
        most = 0
        transport = HttpTransport(url, concurrency=concurrency)
        try:
            await asyncio.gather(
                *(transport.request("GET", metric="m", label=LABEL, decode=keep) for _ in range(6))
            )
        finally:
            await transport.close()
        assert most == expected


# ---------------------------------------------------------------------------------------- secrets


async def redirect_loop(request: web.Request) -> web.Response:
    raise web.HTTPFound(str(request.rel_url))


async def echo_key(request: web.Request) -> web.Response:
    raise web.HTTPUnauthorized(text=f"invalid project id {request.path.rsplit('/', 1)[-1]}")


@pytest.mark.parametrize(
    ("handler", "error", "shown"),
    [
        (redirect_loop, "TooManyRedirects", "/v3/***"),  # aiohttp quotes the whole URL
        (echo_key, "HTTP 401", "invalid project id ***"),  # a provider quoting the key back
        (None, "ClientConnectorError", "Cannot connect"),
    ],
)
async def test_error_texts_never_hold_the_urls_secrets(
    serve: Serve, handler: Handler | None, error: str, shown: str
) -> None:
    path = f"/v3/{FAKE_KEY}"
    url = await serve(handler, path) if handler is not None else await closed_port_url(path)
    url = url.replace("http://", "http://watcher:url-password-f3e5@") + f"?apikey={FAKE_TOKEN}"
    with pytest.raises(ChainError) as raised:
        await fetch(url)
    text = str(raised.value)
    assert error in text and shown in text, text
    for secret in (FAKE_KEY, FAKE_TOKEN, "url-password-f3e5"):
        assert secret not in text and secret not in repr(raised.value.args)
