"""Who is calling: the API key names the integration, its networks must hold the client, its bucket must
have a token. Every refusal is a `Refused`; the caller logs it with the key's prefix only.

The key is never kept, logged or answered: only its SHA-256 (`watcher.apikeys`) is compared with the
config's, in constant time, and only the prefix (`sk_live_Ab12`) names it in logs. A missing, malformed
and unknown key get the same answer, so a caller cannot tell which part was wrong.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from watcher.api.refusals import FORBIDDEN, RATE_LIMITED, UNAUTHORIZED, WRONG_KEY_MODE, Refused
from watcher.apikeys import LIVE, TEST, ApiKeyHash, hash_api_key, matches
from watcher.config import Config, IntegrationConfig

UNAUTHORIZED_MESSAGE = "missing or unknown API key"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def unauthorized() -> Refused:
    return Refused(401, UNAUTHORIZED, UNAUTHORIZED_MESSAGE, None, _CHALLENGE)


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive, RFC 7235)."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token.strip():
        return None
    return token.strip()


def presented_key(header: str | None) -> ApiKeyHash | None:
    """The hash of the presented key, None when there is none or it is not shaped like a key."""
    token = bearer_token(header)
    return None if token is None else hash_api_key(token)


def identify(config: Config, presented: ApiKeyHash | None) -> IntegrationConfig:
    """The integration whose key was presented; 401 `unauthorized` or `wrong_key_mode`."""
    if presented is None:
        raise unauthorized()
    # The mode is checked first: the prefix says it, so answering it reveals nothing the caller lacks.
    live_daemon = config.network == "mainnet"
    if presented.live != live_daemon:
        wanted = LIVE if live_daemon else TEST
        raise Refused(
            401,
            WRONG_KEY_MODE,
            f"this daemon runs on {config.network} and takes {wanted} keys only",
            None,
            _CHALLENGE,
        )
    found = None
    for integration in config.integrations:
        # Every integration is compared, also after a match: the time taken does not say which one.
        if matches(presented, integration.api_keys) is not None:
            found = integration
    if found is None:
        raise unauthorized()
    return found


@functools.lru_cache(maxsize=4096)
def client_address(remote: str | None) -> IPv4Address | IPv6Address | None:
    """The client's address, parsed once per distinct peer (twice a request otherwise)."""
    try:
        client = ip_address((remote or "").split("%", 1)[0])  # "fe80::1%eth0": the zone is not part of it
    except ValueError:
        return None
    if client.version == 6 and client.ipv4_mapped is not None:
        return client.ipv4_mapped  # a dual-stack listener shows IPv4 clients as ::ffff:a.b.c.d
    return client


def _allowed(client: IPv4Address | IPv6Address | None, integration: IntegrationConfig) -> bool:
    return client is not None and any(client in network for network in integration.allow_from)


def check_any_client(config: Config, remote: str | None) -> None:
    """403 before any key is looked at for a client no integration allows: such a client cannot learn
    whether a key it holds is valid (a valid key would be refused with 403, an invalid one with 401)."""
    client = client_address(remote)
    if not any(_allowed(client, integration) for integration in config.integrations):
        raise _forbidden()


def check_client(integration: IntegrationConfig, remote: str | None) -> None:
    """403 unless the client's address is inside one of the integration's allowed networks."""
    if not _allowed(client_address(remote), integration):
        raise _forbidden()


def _forbidden() -> Refused:
    return Refused(403, FORBIDDEN, "this client address may not use this integration's keys")


@dataclass(slots=True)
class TokenBucket:
    tokens: float
    updated_at: float

    def take(self, now: float, rate_per_s: float, burst: int) -> float:
        """Take one token: 0.0 when taken, else the seconds until one is there."""
        elapsed = max(0.0, now - self.updated_at)
        self.tokens = min(float(burst), self.tokens + elapsed * rate_per_s)
        self.updated_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate_per_s


class RateLimiter:
    """One token bucket per API key (by its hash): only keys the config knows reach it, so the number of
    buckets is bounded by the config. Rate and burst are read per request: a reload applies at once."""

    def __init__(self) -> None:
        self._buckets: dict[bytes, TokenBucket] = {}

    def check(self, key: ApiKeyHash, now: float, rate_per_s: float, burst: int) -> None:
        """429 with Retry-After (whole seconds, at least 1) when the key's bucket is empty."""
        bucket = self._buckets.get(key.digest)
        if bucket is None:
            bucket = self._buckets[key.digest] = TokenBucket(float(burst), now)
        wait_s = bucket.take(now, rate_per_s, burst)
        if wait_s > 0:
            retry_after = str(max(1, math.ceil(wait_s)))
            raise Refused(
                429,
                RATE_LIMITED,
                f"too many requests with this key: at most {rate_per_s:g}/s (bursts of {burst})",
                None,
                {"Retry-After": retry_after},
            )
