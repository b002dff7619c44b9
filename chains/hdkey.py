"""BIP-32 extended public keys for watch-only derivation, and the screen that refuses private keys.

Shared by the chain families that derive addresses (chains.bitcoin.derive, chains.evm.derive); pure, no
I/O. The elliptic-curve and BIP-32 work is embit's (it binds libsecp256k1 when present); this module
decides what is accepted: extended public keys by their SLIP-132 version, key origins, public child
steps. Every error it raises is a chains.base.DerivationError whose message never repeats the text
given, and every private key form is refused by `refuse_private_keys` before anything is parsed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from embit import base58, bip32, hashes
from embit.base import EmbitError
from embit.wordlists.bip39 import WORDLIST

from chains.base import MAX_DERIVATION_INDEX, DerivationError, PrivateKeyRefused

# SLIP-132 version bytes of extended public keys -> (name, networks, script kind). The script kind is
# None for xpub/tpub, which every script type uses. testnet and regtest share their versions.
_TEST_NETS = frozenset({"testnet", "regtest"})
_MAIN_NETS = frozenset({"mainnet"})


@dataclass(frozen=True, slots=True)
class KeyVersion:
    name: str
    networks: frozenset[str]
    kind: str | None


PUBLIC_VERSIONS = {
    bytes.fromhex("0488b21e"): KeyVersion("xpub", _MAIN_NETS, None),
    bytes.fromhex("049d7cb2"): KeyVersion("ypub", _MAIN_NETS, "sh-wpkh"),
    bytes.fromhex("04b24746"): KeyVersion("zpub", _MAIN_NETS, "wpkh"),
    bytes.fromhex("043587cf"): KeyVersion("tpub", _TEST_NETS, None),
    bytes.fromhex("044a5262"): KeyVersion("upub", _TEST_NETS, "sh-wpkh"),
    bytes.fromhex("045f1cf6"): KeyVersion("vpub", _TEST_NETS, "wpkh"),
}
# Multisig SLIP-132 public versions (Ypub, Zpub, Upub, Vpub): a public key, but not of one address.
MULTISIG_VERSIONS = {bytes.fromhex(v) for v in ("0295b43f", "02aa7ed3", "024289ef", "02575483")}
# Private versions: xprv yprv zprv Yprv Zprv (mainnet), tprv uprv vprv Uprv Vprv (testnet).
PRIVATE_VERSIONS = {
    bytes.fromhex(v)
    for v in (
        *("0488ade4", "049d7878", "04b2430c", "0295b005", "02aa7a99"),
        *("04358394", "044a4e28", "045f18bc", "024285b5", "02575048"),
    )
}
_STANDARD_VERSION = {"mainnet": bytes.fromhex("0488b21e"), "testnet": bytes.fromhex("043587cf")}
_PRIVATE_PREFIXES = frozenset(p + "prv" for p in "xtyzuvYZUV")
_HARDENED = 0x80000000

_BIP39_WORDS = frozenset(WORDLIST)
_TOKENS = re.compile(r"[0-9A-Za-z]+").findall
_WORDS = re.compile(r"[\s,;]+").split
_HEX64 = re.compile(r"(?:0[xX])?[0-9a-fA-F]{64}").fullmatch
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+").fullmatch


# ------------------------------------------------------------------------------------ private keys


def refuse_private_keys(text: str) -> None:
    """PrivateKeyRefused if `text` holds a private key in any form, even a mistyped one.

    Recognised: a BIP-39 mnemonic (12 or more words, at least three in four from the English list, so
    a typo does not let it through), an extended private key (by its prefix or its version bytes,
    anywhere in a descriptor), a WIF key (51-52 base58 characters starting 5, K, L, 9 or c; no address
    or extended public key has that shape), and 64 hex digits (a raw 32-byte key) alone or as a key.
    """
    form = _private_form(text)
    if form is not None:
        raise PrivateKeyRefused(form)


def _private_form(text: str) -> str | None:
    words = [w.lower() for w in _WORDS(text.strip()) if w]
    if len(words) >= 12 and 4 * sum(w in _BIP39_WORDS for w in words) >= 3 * len(words):
        return "a BIP-39 mnemonic"
    # 32 bytes of hex: a private key, except as the x-only public key of a tr() descriptor (which is not
    # ranged, so it is refused later anyway, with the reason).
    taproot = text.lstrip().startswith("tr(")
    for token in _TOKENS(text):
        if _HEX64(token) and not taproot:
            return "a raw 32-byte private key"
        if token[:4] in _PRIVATE_PREFIXES or _version(token) in PRIVATE_VERSIONS:
            return "an extended private key"
        if len(token) in (51, 52) and token[0] in "5KL9c" and _BASE58(token):
            return "a WIF private key"
    return None


def _version(token: str) -> bytes | None:
    """The version bytes of a base58check extended key, None for anything else."""
    if len(token) < 100 or not _BASE58(token):
        return None
    payload = _base58check(token)
    return payload[:4] if payload is not None and len(payload) == 78 else None


def _base58check(token: str) -> bytes | None:
    """The payload of a base58check string, None when it is not one (embit's errors quote the text)."""
    if not _BASE58(token):
        return None
    try:
        payload = bytes(base58.decode_check(token))
    except (ValueError, IndexError, EmbitError):
        return None
    return payload if len(payload) > 4 else None


# ------------------------------------------------------------------------------------ public keys


@dataclass(frozen=True, slots=True)
class ExtendedKey:
    """A parsed extended public key: embit's HDKey (with the network's standard xpub/tpub version) and
    the SLIP-132 version it was written with."""

    key: bip32.HDKey
    version: KeyVersion

    @property
    def depth(self) -> int:
        return int(self.key.depth)

    @property
    def child_number(self) -> int:
        return int(self.key.child_number)

    def standard(self) -> str:
        """The key as xpub (mainnet) or tpub (testnet, regtest), as descriptors write it."""
        return str(self.key.to_base58())

    def child(self, index: int) -> ExtendedKey:
        """The public child at non-hardened `index`."""
        if not 0 <= index <= MAX_DERIVATION_INDEX:
            raise DerivationError(
                f"child index {index} is hardened or out of range: not derivable watch-only"
            )
        return ExtendedKey(self.key.child(index), self.version)

    def sec(self) -> bytes:
        """The compressed public key (33 bytes)."""
        return bytes(self.key.sec())

    def identity(self, *context: str) -> str:
        """16 hex digits naming this key (point and chain code) in `context`, for a Deriver's id."""
        digest = hashlib.sha256("\0".join(context).encode() + b"\0" + self.sec() + self.key.chain_code)
        return digest.hexdigest()[:16]


def parse_extended_public_key(token: str, network: str) -> ExtendedKey:
    """An extended public key valid for `network` (mainnet, testnet or regtest), by SLIP-132 version."""
    if token[:4] in _PRIVATE_PREFIXES or _version(token) in PRIVATE_VERSIONS:
        raise PrivateKeyRefused(
            "an extended private key"
        )  # callers screen the whole text; this is a backstop
    payload = _decode(token)
    version = PUBLIC_VERSIONS.get(payload[:4])
    if version is None:
        if payload[:4] in MULTISIG_VERSIONS:
            raise DerivationError(
                "a multisig extended key (Ypub/Zpub/Upub/Vpub) does not derive single-key addresses"
            )
        raise DerivationError(
            f"unknown extended key version 0x{payload[:4].hex()} (not an xpub/ypub/zpub/tpub/upub/vpub)"
        )
    if network not in version.networks:
        kind = "mainnet" if version.networks is _MAIN_NETS else "testnet/regtest"
        raise DerivationError(
            f"the extended key is a {kind} key ({version.name}), the chain's network is {network}"
        )
    standard = _STANDARD_VERSION["mainnet" if network == "mainnet" else "testnet"]
    key = _hdkey(standard + payload[4:])
    if key is None:
        raise DerivationError(
            f"the {version.name} is not a valid extended public key (bad public key point or fields)"
        )
    return ExtendedKey(key, version)


def key_version(token: str) -> KeyVersion | None:
    """The SLIP-132 version of an extended public key (None when it is none), to tell which script
    type or chain it was written for before its network is checked."""
    payload = _base58check(token)
    return PUBLIC_VERSIONS.get(payload[:4]) if payload is not None and len(payload) == 78 else None


def _decode(token: str) -> bytes:
    payload = _base58check(token)
    if payload is None:
        raise DerivationError("not an extended public key: not base58check, or its checksum is wrong")
    if len(payload) != 78:
        raise DerivationError(f"not an extended public key: {len(payload)} bytes where BIP-32 has 78")
    return payload


def _hdkey(payload: bytes) -> bip32.HDKey | None:
    # The key byte must be 02 or 03: embit would read 00 as a private key and 04 as uncompressed.
    if payload[45] not in (2, 3):
        return None
    try:
        key = bip32.HDKey.parse(payload)
    except (EmbitError, ValueError):
        return None
    return key


# ------------------------------------------------------------------------------------ paths


def parse_origin_steps(steps: str) -> tuple[int, ...]:
    """The child indexes of a key origin's path ("/84h/0h/0h", "'" or "h" mark hardened steps)."""
    indexes = []
    for step in steps.split("/")[1:]:
        hardened = step[-1:] in ("'", "h", "H")
        number = step[:-1] if hardened else step
        if not number.isdigit() or int(number) > MAX_DERIVATION_INDEX:
            raise DerivationError(
                "a key origin step is a number 0..2147483647, optionally followed by ' or h"
            )
        indexes.append(int(number) + (_HARDENED if hardened else 0))
    return tuple(indexes)


def format_path(indexes: tuple[int, ...], *, hardened_mark: str = "'") -> str:
    """ "84'/0'/0'/0" for the given child indexes (no leading m/)."""
    return "/".join(f"{i - _HARDENED}{hardened_mark}" if i >= _HARDENED else str(i) for i in indexes)


def hash160(data: bytes) -> bytes:
    return bytes(hashes.hash160(data))
