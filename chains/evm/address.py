"""EVM address parsing: pure, no I/O."""

from __future__ import annotations

from eth_utils.crypto import keccak

from chains.base import AddressError


def _checksum(hex40: str) -> str:
    digest = keccak(text=hex40).hex()
    return "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hex40))


def parse_evm_address(address: str) -> bytes:
    """The 20 bytes of `address`. Any case is accepted; mixed case must be a valid EIP-55 checksum."""
    if not isinstance(address, str):
        raise AddressError(f"expected a quoted 0x address string, got {type(address).__name__}")
    if not (address.startswith("0x") or address.startswith("0X")) or len(address) != 42:
        raise AddressError(f"{address!r} is not a 0x-prefixed 40-hex-digit address")
    body = address[2:]
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        raise AddressError(f"{address!r} contains non-hex characters") from None
    if body != body.lower() and body != body.upper() and _checksum(body.lower()) != body:
        raise AddressError(f"{address!r} has a bad EIP-55 checksum (expected 0x{_checksum(body.lower())})")
    return raw


def to_checksum(raw: bytes) -> str:
    return "0x" + _checksum(raw.hex())
