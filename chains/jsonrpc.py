"""A generic async JSON-RPC 2.0 client over HTTP, shared by the chain adapters (EVM nodes, bitcoind).

Only the framing lives here: request ids, batches matched by id, error objects. URLs and fail-over, auth,
the session, the observer, retries, bounded reads and the HTTP status mapping are chains.http's. Requests
and answers go through orjson, never through web3's formatters (performance.md). On top of the
transport's errors (NodeUnavailable for an unreachable node or HTTP 5xx/408/429 without a JSON-RPC body,
NodeRejected(code=status) for another HTTP error, ResponseTooLarge):

* a JSON-RPC error object, whatever the HTTP status  -> NodeRejected(code=the error's code)
* malformed JSON, wrong shapes, missing or unknown ids -> ChainDataError

An answer over the size limit is ResponseTooLarge, and the caller can ask for less (a runaway eth_getLogs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, Unpack

import orjson

from chains.base import (
    DEFAULT_MAX_RESPONSE_BYTES,
    ChainDataError,
    ChainSettings,
    NodeRejected,
)
from chains.http import HttpAnswer, HttpTransport, ResponseTooLarge, TransportOptions, transport_options

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "Call", "JsonRpcClient", "ResponseTooLarge"]

T = TypeVar("T")
Call = tuple[str, Sequence[Any]]


class JsonRpcClient:
    """JSON-RPC over HTTP(S) to one node at a time (`url`: one URL, or several for fail-over). Safe for
    concurrent use from one event loop."""

    def __init__(self, url: str | Sequence[str], **options: Unpack[TransportOptions]) -> None:
        self._http = HttpTransport(url, headers={"Content-Type": "application/json"}, **options)
        self._next_id = 1

    @classmethod
    def for_settings(cls, settings: ChainSettings) -> JsonRpcClient:
        """The client an adapter uses for its chain's settings (URLs, credentials, limits, hooks)."""
        return cls(settings.urls, **transport_options(settings))

    @property
    def url(self) -> str:
        """The URL in use."""
        return self._http.url

    async def close(self) -> None:
        await self._http.close()

    async def call(self, method: str, params: Sequence[Any] = (), *, timeout_s: float | None = None) -> Any:
        """The `result` of one call; NodeRejected if the node answers with an error object."""
        request_id = self._take_ids(1)
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}

        def frame(answer: Any) -> Any:
            if not isinstance(answer, dict):
                kind = type(answer).__name__
                raise ChainDataError(f"{method}: expected a JSON-RPC object, got {kind}", cause=answer)
            if answer.get("id") != request_id and "error" not in answer:
                got = answer.get("id")
                raise ChainDataError(f"{method}: answer id {got!r} is not {request_id}", cause=answer)
            return _result(answer, method)

        return await self._post(payload, method, method, timeout_s, frame)

    async def batch(self, calls: Sequence[Call], *, timeout_s: float | None = None) -> list[Any]:
        """The results of `calls`, in the order given (answers are matched by id, not position).

        One error object in the batch raises NodeRejected for the whole batch: callers here only batch
        reads that should all succeed.
        """
        if not calls:
            return []
        first = self._take_ids(len(calls))
        ids = range(first, first + len(calls))
        payload = [
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)}
            for request_id, (method, params) in zip(ids, calls, strict=True)
        ]
        label = f"batch of {len(calls)} ({calls[0][0]}...)"

        def frame(answer: Any) -> list[Any]:
            if isinstance(answer, dict) and "error" in answer:
                # The node refused the batch as a whole (e.g. batches disabled): raises.
                _result(answer, label)
            if not isinstance(answer, list):
                kind = type(answer).__name__
                raise ChainDataError(f"{label}: expected a JSON array, got {kind}", cause=answer)
            by_id = _index_by_id(answer, label)
            missing = [request_id for request_id in ids if request_id not in by_id]
            if missing or len(by_id) != len(calls):
                message = f"{label}: answers missing or unexpected (missing ids {missing[:5]})"
                raise ChainDataError(message, cause=answer)
            return [_result(by_id[request_id], calls[i][0]) for i, request_id in enumerate(ids)]

        return await self._post(payload, calls[0][0], label, timeout_s, frame)

    # ------------------------------------------------------------------------------------ framing

    def _take_ids(self, count: int) -> int:
        first = self._next_id
        self._next_id += count
        return first

    async def _post(
        self, payload: object, metric: str, label: str, timeout_s: float | None, frame: Callable[[Any], T]
    ) -> T:
        def decode(answer: HttpAnswer) -> T:
            return frame(_parse(answer, label))

        # safe=True: every call this project makes is a read, so repeating one after a dropped
        # keep-alive connection is harmless.
        return await self._http.request(
            "POST",
            body=orjson.dumps(payload),
            metric=metric,
            label=label,
            timeout_s=timeout_s,
            safe=True,
            framed=_carries_jsonrpc,
            decode=decode,
        )


def _parse(answer: HttpAnswer, label: str) -> Any:
    """The parsed body of a 2xx answer, or of an error status that carries a JSON-RPC body."""
    try:
        return orjson.loads(answer.body)
    except orjson.JSONDecodeError as exc:
        snippet = answer.body[:200].decode("utf-8", "replace")
        raise ChainDataError(f"{label}: answer is not JSON: {snippet}", cause=exc) from None


def _carries_jsonrpc(answer: HttpAnswer) -> bool:
    """An HTTP error status with a JSON-RPC body is the node's answer, not an outage: bitcoind sends its
    RPC errors with HTTP 500 (or 404 for an unknown method)."""
    try:
        return _is_jsonrpc(orjson.loads(answer.body))
    except orjson.JSONDecodeError:
        return False


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
