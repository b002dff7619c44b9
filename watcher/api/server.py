"""The merchant API's listener: aiohttp under /v1, two middlewares and the routes of watcher.api.views.

`_errors` (outermost) turns every refusal, aiohttp's own 404/405/413 and any crash into the one error
shape and logs each refusal with the key's prefix, the client and the path; `_gate` authenticates every
route (key -> integration, client network, rate) but the document and the pages of watcher.ui (the
checkout: the payment reference in its path is the customer's capability, and customers come from any
network; the back office under /ui/, which its own session gate guards). `config` is replaced on
reload, and both read it per request, so new keys and networks apply to the next request.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from watcher.address_book import AddressBook
from watcher.api import auth
from watcher.api.refusals import INTERNAL, error_response, http_error_response, refused_response
from watcher.api.views import INTEGRATION, Views
from watcher.config import Config
from watcher.errors import RequestRefused
from watcher.health import Health
from watcher.lag_history import LagHistory
from watcher.logs import get_logger
from watcher.payment_book import PaymentBook
from watcher.ui import passes_api_gate
from watcher.ui import setup as setup_pages

log = get_logger(component="api")

KEY_PREFIX = web.RequestKey("key_prefix", str)
_PUBLIC_PATHS = frozenset({"/v1/openapi.json"})


class ApiServer:
    def __init__(
        self,
        config: Config,
        book: AddressBook,
        payments: PaymentBook | None = None,
        health: Health | None = None,
        lag: LagHistory | None = None,
    ) -> None:
        self.config = config
        self.book = book
        self.payments = payments or PaymentBook(book)  # shares the book's config, counter and `watch`
        self.limiter = auth.RateLimiter()
        self.views = Views(lambda: self.config, book, self.payments)
        # Request bodies are read by inputs.read_body against config.api.max_body_bytes (which a reload may
        # change), from the stream: aiohttp's own bound (client_max_size) only applies to request.read().
        self.app = web.Application(middlewares=[self._middleware(self._errors), self._middleware(self._gate)])
        self.app.add_routes(self.views.routes())
        # `health` and `lag`: the daemon's, which the back office's overview shows.
        setup_pages(self.app, lambda: self.config, self.payments, health, lag)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.api.host, self.config.api.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.api.port
        log.info("api_listening", host=self.config.api.host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _middleware(method: Middleware) -> Middleware:
        # aiohttp takes a function marked as a (new-style) middleware; a bound method cannot be marked.
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await method(request, handler)

        return web.middleware(middleware)

    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except RequestRefused as e:
            response = refused_response(e)
        except web.HTTPException as e:
            response = http_error_response(e)
        except Exception:
            # The handler's transaction was rolled back; the details go to the log, not to the client.
            log.exception("api_request_failed", method=request.method, path=request.path)
            response = error_response(500, INTERNAL, "internal error; nothing was changed", None)
        if response.status >= 400:
            self._log_refusal(request, response.status)
        return response

    def _log_refusal(self, request: web.Request, status: int) -> None:
        log.warning(
            "api_request_refused",
            status=status,
            method=request.method,
            path=request.path,
            client=request.remote,
            key_prefix=request.get(KEY_PREFIX),
        )

    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # An unknown path or method is answered (404/405) before any key is looked at.
        if request.match_info.http_exception is not None or request.path in _PUBLIC_PATHS:
            return await handler(request)
        if passes_api_gate(request.path):
            return await handler(request)
        config = self.config
        auth.check_any_client(config, request.remote)
        presented = auth.presented_key(request.headers.get("Authorization"))
        if presented is not None:
            request[KEY_PREFIX] = presented.prefix  # only the prefix ever names a key in logs
        integration = auth.identify(config, presented)
        auth.check_client(integration, request.remote)
        assert presented is not None  # identify refuses a request without a key
        self.limiter.check(presented, time.monotonic(), config.api.rate_per_s, config.api.burst)
        request[INTEGRATION] = integration
        return await handler(request)
