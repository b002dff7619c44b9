"""Links from a transaction to a public block explorer, for the back office's deposit and payment pages.

Only public networks have one: mempool.space for Bitcoin (mainnet and testnet), Etherscan for Ethereum
mainnet and Sepolia. A local devnet (regtest, anvil's chain 31337) or an EVM chain of another id has
none: a link to Etherscan for a Polygon transaction would show a wrong page, worse than no link. A chain's
`explorer_url` (a URL with `{txid}`) replaces the default: for signet, testnet4 or another EVM chain. Pure.
"""

from __future__ import annotations

from urllib.parse import quote

BITCOIN_ADAPTERS = ("bitcoin-core", "esplora")
MEMPOOL_SPACE = {
    "mainnet": "https://mempool.space/tx/{txid}",
    "testnet": "https://mempool.space/testnet/tx/{txid}",
}
ETHERSCAN = {
    1: "https://etherscan.io/tx/{txid}",
    11155111: "https://sepolia.etherscan.io/tx/{txid}",
}
# An EVM chain whose id is not known yet (no chain_id configured, none pinned): the one the network means.
ETHERSCAN_BY_NETWORK = {"mainnet": ETHERSCAN[1], "testnet": ETHERSCAN[11155111]}


def tx_link(
    adapter: str, network: str, chain_id: int | None, txid: str, template: str | None = None
) -> str | None:
    """The explorer's page of `txid`, or None when the network has no public explorer. `template` (the
    chain's `explorer_url`) wins over the defaults."""
    if template is None:
        template = _default(adapter, network, chain_id)
    # The txid comes from the node through the store; quoted all the same, it cannot leave the path.
    return None if template is None else template.replace("{txid}", quote(txid, safe=""))


def _default(adapter: str, network: str, chain_id: int | None) -> str | None:
    if adapter in BITCOIN_ADAPTERS:
        return MEMPOOL_SPACE.get(network)
    if adapter == "evm":
        return ETHERSCAN.get(chain_id) if chain_id is not None else ETHERSCAN_BY_NETWORK.get(network)
    return None
