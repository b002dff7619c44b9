"""deposit-watcher: the daemon (config, store, follower, ledger, callbacks, status port, CLI)."""
