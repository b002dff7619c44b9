"""Bitcoin addresses: the BIP-173 and BIP-350 test vectors, base58check, per-network acceptance and
rejection with their messages, and script <-> address round trips. Pure: no node, no loop."""

from __future__ import annotations

import pytest
from bitcoin.base58 import CBase58Data
from hypothesis import given
from hypothesis import strategies as st

from chains.base import AddressError, CurrencySpec
from chains.bitcoin import bech32
from chains.bitcoin.adapter import BitcoinCoreAdapter
from chains.bitcoin.address import (
    address_for_script,
    base58check_decode,
    base58check_encode,
    p2pkh_script,
    p2sh_script,
    script_for_address,
    witness_script,
)

BTC = CurrencySpec("BTC", 8)
NETWORKS = ("mainnet", "testnet", "regtest")

# ------------------------------------------------------------------------------------ BIP vectors

# BIP-350's valid addresses (which include BIP-173's v0 ones) with their scriptPubKeys.
BIP350_VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]

# Every invalid address of BIP-173 and BIP-350, with (a part of) the reason we must give.
BIP_INVALID = [
    # BIP-173
    ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "unknown human-readable part 'tc'"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "bad checksum"),
    ("BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "invalid witness version 17"),
    ("bc1rw5uspcuh", "witness program of 1 bytes"),
    ("bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90", "of 41 bytes"),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "witness v0 program of 16 bytes"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "mixes upper and lower case"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "more than 4 padding bits"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv", "non-zero padding bits"),
    ("bc1gmk9yu", "empty data section"),
    # BIP-350
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "unknown human-readable part 'tc'"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bech32m required for witness v1"),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "bech32m required for witness v2"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "bech32m required for witness v16"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "bech32 required for witness v0"),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "bech32 required for witness v0"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "invalid character 'o'"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "invalid witness version 17"),
    ("bc1pw5dgrnzv", "witness program of 1 bytes"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav", "of 41 bytes"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixes upper and lower case"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "more than 4 padding bits"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "non-zero padding bits"),
]

# BIP-173 called these valid; BIP-350 made witness v1+ use bech32m, so they are invalid now.
BIP173_SUPERSEDED = [
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx", 1),
    ("BC1SW50QA3JX3S", 16),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj", 2),
]

VALID_BECH32 = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11" + "q" * 82 + "c8247j",  # 90 characters, the longest allowed
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
VALID_BECH32M = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11" + "l" * 83 + "udsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
INVALID_STRINGS = [
    (" 1nwldj5", "not allowed"),
    ("\x7f" + "1axkwrx", "not allowed"),
    ("\x80" + "1eym55h", "not allowed"),
    ("an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx", "longer"),
    ("pzry9x0s0muk", "no '1' separator"),
    ("1pzry9x0s0muk", "empty human-readable part"),
    ("x1b4n0q5v", "invalid character 'b'"),
    ("li1dgmt3", "checksum too short"),
    ("de1lg7wt" + "\xff", "not allowed"),
    ("A1G7SGD8", "bad checksum"),  # checksum computed with the upper-case HRP
    ("10a06t8", "empty human-readable part"),
    ("1qzzfhee", "empty human-readable part"),
    (" 1xj0phk", "not allowed"),
    ("\x7f" + "1g6xzxy", "not allowed"),
    ("\x80" + "1vctc34", "not allowed"),
    ("an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4", "longer"),
    ("qyrz8wqd2c9m", "no '1' separator"),
    ("1qyrz8wqd2c9m", "empty human-readable part"),
    ("y1b0jsk6g", "invalid character 'b'"),
    ("lt1igcx5c0", "invalid character 'i'"),
    ("in1muywd", "checksum too short"),
    ("mm1crxm3i", "invalid character 'i'"),
    ("au1s5cgom", "invalid character 'o'"),
    ("M1VUXWEZ", "bad checksum"),
    ("16plkw9", "empty human-readable part"),
    ("1p2gdwpf", "empty human-readable part"),
]


def network_of(address: str) -> str:
    return "mainnet" if address.lower().startswith("bc1") else "testnet"


@pytest.mark.parametrize(("address", "script_hex"), BIP350_VALID)
def test_bip350_valid_addresses_decode_to_their_scripts(address: str, script_hex: str) -> None:
    hrp, version, program = bech32.decode_segwit(address)
    assert hrp == address.lower()[:2]
    assert witness_script(version, program).hex() == script_hex
    assert bech32.encode_segwit(hrp, version, program) == address.lower()


@pytest.mark.parametrize(("address", "script_hex"), BIP350_VALID)
def test_bip350_valid_addresses_as_watch_keys(address: str, script_hex: str) -> None:
    """Only the address types a wallet makes today are watchable: v0 20/32 bytes and v1 32 bytes."""
    network = network_of(address)
    script = bytes.fromhex(script_hex)
    standard = script[0] == 0 or (script[0] == 0x51 and len(script) == 34)
    if standard:
        assert script_for_address(address, network) == script
        assert address_for_script(script, network) == address.lower()
    else:
        with pytest.raises(AddressError, match=r"not taproot|not in use"):
            script_for_address(address, network)


@pytest.mark.parametrize(("address", "reason"), BIP_INVALID)
def test_bip_invalid_addresses_are_refused_with_the_reason(address: str, reason: str) -> None:
    for network in ("mainnet", "testnet"):
        with pytest.raises(AddressError) as refused:
            script_for_address(address, network)
        assert reason in str(refused.value)
        assert repr(address) in str(refused.value)  # the message names the address


@pytest.mark.parametrize(("address", "version"), BIP173_SUPERSEDED)
def test_bip173_addresses_of_witness_v1_and_up_need_bech32m(address: str, version: int) -> None:
    with pytest.raises(AddressError, match=f"bech32m required for witness v{version} "):
        script_for_address(address, "mainnet")


@pytest.mark.parametrize("text", VALID_BECH32)
def test_valid_bech32_strings(text: str) -> None:
    hrp, data, encoding = bech32.decode(text)
    assert encoding is bech32.Encoding.BECH32
    assert bech32.encode(hrp, data, encoding) == text.lower()


@pytest.mark.parametrize("text", VALID_BECH32M)
def test_valid_bech32m_strings(text: str) -> None:
    hrp, data, encoding = bech32.decode(text)
    assert encoding is bech32.Encoding.BECH32M
    assert bech32.encode(hrp, data, encoding) == text.lower()


@pytest.mark.parametrize("text", VALID_BECH32 + VALID_BECH32M)
def test_one_flipped_bit_breaks_the_checksum(text: str) -> None:
    sep = text.rfind("1")
    broken = text[: sep + 1] + chr(ord(text[sep + 1]) ^ 1) + text[sep + 2 :]
    with pytest.raises(AddressError):
        bech32.decode(broken)


@pytest.mark.parametrize(("text", "reason"), INVALID_STRINGS)
def test_invalid_bech32_and_bech32m_strings(text: str, reason: str) -> None:
    with pytest.raises(AddressError, match=reason):
        bech32.decode(text)


@pytest.mark.parametrize(("version", "length"), [(0, 21), (17, 32), (1, 1), (16, 41)])
def test_no_address_encodes_an_impossible_program(version: int, length: int) -> None:
    with pytest.raises(ValueError):
        bech32.encode_segwit("bc", version, bytes(length))


# ------------------------------------------------------------------------------------ base58check

# Well-known addresses (Bitcoin wiki, Bitcoin Core's key_io tests) and their scripts.
BASE58_KNOWN = [
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "mainnet", "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "mainnet", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
    ("1111111111111111111114oLvT2", "mainnet", "76a914" + "00" * 20 + "88ac"),
]


@pytest.mark.parametrize(("address", "network", "script_hex"), BASE58_KNOWN)
def test_known_base58_addresses(address: str, network: str, script_hex: str) -> None:
    assert script_for_address(address, network).hex() == script_hex
    assert address_for_script(bytes.fromhex(script_hex), network) == address


@given(st.binary(min_size=20, max_size=20), st.sampled_from([0x00, 0x05, 0x6F, 0xC4]))
def test_base58check_matches_python_bitcoinlib(digest: bytes, version: int) -> None:
    text = base58check_encode(bytes([version]) + digest)
    assert text == str(CBase58Data.from_bytes(digest, version))
    assert base58check_decode(text) == bytes([version]) + digest


def test_base58_errors() -> None:
    good = "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2"
    with pytest.raises(AddressError, match="bad checksum"):
        script_for_address(good[:-1] + "3", "mainnet")
    with pytest.raises(AddressError, match="invalid base58 character '0'"):
        script_for_address("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN0", "mainnet")
    with pytest.raises(AddressError, match="unknown base58 version byte 0x30"):
        script_for_address("LVg2kJoFNg45Nbpy53h7Fe1wKyeXVRhMH9", "mainnet")  # a Litecoin address
    with pytest.raises(AddressError, match="base58 payload of 33 bytes"):
        script_for_address(base58check_encode(bytes(33)), "mainnet")
    with pytest.raises(AddressError, match="empty address"):
        script_for_address("", "mainnet")


# ------------------------------------------------------------------------------------ networks

# One script of each kind; its address differs per network.
H20 = bytes(range(20))
H32 = bytes(range(32))
SCRIPTS = {
    "p2pkh": p2pkh_script(H20),
    "p2sh": p2sh_script(H20),
    "p2wpkh": witness_script(0, H20),
    "p2wsh": witness_script(0, H32),
    "p2tr": witness_script(1, H32),
}


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_round_trip_every_kind_on_every_network(network: str, kind: str) -> None:
    script = SCRIPTS[kind]
    address = address_for_script(script, network)
    assert script_for_address(address, network) == script
    if kind.startswith("p2w"):
        assert script_for_address(address.upper(), network) == script  # bech32 may be all upper case
    prefix = {
        "mainnet": {"p2pkh": "1", "p2sh": "3", "p2wpkh": "bc1q", "p2wsh": "bc1q", "p2tr": "bc1p"},
        "testnet": {"p2pkh": "m", "p2sh": "2", "p2wpkh": "tb1q", "p2wsh": "tb1q", "p2tr": "tb1p"},
        "regtest": {"p2pkh": "m", "p2sh": "2", "p2wpkh": "bcrt1q", "p2wsh": "bcrt1q", "p2tr": "bcrt1p"},
    }[network][kind]
    assert address.startswith(prefix) or (kind == "p2pkh" and network != "mainnet" and address[0] == "n")


def test_regtest_uses_bitcoin_cores_format() -> None:
    """The regtest twin of BIP-173's first example, as Bitcoin Core prints it (bcrt1, not bcoin's rb1)."""
    script = bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")
    assert address_for_script(script, "regtest") == "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    assert script_for_address("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "regtest") == script


CROSS_NETWORK = [
    # (address, its network(s), message on another network)
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", {"mainnet"}, "is a mainnet address"),
    ("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", {"testnet"}, "is a testnet address"),
    ("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", {"regtest"}, "is a regtest address"),
    ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", {"mainnet"}, "is a mainnet address"),
    ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", {"mainnet"}, "is a mainnet address"),
    ("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", {"testnet", "regtest"}, "is a testnet or regtest address"),
    ("2MzQwSSnBHWHqSAqtTVQ6v47XtaisrJa1Vc", {"testnet", "regtest"}, "is a testnet or regtest address"),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        {"testnet"},
        "is a testnet address",
    ),
]


@pytest.mark.parametrize(("address", "networks", "message"), CROSS_NETWORK)
def test_network_acceptance_and_rejection(address: str, networks: set[str], message: str) -> None:
    for network in NETWORKS:
        if network in networks:
            assert address_for_script(script_for_address(address, network), network) == address
        else:
            with pytest.raises(AddressError) as refused:
                script_for_address(address, network)
            assert f"{message}, the config's network is {network}" in str(refused.value)


def test_the_briefs_message_for_a_testnet_address_on_mainnet() -> None:
    with pytest.raises(AddressError, match="is a testnet address, the config's network is mainnet"):
        script_for_address("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "mainnet")


def test_unknown_network_and_non_string() -> None:
    with pytest.raises(AddressError, match="unknown network 'signet'"):
        script_for_address("tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx", "signet")
    with pytest.raises(AddressError, match="expected a quoted address string, got int"):
        script_for_address(12345, "mainnet")  # type: ignore[arg-type]


def test_garbage_is_neither_format() -> None:
    with pytest.raises(AddressError, match="neither base58check nor bech32"):
        script_for_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "mainnet")


# ------------------------------------------------------------------------------------ display


@pytest.mark.parametrize(
    "script_hex",
    [
        "6a0b68656c6c6f20776f726c64",  # OP_RETURN
        "5121" + "02" + "11" * 32 + "21" + "03" + "22" * 32 + "52ae",  # bare 1-of-2 multisig
        "21" + "02" + "33" * 32 + "ac",  # pay to public key
        "5210751e76e8199196d454941c45d1b3a323",  # witness v2: not in use
        "5128" + "75" * 40,  # witness v1 of 40 bytes: not taproot
        "",
    ],
)
def test_display_refuses_scripts_without_an_address(script_hex: str) -> None:
    with pytest.raises(AddressError, match="is not a P2PKH, P2SH, P2WPKH, P2WSH or P2TR output"):
        address_for_script(bytes.fromhex(script_hex), "mainnet")


@given(
    st.sampled_from(NETWORKS),
    st.one_of(
        st.binary(min_size=20, max_size=20).map(p2pkh_script),
        st.binary(min_size=20, max_size=20).map(p2sh_script),
        st.binary(min_size=20, max_size=20).map(lambda h: witness_script(0, h)),
        st.binary(min_size=32, max_size=32).map(lambda h: witness_script(0, h)),
        st.binary(min_size=32, max_size=32).map(lambda h: witness_script(1, h)),
    ),
)
def test_any_standard_script_round_trips(network: str, script: bytes) -> None:
    assert script_for_address(address_for_script(script, network), network) == script


def test_adapter_watch_key_and_display_address() -> None:
    address = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
    key = BitcoinCoreAdapter.watch_key(BTC, address, "mainnet")
    assert key.hex() == "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    assert BitcoinCoreAdapter.display_address(BTC, key, "mainnet") == address
    with pytest.raises(AddressError, match="Bitcoin has no token contracts"):
        BitcoinCoreAdapter.watch_key(
            CurrencySpec("USDT", 6, "0xdac17f958d2ee523a2206206994597c13d831ec7"), address, "mainnet"
        )
