"""Merchant API keys: made once, shown once, stored only as a hash.

A key is `sk_live_` or `sk_test_` and 40 random base62 characters (about 238 bits). The config holds
`PREFIX:SHA256` lines, e.g. `sk_live_Ab12:5e88...`: the prefix is the key's first 12 characters, which tell
a live key from a test key and name the key in logs without revealing it; the digest is SHA-256 of the
whole key. A plain hash is enough (no slow KDF): the keys are random, not chosen by people, so there is
nothing to guess from a leaked digest.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field

LIVE, TEST = "sk_live_", "sk_test_"
_ALPHABET = string.ascii_letters + string.digits
RANDOM_CHARS = 40
PREFIX_CHARS = len(LIVE) + 4
_KEY = re.compile(rf"sk_(live|test)_[A-Za-z0-9]{{{RANDOM_CHARS}}}")
_LINE = re.compile(r"(sk_(?:live|test)_[A-Za-z0-9]{4}):([0-9a-f]{64})")


@dataclass(frozen=True, slots=True)
class ApiKeyHash:
    prefix: str  # "sk_live_Ab12": live or test, and the key's name in logs
    digest: bytes = field(repr=False)  # SHA-256 of the whole key

    @property
    def live(self) -> bool:
        return self.prefix.startswith(LIVE)

    def line(self) -> str:
        """The form the config and key files hold."""
        return f"{self.prefix}:{self.digest.hex()}"


def new_api_key(live: bool) -> tuple[str, ApiKeyHash]:
    """A new random key and its hash. Print the key once; store only the hash."""
    key = (LIVE if live else TEST) + "".join(secrets.choice(_ALPHABET) for _ in range(RANDOM_CHARS))
    found = hash_api_key(key)
    assert found is not None
    return key, found


def hash_api_key(key: str) -> ApiKeyHash | None:
    """The hash of a presented key; None if it is not shaped like one of ours."""
    if not _KEY.fullmatch(key):
        return None
    return ApiKeyHash(key[:PREFIX_CHARS], hashlib.sha256(key.encode("ascii")).digest())


def parse_key_hash(text: str) -> ApiKeyHash:
    """An `sk_live_Ab12:<64 hex>` line; ValueError if malformed, saying why without
    repeating the text (it may be a key pasted by mistake)."""
    text = text.strip()
    if _KEY.fullmatch(text):
        raise ValueError(
            "this is an API key itself, not its hash: store only the hash (api-key new prints it)"
        )
    m = _LINE.fullmatch(text)
    if m is None:
        raise ValueError("expected sk_live_XXXX:<64 hex digits> or sk_test_XXXX:<64 hex digits>")
    return ApiKeyHash(m.group(1), bytes.fromhex(m.group(2)))


def matches(presented: ApiKeyHash, stored: Iterable[ApiKeyHash]) -> ApiKeyHash | None:
    """The stored hash equal to the presented one (compared in constant time), or None."""
    found = None
    for candidate in stored:
        if hmac.compare_digest(candidate.digest, presented.digest) and candidate.prefix == presented.prefix:
            found = candidate
    return found
