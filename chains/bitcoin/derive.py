"""Watch-only Bitcoin addresses from an output descriptor or an extended public key: pure, no I/O.

Accepted (BIP-380 to 386 syntax, one key, ranged with a non-hardened `*`):

* `wpkh(KEY/0/*)` (BIP-84, P2WPKH), `sh(wpkh(KEY/0/*))` (BIP-49, P2SH-P2WPKH), `tr(KEY/0/*)` (BIP-86,
  key-path-only P2TR) and `pkh(KEY/0/*)` (BIP-44, P2PKH), where KEY is an extended public key with an
  optional key origin `[fingerprint/84h/0h/0h]` and any non-hardened steps follow it. The `#checksum`
  is checked when present (BIP-380).
* A bare zpub/vpub (P2WPKH) or ypub/upub (P2SH-P2WPKH), optionally with a key origin: their SLIP-132
  version names the script type, and the receive branch `/0/*` is derived.

A bare xpub or tpub is refused: BIP-44, BIP-84 and BIP-86 wallets all export their account keys as xpub
(Sparrow and Bitcoin Core write BIP-84 keys as xpub in descriptors), so guessing a script type would
silently issue addresses the merchant's wallet never scans. The error asks for a descriptor, which says
the script type explicitly. Likewise refused: hardened steps after the key (a public key cannot derive
them), a hardened or missing wildcard, multipath `<0;1>` steps, multisig and other script types, and
a key of another network (mainnet keys on testnet or regtest and the other way round).

Addresses come out exactly as `chains.bitcoin.address.address_for_script` (the adapters'
display_address) shows them, so the adapters' `watch_key` takes them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from embit.descriptor.checksum import checksum as descriptor_checksum
from embit.descriptor.errors import DescriptorError

from chains import hdkey
from chains.base import DerivationError, Deriver, check_derivation_index
from chains.bitcoin.address import NETWORKS, address_for_script, p2pkh_script, p2sh_script, witness_script
from chains.hdkey import ExtendedKey

# Longer than any one-key descriptor (about 200 characters with its origin); bounds the work on input.
MAX_TEXT_CHARS = 1000
KINDS = ("wpkh", "sh-wpkh", "tr", "pkh")
_SCRIPT_FORMS = {"wpkh": "wpkh({})", "sh-wpkh": "sh(wpkh({}))", "tr": "tr({})", "pkh": "pkh({})"}
_SH_WPKH = re.compile(r"sh\(wpkh\((.*)\)\)", re.DOTALL).fullmatch
_ONE_FUNCTION = re.compile(r"(wpkh|tr|pkh)\((.*)\)", re.DOTALL).fullmatch
_FUNCTION = re.compile(r"[a-z_]+\(").match
_KEY_EXPRESSION = re.compile(
    r"(?:\[(?P<fingerprint>[0-9a-fA-F]{8})(?P<origin>(?:/[0-9]+['hH]?)*)\])?(?P<key>[0-9A-Za-z]+)(?P<steps>(?:/[^/]*)*)"
).fullmatch
_SUPPORTED = "wpkh(KEY/0/*), sh(wpkh(KEY/0/*)), tr(KEY/0/*) or pkh(KEY/0/*)"


@dataclass(frozen=True, slots=True)
class BitcoinDeriver(Deriver):
    """The addresses of one Bitcoin descriptor: `branch` is the key the wildcard index is derived from."""

    branch: ExtendedKey = field(compare=False, repr=False)

    def address(self, index: int) -> str:
        return address_for_script(self.script(index), self.network)

    def script(self, index: int) -> bytes:
        """The output script of the address at `index` (the adapters' watch key)."""
        return output_script(self.kind, self.branch.child(check_derivation_index(index)))


def output_script(kind: str, key: ExtendedKey) -> bytes:
    """The output script of `kind` paying to `key`'s public key."""
    if kind == "tr":
        # BIP-86: the key-path-only output key is the internal key tweaked with an empty script tree.
        return witness_script(1, bytes(key.key.key.taproot_tweak(b"").xonly()))
    key_hash = hdkey.hash160(key.sec())
    if kind == "pkh":
        return p2pkh_script(key_hash)
    if kind == "wpkh":
        return witness_script(0, key_hash)
    return p2sh_script(hdkey.hash160(witness_script(0, key_hash)))


def parse_bitcoin_key(text: str, network: str) -> BitcoinDeriver:
    """A BitcoinDeriver for a descriptor or SLIP-132 extended public key on `network` (module docstring)."""
    if network not in NETWORKS:
        raise DerivationError(f"unknown network {network!r} (mainnet, testnet or regtest)")
    if not isinstance(text, str) or not text.strip():
        raise DerivationError("expected a descriptor or an extended public key as a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise DerivationError(f"longer than {MAX_TEXT_CHARS} characters: not a one-key descriptor")
    hdkey.refuse_private_keys(text)
    body = _checked_body(text.strip())
    kind, expression = _script_kind(body)
    return _deriver(kind, expression, network, bare=kind is None)


def _checked_body(text: str) -> str:
    """The descriptor without its `#checksum`, which must match when present (BIP-380)."""
    if "#" not in text:
        return text
    body, _, given = text.rpartition("#")
    expected = _checksum(body)
    if expected is None:
        raise DerivationError("the descriptor holds characters no descriptor may contain")
    if given != expected:
        raise DerivationError(
            f"descriptor checksum mismatch: the text before '#' has checksum {expected}; "
            "the descriptor was altered or mistyped"
        )
    return body


def _checksum(body: str) -> str | None:
    try:
        return str(descriptor_checksum(body))
    except DescriptorError:
        return None


def _script_kind(body: str) -> tuple[str | None, str]:
    """(script kind, key expression); kind None for a bare key, whose SLIP-132 version decides."""
    nested = _SH_WPKH(body)
    if nested:
        return "sh-wpkh", nested.group(1)
    single = _ONE_FUNCTION(body)
    if single:
        return single.group(1), single.group(2)
    if _FUNCTION(body):
        raise DerivationError(f"unsupported descriptor: only {_SUPPORTED} with one extended public key")
    return None, body


def _deriver(kind: str | None, expression: str, network: str, *, bare: bool) -> BitcoinDeriver:
    match = _KEY_EXPRESSION(expression)
    if match is None:
        raise DerivationError(
            f"not a key expression: expected [fingerprint/origin]KEY/0/* inside {_SUPPORTED}"
        )
    key = hdkey.parse_extended_public_key(match["key"], network)
    kind = _checked_kind(kind, key)
    steps = _branch_steps(match["steps"], bare=bare)
    branch = key
    for step in steps:
        branch = branch.child(step)
    fingerprint = match["fingerprint"]
    origin = hdkey.parse_origin_steps(match["origin"] or "") if fingerprint else ()
    return BitcoinDeriver(
        id=f"{kind}:{branch.identity('bitcoin', network, kind)}",
        network=network,
        kind=kind,
        descriptor=canonical_descriptor(kind, key, fingerprint, origin, steps),
        origin=_origin_path(fingerprint is not None, origin, steps),
        branch=branch,
    )


def _checked_kind(kind: str | None, key: ExtendedKey) -> str:
    """The script kind, from the descriptor or the SLIP-132 version; they must agree when both say it."""
    implied = key.version.kind
    if kind is None:
        if implied is None:
            raise DerivationError(
                f"a bare {key.version.name} does not say its script type: write it as a descriptor, "
                f"e.g. wpkh({key.version.name}…/0/*) for BIP-84, tr(…) for BIP-86 or pkh(…) for BIP-44"
            )
        return implied
    if implied is not None and implied != kind:
        raise DerivationError(
            f"a {key.version.name} is a {implied} key, but the descriptor's script is {kind}: "
            "check which account key was exported"
        )
    return kind


def _branch_steps(steps: str, *, bare: bool) -> tuple[int, ...]:
    """The non-hardened steps between the key and the wildcard; a bare key gets the receive branch."""
    if bare and not steps:
        return (0,)
    parts = steps.split("/")[1:]
    if not parts or parts[-1] != "*":
        last = parts[-1] if parts else ""
        if last in ("*'", "*h", "*H"):
            raise DerivationError("a hardened wildcard (*' or *h) cannot be derived from a public key")
        if any("<" in p for p in parts):
            raise DerivationError("multipath steps <0;1> are not supported: give the receive branch, /0/*")
        raise DerivationError("the descriptor is not ranged: end the key with /0/* (the receive branch)")
    indexes = []
    for part in parts[:-1]:
        if part[-1:] in ("'", "h", "H"):
            raise DerivationError(
                "a hardened step after the key cannot be derived from a public key: give the extended "
                "public key at the hardened level (the account key) and only non-hardened steps after it"
            )
        if "<" in part:
            raise DerivationError("multipath steps <0;1> are not supported: give the receive branch, /0/*")
        if not part.isdigit() or int(part) > 2**31 - 1:
            raise DerivationError("a step after the key is a number 0..2147483647 (or the final *)")
        indexes.append(int(part))
    return tuple(indexes)


def canonical_descriptor(
    kind: str, key: ExtendedKey, fingerprint: str | None, origin: tuple[int, ...], steps: tuple[int, ...]
) -> str:
    """The descriptor as stored: xpub/tpub, origin with h, the branch steps, `/*`, and its checksum."""
    prefix = ""
    if fingerprint is not None:
        path = hdkey.format_path(origin, hardened_mark="h")
        prefix = f"[{fingerprint.lower()}{'/' if path else ''}{path}]"
    tail = "".join(f"/{step}" for step in steps)
    body = _SCRIPT_FORMS[kind].format(f"{prefix}{key.standard()}{tail}/*")
    return f"{body}#{descriptor_checksum(body)}"


def _origin_path(known: bool, origin: tuple[int, ...], steps: tuple[int, ...]) -> str:
    relative = hdkey.format_path(steps)
    if known:
        return "/".join(p for p in ("m", hdkey.format_path(origin), relative) if p)
    return "/".join(p for p in ("…", relative) if p)
