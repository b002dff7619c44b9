"""Bitcoin: addresses (base58check, bech32/bech32m), the raw block and transaction walk, and the adapter
for Bitcoin Core's JSON-RPC (which bcoin answers alike for the calls used)."""
