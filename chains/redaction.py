"""Node URLs without their secrets, for logs, the status port and error messages (pure, no I/O).

A node URL can carry a secret in three places: `user:password@` (bitcoind, a self-hosted Esplora
behind a proxy), a path segment (Infura `https://mainnet.infura.io/v3/KEY`, Alchemy `.../v2/KEY`,
QuickNode `https://name.quiknode.pro/TOKEN/`) and a query parameter (`?apikey=...`). `redact_url` drops
the first and shows the others as `***`; `secrets_of` lists them so that a text that quotes the URL (an
aiohttp exception does) can be cleaned with `scrub`.

A path segment counts as a key when it looks like one: at least 16 characters of [A-Za-z0-9_-] with
both letters and digits, or at least 24 hex digits. Words of a path (`/v3`, `/signet/api`, `/ext/bc/C/rpc`)
are short or have no digits; the segment after `/wallet/` is a bitcoind wallet's name, never a key.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["MASK", "looks_like_key", "redact_url", "scrub", "secrets_of"]

MASK = "***"
_KEY_LIKE = re.compile(r"(?=[A-Za-z0-9_-]*[A-Za-z])(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{16,}")
_HEX = re.compile(r"[0-9a-fA-F]{24,}")
_SECRET_PARAMS = frozenset(
    {"key", "apikey", "api_key", "api-key", "token", "access_token", "auth", "secret", "password"}
)
_UNPARSABLE = "<unparsable URL>"
_MIN_SECRET = 4


def looks_like_key(text: str) -> bool:
    """Pure: whether a path segment or query value looks like an API key (module docstring)."""
    return bool(_KEY_LIKE.fullmatch(text) or _HEX.fullmatch(text))


def _secret_param(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_PARAMS or lowered.endswith(("_key", "-key", "apikey", "token"))


def _secret_segments(path: str) -> list[int]:
    """Indexes of the path segments that are keys; a wallet's name (after /wallet/) is not one."""
    segments = path.split("/")
    return [
        i
        for i, segment in enumerate(segments)
        if looks_like_key(segment) and not (i > 0 and segments[i - 1] == "wallet")
    ]


def _secret_params(query: str) -> list[int]:
    pairs = parse_qsl(query, keep_blank_values=True)
    return [
        i for i, (name, value) in enumerate(pairs) if value and (_secret_param(name) or looks_like_key(value))
    ]


def redact_url(url: str) -> str:
    """The URL without user:password@ and with path and query secrets shown as ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _UNPARSABLE
    netloc = parts.netloc.rpartition("@")[2]
    keys, hidden = _secret_segments(parts.path), _secret_params(parts.query)
    if netloc == parts.netloc and not keys and not hidden:
        return url  # as written: nothing to hide
    segments = parts.path.split("/")
    for i in keys:
        segments[i] = MASK
    query = parts.query
    if hidden:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(n, MASK if i in hidden else v) for i, (n, v) in enumerate(pairs)], safe="*")
    return urlunsplit((parts.scheme, netloc, "/".join(segments), query, parts.fragment))


def secrets_of(url: str) -> tuple[str, ...]:
    """The secrets the URL carries (password, path keys, secret query values), longest first. A user
    name is not one, and a secret under 4 characters is left out: replacing it would garble a text."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found: set[str] = set()
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    segments = parts.path.split("/")
    found.update(segments[i] for i in _secret_segments(parts.path))
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    found.update(pairs[i][1] for i in _secret_params(parts.query))
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET), key=len, reverse=True))


def scrub(text: str, url: str) -> str:
    """`text` with the URL shown redacted and each of its secrets as ***: safe where the URL is not."""
    if redact_url(url) == url:
        return text
    text = text.replace(url, redact_url(url))
    for secret in secrets_of(url):
        text = text.replace(secret, MASK)
    return text
