"""EVM chains (Ethereum and compatible): JSON-RPC client, pure decoding, and the adapter."""
