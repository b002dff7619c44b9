"""`deposit-watcher rescan`: process past blocks again for addresses added after their payments.

It scans the range with the current watch list and records transfers that have no deposit yet; existing
deposits are found by their identity and left as they are, so nothing is duplicated. It goes through the
follower's own checks: the node must be on the chain the store followed, and the scanned blocks must be
the ones the store kept (see `Follower.rescan`). Confirmations are counted at the chain's processed
height, and the callbacks go through the outbox as usual (the running daemon delivers them). It can run
beside the daemon: SQLite serialises the two writers.
"""

from __future__ import annotations

from dataclasses import dataclass

from chains.registry import create_adapter
from watcher.address_sync import sync_addresses
from watcher.config import Config
from watcher.errors import ChainHalted, ConfigRefused, RescanError
from watcher.follower import Follower
from watcher.health import ChainHealth
from watcher.payment_tracker import PaymentTracker, no_callbacks
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
    adapter = create_adapter(chain.adapter, chain.settings)
    follower = Follower(chain, config.network, adapter, store, ChainHealth(chain_name), lambda: None)
    # As in the daemon: what is found moves the payments of its addresses (linked, completed, canceled;
    # never abandoned from here: this process has no clock of what was seen), and callbacks go only to
    # integrations that take them.
    follower.after_apply = PaymentTracker(store, config).after_plan
    follower.no_callbacks = no_callbacks(config)
    try:
        try:
            await follower.check_identity()
        except (ChainHalted, ConfigRefused) as exc:
            raise RescanError(f"{chain_name}: {exc}") from exc
        await follower.reload_watch()
        transfers, created = await follower.rescan(from_height, cursor.height, CHUNK_BLOCKS)
    finally:
        await adapter.close()
    blocks = cursor.height - from_height + 1
    return RescanResult(chain_name, from_height, cursor.height, blocks, transfers, created)
