"""`deposit-watcher rescan`: process past blocks again for addresses added after their payments.

It scans the range with the current watch list and records transfers that have no deposit yet; existing
deposits are found by their identity and left as they are, so nothing is duplicated. Confirmations are
counted at the chain's processed height, and the callbacks go through the outbox as usual (the running
daemon delivers them). It can run beside the daemon: SQLite serialises the two writers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from chains.base import WatchList
from chains.registry import create_adapter
from watcher.config import Config
from watcher.daemon import sync_addresses
from watcher.errors import RescanError
from watcher.ledger import Ledger
from watcher.store import Store

CHUNK_BLOCKS = 100


@dataclass(frozen=True, slots=True)
class RescanResult:
    chain: str
    from_height: int
    to_height: int
    blocks: int
    transfers: int
    new_deposits: int


async def rescan(config: Config, store: Store, chain_name: str, from_height: int) -> RescanResult:
    try:
        chain = config.chain(chain_name)
    except KeyError:
        names = ", ".join(c.name for c in config.chains)
        raise RescanError(f"no chain {chain_name!r} in the config (chains: {names})") from None
    cursor = (await store.chain_state(chain_name)).cursor
    if cursor is None:
        raise RescanError(f"{chain_name} has not been processed yet: start the daemon first")
    if from_height < 0 or from_height > cursor.height:
        raise RescanError(f"--from-height must be between 0 and the processed height {cursor.height}")
    await sync_addresses(store, config)
    watch = WatchList(await store.watch_keys(chain_name))
    ledger = Ledger(chain, config.network)
    adapter = create_adapter(chain.adapter, chain.settings)
    transfers = created = 0
    try:
        await adapter.open()
        for start in range(from_height, cursor.height + 1, CHUNK_BLOCKS):
            scans = await adapter.scan(start, min(start + CHUNK_BLOCKS - 1, cursor.height), watch)
            async with store.transaction() as tx:
                tip = (await store.chain_state(chain_name)).cursor or cursor
                found, new = await ledger.apply_history(tx, scans, tip.height, time.time())
            transfers += found
            created += new
    finally:
        await adapter.close()
    blocks = cursor.height - from_height + 1
    return RescanResult(chain_name, from_height, cursor.height, blocks, transfers, created)
