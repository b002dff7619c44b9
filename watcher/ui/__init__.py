"""Pages people look at, served on the API listener: server-side Jinja2 templates, a little plain
JavaScript and CSS from watcher/ui/static/ (nothing loaded from anywhere else: no CDN, no web fonts).

- `/pay/{payment_reference}`: the customer's checkout page (watcher/ui/checkout.py). No API key: the
  unguessable reference is the customer's right to see that one payment, as a hosted payment page's is.
- `/ui/static/...`: the CSS and JavaScript, public.
- `/ui/...`: the back office (docs/back-office.md), behind its own gate: a session opened at /ui/signin
  with an integration's API key or the operator's password (watcher/ui/session.py, signin.py); the
  overview (office.py).

`setup` adds the routes to the API's aiohttp app, the back office's gate as the innermost middleware, and
the security headers to every response under these paths (watcher/ui/pages.py); `passes_api_gate` tells
the API's key gate which paths it leaves alone, `is_public` which need no sign-in at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler

from watcher.config import Config
from watcher.health import Health
from watcher.lag_history import LagHistory
from watcher.payment_book import PaymentBook
from watcher.ui import checkout, pages

OFFICE_PREFIX = "/ui/"
OFFICE_ROOT = "/ui"
PUBLIC_PREFIXES = (checkout.PREFIX, pages.STATIC_PREFIX)
PAGE_PREFIXES = (checkout.PREFIX, OFFICE_PREFIX)


def is_public(path: str) -> bool:
    """Whether `path` is a page of this package that needs neither an API key nor a session."""
    return path.startswith(PUBLIC_PREFIXES)


def passes_api_gate(path: str) -> bool:
    """Whether the API's key gate lets `path` through: the checkout (public) and the back office (its own
    gate, by session, guards it; its static files are public)."""
    return path.startswith(PAGE_PREFIXES) or path == OFFICE_ROOT


def setup(
    app: web.Application,
    config: Callable[[], Config],
    payments: PaymentBook,
    health: Health | None = None,
    lag: LagHistory | None = None,
) -> None:
    """Add the pages' routes to `app`, the back office's gate, and the security headers. `config` is
    called per request: a reload's new settings apply to the next page. `health` and `lag` are the
    daemon's (a server built without a daemon shows the chains as not started)."""
    # Imported here: the back office checks keys with watcher.api.auth, and watcher.api's package imports
    # this one (for `passes_api_gate`), so a module-level import would be a cycle.
    from watcher.ui.office import Overview
    from watcher.ui.records import Records
    from watcher.ui.session import Gate, Sessions
    from watcher.ui.signin import SignIn

    health = health or Health()
    sessions = Sessions()
    gate = Gate(config, sessions, time.monotonic)

    async def gated(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await gate.middleware(request, handler)

    app.middlewares.append(web.middleware(gated))  # innermost: after the API's error and key middlewares
    app.add_routes(pages.static_routes())
    app.add_routes(checkout.Checkout(config, payments).routes())
    app.add_routes(SignIn(config, sessions, time.monotonic).routes())
    app.add_routes(Overview(config, payments.store, health, lag or LagHistory(health)).routes())
    # The back office's other pages, before the catch-all below.
    app.add_routes(Records(config, payments.store, payments).routes())
    app.add_routes(
        [
            web.get(OFFICE_ROOT, _to_overview),
            # Anything else under /ui/ is the plain 404 page (behind the gate: no route is shown to
            # anyone signed out), not the API's JSON error.
            web.route("*", OFFICE_PREFIX + "{tail:.*}", _missing),
        ]
    )

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        if passes_api_gate(request.path):
            pages.secure(response)

    app.on_response_prepare.append(headers)


async def _to_overview(request: web.Request) -> web.Response:
    return web.Response(status=303, headers={"Location": OFFICE_PREFIX})


async def _missing(request: web.Request) -> web.Response:
    return pages.not_found()
