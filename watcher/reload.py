"""Live reload (SIGHUP): which settings of a new config can take effect without a restart.

Addresses, the back office's settings (`ui:`: the operator's password file is read again) and the
integrations (API keys, client networks, callback settings with their format and
events, payments settings, public keys, and adding or removing an integration) change live (a payment's
expiry is fixed when it is created; the grace period is read whenever a payment is checked against the
clock). The database, the status and API listeners, logging, the chains themselves (adapter, node,
currencies) and an integration's callback `concurrency` are fixed for the life of the process: a change
to them is reported as needing a restart and the running values stay.
"""

from __future__ import annotations

from dataclasses import replace

from watcher.config import DEFAULT_INTEGRATION_ID, Config, IntegrationConfig


def restart_needed(old: Config, new: Config) -> list[str]:
    """Pure: the settings that differ and cannot change while running."""
    fixed = {
        "network": (old.network, new.network),
        "database": (
            (old.database, old.id_offset, old.database_password, old.database_timeout_s),
            (new.database, new.id_offset, new.database_password, new.database_timeout_s),
        ),
        "status": (old.status, new.status),
        "log": (old.log, new.log),
        "api": (old.api, new.api),  # the listener is bound at start
    }
    changed = [name for name, (a, b) in fixed.items() if a != b]
    # The dispatcher's worker pool of an integration is sized when that integration starts.
    for before, after in _kept(old, new):
        if before.callback.concurrency != after.callback.concurrency:
            changed.append(_concurrency_name(after))
    old_chains = {c.name: c for c in old.chains}
    new_chains = {c.name: c for c in new.chains}
    for name in sorted(old_chains.keys() | new_chains.keys()):
        if old_chains.get(name) != new_chains.get(name):
            changed.append(f"chains.{name}")
    return changed


def live_config(old: Config, new: Config) -> Config:
    """The config to run with after a reload: the new addresses and integrations, the old fixed settings
    (an integration that stays keeps its running callback concurrency)."""
    running = {i.id: i.callback.concurrency for i in old.integrations}
    integrations = tuple(
        i if i.id not in running else replace(i, callback=replace(i.callback, concurrency=running[i.id]))
        for i in new.integrations
    )
    return Config(
        path=old.path,
        network=old.network,
        database=old.database,
        database_password=old.database_password,
        database_timeout_s=old.database_timeout_s,
        status=old.status,
        log=old.log,
        integrations=integrations,
        api=old.api,
        ui=new.ui,  # the operator's password file and networks, the sessions' limits: read again
        chains=old.chains,
        # Addresses of currencies the running chains do not have wait for the restart.
        addresses=new.addresses.having({cur.code for chain in old.chains for cur in chain.currencies}),
        id_offset=old.id_offset,
    )


def _kept(old: Config, new: Config) -> list[tuple[IntegrationConfig, IntegrationConfig]]:
    """(before, after) of each integration in both configs, by id."""
    before = {i.id: i for i in old.integrations}
    return [(before[i.id], i) for i in new.integrations if i.id in before]


def _concurrency_name(integration: IntegrationConfig) -> str:
    """The setting's name as the operator wrote it: a `merchant:` section's or an `integrations:` entry's."""
    if integration.id == DEFAULT_INTEGRATION_ID and integration.name == "merchant":
        return "merchant.concurrency"
    return f"integrations.{integration.id}.callback.concurrency"
