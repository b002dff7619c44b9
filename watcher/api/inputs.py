"""Request input, validated by hand in small functions (no schema validator at run time: a take must stay
within 10 ms at p99). Each refusal names the field; the tests check the document agrees with what passes.

Bodies: `Content-Type: application/json`, read with a bound (never the whole body first), one JSON object
with known fields only. Query parameters: known names only, each given once.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from aiohttp import web

from watcher.address_book import MAX_PAGE, check_foreign_id
from watcher.api.refusals import (
    INVALID_CURSOR,
    INVALID_FIELD,
    INVALID_JSON,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    Refused,
    invalid,
)
from watcher.model import DepositStatus, PaymentStatus

MAX_LIMIT = MAX_PAGE
DEFAULT_LIMIT = 100
# The store's ids are SQLite integers.
MAX_ID = 2**63 - 1
_CHUNK = 16 * 1024
_DIGITS = re.compile(r"[0-9]{1,19}")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
_CURSOR = re.compile(r"([a-z]+):([0-9]{1,19})")


# ------------------------------------------------------------------------------------------------ bodies


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it passes `max_bytes` (announced or as it arrives)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    data = bytearray()
    while True:
        chunk = await request.content.read(min(_CHUNK, max_bytes + 1 - len(data)))
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > max_bytes:
            raise _too_large(max_bytes)


def _too_large(max_bytes: int) -> Refused:
    return Refused(413, PAYLOAD_TOO_LARGE, f"the request body is over {max_bytes} bytes")


async def read_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object: 415 without the JSON content type, 400 if it is not JSON, 422 if it is
    not an object or names a key twice."""
    if request.content_type != "application/json":
        raise Refused(415, UNSUPPORTED_MEDIA_TYPE, "send the body as Content-Type: application/json")
    raw = await read_body(request, max_bytes)
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refused(400, INVALID_JSON, "the body is not valid UTF-8 JSON") from None
    if not isinstance(value, dict):
        raise Refused(422, INVALID_FIELD, "the body must be a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:  # a RequestRefused: json.loads lets it through, the caller does not catch it
            raise invalid(key, "given twice in the body")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_fields(body: Mapping[str, Any], required: Collection[str], optional: Collection[str] = ()) -> None:
    """422 for the first unknown field, then for the first missing one."""
    for name in body:
        if name not in required and name not in optional:
            known = ", ".join(sorted((*required, *optional)))
            raise invalid(name, f"unknown field (known: {known})")
    for name in required:
        if name not in body:
            raise invalid(name, "missing required field")


def text_field(body: Mapping[str, Any], name: str) -> str:
    value = body[name]
    if not isinstance(value, str):
        raise invalid(name, f"must be a string, got {_json_type(value)}")
    if not value:
        raise invalid(name, "must not be empty")
    return value


def foreign_id(value: Any, field: str = "foreign_id") -> str:
    """1..255 characters, none of them a control character (the book's own rule, checked before any read)."""
    return check_foreign_id(value, field)


def int_field(body: Mapping[str, Any], name: str, minimum: int = 0) -> int:
    value = body[name]
    # bool is an int in Python: `true` must not become a height of 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(name, f"must be an integer, got {_json_type(value)}")
    if not minimum <= value <= MAX_ID:
        raise invalid(name, f"must be between {minimum} and {MAX_ID}")
    return value


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    if value is None:
        return "null"
    return names.get(type(value), "an object")


# ------------------------------------------------------------------------------------------------ query


def query(request: web.Request, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters, each known and given once; 422 naming the first that is not."""
    params: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise invalid(name, f"unknown query parameter (known: {known})")
        if name in params:
            raise invalid(name, "given more than once")
        params[name] = value
    return params


def int_param(params: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not minimum <= int(text) <= maximum:
        raise invalid(name, f"must be an integer from {minimum} to {maximum}")
    return int(text)


def limit_param(params: Mapping[str, str]) -> int:
    return int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)


def text_param(params: Mapping[str, str], name: str) -> str | None:
    text = params.get(name)
    if text is not None and not text:
        raise invalid(name, "must not be empty")
    return text


def foreign_id_param(params: Mapping[str, str]) -> str | None:
    text = params.get("foreign_id")
    return None if text is None else foreign_id(text)


def status_param(params: Mapping[str, str]) -> str | None:
    text = params.get("status")
    if text is not None and text not in DepositStatus.__members__.values():
        raise invalid("status", f"must be one of {', '.join(DepositStatus)}")
    return text


def payment_status_param(params: Mapping[str, str]) -> str | None:
    text = params.get("status")
    if text is not None and text not in PaymentStatus.__members__.values():
        raise invalid("status", f"must be one of {', '.join(PaymentStatus)}")
    return text


def since_param(params: Mapping[str, str]) -> float | None:
    """RFC 3339 with an offset (`2025-01-31T12:00:00Z`) or unix seconds, as unix seconds."""
    text = params.get("since")
    if text is None:
        return None
    if _UNIX_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise invalid("since", "must be RFC 3339 with an offset (e.g. 2025-01-31T12:00:00Z) or unix seconds")
    return when.timestamp()


def path_id(request: web.Request, name: str = "id") -> int:
    text = request.match_info[name]
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise invalid(name, "must be a positive integer")
    return int(text)


# ------------------------------------------------------------------------------------------------ cursors
# A cursor is the last id of a page with the kind of list it pages, base64url: opaque to the client, and an
# address cursor given to the deposits list is refused rather than read as a deposit id.


def encode_cursor(kind: str, last_id: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode("ascii")).decode("ascii").rstrip("=")


def cursor_param(params: Mapping[str, str], kind: str) -> int:
    """The id after which the page starts (0 without a cursor); 400 `invalid_cursor` for any other text."""
    text = params.get("cursor")
    if text is None:
        return 0
    try:
        padded = text + "=" * (-len(text) % 4)
        decoded = base64.b64decode(padded, altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        decoded = ""
    m = _CURSOR.fullmatch(decoded)
    if m is None or m.group(1) != kind or int(m.group(2)) > MAX_ID:
        raise Refused(400, INVALID_CURSOR, "not a cursor of this list (pass next_cursor as given)", "cursor")
    return int(m.group(2))
