"""Links from a transaction to a public block explorer, for the back office's deposit and payment pages.

Only public networks have one: mempool.space for Bitcoin (mainnet and testnet), Etherscan for Ethereum
mainnet and Sepolia. A local devnet (regtest, anvil's chain 31337) or an EVM chain of another id has none:
a link to Etherscan for a Polygon transaction would show a wrong page, worse than no link. Pure.
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


def tx_link(adapter: str, network: str, chain_id: int | None, txid: str) -> str | None:
    """The explorer's page of `txid`, or None when the network has no public explorer."""
    if adapter in BITCOIN_ADAPTERS:
        template = MEMPOOL_SPACE.get(network)
    elif adapter == "evm":
        template = ETHERSCAN.get(chain_id) if chain_id is not None else ETHERSCAN_BY_NETWORK.get(network)
    else:
        template = None
    # The txid comes from the node through the store; quoted all the same, it cannot leave the path.
    return None if template is None else template.format(txid=quote(txid, safe=""))
