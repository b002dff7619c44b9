"""Pages people look at, served on the API listener: server-side Jinja2 templates, a little plain
JavaScript and CSS from watcher/ui/static/ (nothing loaded from anywhere else: no CDN, no web fonts).

- `/pay/{payment_reference}`: the customer's checkout page (watcher/ui/checkout.py). No API key: the
  unguessable reference is the customer's right to see that one payment, as a hosted payment page's is.
- `/ui/static/...`: the CSS and JavaScript, public.

`setup` adds the routes to the API's aiohttp app and the security headers to every response under these
paths (watcher/ui/pages.py); `is_public` tells the API's key gate which paths it does not guard.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from watcher.config import Config
from watcher.payment_book import PaymentBook
from watcher.ui import checkout, pages

PUBLIC_PREFIXES = (checkout.PREFIX, pages.STATIC_PREFIX)


def is_public(path: str) -> bool:
    """Whether `path` is a page of this package that needs no API key (the API's gate lets it through)."""
    return path.startswith(PUBLIC_PREFIXES)


def setup(app: web.Application, config: Callable[[], Config], payments: PaymentBook) -> None:
    """Add the pages' routes to `app` and the security headers to their responses. `config` is called per
    request: a reload's new return_url applies to the next page."""
    app.add_routes(pages.static_routes())
    app.add_routes(checkout.Checkout(config, payments).routes())

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        if is_public(request.path):
            pages.secure(response)

    app.on_response_prepare.append(headers)
