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


_ENCODINGS = {e.value: e for e in Encoding}  # not `for e in Encoding` per address: an enum iterates slowly


# The XOR of the generators selected by each 5-bit value of the checksum's top bits: one lookup per
# character instead of five tests (a million configured addresses are checked at start).
_GENERATOR_XOR = tuple(
    functools.reduce(operator.xor, (g for i, g in enumerate(_GENERATOR) if (top >> i) & 1), 0)
    for top in range(32)
)


# Two 5-bit steps at once, indexed by the checksum's top 10 bits (derived from two single steps): what
# `encode` uses, and the reference the linear form below is built from.
_GENERATOR_XOR2 = tuple(
    ((g & 0x1FFFFFF) << 5) ^ _GENERATOR_XOR[(top & 31) ^ (g >> 25)]
    for top in range(1024)
    for g in (_GENERATOR_XOR[top >> 5],)
)


def _polymod(values: Sequence[int]) -> int:
    chk = 1
    table = _GENERATOR_XOR2
    odd = len(values) & 1
    for i in range(0, len(values) - odd, 2):
        chk = ((chk & 0xFFFFF) << 10) ^ (values[i] << 5) ^ values[i + 1] ^ table[chk >> 20]
    if odd:
        chk = ((chk & 0x1FFFFFF) << 5 ^ values[-1]) ^ _GENERATOR_XOR[chk >> 25]
    return chk


# The polymod is linear over GF(2): each step shifts the 30-bit state, XORs in the value and XORs the
# generators its top bits select. So a value's share of the result depends only on the value and on how
# many values follow it: _SHARE[k][v] is v's share with k values after it. The checksum of a decoded
# string is then one XOR of table entries per value: less than half the time of the loop above, which was
# most of a bech32 address's check (an import checks millions).
def _shares(count: int) -> tuple[tuple[int, ...], ...]:
    rows = [tuple(range(32))]
    while len(rows) < count:
        rows.append(tuple(((c & 0x1FFFFFF) << 5) ^ _GENERATOR_XOR[c >> 25] for c in rows[-1]))
    return tuple(rows)


_SHARE = _shares(MAX_LENGTH)  # a string's data part has fewer than MAX_LENGTH values


@functools.lru_cache(maxsize=64)
def _hrp_share(hrp: str, count: int) -> int:
    """The polymod of the hrp's expansion followed by `count` zero values (the start value included)."""
    return _polymod([*_hrp_expand(hrp), *bytes(count)])


def _data_polymod(hrp: str, data: bytes) -> int:
    """_polymod(_hrp_expand(hrp) + list(data)), by the shares above."""
    chk = _hrp_share(hrp, len(data))
    # A plain loop: faster in CPython 3.11 than functools.reduce over map(), whose calls are generic.
    for share, value in zip(_SHARE, data[::-1], strict=False):  # _SHARE is the longer
        chk ^= share[value]
    return chk


# The data part's characters as their 5-bit values (bytes.translate) and as base-32 digits (int(..., 32)):
# C-speed steps where a per-character Python loop cost most of an address's check.
_CHARSET_SET = frozenset(CHARSET)
_TO_VALUES = bytes.maketrans(CHARSET.encode(), bytes(range(32)))
_TO_DIGITS = str.maketrans(CHARSET, "0123456789abcdefghijklmnopqrstuv")


@functools.lru_cache(maxsize=64)
def _hrp_expanded(hrp: str) -> tuple[int, ...]:
    return (*[ord(x) >> 5 for x in hrp], 0, *[ord(x) & 31 for x in hrp])


def _hrp_expand(hrp: str) -> list[int]:
    return list(_hrp_expanded(hrp))


def _checksum(hrp: str, data: Sequence[int], encoding: Encoding) -> list[int]:
    polymod = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ encoding.value
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_LENGTH)]


def encode(hrp: str, data: Sequence[int], encoding: Encoding) -> str:
    """A bech32/bech32m string of 5-bit `data` (lower case)."""
    combined = [*data, *_checksum(hrp, data, encoding)]
    return hrp + "1" + "".join(CHARSET[d] for d in combined)


def decode(text: str) -> tuple[str, list[int], Encoding]:
    """(hrp, 5-bit data without the checksum, encoding) of a bech32 or bech32m string."""
    hrp, _, data, encoding = _decode(text)
    return hrp, list(data), encoding


def _decode(text: str) -> tuple[str, str, bytes, Encoding]:
    """decode() and the data part as text (lower case, checksum included)."""
    if len(text) > MAX_LENGTH:
        raise AddressError(f"longer than {MAX_LENGTH} characters")
    if not (text.isascii() and text.isprintable()) or " " in text:
        bad = next(c for c in text if not 33 <= ord(c) <= 126)
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
    hrp, part = text[:sep], text[sep + 1 :]
    if not _CHARSET_SET.issuperset(part):
        bad = next(c for c in part if c not in _CHARSET_INDEX)
        raise AddressError(f"invalid character {bad!r} in the data part")
    data = part.encode("ascii").translate(_TO_VALUES)
    encoding = _ENCODINGS.get(_data_polymod(hrp, data))
    if encoding is None:
        raise AddressError("bad checksum")
    return hrp, part, data[:-CHECKSUM_LENGTH], encoding


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
    hrp, part, data, encoding = _decode(text)
    if not data:
        raise AddressError("empty data section (no witness version)")
    version = data[0]
    if version > 16:
        raise AddressError(f"invalid witness version {version}")
    program = _program(part[1:-CHECKSUM_LENGTH])
    if not 2 <= len(program) <= 40:
        raise AddressError(f"witness program of {len(program)} bytes (must be 2 to 40)")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError(f"witness v0 program of {len(program)} bytes (must be 20 or 32)")
    if version == 0 and encoding is not Encoding.BECH32:
        raise AddressError("bech32 required for witness v0 (this is bech32m)")
    if version != 0 and encoding is not Encoding.BECH32M:
        raise AddressError(f"bech32m required for witness v{version} (this is bech32)")
    return hrp, version, program


def _program(chars: str) -> bytes:
    """Data characters (5 bits each) to bytes without padding: convertbits(values, 5, 8, pad=False),
    through one int parsed in base 32."""
    bits = 5 * len(chars)
    size, pad = divmod(bits, 8)
    if pad >= 5:
        raise AddressError("more than 4 padding bits")
    value = int(chars.translate(_TO_DIGITS), 32) if chars else 0
    if value & ((1 << pad) - 1):
        raise AddressError("non-zero padding bits")
    return (value >> pad).to_bytes(size, "big")


def encode_segwit(hrp: str, version: int, program: bytes) -> str:
    """The address of a witness program; ValueError for a version/program no address can hold."""
    if not 0 <= version <= 16 or not 2 <= len(program) <= 40:
        raise ValueError(f"no segwit address for version {version} with a {len(program)}-byte program")
    if version == 0 and len(program) not in (20, 32):
        raise ValueError(f"witness v0 program of {len(program)} bytes")
    encoding = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return encode(hrp, [version, *convertbits(program, 8, 5, pad=True)], encoding)
