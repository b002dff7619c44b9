"""EVM address parsing: pure, no I/O."""

from __future__ import annotations

import functools
import re

from chains.base import AddressError
from chains.evm.keccak import keccak_hex

# EIP-55: a letter is upper case where the keccak of the lower-case hex has a nibble >= 8. Done on whole
# 40-byte integers (a letter's ASCII code minus 0x20 is its upper case) rather than per character: loading
# a million configured addresses spent half its checksum time in a per-character loop.
_NIBBLE_HIGH = bytes.maketrans(b"0123456789abcdef", b"\0" * 8 + b"\x20" * 8)
_IS_LETTER = bytes.maketrans(b"0123456789abcdef", b"\0" * 10 + b"\x20" * 6)


def _checksum(hex40: str) -> str:
    """The EIP-55 form of 40 lower-case hex digits."""
    lower = hex40.encode("ascii")
    digest = keccak_hex(lower)[:40].encode("ascii")
    high = int.from_bytes(digest.translate(_NIBBLE_HIGH), "big")
    letters = int.from_bytes(lower.translate(_IS_LETTER), "big")
    return (int.from_bytes(lower, "big") - (high & letters)).to_bytes(40, "big").decode("ascii")


# Checked before bytes.fromhex, which skips blanks: "0x" + 38 digits + 2 spaces would give 19 bytes.
_HEX40 = re.compile(r"[0-9a-fA-F]{40}").fullmatch


def parse_evm_address(address: str) -> bytes:
    """The 20 bytes of `address`. Any case is accepted; mixed case must be a valid EIP-55 checksum."""
    if not isinstance(address, str):
        raise AddressError(f"expected a quoted 0x address string, got {type(address).__name__}")
    return _parse(address)


# Files list a customer's currencies together (ETH and its tokens at one address): the repeats of a
# recent address are answered without a second checksum. Only valid addresses are kept (an exception is
# not cached), 1,024 of them at most.
@functools.lru_cache(maxsize=1024)
def _parse(address: str) -> bytes:
    if not (address.startswith("0x") or address.startswith("0X")) or len(address) != 42:
        raise AddressError(f"{address!r} is not a 0x-prefixed 40-hex-digit address")
    body = address[2:]
    if not _HEX40(body):
        raise AddressError(f"{address!r} contains non-hex characters")
    lower = body.lower()
    if body != lower and body != body.upper() and _checksum(lower) != body:
        raise AddressError(f"{address!r} has a bad EIP-55 checksum (expected 0x{_checksum(lower)})")
    return bytes.fromhex(body)


def to_checksum(raw: bytes) -> str:
    return "0x" + _checksum(raw.hex())
