"""The configured addresses into the store: what the daemon does at start and on reload, and `rescan`
before it scans (so an address just added to the config is watched in the past blocks too)."""

from __future__ import annotations

from collections.abc import Iterator

from watcher.config import Config
from watcher.store import NewAddress, Store


def address_rows(config: Config, chain_name: str) -> Iterator[NewAddress]:
    """The configured addresses of one chain with their watch keys (computed by the config loader) and
    the integration each belongs to."""
    codes = {c.code for c in config.chain(chain_name).currencies}
    for entry in config.addresses:
        if entry.currency in codes:
            yield NewAddress(
                chain_name,
                entry.currency,
                entry.watch_key,
                entry.address,
                entry.foreign_id,
                integration_id=entry.integration,  # the integration whose section listed it
            )


async def sync_addresses(store: Store, config: Config) -> None:
    for chain in config.chains:
        await store.sync_addresses(chain.name, address_rows(config, chain.name))
