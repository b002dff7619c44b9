"""A generic async JSON-RPC 2.0 client over HTTP, shared by the chain adapters (EVM nodes, bitcoind).

One aiohttp session per client (keep-alive), created on first use and closed by `close()`. Requests and
answers go through orjson, never through web3's formatters (performance.md). Every failure becomes one
of the chain errors of `chains.base`, with the raw cause kept:

* cannot connect, timeout, HTTP 5xx/408/429 without a JSON-RPC body  -> NodeUnavailable (retry later)
* a JSON-RPC error object, or another HTTP error status              -> NodeRejected(code=...)
* malformed JSON, wrong shapes, missing or unknown ids, a body over the size limit -> ChainDataError

The size of an answer is bounded while it is read (after decompression), so a runaway eth_getLogs cannot
exhaust memory; the caller sees ResponseTooLarge and can ask for less.

Fail-over: given several URLs, the client uses one at a time. When the node in use is unavailable (the
NodeUnavailable cases above) the call still fails, and the next URL is used from the next call on. The
call is not retried on the other node at once on purpose: the caller (the follower) then checks the new
node's chain identity before it reads any block from it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

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

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "Call", "JsonRpcClient", "ResponseTooLarge"]
_TRANSIENT_STATUS = frozenset({408, 429})
_READ_CHUNK = 1 << 20

Call = tuple[str, Sequence[Any]]


class ResponseTooLarge(ChainDataError):
    """The node's answer exceeded the configured size limit; ask for a smaller range."""


class JsonRpcClient:
    """JSON-RPC over HTTP(S) to one node at a time (`url`: one URL, or several for fail-over). Safe for
    concurrent use from one event loop."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        timeout_s: float = 10.0,
        user: str | None = None,
        password: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        observer: RpcObserver | None = None,
        on_switch: RpcUrlObserver | None = None,
    ) -> None:
        self._urls = (url,) if isinstance(url, str) else tuple(url)
        if not self._urls:
            raise ValueError("JsonRpcClient needs at least one URL")
        self._active = 0
        self._on_switch = on_switch
        self._observer = observer
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json"}
        if user is not None:
            # Built by hand: aiohttp 3.14 deprecates BasicAuth, older versions lack encode_basic_auth.
            token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._max_response_bytes = max_response_bytes
        self._next_id = 1
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_settings(cls, settings: ChainSettings) -> JsonRpcClient:
        """The client an adapter uses for its chain's settings (URLs, credentials, limits, hooks)."""
        return cls(
            settings.urls,
            timeout_s=settings.timeout_s,
            user=settings.rpc_user,
            password=settings.rpc_password,
            max_response_bytes=settings.max_response_bytes,
            observer=settings.rpc_observer,
            on_switch=settings.on_rpc_url,
        )

    @property
    def url(self) -> str:
        """The URL in use."""
        return self._urls[self._active]

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def call(self, method: str, params: Sequence[Any] = (), *, timeout_s: float | None = None) -> Any:
        """The `result` of one call; NodeRejected if the node answers with an error object."""
        async with self._observed(method):
            return await self._call(method, params, timeout_s)

    async def batch(self, calls: Sequence[Call], *, timeout_s: float | None = None) -> list[Any]:
        """The results of `calls`, in the order given (answers are matched by id, not position).

        One error object in the batch raises NodeRejected for the whole batch: callers here only batch
        reads that should all succeed.
        """
        if not calls:
            return []
        async with self._observed(calls[0][0]):
            return await self._batch(calls, timeout_s)

    @asynccontextmanager
    async def _observed(self, method: str) -> AsyncIterator[None]:
        """Report each call's method, outcome ("ok" or the error's class) and duration to the observer."""
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
            self._observer(method, outcome, time.monotonic() - started)

    async def _call(self, method: str, params: Sequence[Any], timeout_s: float | None) -> Any:
        request_id = self._take_ids(1)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
        answer = await self._post(payload, timeout_s, method)
        if not isinstance(answer, dict):
            kind = type(answer).__name__
            raise ChainDataError(f"{method}: expected a JSON-RPC object, got {kind}", cause=answer)
        if answer.get("id") != request_id and "error" not in answer:
            got = answer.get("id")
            raise ChainDataError(f"{method}: answer id {got!r} is not {request_id}", cause=answer)
        return _result(answer, method)

    async def _batch(self, calls: Sequence[Call], timeout_s: float | None) -> list[Any]:
        first = self._take_ids(len(calls))
        ids = range(first, first + len(calls))
        payload = [
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
            for request_id, (method, params) in zip(ids, calls, strict=True)
        ]
        label = f"batch of {len(calls)} ({calls[0][0]}...)"
        answer = await self._post(payload, timeout_s, label)
        if isinstance(answer, dict) and "error" in answer:
            _result(answer, label)  # the node refused the batch as a whole (e.g. batches disabled): raises
        if not isinstance(answer, list):
            raise ChainDataError(f"{label}: expected a JSON array, got {type(answer).__name__}", cause=answer)
        by_id = _index_by_id(answer, label)
        missing = [request_id for request_id in ids if request_id not in by_id]
        if missing or len(by_id) != len(calls):
            message = f"{label}: answers missing or unexpected (missing ids {missing[:5]})"
            raise ChainDataError(message, cause=answer)
        return [_result(by_id[request_id], calls[i][0]) for i, request_id in enumerate(ids)]

    # ------------------------------------------------------------------------------------ transport

    def _take_ids(self, count: int) -> int:
        first = self._next_id
        self._next_id += count
        return first

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, raise_for_status=False)
        return self._session

    async def _post(self, payload: object, timeout_s: float | None, label: str) -> Any:
        url = self.url
        try:
            return await self._post_to(url, payload, timeout_s, label)
        except NodeUnavailable:
            self._fail_over(url)
            raise

    def _fail_over(self, failed: str) -> None:
        # Only once for concurrent calls that failed on the same node.
        if len(self._urls) > 1 and self.url == failed:
            self._active = (self._active + 1) % len(self._urls)
            if self._on_switch is not None:
                self._on_switch(self.url)

    async def _post_to(self, url: str, payload: object, timeout_s: float | None, label: str) -> Any:
        body = orjson.dumps(payload)
        timeout = aiohttp.ClientTimeout(total=timeout_s if timeout_s is not None else self._timeout_s)
        # All calls this project makes are reads, so one retry is safe; it covers the common case of a
        # keep-alive connection the node closed while idle, which fails on first reuse.
        for attempt in (1, 2):
            try:
                async with self._get_session().post(url, data=body, timeout=timeout) as resp:
                    raw = await self._read_bounded(resp, label)
                    return _decode_body(resp.status, raw, label)
            except aiohttp.ServerDisconnectedError as exc:
                if attempt == 2:
                    raise NodeUnavailable(f"{label}: node closed the connection", cause=exc) from exc
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise NodeUnavailable(f"{label}: {type(exc).__name__}: {exc}", cause=exc) from exc
        raise AssertionError("unreachable")

    async def _read_bounded(self, resp: aiohttp.ClientResponse, label: str) -> bytes:
        limit = self._max_response_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise ResponseTooLarge(f"{label}: answer of {resp.content_length} bytes exceeds {limit}")
        chunks = bytearray()
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            chunks += chunk
            if len(chunks) > limit:
                raise ResponseTooLarge(f"{label}: answer exceeds {limit} bytes")
        return bytes(chunks)


def _decode_body(status: int, raw: bytes, label: str) -> Any:
    """The parsed body; non-2xx answers without a JSON-RPC body become Node* errors here."""
    error: orjson.JSONDecodeError | None = None
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = exc
    else:
        if 200 <= status < 300 or _is_jsonrpc(answer):
            return answer
    snippet = raw[:200].decode("utf-8", "replace")
    if status >= 500 or status in _TRANSIENT_STATUS:
        raise NodeUnavailable(f"{label}: HTTP {status}: {snippet}", cause=(status, raw[:2000]))
    if not 200 <= status < 300:
        hint = " (check rpc_user/rpc_password)" if status in (401, 403) else ""
        raise NodeRejected(f"{label}: HTTP {status}{hint}: {snippet}", cause=(status, raw[:2000]))
    raise ChainDataError(f"{label}: answer is not JSON: {snippet}", cause=error)


def _is_jsonrpc(answer: object) -> bool:
    if isinstance(answer, list):
        return bool(answer) and all(isinstance(item, dict) and "id" in item for item in answer)
    return isinstance(answer, dict) and ("result" in answer or "error" in answer)


def _index_by_id(answers: list[Any], label: str) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    for item in answers:
        if not isinstance(item, dict) or not isinstance(item.get("id"), int):
            raise ChainDataError(f"{label}: batch item without an integer id: {item!r:.200}", cause=answers)
        if item["id"] in by_id:
            raise ChainDataError(f"{label}: duplicate id {item['id']} in batch answer", cause=answers)
        by_id[item["id"]] = item
    return by_id


def _result(answer: dict[str, Any], method: str) -> Any:
    error = answer.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise NodeRejected(f"{method}: {error!r:.300}", cause=answer)
        code = error.get("code")
        message = error.get("message", "")
        raise NodeRejected(
            f"{method}: node error {code}: {message!s:.300}",
            code=code if isinstance(code, int) else None,
            cause=answer,
        )
    if "result" not in answer:
        raise ChainDataError(f"{method}: answer has neither result nor error: {answer!r:.200}", cause=answer)
    return answer["result"]
