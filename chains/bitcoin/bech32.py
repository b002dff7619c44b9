"""Bech32 (BIP-173) and bech32m (BIP-350) strings and segwit addresses: pure, no I/O.

Follows the BIP-350 reference algorithm, with one change: every failure raises AddressError naming the
reason (the reference returns None), so a configuration error can say what is wrong with an address.
The checksum constant tells the two encodings apart: witness v0 must use bech32, v1 and above bech32m.
"""

from __future__ import annotations

import enum
import functools
import operator
from collections.abc import Iterable, Sequence

from chains.base import AddressError

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_INDEX = {c: i for i, c in enumerate(CHARSET)}
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_LENGTH = 90
CHECKSUM_LENGTH = 6


class Encoding(enum.Enum):
    """The checksum flavour; the value is what the polymod of a valid string equals."""

    BECH32 = 1
    BECH32M = 0x2BC830A3


# The XOR of the generators selected by each 5-bit value of the checksum's top bits: one lookup per
# character instead of five tests (a million configured addresses are checked at start).
_GENERATOR_XOR = tuple(
    functools.reduce(operator.xor, (g for i, g in enumerate(_GENERATOR) if (top >> i) & 1), 0)
    for top in range(32)
)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for value in values:
        chk = ((chk & 0x1FFFFFF) << 5 ^ value) ^ _GENERATOR_XOR[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(x) >> 5 for x in hrp] + [0] + [ord(x) & 31 for x in hrp]


def _checksum(hrp: str, data: Sequence[int], encoding: Encoding) -> list[int]:
    polymod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ encoding.value
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_LENGTH)]


def encode(hrp: str, data: Sequence[int], encoding: Encoding) -> str:
    """A bech32/bech32m string of 5-bit `data` (lower case)."""
    combined = [*data, *_checksum(hrp, data, encoding)]
    return hrp + "1" + "".join(CHARSET[d] for d in combined)


def decode(text: str) -> tuple[str, list[int], Encoding]:
    """(hrp, 5-bit data without the checksum, encoding) of a bech32 or bech32m string."""
    if len(text) > MAX_LENGTH:
        raise AddressError(f"longer than {MAX_LENGTH} characters")
    bad = next((c for c in text if not 33 <= ord(c) <= 126), None)
    if bad is not None:
        raise AddressError(f"character {bad!r} is not allowed")
    if text.lower() != text and text.upper() != text:
        raise AddressError("mixes upper and lower case")
    text = text.lower()
    sep = text.rfind("1")
    if sep < 0:
        raise AddressError("no '1' separator")
    if sep == 0:
        raise AddressError("empty human-readable part")
    if len(text) - sep - 1 < CHECKSUM_LENGTH:
        raise AddressError("checksum too short")
    hrp = text[:sep]
    data = []
    for c in text[sep + 1 :]:
        if c not in _CHARSET_INDEX:
            raise AddressError(f"invalid character {c!r} in the data part")
        data.append(_CHARSET_INDEX[c])
    check = _polymod(_hrp_expand(hrp) + data)
    for encoding in Encoding:
        if check == encoding.value:
            return hrp, data[:-CHECKSUM_LENGTH], encoding
    raise AddressError("bad checksum")


def convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    """Regroup bits (8 -> 5 to encode, 5 -> 8 without padding to decode); AddressError on bad padding."""
    acc = 0
    bits = 0
    ret = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise AddressError(f"value {value} does not fit in {frombits} bits")
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            ret.append((acc >> bits) & maxv)
    if pad:
        if bits:
            ret.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise AddressError("more than 4 padding bits")
    elif (acc << (tobits - bits)) & maxv:
        raise AddressError("non-zero padding bits")
    return ret


def decode_segwit(text: str) -> tuple[str, int, bytes]:
    """(hrp, witness version, witness program) of a segwit address, checked as BIP-350 says.

    The hrp is returned rather than checked: the caller knows which networks exist and can say
    "a testnet address" instead of "wrong prefix".
    """
    hrp, data, encoding = decode(text)
    if not data:
        raise AddressError("empty data section (no witness version)")
    version = data[0]
    if version > 16:
        raise AddressError(f"invalid witness version {version}")
    program = bytes(convertbits(data[1:], 5, 8, pad=False))
    if not 2 <= len(program) <= 40:
        raise AddressError(f"witness program of {len(program)} bytes (must be 2 to 40)")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError(f"witness v0 program of {len(program)} bytes (must be 20 or 32)")
    if version == 0 and encoding is not Encoding.BECH32:
        raise AddressError("bech32 required for witness v0 (this is bech32m)")
    if version != 0 and encoding is not Encoding.BECH32M:
        raise AddressError(f"bech32m required for witness v{version} (this is bech32)")
    return hrp, version, program


def encode_segwit(hrp: str, version: int, program: bytes) -> str:
    """The address of a witness program; ValueError for a version/program no address can hold."""
    if not 0 <= version <= 16 or not 2 <= len(program) <= 40:
        raise ValueError(f"no segwit address for version {version} with a {len(program)}-byte program")
    if version == 0 and len(program) not in (20, 32):
        raise ValueError(f"witness v0 program of {len(program)} bytes")
    encoding = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return encode(hrp, [version, *convertbits(program, 8, 5, pad=True)], encoding)
