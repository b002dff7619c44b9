"""A JSON-RPC proxy in front of a REAL node (anvil or bcoin) whose misbehaviour a test switches at run time.

The daemon is pointed at `FaultyNode.url`; the node behind it keeps running and keeps its chain, and the
test decides, while the daemon runs, what the daemon sees:

* `pass_through()`: every request forwarded unchanged (the default);
* `refuse()`: the port stops listening (connection refused) and open connections are cut;
* `hang()`: requests are accepted and never answered (until the mode changes: then the connection drops);
* `http_500()`: HTTP 500 with a plain-text body, as a broken load balancer answers;
* `malformed()`: HTTP 200 with a truncated JSON body;
* `wrong_types(kind)`: valid JSON-RPC from the real node with the results spoiled: "object" (every string
  and number becomes an object, so a block number is `{"value": "0x1a"}`), "nonhex" (hashes and raw hex
  are no longer hex) or "null" (a null result where an object is expected);
* `huge(total_bytes)`: HTTP 200 streaming `total_bytes` of one endless JSON string, chunked, with no
  Content-Length, so only a client that bounds what it reads stops early (`huge_bytes_sent` tells);
* `behind(blocks)`: a node whose head is `blocks` below the real one: head queries are rewritten (EVM
  eth_blockNumber, eth_getBlockByNumber("latest"); Bitcoin getblockcount, getbestblockhash,
  getblockchaininfo), heights above the fake head are refused as a node that has not seen them refuses
  them (EVM: a null block, logs clamped; Bitcoin: getblockhash error -8);
* `stuck()`: the same with the head frozen at the real height of the moment of the call, while the node
  claims to be in sync;
* `wrong_chain(...)`: another chain: EVM eth_chainId and/or the genesis hash differ; Bitcoin the genesis
  hash (getblockhash 0) and/or getblockchaininfo's `chain` differ;
* `retarget(url)`: forward to another real node from now on (a node replaced behind the same URL).

JSON-RPC batches are rewritten call by call and forwarded as one upstream batch. The Authorization header
of the daemon's request is passed on (bcoin needs it). `requests` counts HTTP requests by mode and
`calls` JSON-RPC calls by method, so a test can tell that the daemon kept retrying.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import web

Family = Literal["evm", "bitcoin"]
WrongKind = Literal["object", "nonhex", "null"]

EVM_HEAD_TAGS = frozenset({"latest", "pending", "safe", "finalized"})
BITCOIN_OUT_OF_RANGE = -8  # Core's getblockhash above the tip
OTHER_EVM_GENESIS = "0x" + "6e" * 32
OTHER_BITCOIN_GENESIS = "0f" * 32
MALFORMED_BODY = b'{"jsonrpc": "2.0", "id": 1, "result": {"number": "0x1'
HUGE_CHUNK = 1 << 20
_HEX_HASH = re.compile(r"(0x)?[0-9a-fA-F]{64,}")


class Mode(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    HANG = "hang"
    HTTP_500 = "http_500"
    MALFORMED = "malformed"
    WRONG_TYPES = "wrong_types"
    HUGE = "huge"
    BEHIND = "behind"
    STUCK = "stuck"
    WRONG_CHAIN = "wrong_chain"


Answer = dict[str, Any]  # {"result": ...} or {"error": {...}}, without jsonrpc/id
Upstream = tuple[str, list[Any]]
CallFilter = Callable[[str, list[Any]], bool]  # (method, params) -> whether the fault applies


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one call is answered: the upstream calls to make, and how their answers become the answer."""

    calls: tuple[Upstream, ...]
    combine: Callable[[list[Answer]], Answer]


def _forward(method: str, params: list[Any], then: Callable[[Any], Any] | None = None) -> _Plan:
    def combine(answers: list[Answer]) -> Answer:
        (answer,) = answers
        if then is None or "error" in answer:
            return answer
        return {"result": then(answer["result"])}

    return _Plan(((method, params),), combine)


def _local(result: Any) -> _Plan:
    return _Plan((), lambda _: {"result": result})


def _error(code: int, message: str) -> _Plan:
    return _Plan((), lambda _: {"error": {"code": code, "message": message}})


def _outcome(raw: Any) -> Answer:
    if not isinstance(raw, dict):
        return {"error": {"code": -32603, "message": f"proxy: upstream answered {raw!r:.100}"}}
    if raw.get("error") is not None:
        return {"error": raw["error"]}
    return {"result": raw.get("result")}


class FaultyNode:
    """An aiohttp server on 127.0.0.1 in front of one real node; see the module docstring."""

    def __init__(self, upstream: str, family: Family) -> None:
        self.upstream = upstream
        self.family = family
        self.mode = Mode.PASS
        self.port = 0
        self.requests: Counter[Mode] = Counter()
        self.calls: Counter[str] = Counter()
        # Every call that reached the proxy: (the upstream it was meant for, method, params).
        self.call_log: list[tuple[str, str, list[Any]]] = []
        self.huge_bytes_sent = 0
        self._huge_total = 0
        self._wrong_kind: WrongKind = "object"
        self._wrong_only: CallFilter | None = None
        self._behind_blocks = 0
        self._frozen_height = 0
        self._chain_id: int | None = None
        self._genesis = True
        self._bitcoin_chain: str | None = None
        self._released = asyncio.Event()  # set when the mode changes: hung requests then drop
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._seen = asyncio.Event()  # set at every request
        self._auth: str | None = None  # the daemon's Authorization header, for the proxy's own calls

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> FaultyNode:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        await self._listen()
        return self

    async def close(self) -> None:
        self._released.set()
        await self._stop_listening()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultyNode:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        # A short shutdown timeout: hung handlers are cut when the port closes.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _stop_listening(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    # ------------------------------------------------------------------------------ switches

    async def _switch(self, mode: Mode) -> None:
        if mode is not Mode.REFUSE and self._runner is None:
            await self._listen()
        self.mode = mode
        self._released.set()
        self._released = asyncio.Event()
        if mode is Mode.REFUSE:
            await self._stop_listening()

    async def pass_through(self) -> None:
        await self._switch(Mode.PASS)

    async def refuse(self) -> None:
        await self._switch(Mode.REFUSE)

    async def hang(self) -> None:
        await self._switch(Mode.HANG)

    async def http_500(self) -> None:
        await self._switch(Mode.HTTP_500)

    async def malformed(self) -> None:
        await self._switch(Mode.MALFORMED)

    async def wrong_types(self, kind: WrongKind, only: CallFilter | None = None) -> None:
        """Spoil results (see `spoil`); with `only`, just those of the calls it accepts."""
        self._wrong_kind, self._wrong_only = kind, only
        await self._switch(Mode.WRONG_TYPES)

    async def huge(self, total_bytes: int = 300 * 1024 * 1024) -> None:
        self._huge_total = total_bytes
        self.huge_bytes_sent = 0
        await self._switch(Mode.HUGE)

    async def behind(self, blocks: int) -> None:
        self._behind_blocks = blocks
        await self._switch(Mode.BEHIND)

    async def stuck(self) -> int:
        """Freeze the head at the real node's current height; returns that height."""
        self._frozen_height = await self._real_height(self._auth)
        await self._switch(Mode.STUCK)
        return self._frozen_height

    async def wrong_chain(
        self, *, chain_id: int | None = None, genesis: bool = True, bitcoin_chain: str | None = None
    ) -> None:
        """Look like another chain: another EVM chain id, another genesis hash, another Bitcoin network."""
        self._chain_id, self._genesis, self._bitcoin_chain = chain_id, genesis, bitcoin_chain
        await self._switch(Mode.WRONG_CHAIN)

    async def retarget(self, upstream: str) -> None:
        """Forward to another node from now on (the mode stays)."""
        self.upstream = upstream

    async def wait_requests(self, mode: Mode, count: int, timeout_s: float = 20.0) -> None:
        """Wait until `count` requests were made in `mode` (the daemon keeps retrying)."""
        async with asyncio.timeout(timeout_s):
            while self.requests[mode] < count:
                self._seen.clear()
                await self._seen.wait()

    # ------------------------------------------------------------------------------ handling

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        self.requests[mode] += 1
        self._seen.set()
        raw = await request.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            return web.Response(status=400, text="proxy: the request is not JSON")
        items = payload if isinstance(payload, list) else [payload]
        for item in items:
            self.calls[str(item.get("method"))] += 1
            self.call_log.append((self.upstream, str(item.get("method")), list(item.get("params") or [])))
        if mode is Mode.HANG:
            await self._released.wait()
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if mode is Mode.HTTP_500:
            return web.Response(status=500, text="500 Internal Server Error: upstream exploded")
        if mode is Mode.MALFORMED:
            return web.Response(status=200, body=MALFORMED_BODY, content_type="application/json")
        if mode is Mode.HUGE:
            return await self._huge(request)
        auth = request.headers.get("Authorization")
        self._auth = auth or self._auth
        try:
            answers = await self._answer(items, auth, mode)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"proxy: upstream failed: {exc}")
        body = answers if isinstance(payload, list) else answers[0]
        return web.Response(body=json.dumps(body).encode(), content_type="application/json")

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        filler = b"a" * HUGE_CHUNK
        try:
            await resp.write(b'{"jsonrpc": "2.0", "id": 1, "result": "')
            sent = 0
            while sent < self._huge_total:
                await resp.write(filler)
                sent += len(filler)
                self.huge_bytes_sent += len(filler)
            await resp.write(b'"}')
            await resp.write_eof()
        except (ConnectionError, OSError):
            pass  # the client stopped reading and closed: what a bounded client does
        return resp

    async def _answer(self, items: Sequence[Any], auth: str | None, mode: Mode) -> list[dict[str, Any]]:
        head = await self._fake_head(auth, mode)
        plans = [self._plan(str(i.get("method")), list(i.get("params") or []), mode, head) for i in items]
        upstream = [call for plan in plans for call in plan.calls]
        results = await self._upstream(upstream, auth) if upstream else []
        answers: list[dict[str, Any]] = []
        at = 0
        for item, plan in zip(items, plans, strict=True):
            answer = plan.combine(results[at : at + len(plan.calls)])
            at += len(plan.calls)
            if mode is Mode.WRONG_TYPES and "result" in answer and self._spoils(item):
                answer = {"result": spoil(answer["result"], self._wrong_kind)}
            answers.append({"jsonrpc": "2.0", "id": item.get("id"), **answer})
        return answers

    def _spoils(self, item: Any) -> bool:
        only = self._wrong_only
        return only is None or only(str(item.get("method")), list(item.get("params") or []))

    async def _fake_head(self, auth: str | None, mode: Mode) -> int | None:
        if mode is Mode.BEHIND:
            return max(0, await self._real_height(auth) - self._behind_blocks)
        if mode is Mode.STUCK:
            return self._frozen_height
        return None

    async def _real_height(self, auth: str | None) -> int:
        method = "eth_blockNumber" if self.family == "evm" else "getblockcount"
        (answer,) = await self._upstream([(method, [])], auth)
        result = answer["result"]
        return int(result, 16) if isinstance(result, str) else int(result)

    async def _upstream(self, calls: Sequence[Upstream], auth: str | None) -> list[Answer]:
        assert self._session is not None
        ids = [next(self._ids) for _ in calls]
        batch = [
            {"jsonrpc": "2.0", "id": i, "method": m, "params": p}
            for i, (m, p) in zip(ids, calls, strict=True)
        ]
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        async with self._session.post(self.upstream, data=json.dumps(batch), headers=headers) as resp:
            raw = json.loads(await resp.read())
        if isinstance(raw, dict):  # the node refused the batch as a whole
            return [_outcome(raw) for _ in calls]
        by_id = {item.get("id"): item for item in raw if isinstance(item, dict)}
        return [_outcome(by_id.get(i)) for i in ids]

    # ------------------------------------------------------------------------------ rewriting

    def _plan(self, method: str, params: list[Any], mode: Mode, head: int | None) -> _Plan:
        if head is not None:
            return (
                self._evm_capped(method, params, head)
                if self.family == "evm"
                else self._btc_capped(method, params, head)
            )
        if mode is Mode.WRONG_CHAIN:
            return (
                self._evm_other(method, params) if self.family == "evm" else self._btc_other(method, params)
            )
        return _forward(method, params)

    def _evm_capped(self, method: str, params: list[Any], head: int) -> _Plan:
        if method == "eth_blockNumber":
            return _local(hex(head))
        if method == "eth_getBlockByNumber":
            tag, *rest = params
            height = head if tag in EVM_HEAD_TAGS else 0 if tag == "earliest" else int(tag, 16)
            return _local(None) if height > head else _forward(method, [hex(height), *rest])
        if method == "eth_getLogs" and "blockHash" not in params[0]:
            query = dict(params[0])
            first = _evm_height(query.get("fromBlock", "latest"), head)
            last = min(_evm_height(query.get("toBlock", "latest"), head), head)
            if first > last:
                return _local([])
            return _forward(method, [{**query, "fromBlock": hex(first), "toBlock": hex(last)}])
        if method == "eth_getTransactionReceipt":
            return _forward(method, params, lambda r: None if _evm_above(r, head) else r)
        if method == "eth_getTransactionByHash":
            hidden = {"blockNumber": None, "blockHash": None, "transactionIndex": None}
            return _forward(method, params, lambda t: {**t, **hidden} if _evm_above(t, head) else t)
        return _forward(method, params)

    def _btc_capped(self, method: str, params: list[Any], head: int) -> _Plan:
        if method == "getblockcount":
            return _local(head)
        if method == "getbestblockhash":
            return _forward("getblockhash", [head])
        if method == "getblockchaininfo":

            def combine(answers: list[Answer]) -> Answer:
                info, best = answers
                if "error" in info or "error" in best:
                    return info if "error" in info else best
                return {"result": {**info["result"], "blocks": head, "bestblockhash": best["result"]}}

            return _Plan((("getblockchaininfo", []), ("getblockhash", [head])), combine)
        if method == "getblockhash" and params and isinstance(params[0], int) and params[0] > head:
            return _error(BITCOIN_OUT_OF_RANGE, "Block height out of range")
        return _forward(method, params)

    def _evm_other(self, method: str, params: list[Any]) -> _Plan:
        if method == "eth_chainId" and self._chain_id is not None:
            return _local(hex(self._chain_id))
        if method == "eth_getBlockByNumber" and params and params[0] in ("0x0", "earliest") and self._genesis:
            return _forward(method, params, lambda b: {**b, "hash": OTHER_EVM_GENESIS} if b else b)
        return _forward(method, params)

    def _btc_other(self, method: str, params: list[Any]) -> _Plan:
        if method == "getblockhash" and params == [0] and self._genesis:
            return _local(OTHER_BITCOIN_GENESIS)
        if method == "getblockchaininfo" and self._bitcoin_chain is not None:
            chain = self._bitcoin_chain
            return _forward(method, params, lambda info: {**info, "chain": chain})
        return _forward(method, params)


def _evm_height(tag: Any, head: int) -> int:
    if tag in EVM_HEAD_TAGS:
        return head
    if tag == "earliest":
        return 0
    return int(tag, 16)


def _evm_above(obj: Any, head: int) -> bool:
    number = obj.get("blockNumber") if isinstance(obj, dict) else None
    return isinstance(number, str) and int(number, 16) > head


def spoil(result: Any, kind: WrongKind) -> Any:
    """A result of the wrong type: see `FaultyNode.wrong_types`."""
    if kind == "null":
        return None
    if kind == "object":
        if isinstance(result, dict):
            return {key: spoil(value, kind) for key, value in result.items()}
        if isinstance(result, list):
            return {"items": result}
        return {"value": result}
    if isinstance(result, dict):
        return {key: spoil(value, kind) for key, value in result.items()}
    if isinstance(result, list):
        return [spoil(value, kind) for value in result]
    if isinstance(result, str) and _HEX_HASH.fullmatch(result):
        prefix = "0x" if result.startswith("0x") else ""
        return prefix + "zz" + result[len(prefix) + 2 :]
    return result
