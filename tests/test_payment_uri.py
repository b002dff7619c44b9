"""Payment URIs: BIP-21 for Bitcoin, EIP-681 for ether and ERC-20 tokens, in the standards' own forms."""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import pytest

from watcher.payment_uri import bip21, decimal_text, eip681_ether, eip681_token, payment_uri

BTC_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
ETH_ADDRESS = "0xfb6916095ca1df60bb79Ce92ce3ea74c37c5d359"  # EIP-681's example address
TOKEN = "0x89205a3a3b2a69de6dbf7f01ed13b2108b2c43e7"  # EIP-681's example token


@pytest.mark.parametrize(
    ("amount", "decimals", "text"),
    [
        (150_000, 8, "0.0015"),
        (100_000_000, 8, "1"),
        (1, 8, "0.00000001"),
        (2_100_000_000_000_000, 8, "21000000"),
        (123_450_000, 8, "1.2345"),
        (10**18 + 1, 18, "1.000000000000000001"),
        (7, 0, "7"),
        (0, 8, "0"),
    ],
)
def test_decimal_text_is_exact_without_trailing_zeros(amount: int, decimals: int, text: str) -> None:
    assert decimal_text(amount, decimals) == text
    assert Decimal(text) * 10**decimals == amount  # exact, not a float


def test_bip21_amount_is_decimal_btc() -> None:
    # BIP-21's example: "bitcoin:175tWpb8K1S7NmH4Zx6rewF9WQrcZv245W?amount=20.3&label=Luke-Jr"
    assert bip21("175tWpb8K1S7NmH4Zx6rewF9WQrcZv245W", 2_030_000_000) == (
        "bitcoin:175tWpb8K1S7NmH4Zx6rewF9WQrcZv245W?amount=20.3"
    )
    uri = bip21(BTC_ADDRESS, 150_000)
    parts = urlsplit(uri)
    assert (parts.scheme, parts.path, parse_qs(parts.query)) == (
        "bitcoin",
        BTC_ADDRESS,
        {"amount": ["0.0015"]},
    )


def test_eip681_ether_value_in_wei_with_chain_id() -> None:
    # EIP-681's example "ethereum:0xfb6916095ca1df60bb79Ce92ce3ea74c37c5d359?value=2.014e18", as an integer
    assert (
        eip681_ether(ETH_ADDRESS, 2_014 * 10**15, None) == f"ethereum:{ETH_ADDRESS}?value=2014000000000000000"
    )
    assert (
        eip681_ether(ETH_ADDRESS, 2_014 * 10**15, 1) == f"ethereum:{ETH_ADDRESS}@1?value=2014000000000000000"
    )
    # wei beyond 64 bits stays exact
    assert eip681_ether(ETH_ADDRESS, 10**30 + 7, 31337).endswith(
        "@31337?value=1000000000000000000000000000007"
    )


def test_eip681_token_transfer_form() -> None:
    # EIP-681's example: "ethereum:0x89205a3a3b2a69de6dbf7f01ed13b2108b2c43e7/transfer?
    #   address=0x8e23ee67d1332ad560396262c48ffbb01f93d052&uint256=1" (one line)
    recipient = "0x8e23ee67d1332ad560396262c48ffbb01f93d052"
    assert eip681_token(TOKEN, recipient, 1, None) == (
        f"ethereum:{TOKEN}/transfer?address={recipient}&uint256=1"
    )
    uri = eip681_token(TOKEN, recipient, 25_000_000, 1)
    assert uri == f"ethereum:{TOKEN}@1/transfer?address={recipient}&uint256=25000000"
    assert parse_qs(urlsplit(uri).query) == {"address": [recipient], "uint256": ["25000000"]}


def test_payment_uri_chooses_by_scheme_and_contract() -> None:
    assert payment_uri("bitcoin", BTC_ADDRESS, 150_000, 8, None, None) == bip21(BTC_ADDRESS, 150_000)
    assert payment_uri("ethereum", ETH_ADDRESS, 5, 18, None, 1) == eip681_ether(ETH_ADDRESS, 5, 1)
    assert payment_uri("ethereum", ETH_ADDRESS, 5, 6, TOKEN, 1) == eip681_token(TOKEN, ETH_ADDRESS, 5, 1)
    with pytest.raises(ValueError, match="no payment URI scheme"):
        payment_uri("litecoin", "x", 1, 8, None, None)
