"""The API's one error shape, `{"error": {"code", "message", "field"}}`, for every 4xx and 5xx answer.

`RequestRefused` (watcher.errors) is what the address book raises; `Refused` adds the response headers some
refusals must carry (`WWW-Authenticate` on 401, `Retry-After` on 429). The codes are the document's
`Error.code` enum: a new one must be added there and to docs/api.md (a test compares the three).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from watcher.errors import RequestRefused

INVALID_JSON = "invalid_json"
INVALID_CURSOR = "invalid_cursor"
UNAUTHORIZED = "unauthorized"
WRONG_KEY_MODE = "wrong_key_mode"
FORBIDDEN = "forbidden"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
PAYLOAD_TOO_LARGE = "payload_too_large"
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
INVALID_FIELD = "invalid_field"
RATE_LIMITED = "rate_limited"
INTERNAL = "internal"

# aiohttp's own answers (no route, wrong method, body too large for it) in our shape.
_HTTP_CODES = {
    404: (NOT_FOUND, "no such path"),
    405: (METHOD_NOT_ALLOWED, "method not allowed on this path"),
    413: (PAYLOAD_TOO_LARGE, "the request body is too large"),
}


class Refused(RequestRefused):
    """A refusal made by the API layer itself, with the headers its status requires."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, field)
        self.headers = dict(headers or {})


def invalid(field: str, message: str) -> Refused:
    """A 422 naming the body field or query/path parameter at fault."""
    return Refused(422, INVALID_FIELD, message, field)


def error_response(
    status: int, code: str, message: str, field: str | None, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message, "field": field}}
    return web.json_response(body, status=status, headers=headers)


def refused_response(exc: RequestRefused) -> web.Response:
    headers = exc.headers if isinstance(exc, Refused) else None
    return error_response(exc.status, exc.code, exc.message, exc.field, headers)


def http_error_response(exc: web.HTTPException) -> web.Response:
    """aiohttp's HTTPException (routing, method, its own size bound) in the one shape; keeps `Allow`."""
    fallback = (INTERNAL if exc.status >= 500 else INVALID_FIELD, exc.reason)
    code, message = _HTTP_CODES.get(exc.status, fallback)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return error_response(exc.status, code, message, None, headers)
