"""Live reload (SIGHUP): which settings of a new config can take effect without a restart.

Addresses and the merchant's settings change live. The database, the status port, logging and the
chains themselves (adapter, node, currencies) are fixed for the life of the process: a change to them is
reported as needing a restart and the running values stay.
"""

from __future__ import annotations

from watcher.config import Config


def restart_needed(old: Config, new: Config) -> list[str]:
    """Pure: the top-level settings that differ and cannot change while running."""
    fixed = {
        "network": (old.network, new.network),
        "database": ((old.database, old.id_offset), (new.database, new.id_offset)),
        "status": (old.status, new.status),
        "log": (old.log, new.log),
    }
    changed = [name for name, (a, b) in fixed.items() if a != b]
    if old.merchant.concurrency != new.merchant.concurrency:
        changed.append("merchant.concurrency")  # the dispatcher's worker pool is sized at start
    old_chains = {c.name: c for c in old.chains}
    new_chains = {c.name: c for c in new.chains}
    for name in sorted(old_chains.keys() | new_chains.keys()):
        if old_chains.get(name) != new_chains.get(name):
            changed.append(f"chains.{name}")
    return changed


def live_config(old: Config, new: Config) -> Config:
    """The config to run with after a reload: the new addresses and merchant, the old fixed settings."""
    return Config(
        path=old.path,
        network=old.network,
        database=old.database,
        status=old.status,
        log=old.log,
        integrations=new.integrations,
        api=old.api,
        chains=old.chains,
        # Addresses of currencies the running chains do not have wait for the restart.
        addresses=new.addresses.having({cur.code for chain in old.chains for cur in chain.currencies}),
        id_offset=old.id_offset,
    )
