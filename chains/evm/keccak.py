"""Keccak-256, Ethereum's hash (not NIST SHA3-256, which pads differently).

From safe-pysha3's C extension: about 1 µs for an address, against about 15 µs through eth_utils (whose
pycryptodome backend builds a hash object per call). An EIP-55 checksum is one keccak, and checking one
was most of what importing a million 0x addresses cost.
"""

from __future__ import annotations

from sha3 import keccak_256


def keccak(data: bytes) -> bytes:
    return bytes(keccak_256(data).digest())


def keccak_hex(data: bytes) -> str:
    """The digest as hex digits: safe-pysha3 gives them in one call, about twice as fast as
    `keccak(data).hex()` (which copies the digest once more)."""
    return str(keccak_256(data).hexdigest())
