"""Watch-only derivation (chains.hdkey, chains.bitcoin.derive, chains.evm.derive): published vectors,
descriptor checksums, network and hardened-step refusals, and private keys refused without being echoed.

The account keys of the BIP-49/84/86 test mnemonic are computed here with embit's private derivation:
the tests may hold the mnemonic, the modules under test may not accept it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import pytest
from embit import bip32, bip39
from embit.descriptor import Descriptor
from embit.networks import NETWORKS as EMBIT_NETWORKS

from bench import derive as derive_bench
from chains import hdkey
from chains.base import (
    BaseAdapter,
    CurrencySpec,
    DerivationError,
    Deriver,
    PrivateKeyRefused,
)
from chains.bitcoin.adapter import BitcoinCoreAdapter
from chains.bitcoin.address import address_for_script, base58check_decode, p2pkh_script
from chains.bitcoin.derive import BitcoinDeriver, parse_bitcoin_key
from chains.bitcoin.esplora import EsploraAdapter
from chains.evm.adapter import EvmAdapter
from chains.evm.derive import parse_evm_key
from tests.scripted_chain import ScriptedChain

MNEMONIC = " ".join(["abandon"] * 11 + ["about"])
ROOT = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(MNEMONIC))
ROOT_FINGERPRINT = "73c5da0a"
VERSION = {
    name: bytes.fromhex(hex_)
    for name, hex_ in {
        "xpub": "0488b21e",
        "ypub": "049d7cb2",
        "zpub": "04b24746",
        "tpub": "043587cf",
        "upub": "044a5262",
        "vpub": "045f1cf6",
        "Zpub": "02aa7ed3",
        "tprv": "04358394",
        "yprv": "049d7878",
        "zprv": "04b2430c",
    }.items()
}


def account(path: str, version: str = "xpub") -> str:
    """The account extended public key at `path` of the test mnemonic, written with `version`."""
    return str(ROOT.derive(path).to_public().to_base58(VERSION[version]))


def private(path: str, version: bytes | None = None) -> str:
    return str(ROOT.derive(path).to_base58(version))


BTC = CurrencySpec("BTC", 8)
ETH = CurrencySpec("ETH", 18)
USDT = CurrencySpec("USDT", 6, "0xdac17f958d2ee523a2206206994597c13d831ec7")


# ------------------------------------------------------------------------------------------ BIP-32


# Test vectors 1 and 2 of BIP-32: every step from a published xpub to the next that is not hardened,
# so it is derivable watch-only: (parent xpub, child index, child xpub).
BIP32_PUBLIC_STEPS = [
    (  # vector 1: m/0H -> m/0H/1
        "xpub68Gmy5EdvgibQVfPdqkBBCHxA5htiqg55crXYuXoQRKfDBFA1WEjWgP6LHhwBZeNK1VTsfTFUHCdrfp1bgwQ9xv5ski8PX9rL2dZXvgGDnw",
        1,
        "xpub6ASuArnXKPbfEwhqN6e3mwBcDTgzisQN1wXN9BJcM47sSikHjJf3UFHKkNAWbWMiGj7Wf5uMash7SyYq527Hqck2AxYysAA7xmALppuCkwQ",
    ),
    (  # vector 1: m/0H/1/2H -> m/0H/1/2H/2
        "xpub6D4BDPcP2GT577Vvch3R8wDkScZWzQzMMUm3PWbmWvVJrZwQY4VUNgqFJPMM3No2dFDFGTsxxpG5uJh7n7epu4trkrX7x7DogT5Uv6fcLW5",
        2,
        "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
    ),
    (  # vector 1: m/0H/1/2H/2 -> m/0H/1/2H/2/1000000000
        "xpub6FHa3pjLCk84BayeJxFW2SP4XRrFd1JYnxeLeU8EqN3vDfZmbqBqaGJAyiLjTAwm6ZLRQUMv1ZACTj37sR62cfN7fe5JnJ7dh8zL4fiyLHV",
        1000000000,
        "xpub6H1LXWLaKsWFhvm6RVpEL9P4KfRZSW7abD2ttkWP3SSQvnyA8FSVqNTEcYFgJS2UaFcxupHiYkro49S8yGasTvXEYBVPamhGW6cFJodrTHy",
    ),
    (  # vector 2: m -> m/0
        "xpub661MyMwAqRbcFW31YEwpkMuc5THy2PSt5bDMsktWQcFF8syAmRUapSCGu8ED9W6oDMSgv6Zz8idoc4a6mr8BDzTJY47LJhkJ8UB7WEGuduB",
        0,
        "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgFxHmwMkQTPH",
    ),
    (  # vector 2: m/0/2147483647H -> m/0/2147483647H/1
        "xpub6ASAVgeehLbnwdqV6UKMHVzgqAG8Gr6riv3Fxxpj8ksbH9ebxaEyBLZ85ySDhKiLDBrQSARLq1uNRts8RuJiHjaDMBU4Zn9h8LZNnBC5y4a",
        1,
        "xpub6DF8uhdarytz3FWdA8TvFSvvAh8dP3283MY7p2V4SeE2wyWmG5mg5EwVvmdMVCQcoNJxGoWaU9DCWh89LojfZ537wTfunKau47EL2dhHKon",
    ),
    (  # vector 2: m/0/2147483647H/1/2147483646H -> m/0/2147483647H/1/2147483646H/2
        "xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvLJuZZvRcEL",
        2,
        "xpub6FnCn6nSzZAw5Tw7cgR9bi15UV96gLZhjDstkXXxvCLsUXBGXPdSnLFbdpq8p9HmGsApME5hQTZ3emM2rnY5agb9rXpVGyy3bdW6EEgAtqt",
    ),
]


@pytest.mark.parametrize(("parent", "index", "child"), BIP32_PUBLIC_STEPS)
def test_bip32_vectors_public_child_keys(parent: str, index: int, child: str) -> None:
    assert hdkey.parse_extended_public_key(parent, "mainnet").child(index).standard() == child


@pytest.mark.parametrize(("parent", "index", "child"), BIP32_PUBLIC_STEPS)
def test_bip32_vectors_addresses_from_the_parent_xpub(parent: str, index: int, child: str) -> None:
    child_public_key = base58check_decode(child)[45:78]
    expected = address_for_script(p2pkh_script(hdkey.hash160(child_public_key)), "mainnet")
    assert parse_bitcoin_key(f"pkh({parent}/*)", "mainnet").address(index) == expected


def test_bip32_vector_hardened_child_is_not_derivable_from_the_xpub() -> None:
    parent = BIP32_PUBLIC_STEPS[0][2]  # vector 1, m/0H/1: its child 2H is hardened
    with pytest.raises(DerivationError, match="hardened step after the key"):
        parse_bitcoin_key(f"pkh({parent}/2h/*)", "mainnet")


# ------------------------------------------------------------------------ BIP-44/49/84/86 documents


def test_bip84_document_addresses() -> None:
    zpub = account("m/84h/0h/0h", "zpub")
    receive = parse_bitcoin_key(zpub, "mainnet")
    assert receive.kind == "wpkh"
    assert receive.address(0) == "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
    assert receive.address(1) == "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"
    change = parse_bitcoin_key(f"wpkh([{ROOT_FINGERPRINT}/84h/0h/0h]{account('m/84h/0h/0h')}/1/*)", "mainnet")
    assert change.address(0) == "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el"
    assert change.path(0) == "m/84'/0'/0'/1/0"
    assert receive.path(5) == "…/0/5"


def test_bip49_document_address_on_testnet() -> None:
    upub = account("m/49h/1h/0h", "upub")
    assert upub == (
        "upub5EFU65HtV5TeiSHmZZm7FUffBGy8UKeqp7vw43jYbvZPpoVsgU93oac7Wk3u6moKegAEWtGNF8DehrnHtv21XXEMYRUocHqguyjknFHYfgY"
    )  # account0Xpub as the document lists it
    assert parse_bitcoin_key(upub, "testnet").address(0) == "2Mww8dCYPUpKHofjgcXcBCEGmniw9CoaiD2"
    descriptor = parse_bitcoin_key(f"sh(wpkh({account('m/49h/1h/0h', 'tpub')}/0/*))", "testnet")
    assert descriptor.kind == "sh-wpkh"
    assert descriptor.address(0) == "2Mww8dCYPUpKHofjgcXcBCEGmniw9CoaiD2"


BIP86_XPUB = (
    "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9Q"
    "yrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
)


def test_bip86_document_addresses() -> None:
    assert account("m/86h/0h/0h") == BIP86_XPUB
    receive = parse_bitcoin_key(f"tr([{ROOT_FINGERPRINT}/86h/0h/0h]{BIP86_XPUB}/0/*)", "mainnet")
    assert receive.address(0) == "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
    assert receive.address(1) == "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh"
    assert receive.path(1) == "m/86'/0'/0'/0/1"
    change = parse_bitcoin_key(f"tr({BIP86_XPUB}/1/*)", "mainnet")
    assert change.address(0) == "bc1p3qkhfews2uk44qtvauqyr2ttdsw7svhkl9nkm9s9c3x4ax5h60wqwruhk7"


def test_bip44_pkh_first_address_and_embit_agree() -> None:
    text = f"pkh([{ROOT_FINGERPRINT}/44h/0h/0h]{account('m/44h/0h/0h')}/0/*)"
    deriver = parse_bitcoin_key(text, "mainnet")
    assert deriver.address(0) == "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"
    # embit's own descriptor code path (not the one derive.py uses) gives the same addresses.
    for kind, path in (("pkh", "44h/0h/0h"), ("wpkh", "84h/0h/0h"), ("tr", "86h/0h/0h")):
        text = f"{kind}({account('m/' + path)}/0/*)"
        reference = Descriptor.from_string(text)
        for index in (0, 7, 2**31 - 1):
            expected = reference.derive(index).address(EMBIT_NETWORKS["main"])
            assert parse_bitcoin_key(text, "mainnet").address(index) == expected


def test_evm_account_key_first_address() -> None:
    xpub = account("m/44h/60h/0h")
    deriver = parse_evm_key(xpub, "mainnet")
    assert deriver.address(0) == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    assert deriver.path(0) == "…/0/0"
    with_origin = EvmAdapter.parse_public_key(f"[{ROOT_FINGERPRINT}/44h/60h/0h]{xpub}", "sepolia")
    assert with_origin.address(0) == "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
    assert with_origin.path(3) == "m/44'/60'/0'/0/3"
    assert with_origin.id == deriver.id
    assert deriver.address(1) != deriver.address(0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (account("m/44h/60h/0h/0"), "depth 4"),
        (account("m/44h/60h"), "depth 2"),
        (account("m/44h/60h/0h", "zpub"), "written as an xpub"),
        (account("m/44h/60h/0h", "tpub"), "written as an xpub"),
        (f"{account('m/44h/60h/0h')}/0/*", "expected the account's extended public key"),
        (f"[{ROOT_FINGERPRINT}/44h/60h]{account('m/44h/60h/0h')}", "origin has 2 steps"),
        (f"wpkh({account('m/44h/60h/0h')}/0/*)", "expected the account's extended public key"),
        ("", "non-empty"),
    ],
)
def test_evm_refusals(text: str, reason: str) -> None:
    with pytest.raises(DerivationError, match=reason):
        parse_evm_key(text, "mainnet")


def test_evm_account_key_with_non_hardened_last_step_is_refused() -> None:
    key = ROOT.derive("m/44h/60h").to_public().child(0)  # depth 3, but m/44'/60'/0 is no account key
    with pytest.raises(DerivationError, match="non-hardened last step"):
        parse_evm_key(str(key.to_base58()), "mainnet")


# ---------------------------------------------------------------------------------- descriptors


# Bitcoin Core's own example (deriveaddresses help, wallet tests): written exactly as Core writes it.
CORE_DESCRIPTOR = (
    "wpkh([d34db33f/84h/0h/0h]xpub6DJ2dNUysrn5Vt36jH2KLBT2i1auw1tTSSomg8PhqNiUtx8QX2SvC9nrHu81fT41fvDUnhMjEz"
    "QgXnQjKEu3oaqMSzhSrHMxyyoEAmUHQbY/0/*)#cjjspncu"
)


def test_descriptor_checksum_good_and_canonical_form_is_cores() -> None:
    deriver = parse_bitcoin_key(CORE_DESCRIPTOR, "mainnet")
    assert deriver.descriptor == CORE_DESCRIPTOR
    assert deriver.path(2) == "m/84'/0'/0'/0/2"
    without_checksum = parse_bitcoin_key(CORE_DESCRIPTOR.split("#")[0], "mainnet")
    assert without_checksum.address(2) == deriver.address(2)


@pytest.mark.parametrize(
    "text",
    [
        CORE_DESCRIPTOR[:-1] + "v",  # checksum altered
        CORE_DESCRIPTOR.replace("/0/*", "/1/*"),  # body altered, checksum kept
        CORE_DESCRIPTOR.replace("84h", "84'", 1),  # same path in another spelling: another checksum
        CORE_DESCRIPTOR + "x",  # 9 characters
        CORE_DESCRIPTOR.split("#")[0] + "#",
    ],
)
def test_descriptor_checksum_bad(text: str) -> None:
    with pytest.raises(DerivationError, match="checksum mismatch"):
        parse_bitcoin_key(text, "mainnet")


def test_canonical_descriptor_parses_back_to_the_same_addresses_and_id() -> None:
    for text, network in (
        (account("m/84h/1h/0h", "vpub"), "regtest"),
        (account("m/49h/0h/0h", "ypub"), "mainnet"),
        (f"tr([{ROOT_FINGERPRINT}/86h/1h/0h]{account('m/86h/1h/0h', 'tpub')}/0/*)", "testnet"),
    ):
        first = parse_bitcoin_key(text, network)
        again = parse_bitcoin_key(first.descriptor, network)
        assert (again.id, again.descriptor, again.address(9)) == (
            first.id,
            first.descriptor,
            first.address(9),
        )


def test_id_names_the_key_and_script_not_the_spelling() -> None:
    zpub = parse_bitcoin_key(account("m/84h/0h/0h", "zpub"), "mainnet")
    with_origin = parse_bitcoin_key(
        f"wpkh([{ROOT_FINGERPRINT}/84h/0h/0h]{account('m/84h/0h/0h')}/0/*)", "mainnet"
    )
    assert zpub.id == with_origin.id and zpub.id.startswith("wpkh:")
    assert parse_bitcoin_key(f"tr({account('m/84h/0h/0h')}/0/*)", "mainnet").id != zpub.id
    assert parse_bitcoin_key(f"wpkh({account('m/84h/0h/0h')}/1/*)", "mainnet").id != zpub.id
    regtest = parse_bitcoin_key(account("m/84h/1h/0h", "vpub"), "regtest")
    assert parse_bitcoin_key(account("m/84h/1h/0h", "vpub"), "testnet").id != regtest.id


@pytest.mark.parametrize(
    ("text", "network", "reason"),
    [
        (account("m/84h/0h/0h", "zpub"), "regtest", "mainnet key.*network is regtest"),
        (account("m/84h/0h/0h", "zpub"), "testnet", "mainnet key.*network is testnet"),
        (account("m/84h/1h/0h", "vpub"), "mainnet", "testnet/regtest key.*network is mainnet"),
        (f"tr({account('m/86h/1h/0h', 'tpub')}/0/*)", "mainnet", "testnet/regtest key"),
        (f"wpkh({account('m/84h/0h/0h')}/0/*)", "regtest", "mainnet key"),
        (account("m/84h/0h/0h", "zpub"), "signet", "unknown network"),
    ],
)
def test_wrong_network_refused(text: str, network: str, reason: str) -> None:
    with pytest.raises(DerivationError, match=reason):
        parse_bitcoin_key(text, network)


XPUB = account("m/84h/0h/0h")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"wpkh({XPUB}/0/*')", "hardened wildcard"),
        (f"wpkh({XPUB}/0/*h)", "hardened wildcard"),
        (f"wpkh({XPUB}/0h/*)", "hardened step after the key"),
        (f"tr({XPUB}/1'/*)", "hardened step after the key"),
        (f"wpkh({XPUB}/0/5)", "not ranged"),
        (f"wpkh({XPUB})", "not ranged"),
        (f"wpkh({XPUB}/<0;1>/*)", "multipath"),
        (XPUB, "bare xpub does not say its script type"),
        (f"tr({account('m/84h/0h/0h', 'zpub')}/0/*)", "zpub is a wpkh key.*script is tr"),
        (f"wpkh({account('m/49h/0h/0h', 'ypub')}/0/*)", "ypub is a sh-wpkh key"),
        (f"wsh(multi(1,{XPUB}/0/*))", "unsupported descriptor"),
        (f"sh(multi(1,{XPUB}/0/*))", "unsupported descriptor"),
        (f"wpkh({XPUB[:-1]}x/0/*)", "checksum is wrong"),
        (f"wpkh({account('m/48h/0h/0h/2h', 'Zpub')}/0/*)", "multisig"),
        ("wpkh(0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c)", "not an extended"),
        ("tr(30d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c)", "not an extended"),
        (f"wpkh([{ROOT_FINGERPRINT}/84x]{XPUB}/0/*)", "not a key expression"),
        (f"wpkh({XPUB}/0/x/*)", "a step after the key"),
        (f"wpkh({XPUB}/0/2147483648/*)", "a step after the key"),
        ("   ", "non-empty"),
        ("x" * 1001, "longer than 1000"),
    ],
)
def test_descriptor_refusals(text: str, reason: str) -> None:
    with pytest.raises(DerivationError, match=reason) as caught:
        parse_bitcoin_key(text, "mainnet")
    assert not isinstance(caught.value, PrivateKeyRefused)


def test_bare_tpub_needs_a_descriptor_too() -> None:
    with pytest.raises(DerivationError, match="bare tpub does not say its script type"):
        parse_bitcoin_key(account("m/84h/1h/0h", "tpub"), "regtest")


def test_index_bounds() -> None:
    deriver = parse_bitcoin_key(account("m/84h/0h/0h", "zpub"), "mainnet")
    assert deriver.address(2**31 - 1).startswith("bc1q")
    for index in (-1, 2**31, True, 1.0):
        with pytest.raises(DerivationError, match="a derivation index"):
            deriver.address(index)  # type: ignore[arg-type]
        with pytest.raises(DerivationError, match="a derivation index"):
            deriver.path(index)  # type: ignore[arg-type]
    with pytest.raises(DerivationError, match="a derivation index"):
        parse_evm_key(account("m/44h/60h/0h"), "mainnet").address(-1)


# -------------------------------------------------------------------------------- private keys


def _mnemonic(words: int) -> str:
    entropy = bytes(range(1, words * 4 // 3 + 1))
    return str(bip39.mnemonic_from_bytes(entropy))


WIF_MAINNET = "KyZpNDKnfs94vbrwhJneDi77V6jF64PWPF8x5cdJb8ifgg2DUc9d"  # BIP-84's m/84'/0'/0'/0/0
WIF_TESTNET = "cULrpoZGXiuC19Uhvykx7NugygA3k86b3hmdCeyvHYQZSxojGyXJ"  # BIP-49's m/49'/1'/0'/0/0
RAW_HEX = "c9bdb49cfbaedca21c4b1f3a7803c34636b1d7dc55a717132443fc3f4c5867e8"  # the same key in hex
XPRV = private("m/84h/0h/0h")

PRIVATE_FORMS = {
    "xprv": (XPRV, "an extended private key"),
    "tprv": (private("m/84h/1h/0h", VERSION["tprv"]), "an extended private key"),
    "yprv": (private("m/49h/0h/0h", VERSION["yprv"]), "an extended private key"),
    "zprv": (private("m/84h/0h/0h", VERSION["zprv"]), "an extended private key"),
    "root xprv": (private("m"), "an extended private key"),
    "mistyped xprv": (XPRV[:50] + ("A" if XPRV[50] != "A" else "B") + XPRV[51:], "an extended private key"),
    "private wpkh descriptor": (f"wpkh([{ROOT_FINGERPRINT}/84h/0h/0h]{XPRV}/0/*)", "an extended private key"),
    "private tr descriptor with checksum": (
        f"tr({XPRV}/0/*)#{Descriptor.from_string(f'tr({XPRV}/0/*)').to_string().split('#')[-1]}",
        "an extended private key",
    ),
    "WIF descriptor": (f"wpkh({WIF_MAINNET})", "a WIF private key"),
    "WIF mainnet": (WIF_MAINNET, "a WIF private key"),
    "WIF testnet": (WIF_TESTNET, "a WIF private key"),
    "WIF mistyped": (WIF_MAINNET[:-1] + "e", "a WIF private key"),
    "mnemonic 12": (MNEMONIC, "a BIP-39 mnemonic"),
    "mnemonic 15": (_mnemonic(15), "a BIP-39 mnemonic"),
    "mnemonic 18": (_mnemonic(18), "a BIP-39 mnemonic"),
    "mnemonic 21": (_mnemonic(21), "a BIP-39 mnemonic"),
    "mnemonic 24": (_mnemonic(24), "a BIP-39 mnemonic"),
    "mnemonic with a typo, commas, upper case": (
        "Abandon, abandon, abandonn, abandon, abandon, abandon, abandon, abandon, abandon, abandon, "
        "abandon, about",
        "a BIP-39 mnemonic",
    ),
    "raw hex": (RAW_HEX, "a raw 32-byte private key"),
    "raw hex 0x": ("0x" + RAW_HEX.upper(), "a raw 32-byte private key"),
    "raw hex in a descriptor": (f"wpkh({RAW_HEX})", "a raw 32-byte private key"),
}

PARSERS: dict[str, tuple[Callable[[str, str], Deriver], str]] = {
    "bitcoin-core regtest": (BitcoinCoreAdapter.parse_public_key, "regtest"),
    "esplora mainnet": (EsploraAdapter.parse_public_key, "mainnet"),
    "evm": (EvmAdapter.parse_public_key, "mainnet"),
}


def _echoes(secret: str, text: str) -> bool:
    """Whether `text` holds any part of `secret` longer than 4 characters."""
    return any(secret[i : i + 5] in text for i in range(len(secret) - 4))


@pytest.mark.parametrize("form", sorted(PRIVATE_FORMS))
@pytest.mark.parametrize("parser", sorted(PARSERS))
def test_private_key_refused_without_echo(form: str, parser: str) -> None:
    secret, what = PRIVATE_FORMS[form]
    parse, network = PARSERS[parser]
    with pytest.raises(PrivateKeyRefused) as caught:
        parse(secret, network)
    exc = caught.value
    assert isinstance(exc, DerivationError) and exc.form == what
    assert "watch-only" in str(exc)
    assert exc.__cause__ is None and exc.__context__ is None  # nothing chained that could quote it
    for shown in (str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))):
        assert not _echoes(secret, shown), (form, shown)


def test_private_key_message_shares_no_five_characters_with_the_secret() -> None:
    for secret, _ in PRIVATE_FORMS.values():
        with pytest.raises(PrivateKeyRefused) as caught:
            parse_bitcoin_key(secret, "mainnet")
        assert not _echoes(secret, str(caught.value)), secret[:3]
        assert not _echoes(secret, "".join(traceback.format_exception(caught.value)))


def test_extended_key_parser_refuses_private_keys_on_its_own() -> None:
    for secret in (XPRV, PRIVATE_FORMS["mistyped xprv"][0], PRIVATE_FORMS["tprv"][0]):
        with pytest.raises(PrivateKeyRefused) as caught:
            hdkey.parse_extended_public_key(secret, "mainnet")
        assert not _echoes(secret, "".join(traceback.format_exception(caught.value)))


def test_public_keys_are_not_mistaken_for_private_ones() -> None:
    for text, network in (
        (account("m/84h/0h/0h", "zpub"), "mainnet"),
        (CORE_DESCRIPTOR, "mainnet"),
        (account("m/84h/1h/0h", "vpub"), "regtest"),
    ):
        hdkey.refuse_private_keys(text)
        assert parse_bitcoin_key(text, network).address(0)
    # Twelve words that are mostly not BIP-39 words are not a mnemonic (and not a key either).
    with pytest.raises(DerivationError) as caught:
        parse_bitcoin_key("these twelve words are not a seed phrase but plain text for the test", "mainnet")
    assert not isinstance(caught.value, PrivateKeyRefused)


# -------------------------------------------------------------------------------- the adapters


def _bitcoin_keys(network: str) -> list[str]:
    coin = "0h" if network == "mainnet" else "1h"
    xpub, zpub, ypub = ("xpub", "zpub", "ypub") if network == "mainnet" else ("tpub", "vpub", "upub")
    return [
        account(f"m/84h/{coin}/0h", zpub),
        account(f"m/49h/{coin}/0h", ypub),
        f"tr([{ROOT_FINGERPRINT}/86h/{coin}/0h]{account(f'm/86h/{coin}/0h', xpub)}/0/*)",
        f"pkh({account(f'm/44h/{coin}/0h', xpub)}/0/*)",
        f"wpkh({account(f'm/84h/{coin}/0h', xpub)}/1/*)",
    ]


@pytest.mark.parametrize("adapter", [BitcoinCoreAdapter, EsploraAdapter])
@pytest.mark.parametrize("network", ["mainnet", "testnet", "regtest"])
def test_bitcoin_addresses_are_accepted_by_the_adapters_watch_key(
    adapter: type[BaseAdapter], network: str
) -> None:
    kinds = set()
    for text in _bitcoin_keys(network):
        deriver = adapter.parse_public_key(text, network)
        assert isinstance(deriver, BitcoinDeriver) and deriver.network == network
        kinds.add(deriver.kind)
        for index in (0, 1, 1000):
            address = deriver.address(index)
            key = adapter.watch_key(BTC, address, network)
            assert key == deriver.script(index)
            assert adapter.display_address(BTC, key, network) == address
    assert kinds == {"wpkh", "sh-wpkh", "tr", "pkh"}


@pytest.mark.parametrize("network", ["mainnet", "sepolia", "regtest"])
def test_evm_addresses_are_accepted_by_the_adapters_watch_key(network: str) -> None:
    deriver = EvmAdapter.parse_public_key(account("m/44h/60h/0h"), network)
    for currency in (ETH, USDT):
        for index in (0, 5):
            address = deriver.address(index)
            key = EvmAdapter.watch_key(currency, address, network)
            assert EvmAdapter.display_address(currency, key, network) == address


def test_an_adapter_without_derivation_refuses_clearly() -> None:
    with pytest.raises(DerivationError, match="ScriptedChain chain adapter cannot derive addresses"):
        ScriptedChain.parse_public_key(account("m/84h/0h/0h", "zpub"), "mainnet")


# -------------------------------------------------------------------------------- the bench


def test_bench_keys_are_the_vectors_keys_and_the_bench_runs() -> None:
    first = {
        "BTC wpkh (BIP-84)": "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
        "BTC tr (BIP-86)": "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr",
        "ETH (BIP-44 account xpub)": "0x9858EfFD232B4033E47d90003D41EC34EcaEda94",
    }
    assert set(first) == set(derive_bench.KEYS)
    for name, (parse, text) in derive_bench.KEYS.items():
        assert parse(text, "mainnet").address(0) == first[name]
    runs = derive_bench.run_derive_bench(addresses=20)
    assert [run.name for run in runs] == list(first)
    assert all(run.per_s > 0 and 0 < run.p50_ms <= run.p99_ms for run in runs)
    assert "addresses/s" in derive_bench.render(runs)
