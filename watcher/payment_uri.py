"""Payment URIs a customer's wallet opens with the address and the amount filled in. Pure.

- Bitcoin, BIP-21: `bitcoin:ADDRESS?amount=0.0015`. The amount is in BTC as a decimal (BIP-21: "decimal
  BTC"), exact, with no trailing zeros and no exponent.
- Ether, EIP-681: `ethereum:0xADDRESS@CHAINID?value=WEI`, the value an integer in wei.
- An ERC-20 token, EIP-681's function call form: `ethereum:0xTOKEN@CHAINID/transfer?address=0xADDRESS&
  uint256=BASEUNITS`: the wallet calls `transfer(address, uint256)` on the token with the amount in the
  token's base units.

`@CHAINID` keeps a wallet from paying on another EVM chain; it is left out only when the chain id is not
known (EIP-681 then means the wallet's current chain).
"""

from __future__ import annotations

BITCOIN = "bitcoin"
ETHEREUM = "ethereum"


def decimal_text(amount: int, decimals: int) -> str:
    """`amount` base units as a decimal of whole coins, exact, without trailing zeros: 150000, 8 ->
    "0.0015"; 100000000, 8 -> "1"."""
    if amount < 0 or decimals < 0:
        raise ValueError("amount and decimals must not be negative")
    whole, fraction = divmod(amount, 10**decimals)
    digits = str(fraction).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole}.{digits}" if digits else str(whole)


def bip21(address: str, amount: int, decimals: int = 8) -> str:
    """A Bitcoin payment request for `amount` satoshis (base units of `decimals`) to `address`."""
    return f"bitcoin:{address}?amount={decimal_text(amount, decimals)}"


def eip681_ether(address: str, wei: int, chain_id: int | None) -> str:
    """An ether payment request for `wei` to `address`."""
    return f"ethereum:{address}{_chain(chain_id)}?value={int(wei)}"


def eip681_token(token: str, address: str, amount: int, chain_id: int | None) -> str:
    """An ERC-20 payment request: `transfer(address, amount)` on the token contract `token`."""
    return f"ethereum:{token}{_chain(chain_id)}/transfer?address={address}&uint256={int(amount)}"


def payment_uri(
    scheme: str, address: str, amount: int, decimals: int, contract: str | None, chain_id: int | None
) -> str:
    """The URI for a payment of `amount` base units to `address`: `scheme` is "bitcoin" or "ethereum";
    `contract` is the token's for an ERC-20 currency, None for the chain's own coin."""
    if scheme == BITCOIN:
        return bip21(address, amount, decimals)
    if scheme == ETHEREUM:
        if contract is None:
            return eip681_ether(address, amount, chain_id)
        return eip681_token(contract, address, amount, chain_id)
    raise ValueError(f"no payment URI scheme {scheme!r} (known: {BITCOIN}, {ETHEREUM})")


def _chain(chain_id: int | None) -> str:
    return "" if chain_id is None else f"@{int(chain_id)}"
