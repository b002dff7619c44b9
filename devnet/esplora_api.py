"""A local Esplora REST API served from a real Bitcoin regtest node, for tests and by hand.

It is the API's shape served from real data, not a fake chain: every answer is read from a bcoin (or
Bitcoin Core) regtest node through its JSON-RPC at the moment it is asked (getbestblockhash,
getblockcount, getblockhash, `getblock HASH 0`, getrawmempool, `getrawtransaction TXID 0|1`,
getblockheader), so blocks, reorgs, mempool and double-spends are the node's own. It answers the eight
endpoints the `esplora` adapter uses the way Blockstream's electrs does, under a path prefix like the
public servers (`http://127.0.0.1:PORT/api` as `https://mempool.space/signet/api`):

    GET /blocks/tip/hash, /blocks/tip/height         text
    GET /block-height/:height                        text; 404 "Block not found" above the tip
    GET /block/:hash/header                          80-byte header as hex text
    GET /block/:hash/raw, /tx/:txid/raw              application/octet-stream
    GET /mempool/txids                               JSON array
    GET /tx/:txid/status                             JSON; {"confirmed": false} also for an unknown
                                                     txid, as electrs answers

Like electrs: a malformed hash or height is 400, an unknown block or transaction 404, any other path
404 "endpoint does not exist". The node being unreachable is 503, a node error 502.

For tests: `requests` counts the requests per endpoint pattern, `max_in_flight` is the most answered at
once, `faults` maps an endpoint pattern ("/tx/:txid/status") to an HTTP status answered instead (429 to
play a rate-limited public server) and `delays` to seconds waited before answering (a slow server).

    async with EsploraApi.for_node(node) as api:
        ...  # chains.bitcoin: adapter: esplora, rpc_url: api.url

By hand: `python -m devnet.esplora_api` starts a funded bcoin regtest node and serves its API
(or `--node-url URL` with RPC credentials in $NODE_RPC_USER / $NODE_RPC_PASSWORD serves another node's).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import os
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from devnet import btc_tools
from devnet.bcoin import BcoinNode

DEFAULT_PREFIX = "/api"
NOT_FOUND_CODES = frozenset({-1, -5})  # bcoin's "not found"; Core's RPC_INVALID_ADDRESS_OR_KEY
HEIGHT_OUT_OF_RANGE = -8  # Core's getblockhash above the tip
_HASH = re.compile(r"[0-9a-f]{64}").fullmatch
_NODE_TIMEOUT = aiohttp.ClientTimeout(total=30)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _NodeError(Exception):
    """The node answered a JSON-RPC error (code, message) or could not be reached (code None)."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class EsploraApi:
    """An Esplora REST API on 127.0.0.1 answering from one regtest node's JSON-RPC (module docstring)."""

    def __init__(
        self,
        rpc_url: str,
        rpc_user: str,
        rpc_password: str,
        *,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._rpc_url = rpc_url
        token = base64.b64encode(f"{rpc_user}:{rpc_password}".encode()).decode("ascii")
        self._auth = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.prefix = prefix.rstrip("/")
        self.requests: collections.Counter[str] = collections.Counter()
        self.faults: dict[str, int] = {}
        self.delays: dict[str, float] = {}
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests ever answered at once
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @classmethod
    def for_node(cls, node: BcoinNode, *, prefix: str = DEFAULT_PREFIX) -> EsploraApi:
        return cls(node.rpc_url, node.rpc_user, node.rpc_password, prefix=prefix)

    @property
    def url(self) -> str:
        """The API's base URL (what the config's rpc_url takes), e.g. http://127.0.0.1:41234/api."""
        if self._port is None:
            raise RuntimeError("the Esplora API is not running")
        return f"http://127.0.0.1:{self._port}{self.prefix}"

    # -------------------------------------------------------------------------------- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0: a free port the kernel picks; the same port again after a stop())."""
        app = web.Application()
        routes: list[tuple[str, Handler]] = [
            ("/blocks/tip/hash", self._tip_hash),
            ("/blocks/tip/height", self._tip_height),
            ("/block-height/{height}", self._block_height),
            ("/block/{hash}/header", self._block_header),
            ("/block/{hash}/raw", self._block_raw),
            ("/mempool/txids", self._mempool_txids),
            ("/tx/{txid}/raw", self._tx_raw),
            ("/tx/{txid}/status", self._tx_status),
        ]
        for path, handler in routes:
            app.router.add_get(self.prefix + path, self._guarded(path, handler))
        app.router.add_route("*", "/{tail:.*}", self._no_endpoint)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port if port else (self._port or 0))
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop answering (connections are refused, as from a server that is down); start() again later."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> EsploraApi:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --------------------------------------------------------------------------------- handlers

    def _guarded(self, pattern: str, handler: Handler) -> Handler:
        """Count the request, play a fault if one is set, and turn errors into electrs-like answers."""
        endpoint = pattern.replace("{", ":").replace("}", "")

        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests[endpoint] += 1
            fault = self.faults.get(endpoint)
            if fault is not None:
                return web.Response(status=fault, text=f"injected HTTP {fault}")
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if endpoint in self.delays:
                    await asyncio.sleep(self.delays[endpoint])
                return await handler(request)
            except _HttpError as exc:
                return web.Response(status=exc.status, text=exc.message)
            except _NodeError as exc:
                if exc.code is None:
                    return web.Response(status=503, text=f"node unavailable: {exc.message}")
                return web.Response(status=502, text=f"node error {exc.code}: {exc.message}")
            finally:
                self.in_flight -= 1

        return handle

    async def _no_endpoint(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text=f'endpoint does not exist "{request.path}"')

    async def _tip_hash(self, request: web.Request) -> web.StreamResponse:
        return _text(str(await self._rpc("getbestblockhash")))

    async def _tip_height(self, request: web.Request) -> web.StreamResponse:
        return _text(str(int(await self._rpc("getblockcount"))))

    async def _block_height(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["height"]
        if not text.isascii() or not text.isdigit():
            raise _HttpError(400, "invalid digit found in string")
        block_hash = await self._rpc_or_404("getblockhash", [int(text)], "Block not found")
        return _text(str(block_hash))

    async def _block_header(self, request: web.Request) -> web.StreamResponse:
        raw_hex = await self._block_hex(request)
        return _text(raw_hex[:160])

    async def _block_raw(self, request: web.Request) -> web.StreamResponse:
        return _binary(bytes.fromhex(await self._block_hex(request)))

    async def _block_hex(self, request: web.Request) -> str:
        block_hash = _hash_param(request, "hash")
        return str(await self._rpc_or_404("getblock", [block_hash, 0], "Block not found"))

    async def _mempool_txids(self, request: web.Request) -> web.StreamResponse:
        txids = await self._rpc("getrawmempool")
        return web.Response(body=orjson.dumps(txids), content_type="application/json")

    async def _tx_raw(self, request: web.Request) -> web.StreamResponse:
        txid = _hash_param(request, "txid")
        raw_hex = await self._rpc_or_404("getrawtransaction", [txid, 0], "Transaction not found")
        return _binary(bytes.fromhex(str(raw_hex)))

    async def _tx_status(self, request: web.Request) -> web.StreamResponse:
        """electrs: the confirming block on the main chain, else {"confirmed": false} (mempool or unknown)."""
        txid = _hash_param(request, "txid")
        status: dict[str, Any] = {"confirmed": False}
        try:
            info = await self._rpc("getrawtransaction", [txid, 1])
        except _NodeError as exc:
            if exc.code not in NOT_FOUND_CODES:
                raise
            info = None
        block_hash = info.get("blockhash") if isinstance(info, dict) else None
        if block_hash:
            header = await self._rpc("getblockheader", [block_hash])
            height = int(header["height"])
            # Only a block of the main chain confirms (a node may still name a block that left it).
            if await self._rpc("getblockhash", [height]) == block_hash:
                status = {
                    "confirmed": True,
                    "block_height": height,
                    "block_hash": block_hash,
                    "block_time": int(header["time"]),
                }
        return web.Response(body=orjson.dumps(status), content_type="application/json")

    # ------------------------------------------------------------------------------------- node

    async def _rpc_or_404(self, method: str, params: list[Any], not_found: str) -> Any:
        try:
            return await self._rpc(method, params)
        except _NodeError as exc:
            if exc.code in NOT_FOUND_CODES or exc.code == HEIGHT_OUT_OF_RANGE:
                raise _HttpError(404, not_found) from exc
            raise

    async def _rpc(self, method: str, params: list[Any] | None = None) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=_NODE_TIMEOUT)
        body = orjson.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": params or []})
        try:
            async with self._session.post(self._rpc_url, data=body, headers=self._auth) as resp:
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _NodeError(None, f"{type(exc).__name__}: {exc}") from exc
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _NodeError(None, f"HTTP {resp.status}: {raw[:200]!r}") from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            raise _NodeError(int(error.get("code", 0)), str(error.get("message", error)))
        return answer.get("result")


def _hash_param(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not _HASH(value):
        raise _HttpError(400, "Invalid hex string")
    return value


def _text(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/plain")


def _binary(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="application/octet-stream")


# ------------------------------------------------------------------------------------------ by hand


async def run_standalone(
    host: str, port: int, node_url: str | None, user: str, password: str, prefix: str
) -> None:
    """Serve until cancelled: from the node at `node_url`, or from a funded bcoin regtest node of its own."""
    async with contextlib.AsyncExitStack() as stack:
        node: BcoinNode | None = None
        if node_url is None:
            node = await stack.enter_async_context(BcoinNode())
            await asyncio.to_thread(btc_tools.fund, node)
            node_url, user, password = node.rpc_url, node.rpc_user, node.rpc_password
        api = EsploraApi(node_url, user, password, prefix=prefix)
        await api.start(host, port)
        stack.push_async_callback(api.stop)
        print(f"Esplora API on {api.url} (the rpc_url of `adapter: esplora`), from the node at {node_url}")
        if node is not None:
            print(f"node RPC {node.rpc_url}, wallet RPC {node.wallet_url}, user {user}, api key {password}")
        print("Ctrl-C to stop", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m devnet.esplora_api [--port 3002] [--node-url URL]`."""
    parser = argparse.ArgumentParser(description="Serve the Esplora REST API from a Bitcoin regtest node.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="path prefix of the API (default /api)")
    parser.add_argument(
        "--node-url",
        help="JSON-RPC URL of a running regtest node (credentials from $NODE_RPC_USER and "
        "$NODE_RPC_PASSWORD); default: start a funded bcoin regtest node",
    )
    args = parser.parse_args(argv)
    user = os.environ.get("NODE_RPC_USER", "")
    password = os.environ.get("NODE_RPC_PASSWORD", "")
    try:
        asyncio.run(run_standalone(args.host, args.port, args.node_url, user, password, args.prefix))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
