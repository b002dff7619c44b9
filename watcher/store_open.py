"""The one way the daemon and the CLI open the configured store: SQLite or PostgreSQL by `database`."""

from __future__ import annotations

from watcher.config import Config
from watcher.store import Store


async def open_store(config: Config, *, exclusive: bool = False) -> Store:
    """The store `config.database` names (an SQLite path, or a postgresql:// URL with the password from
    `database.password_file`, and `database.timeout_s`). `exclusive`: the daemon's SQLite lock file
    (PostgreSQL has none yet)."""
    return await Store.open(
        config.database,
        exclusive=exclusive,
        id_offset=config.id_offset,
        password=config.database_password,
        timeout_s=config.database_timeout_s,
    )
