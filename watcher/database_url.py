"""Which backend a `database` setting names, and a PostgreSQL URL as messages may show it (pure)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

SCHEMES = ("postgresql", "postgres")
# database.timeout_s: how long a PostgreSQL server may leave one statement unanswered before its connection
# is taken for lost (a network that drops packets silently never closes a connection).
DATABASE_TIMEOUT_S = 30.0


def is_database_url(location: str) -> bool:
    """Whether `database` names a PostgreSQL database (else it is an SQLite file's path)."""
    return location.startswith(tuple(f"{scheme}://" for scheme in SCHEMES))


def safe_database_url(url: str) -> str:
    """A PostgreSQL URL as logs and messages show it: the user, host, port and database; any password and
    the query (it may carry one: `?password=`) dropped."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))
