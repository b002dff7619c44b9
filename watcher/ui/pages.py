"""What every page shares: the Jinja2 environment (autoescape on: every string a merchant or a customer
chose is HTML-escaped), the static files and the security headers.

The headers, on every page, file and error under the UI's paths:
- Content-Security-Policy: nothing but this origin's own files (`default-src 'none'`, then 'self' for
  scripts, styles, images and the status polls); no inline script or style, so even an escaping mistake
  could not run a script; `frame-ancestors 'none'` (no framing: no clickjacking of a copy button);
  `base-uri 'none'` and `form-action 'self'`.
- X-Frame-Options: DENY, the same for browsers without CSP level 2.
- X-Content-Type-Options: nosniff (a status JSON or SVG is never run as a script).
- Referrer-Policy: no-referrer. The checkout's URL holds the payment reference, the customer's capability:
  a link followed from the page must not send it to another site.
- Cache-Control: no-store on pages (a status seen once is not shown again from a cache); static files are
  versioned by their content hash and cached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

STATIC_PREFIX = "/ui/static/"
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("watcher.ui", "templates"),
    autoescape=True,  # every template, whatever its name
    undefined=jinja2.StrictUndefined,  # a missing value is a crash in the tests, not an empty string
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str  # the first hex digits of its SHA-256: its URL changes when it does


def _load_static() -> dict[str, StaticFile]:
    """The files of watcher/ui/static/, read once: served from memory by name, so no request path ever
    reaches the file system."""
    found: dict[str, StaticFile] = {}
    for item in resources.files("watcher.ui").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in _STATIC_TYPES:
            body = item.read_bytes()
            found[item.name] = StaticFile(body, _STATIC_TYPES[suffix], hashlib.sha256(body).hexdigest()[:12])
    return found


STATIC = _load_static()


def static_url(name: str) -> str:
    return f"{STATIC_PREFIX}{name}?v={STATIC[name].version}"


_env.globals["static_url"] = static_url


def secure(response: web.StreamResponse) -> None:
    """The security headers (this module's docstring says why each)."""
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")


def render(template: str, status: int = 200, **context: Any) -> web.Response:
    html = _env.get_template(template).render(**context)
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def not_found() -> web.Response:
    """A plain 404 page that says nothing else: not whether the reference was malformed, unknown, or
    another's."""
    return render("not_found.html", status=404)


async def _static(request: web.Request) -> web.Response:
    found = STATIC.get(request.match_info["name"])
    if found is None:
        return not_found()
    headers = {"Cache-Control": "public, max-age=86400"}
    return web.Response(body=found.body, content_type=found.content_type, headers=headers)


def static_routes() -> list[web.RouteDef]:
    return [web.get(STATIC_PREFIX + "{name}", _static)]
