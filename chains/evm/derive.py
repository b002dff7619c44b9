"""Watch-only EVM addresses from a BIP-44 account extended public key: pure, no I/O.

The merchant gives the account key, m/44'/60'/N' (what MetaMask-style wallets derive from; Ledger and
Trezor export it as an xpub), optionally with its key origin `[fingerprint/44h/60h/0h]`. Addresses are
the external chain's children, m/44'/60'/N'/0/i, EIP-55 encoded like the adapter's display_address.

Ethereum keys carry no network, and wallets write the account key with the mainnet xpub version for
every EVM chain, so only an xpub is accepted, on any network. It must be at depth 3 with a hardened
last step, as an account key is: a deeper key (m/44'/60'/0'/0, say) would derive addresses the wallet
never shows, so it is refused rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from embit import ec

from chains import hdkey
from chains.base import DerivationError, Deriver, check_derivation_index
from chains.evm.address import to_checksum
from chains.evm.keccak import keccak
from chains.hdkey import ExtendedKey

MAX_TEXT_CHARS = 1000
ACCOUNT_DEPTH = 3
_HARDENED = 0x80000000
_ACCOUNT_KEY = re.compile(
    r"(?:\[(?P<fingerprint>[0-9a-fA-F]{8})(?P<origin>(?:/[0-9]+['hH]?)*)\])?(?P<key>[0-9A-Za-z]+)"
).fullmatch


@dataclass(frozen=True, slots=True)
class EvmDeriver(Deriver):
    """The addresses of one EVM account key: `branch` is its external chain (…/0)."""

    branch: ExtendedKey = field(compare=False, repr=False)

    def address(self, index: int) -> str:
        child = self.branch.child(check_derivation_index(index))
        return to_checksum(address_bytes(child))


def address_bytes(key: ExtendedKey) -> bytes:
    """The 20-byte account address of a public key: the last 20 bytes of keccak(x || y)."""
    point = ec.PublicKey.parse(key.sec())
    point.compressed = False
    return bytes(keccak(bytes(point.sec())[1:])[-20:])


def parse_evm_key(text: str, network: str) -> EvmDeriver:
    """An EvmDeriver for a BIP-44 account xpub (module docstring); `network` only names the deriver's
    network, since an EVM key is the same on every chain."""
    if not isinstance(text, str) or not text.strip():
        raise DerivationError("expected an account extended public key (xpub) as a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise DerivationError(f"longer than {MAX_TEXT_CHARS} characters: not an account key")
    hdkey.refuse_private_keys(text)
    match = _ACCOUNT_KEY(text.strip())
    if match is None:
        raise DerivationError(
            "expected the account's extended public key, xpub… or [fingerprint/44h/60h/0h]xpub…, "
            "with no steps after it (addresses are derived at /0/i)"
        )
    key = _account_key(match["key"])
    fingerprint = match["fingerprint"]
    origin = hdkey.parse_origin_steps(match["origin"] or "") if fingerprint else ()
    if fingerprint and len(origin) != ACCOUNT_DEPTH:
        raise DerivationError(f"the key origin has {len(origin)} steps; an account key's has 3 (44h/60h/0h)")
    branch = key.child(0)
    prefix = f"[{fingerprint.lower()}/{hdkey.format_path(origin, hardened_mark='h')}]" if fingerprint else ""
    return EvmDeriver(
        id=f"evm:{branch.identity('evm')}",
        network=network,
        kind="evm",
        descriptor=f"{prefix}{key.standard()}",
        origin=f"m/{hdkey.format_path(origin)}/0" if fingerprint else "…/0",
        branch=branch,
    )


def _account_key(token: str) -> ExtendedKey:
    version = hdkey.key_version(token)
    if version is not None and version.name != "xpub":
        raise DerivationError(
            f"an EVM account key is written as an xpub; a {version.name} is a Bitcoin key of another kind"
        )
    key = hdkey.parse_extended_public_key(token, "mainnet")
    if key.depth != ACCOUNT_DEPTH or key.child_number < _HARDENED:
        raise DerivationError(
            f"expected the account key m/44'/60'/N' (depth 3, hardened); this key is at depth {key.depth}"
            + ("" if key.child_number >= _HARDENED else " with a non-hardened last step")
        )
    return key
