"""The one way the daemon and the CLI open the configured store: SQLite or PostgreSQL by `database`."""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from watcher.config import Config, LeadershipConfig
from watcher.database_url import is_database_url
from watcher.store import Store


async def open_store(config: Config, *, exclusive: bool = False) -> Store:
    """The store `config.database` names (an SQLite path, or a postgresql:// URL with the password from
    `database.password_file`, and `database.timeout_s`). `exclusive`: the daemon's: its SQLite lock file;
    on PostgreSQL, which several daemons share (they elect a leader), the bound on the store's sessions
    (`store_url`)."""
    return await Store.open(
        store_url(config) if exclusive else config.database,
        exclusive=exclusive,
        id_offset=config.id_offset,
        password=config.database_password,
        timeout_s=config.database_timeout_s,
    )


def store_url(config: Config) -> str:
    """`config.database`; for PostgreSQL with the leadership's server settings for the store's sessions
    (leadership.store_session_settings: a daemon frozen in a transaction, before its fence, must not hold
    the cross-process write lock beyond half a lease). asyncpg passes unknown URL parameters on to the
    server as settings; the URL's own parameters win."""
    from watcher.leadership import store_session_settings

    url = config.database
    if not is_database_url(url):
        return url
    settings = store_session_settings(config.leadership or LeadershipConfig())
    query = urlsplit(url).query
    own = {part.split("=", 1)[0] for part in query.split("&") if part}
    extra = urlencode({k: v for k, v in settings.items() if k not in own})
    if not extra:
        return url
    return f"{url}{'&' if query else '?'}{extra}"
