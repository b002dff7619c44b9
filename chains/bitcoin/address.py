"""Bitcoin addresses <-> output scripts (scriptPubKey), per network: pure, no I/O, no global state.

The watch key of an address is its output script: that is what a transaction's output holds, so a block
scan matches outputs by one dict lookup without turning any script back into an address.

Supported: P2PKH and P2SH (base58check), P2WPKH and P2WSH (bech32, witness v0) and P2TR (bech32m,
witness v1, 32 bytes). Other witness versions and v1 programs of another length decode fine as bech32m
but are refused: no wallet produces them and coins sent to them can be taken by anyone today.

Prefixes are explicit per network (python-bitcoinlib's SelectParams is process-global state):
testnet3, testnet4 and signet share the testnet prefixes; regtest uses Bitcoin Core's (m/n, 2, bcrt1),
which differ from stock bcoin's regtest prefixes only in the bech32 part.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chains.base import AddressError
from chains.bitcoin import bech32

BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_INDEX = {c: i for i, c in enumerate(BASE58_ALPHABET)}


@dataclass(frozen=True, slots=True)
class NetworkPrefixes:
    name: str
    p2pkh: int
    p2sh: int
    hrp: str
    # How an address of this network is named in an error ("a testnet address").
    label: str


NETWORKS = {
    "mainnet": NetworkPrefixes("mainnet", 0x00, 0x05, "bc", "mainnet"),
    "testnet": NetworkPrefixes("testnet", 0x6F, 0xC4, "tb", "testnet"),
    "regtest": NetworkPrefixes("regtest", 0x6F, 0xC4, "bcrt", "regtest"),
}
_HRP_NETWORK = {p.hrp: p for p in NETWORKS.values()}
# testnet and regtest share their base58 version bytes, so a base58 address names both.
_BASE58_LABEL = {0x00: "mainnet", 0x05: "mainnet", 0x6F: "testnet or regtest", 0xC4: "testnet or regtest"}


def prefixes(network: str) -> NetworkPrefixes:
    try:
        return NETWORKS[network]
    except KeyError:
        raise AddressError(f"unknown network {network!r} (mainnet, testnet or regtest)") from None


# ------------------------------------------------------------------------------------------ scripts


def p2pkh_script(key_hash: bytes) -> bytes:
    return b"\x76\xa9\x14" + key_hash + b"\x88\xac"  # OP_DUP OP_HASH160 <20> OP_EQUALVERIFY OP_CHECKSIG


def p2sh_script(script_hash: bytes) -> bytes:
    return b"\xa9\x14" + script_hash + b"\x87"  # OP_HASH160 <20> OP_EQUAL


def witness_script(version: int, program: bytes) -> bytes:
    """OP_n <program>: OP_0 is 0x00, OP_1..OP_16 are 0x51..0x60."""
    return bytes([version + 0x50 if version else 0, len(program)]) + program


def _standard_witness(version: int, program: bytes) -> bool:
    return (version == 0 and len(program) in (20, 32)) or (version == 1 and len(program) == 32)


# ------------------------------------------------------------------------------------------ base58


def _dsha256(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def base58check_decode(text: str) -> bytes:
    """The payload (version byte included) of a base58check string."""
    number = 0
    for c in text:
        digit = _BASE58_INDEX.get(c)
        if digit is None:
            raise AddressError(f"invalid base58 character {c!r}")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    # Each leading '1' stands for one leading zero byte.
    raw = bytes(len(text) - len(text.lstrip("1"))) + body
    if len(raw) < 5:
        raise AddressError("too short for base58check")
    payload, checksum = raw[:-4], raw[-4:]
    if _dsha256(payload)[:4] != checksum:
        raise AddressError("bad checksum")
    return payload


def base58check_encode(payload: bytes) -> str:
    raw = payload + _dsha256(payload)[:4]
    number = int.from_bytes(raw, "big")
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(BASE58_ALPHABET[digit])
    zeros = len(raw) - len(raw.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(digits))


# ------------------------------------------------------------------------------------------ parsing


def script_for_address(address: str, network: str) -> bytes:
    """The output script paying `address`; AddressError with the reason, naming the address."""
    net = prefixes(network)
    if not isinstance(address, str):
        raise AddressError(f"expected a quoted address string, got {type(address).__name__}")
    try:
        return _script_for(address, net)
    except AddressError as exc:
        raise AddressError(f"{address!r}: {exc}") from None


def _script_for(address: str, net: NetworkPrefixes) -> bytes:
    if not address:
        raise AddressError("empty address")
    lower = address.lower()
    hrp = lower[: lower.rfind("1")] if "1" in lower else ""
    if hrp in _HRP_NETWORK:
        return _segwit_script(address, net)
    # Base58 P2PKH/P2SH addresses start with 1, 3, m, n or 2 (no bech32 string can start with those).
    if address[0] in "13mn2" or all(c in _BASE58_INDEX for c in address):
        return _base58_script(address, net)
    return _unknown_format(address, net)


def _segwit_script(address: str, net: NetworkPrefixes) -> bytes:
    hrp, version, program = bech32.decode_segwit(address)
    owner = _HRP_NETWORK[hrp]
    if owner is not net:
        raise AddressError(f"is a {owner.label} address, the config's network is {net.name}")
    if not _standard_witness(version, program):
        if version == 1:
            raise AddressError(f"witness v1 program of {len(program)} bytes is not taproot (32 bytes)")
        raise AddressError(f"witness v{version} addresses are not in use (anyone could spend such coins)")
    return witness_script(version, program)


def _base58_script(address: str, net: NetworkPrefixes) -> bytes:
    payload = base58check_decode(address)
    if len(payload) != 21:
        raise AddressError(f"base58 payload of {len(payload)} bytes (a P2PKH/P2SH address has 21)")
    version, digest = payload[0], payload[1:]
    if version == net.p2pkh:
        return p2pkh_script(digest)
    if version == net.p2sh:
        return p2sh_script(digest)
    other = _BASE58_LABEL.get(version)
    if other is None:
        raise AddressError(f"unknown base58 version byte 0x{version:02x} (not a Bitcoin address)")
    raise AddressError(f"is a {other} address, the config's network is {net.name}")


def _unknown_format(address: str, net: NetworkPrefixes) -> bytes:
    try:
        hrp, _, _ = bech32.decode(address)
    except AddressError as exc:
        raise AddressError(
            f"neither base58check nor bech32 ({exc}); {net.name} addresses start with {_starts(net)}"
        ) from None
    raise AddressError(f"unknown human-readable part {hrp!r}; {net.name} addresses start with {_starts(net)}")


def _starts(net: NetworkPrefixes) -> str:
    legacy = "1 or 3" if net.p2pkh == 0x00 else "m, n or 2"
    return f"{legacy}, or {net.hrp}1"


# ------------------------------------------------------------------------------------------ display


def address_for_script(script: bytes, network: str) -> str:
    """The address of an output script (the inverse of `script_for_address`)."""
    net = prefixes(network)
    size = len(script)
    if size == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return base58check_encode(bytes([net.p2pkh]) + script[3:23])
    if size == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return base58check_encode(bytes([net.p2sh]) + script[2:22])
    if 4 <= size <= 42 and script[1] == size - 2 and (script[0] == 0 or 0x51 <= script[0] <= 0x60):
        version = script[0] - 0x50 if script[0] else 0
        program = script[2:]
        if _standard_witness(version, program):
            return bech32.encode_segwit(net.hrp, version, program)
    raise AddressError(f"script {script.hex()} is not a P2PKH, P2SH, P2WPKH, P2WSH or P2TR output")
