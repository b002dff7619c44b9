"""The `integrations:` and `api:` configuration, a `merchant:` section with the API's keys, and reloads.

Real YAML files in tmp_path and real derivation: the account keys are the BIP-44/84/86 test mnemonic's
(computed in tests/test_derivation.py with embit's private derivation), so the first addresses are the
ones the BIPs publish. Every error names file, line and key, and repeats no secret, key or key hash.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from tests.test_derivation import MNEMONIC, ROOT_FINGERPRINT, account, private
from watcher.address_list import AddressEntry, AddressList
from watcher.address_sync import sync_addresses
from watcher.apikeys import new_api_key
from watcher.config import (
    DEFAULT_INTEGRATION_ID,
    LOOPBACK_NETWORKS,
    ApiConfig,
    Config,
    PaymentsConfig,
    load_config,
    summary,
)
from watcher.errors import ConfigError
from watcher.reload import live_config, restart_needed
from watcher.store import Store

SECRET = "integration-secret-6b1d"
ENV = {"SHOP_SECRET": SECRET}
SHOP = "3F2C9A1E-5B7D-4C1A-9E8F-0A1B2C3D4E5F"  # written upper-case: kept lower-case
SHOP_ID = SHOP.lower()
OTHER_ID = "9b0e7c55-2d41-4f7e-b3a6-1c8d2e4f6a70"

# BIP-84 account 0 (mainnet) and its first receive address, as BIP-84 lists them.
ZPUB = account("m/84h/0h/0h", "zpub")
BIP84_FIRST = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"
TR = f"tr([{ROOT_FINGERPRINT}/86h/0h/0h]{account('m/86h/0h/0h')}/0/*)"
BIP86_FIRST = "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
ETH_XPUB = account("m/44h/60h/0h")  # m/44'/60'/0'/0/0 is the address below
ETH_FIRST = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94"
VPUB = account("m/84h/1h/0h", "vpub")  # testnet/regtest
ETH_ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
BTC_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"

LIVE_1, LIVE_1_HASH = new_api_key(live=True)
LIVE_2, LIVE_2_HASH = new_api_key(live=True)
LIVE_3, LIVE_3_HASH = new_api_key(live=True)
LIVE_4, LIVE_4_HASH = new_api_key(live=True)
TEST_1, TEST_1_HASH = new_api_key(live=False)

CHAINS = """\
chains:
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:8332
    currencies:
      BTC: {}
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    chain_id: 1
    currencies:
      ETH: {}
      USDT: {contract: "0xdAC17F958D2ee523a2206206994597C13D831ec7", decimals: 6}
"""

# Two shops on mainnet: every feature of an entry, API keys inline and in a file, per-shop addresses.
MULTI = f"""\
network: mainnet
database: watcher.sqlite3
api:
  listen: 0.0.0.0:9381
  max_body_kb: 16
  rate_per_s: 12.5
  burst: 30
integrations:
  - id: {SHOP}
    name: shop-eu
    callback:
      callback_url: https://shop.example/callbacks
      key: shop-key
      secret: ${{SHOP_SECRET}}
      format: coinspaid
      concurrency: 4
    api_keys:
      - {LIVE_1_HASH.line()}
    api_keys_file: ${{CREDENTIALS_DIRECTORY:-/nonexistent}}/shop.keys
    allow_from: [10.0.0.0/8, 192.0.2.7, "2001:db8::/32"]
    public_keys:
      bitcoin: {ZPUB}
      ethereum: {{key: {ETH_XPUB}, first_index: 1000}}
    addresses:
      - {{currency: USDT, address: "{ETH_ADDRESS}", foreign_id: shop-customer}}
  - id: {OTHER_ID}
    callback:
      callback_url: https://other.example/cb
      key: other-key
      secret_file: other.secret
    api_keys_file: [other.keys]
    public_keys:
      bitcoin: "{TR}"
    addresses_files: [other-addresses.yaml]
addresses:
  - {{currency: ETH, address: "{ETH_ADDRESS}", foreign_id: first-shop}}
{CHAINS}"""

KEY_FILE = f"""\
# shop-eu's API keys: the new one first, the old one until the merchant has moved to it
{LIVE_2_HASH.line()}   # added 2025-01-10

  # (indented comment)
"""


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def multi(tmp_path: Path, text: str = MULTI, key_file: str = KEY_FILE) -> tuple[str, dict[str, str]]:
    """The two-shop config and the files it names; the environment as systemd gives it."""
    credentials = tmp_path / "credentials"
    write(credentials / "shop.keys", key_file)
    write(tmp_path / "other.keys", LIVE_3_HASH.line() + "\n")
    write(tmp_path / "other.secret", "other-secret-0e4f\n")
    write(
        tmp_path / "other-addresses.yaml", f'- {{currency: BTC, address: {BTC_ADDRESS}, foreign_id: "7"}}\n'
    )
    return write(tmp_path / "config.yaml", text), {**ENV, "CREDENTIALS_DIRECTORY": str(credentials)}


def load_error(path: str, environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ)
    return info.value


def assert_hides(error: ConfigError, *texts: str) -> None:
    message = str(error)
    assert "\n" not in message
    for text in (SECRET, *texts):
        assert text not in message, message


# ------------------------------------------------------------------------------------------- valid


def test_two_integrations_with_every_key(tmp_path: Path) -> None:
    path, env = multi(tmp_path)
    config = load_config(path, env)
    shop, other = config.integrations
    assert (shop.id, shop.name, other.id, other.name) == (SHOP_ID, "shop-eu", OTHER_ID, OTHER_ID)
    assert config.integration(OTHER_ID) is other and config.merchant is shop.callback
    assert (shop.callback.format, shop.callback.concurrency, shop.callback.secret) == ("coinspaid", 4, SECRET)
    assert other.callback.secret == "other-secret-0e4f"
    # Inline first, then the file; several keys valid at once (rotation).
    assert shop.api_keys == (LIVE_1_HASH, LIVE_2_HASH) and other.api_keys == (LIVE_3_HASH,)
    assert shop.allow_from == (
        ip_network("10.0.0.0/8"),
        ip_network("192.0.2.7/32"),
        ip_network("2001:db8::/32"),
    )
    assert other.allow_from == LOOPBACK_NETWORKS
    bitcoin, ethereum = shop.public_keys
    assert (bitcoin.chain, bitcoin.first_index, bitcoin.deriver.address(0)) == ("bitcoin", 0, BIP84_FIRST)
    assert (ethereum.chain, ethereum.first_index, ethereum.deriver.address(0)) == (
        "ethereum",
        1000,
        ETH_FIRST,
    )
    assert shop.public_key("ethereum") is ethereum and other.public_key("ethereum") is None
    assert other.public_key("bitcoin") is not None
    assert other.public_key("bitcoin").deriver.address(0) == BIP86_FIRST  # type: ignore[union-attr]
    assert config.api == ApiConfig(
        host="0.0.0.0", port=9381, max_body_bytes=16 * 1024, rate_per_s=12.5, burst=30
    )


def test_addresses_belong_to_their_integration(tmp_path: Path) -> None:
    path, env = multi(tmp_path)
    config = load_config(path, env)
    # The top-level list belongs to the first integration; each integration's own lists follow.
    assert [(e.currency, e.foreign_id, e.integration) for e in config.addresses] == [
        ("ETH", "first-shop", SHOP_ID),
        ("USDT", "shop-customer", SHOP_ID),
        ("BTC", "7", OTHER_ID),  # read by the streaming path of address files
    ]
    assert config.addresses.owners() == {SHOP_ID: 2, OTHER_ID: 1}


async def test_the_store_rows_of_configured_addresses_carry_their_integration(tmp_path: Path) -> None:
    path, env = multi(tmp_path)
    config = load_config(path, env)
    store = await Store.open(str(tmp_path / "watcher.sqlite3"))
    try:
        await sync_addresses(store, config)
        shop = [(a.currency, a.foreign_id) async for a in store.export_addresses(SHOP_ID)]
        other = [(a.currency, a.address, a.foreign_id) async for a in store.export_addresses(OTHER_ID)]
        merchant = [a async for a in store.export_addresses(DEFAULT_INTEGRATION_ID)]
    finally:
        await store.close()
    assert sorted(shop) == [("ETH", "first-shop"), ("USDT", "shop-customer")]
    assert (other, merchant) == ([("BTC", BTC_ADDRESS, "7")], [])


def test_merchant_section_with_the_api_keys(tmp_path: Path) -> None:
    """A one-shop operator adds the API to `merchant:` without restructuring (regtest: test keys)."""
    text = f"""\
network: regtest
database: watcher.sqlite3
merchant:
  callback_url: http://127.0.0.1:8390/callbacks
  key: k
  secret: ${{SHOP_SECRET}}
  api_keys: ["{TEST_1_HASH.line()}"]
  allow_from: [127.0.0.1]
  public_keys:
    bitcoin: {{key: "{VPUB}", first_index: 5}}
chains:
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:18443
    currencies:
      BTC: {{}}
addresses:
  - {{currency: BTC, address: bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk, foreign_id: c-1}}
"""
    config = load_config(write(tmp_path / "config.yaml", text), ENV)
    [merchant] = config.integrations
    assert (merchant.id, merchant.name, merchant.api_keys) == (
        DEFAULT_INTEGRATION_ID,
        "merchant",
        (TEST_1_HASH,),
    )
    assert merchant.allow_from == (ip_network("127.0.0.1/32"),)
    [key] = merchant.public_keys
    assert (key.chain, key.first_index, key.deriver.address(0)) == (
        "bitcoin",
        5,
        "bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk",
    )
    assert [e.integration for e in config.addresses] == [DEFAULT_INTEGRATION_ID]
    assert config.api == ApiConfig()


def test_an_address_list_keeps_each_entry_s_integration() -> None:
    entries = [
        AddressEntry("ETH", ETH_ADDRESS, "a", "/etc/a.yaml", 1, bytes(20), SHOP_ID),
        AddressEntry("BTC", BTC_ADDRESS, "b", "/etc/b.yaml", 2, b"\x00\x14" + bytes(20), OTHER_ID),
        AddressEntry("USDT", ETH_ADDRESS, "c", "/etc/a.yaml", 3, bytes(20)),  # the default: the merchant's
    ]
    packed = AddressList.of(entries)
    assert list(packed) == entries
    assert list(packed[1:]) == entries[1:] and list(packed.having({"USDT"})) == entries[2:]
    assert packed.owners() == {SHOP_ID: 1, OTHER_ID: 1, DEFAULT_INTEGRATION_ID: 1}


# ------------------------------------------------------------------------------------------- errors

# (what to replace in MULTI, with what, the expected line, key and message). Lines are MULTI's.
MULTI_ERRORS = [
    ("integrations:\n", "integration:\n", 8, "integration", "unknown key"),
    (f"  - id: {SHOP}\n", "  - id: 42\n", 9, "integrations[0].id", "expected a string"),
    (f"  - id: {SHOP}\n", "  - id: shop-1\n", 9, "integrations[0].id", "expected a UUID"),
    (f"  - id: {OTHER_ID}\n", f"  - id: {SHOP_ID}\n", 26, "integrations[1].id", "is already used at"),
    ("    name: shop-eu\n", "    nmae: shop-eu\n", 10, "integrations[0].nmae", "unknown key"),
    ("      format: coinspaid\n", "      format: bitpay\n", 15, "integrations[0].callback.format",
     "must be one of coinspaid"),
    ("      callback_url: https://other.example/cb", "      callback_url: http://other.example/cb", 28,
     "integrations[1].callback.callback_url", "set integrations[1].callback.allow_http: true"),
    ("      key: other-key\n", "", 27, "integrations[1].callback", "missing required key key"),
    ("10.0.0.0/8,", "10.0.0.0/33,", 20, "integrations[0].allow_from[0]", "is not an IP address or a network"),
    ("10.0.0.0/8,", "10.0.0.1/8,", 20, "integrations[0].allow_from[0]",
     "has host bits set: the network is 10.0.0.0/8"),
    ("    allow_from: [10.0.0.0/8, 192.0.2.7, \"2001:db8::/32\"]", "    allow_from: []", 20,
     "integrations[0].allow_from", "list at least one"),
    (f"      bitcoin: {ZPUB}\n", "      litecoin: x\n", 22, "integrations[0].public_keys.litecoin",
     "no chain 'litecoin' is configured (chains: bitcoin, ethereum)"),
    ("first_index: 1000", "first_index: 2147483648", 23, "integrations[0].public_keys.ethereum.first_index",
     "between 0 and 2147483647"),
    ("first_index: 1000", "first_index: -1", 23, "integrations[0].public_keys.ethereum.first_index",
     "between 0 and 2147483647"),
    ("first_index: 1000", "first: 1", 23, "integrations[0].public_keys.ethereum.first", "unknown key"),
    # The same public key in two integrations would give both the same addresses.
    (f'      bitcoin: "{TR}"', f"      bitcoin: {ZPUB}", 33, "integrations[1].public_keys.bitcoin",
     f"is already integration {SHOP_ID}'s, at"),
    # One (currency, address) belongs to one integration.
    ("foreign_id: first-shop", "foreign_id: first-shop}\n  - {currency: BTC, address: " + BTC_ADDRESS
     + ", foreign_id: x", None, "addresses[0].address", f"(integration {SHOP_ID})"),
    ("api:\n  listen: 0.0.0.0:9381", "api:\n  listen: 0.0.0.0", 4, "api.listen", "expected host:port"),
    ("  max_body_kb: 16", "  max_body_kb: 1025", 5, "api.max_body_kb", "between 1 and 1024"),
    ("  max_body_kb: 16", "  max_body_kb: 0", 5, "api.max_body_kb", "between 1 and 1024"),
    ("  rate_per_s: 12.5", "  rate_per_s: 0", 6, "api.rate_per_s", "must be a positive number"),
    ("  burst: 30", "  burst: 0", 7, "api.burst", ">= 1"),
    ("  burst: 30", "  burst: 30\n  port: 1", 8, "api.port", "unknown key"),
    ("database: watcher.sqlite3\n", "database: watcher.sqlite3\nstatus: {listen: 0.0.0.0:9381}\n", 5,
     "api.listen", "the status port listens on 0.0.0.0:9381 already"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "line", "key", "message"), MULTI_ERRORS)
def test_multi_integration_errors(
    tmp_path: Path, old: str, new: str, line: int | None, key: str, message: str
) -> None:
    assert old in MULTI
    path, env = multi(tmp_path, MULTI.replace(old, new, 1))
    error = load_error(path, env)
    expected_file = path if line is not None else str(tmp_path / "other-addresses.yaml")
    assert (error.file, error.key) == (expected_file, key), str(error)
    if line is not None:
        assert error.line == line, str(error)
    assert message in error.message, str(error)
    assert_hides(error, LIVE_1_HASH.digest.hex(), LIVE_2_HASH.digest.hex(), ZPUB, ETH_XPUB)


def test_an_address_listed_by_two_integrations_names_the_first(tmp_path: Path) -> None:
    """The other shop's address file lists the first shop's top-level address again."""
    path, env = multi(tmp_path)
    write(
        tmp_path / "other-addresses.yaml",
        f'- {{currency: ETH, address: "{ETH_ADDRESS.lower()}", foreign_id: x}}\n',
    )
    error = load_error(path, env)
    assert (error.file, error.line, error.key) == (
        str(tmp_path / "other-addresses.yaml"),
        1,
        "addresses[0].address",
    )
    assert error.message.endswith(f"is already listed at {path}:36 (integration {SHOP_ID})")


def test_neither_or_both_sections(tmp_path: Path) -> None:
    neither = MULTI.split("integrations:\n")[0] + CHAINS
    error = load_error(write(tmp_path / "neither.yaml", neither), ENV)
    assert (error.line, error.key) == (1, "(top level)")
    assert "one of merchant, integrations is required" in error.message
    both = MULTI + "merchant:\n  callback_url: https://a.example/\n  key: k\n  secret: s\n"
    path, env = multi(tmp_path, both)
    error = load_error(path, env)
    assert (error.line, error.key) == (8, "integrations")
    assert "give only one of merchant, integrations" in error.message
    empty = MULTI.split("integrations:\n")[0] + "integrations: []\n" + CHAINS
    error = load_error(write(tmp_path / "empty.yaml", empty), ENV)
    assert (error.line, error.key, error.message) == (8, "integrations", "list at least one integration")


# ------------------------------------------------------------------------------------------- API key hashes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LIVE_1, "this is an API key itself, not its hash"),
        (LIVE_1_HASH.line()[:-1], "expected sk_live_XXXX:<64 hex digits>"),
        (LIVE_1_HASH.line().upper(), "expected sk_live_XXXX:<64 hex digits>"),
        (TEST_1_HASH.line(), "a test key (sk_test_...) on network: mainnet"),
        (LIVE_1_HASH.line() + " " + LIVE_1_HASH.line(), "expected sk_live_XXXX"),
    ],
)
def test_bad_key_hash_lines_inline_and_in_a_file(tmp_path: Path, text: str, message: str) -> None:
    # Inline in the config: the item's line.
    path, env = multi(tmp_path, MULTI.replace(f"      - {LIVE_1_HASH.line()}", f'      - "{text}"'))
    error = load_error(path, env)
    assert (error.file, error.line, error.key) == (path, 18, "integrations[0].api_keys[0]")
    assert message in error.message
    assert_hides(error, text, LIVE_1, LIVE_1_HASH.digest.hex())
    # In a key file: the file and its line, under the key that names the file.
    path, env = multi(tmp_path, key_file=KEY_FILE.replace(LIVE_2_HASH.line(), text))
    error = load_error(path, env)
    key_file = str(tmp_path / "credentials" / "shop.keys")
    assert (error.file, error.line, error.key) == (key_file, 2, "integrations[0].api_keys_file")
    assert message in error.message
    assert_hides(error, text, LIVE_1, LIVE_1_HASH.digest.hex())


@pytest.mark.parametrize("network", ["testnet", "regtest"])
def test_a_live_key_is_refused_off_mainnet(tmp_path: Path, network: str) -> None:
    text = f"""\
network: {network}
database: w.sqlite3
merchant:
  callback_url: http://127.0.0.1:8390/callbacks
  key: k
  secret: ${{SHOP_SECRET}}
  api_keys_file: keys
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {{}}
"""
    write(tmp_path / "keys", f"{TEST_1_HASH.line()}\n# the old live key, by mistake:\n{LIVE_1_HASH.line()}\n")
    error = load_error(write(tmp_path / "config.yaml", text), ENV)
    assert (error.file, error.line, error.key) == (str(tmp_path / "keys"), 3, "merchant.api_keys_file")
    assert f"a live key (sk_live_...) on network: {network}" in error.message
    assert_hides(error, LIVE_1_HASH.digest.hex())


def test_the_same_key_hash_in_two_integrations(tmp_path: Path) -> None:
    path, env = multi(tmp_path)
    write(tmp_path / "other.keys", f"# shared by mistake\n{LIVE_2_HASH.line()}\n")
    error = load_error(path, env)
    assert (error.file, error.line, error.key) == (
        str(tmp_path / "other.keys"),
        2,
        "integrations[1].api_keys_file[0]",
    )
    first = tmp_path / "credentials" / "shop.keys"
    assert error.message == (
        f"this API key hash ({LIVE_2_HASH.prefix}...) is already listed at {first}:2 (integration {SHOP_ID})"
    )
    assert_hides(error, LIVE_2_HASH.digest.hex())


def test_a_missing_key_file(tmp_path: Path) -> None:
    path, env = multi(tmp_path)
    (tmp_path / "other.keys").unlink()
    error = load_error(path, env)
    assert (error.file, error.line, error.key) == (path, 31, "integrations[1].api_keys_file[0]")
    assert f"cannot read {tmp_path / 'other.keys'}" in error.message


# ------------------------------------------------------------------------------------------- public keys


@pytest.mark.parametrize(
    "secret",
    [
        private("m/84h/0h/0h"),  # an xprv
        MNEMONIC,
        f"wpkh({private('m/84h/0h/0h')}/0/*)",
    ],
    ids=["xprv", "mnemonic", "private-descriptor"],
)
def test_a_private_key_is_refused_without_being_repeated(tmp_path: Path, secret: str) -> None:
    path, env = multi(tmp_path, MULTI.replace(f"      bitcoin: {ZPUB}", f'      bitcoin: "{secret}"'))
    error = load_error(path, env)
    assert (error.file, error.line, error.key) == (path, 22, "integrations[0].public_keys.bitcoin")
    assert "watch-only and never takes a private key" in error.message
    assert_hides(error, secret, *secret.split()[:2], secret[4:40])


def test_a_key_of_the_wrong_network_or_chain(tmp_path: Path) -> None:
    path, env = multi(tmp_path, MULTI.replace(f"      bitcoin: {ZPUB}", f"      bitcoin: {VPUB}"))
    error = load_error(path, env)
    assert (error.line, error.key) == (22, "integrations[0].public_keys.bitcoin")
    assert_hides(error, VPUB)
    path, env = multi(tmp_path, MULTI.replace(f"key: {ETH_XPUB}", f'key: "{TR}"'))
    error = load_error(path, env)
    assert (error.line, error.key) == (23, "integrations[0].public_keys.ethereum.key")
    assert_hides(error, TR)


# ------------------------------------------------------------------------------------------- reload


def reloaded(tmp_path: Path, text: str) -> tuple[Config, Config]:
    path, env = multi(tmp_path)
    old = load_config(path, env)
    new_path, env = multi(tmp_path, text)
    return old, load_config(new_path, env)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (f"      - {LIVE_1_HASH.line()}", f"      - {LIVE_4_HASH.line()}\n      - {LIVE_1_HASH.line()}"),
        ("10.0.0.0/8,", "172.16.0.0/12,"),
        ("      key: shop-key", "      key: shop-key-2\n      timeout_s: 3"),
        ("https://shop.example/callbacks", "https://shop.example/v2/callbacks"),
        ("first_index: 1000", "first_index: 2000"),
        (f'      bitcoin: "{TR}"', f"      bitcoin: {account('m/84h/0h/1h', 'zpub')}"),
        (f"  - id: {OTHER_ID}\n", f"  - id: {OTHER_ID}\n    name: renamed\n"),
    ],
    ids=["api-key-added", "allow-from", "callback-key", "callback-url", "first-index", "public-key", "name"],
)
def test_integration_settings_change_live(tmp_path: Path, old: str, new: str) -> None:
    assert old in MULTI
    before, after = reloaded(tmp_path, MULTI.replace(old, new, 1))
    assert before.integrations != after.integrations
    assert restart_needed(before, after) == []
    assert live_config(before, after).integrations == after.integrations


def test_adding_and_removing_an_integration_is_live(tmp_path: Path) -> None:
    start, end = MULTI.index(f"  - id: {OTHER_ID}"), MULTI.index("addresses:\n  - {currency: ETH")
    before, after = reloaded(tmp_path, MULTI[:start] + MULTI[end:])
    assert [i.id for i in after.integrations] == [SHOP_ID]
    assert restart_needed(before, after) == [] and restart_needed(after, before) == []
    assert live_config(before, after).integrations == after.integrations
    assert [e.integration for e in live_config(before, after).addresses] == [SHOP_ID, SHOP_ID]
    assert live_config(after, before).integrations == before.integrations


def test_the_api_listener_and_a_callback_pool_need_a_restart(tmp_path: Path) -> None:
    before, after = reloaded(
        tmp_path, MULTI.replace("  burst: 30", "  burst: 31").replace("concurrency: 4", "concurrency: 8")
    )
    assert restart_needed(before, after) == ["api", f"integrations.{SHOP_ID}.callback.concurrency"]
    live = live_config(before, after)
    # The running values stay until the restart; the rest of the integration is the new one.
    assert live.api == before.api and live.integrations[0].callback.concurrency == 4
    assert live.integrations[0] == replace(
        after.integrations[0], callback=replace(after.integrations[0].callback, concurrency=4)
    )


def test_merchant_concurrency_keeps_its_name(tmp_path: Path) -> None:
    text = """\
network: regtest
database: w.sqlite3
merchant:
  callback_url: http://127.0.0.1:8390/callbacks
  key: k
  secret: s
  concurrency: {n}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {{}}
"""
    a = load_config(write(tmp_path / "a.yaml", text.format(n=2)), {})
    b = load_config(write(tmp_path / "b.yaml", text.format(n=3)), {})
    assert restart_needed(a, b) == ["merchant.concurrency"]
    assert live_config(a, b).merchant.concurrency == 2


# ------------------------------------------------------------------------------------------- summary


def test_summary_shows_each_integration_without_hashes_or_secrets(tmp_path: Path) -> None:
    path, env = multi(tmp_path)
    config = load_config(path, env)
    text = summary(config)
    ethereum = config.integrations[0].public_keys[1].deriver
    for expected in (
        "api: http://0.0.0.0:9381/v1 (listening; bodies up to 16 KB, 12.5 requests/s per key, bursts of 30)",
        f"integration {SHOP_ID} (shop-eu)",
        "  callback: https://shop.example/callbacks, key 'shop-key', format coinspaid, timeout 10 s,",
        f"  API keys: 2 ({LIVE_1_HASH.prefix}, {LIVE_2_HASH.prefix})",
        "  clients from: 10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32",
        f"  public key ethereum: evm, id {ethereum.id}, first index 1000",
        "  addresses: 2 listed in the config",
        f"integration {OTHER_ID} ({OTHER_ID})",
        "  clients from: 127.0.0.0/8, ::1/128",
        "  addresses: 1 listed in the config",
    ):
        assert expected in text, text
    for hidden in (SECRET, "other-secret-0e4f", ZPUB, ETH_XPUB):
        assert hidden not in text
    for key_hash in (LIVE_1_HASH, LIVE_2_HASH, LIVE_3_HASH):
        assert key_hash.digest.hex() not in text and key_hash.digest.hex()[:16] not in text
    assert LIVE_1_HASH.digest.hex() not in repr(config.integrations) and SECRET not in repr(config)


# ------------------------------------------------------------------------------------------- examples

EXAMPLES = Path(__file__).resolve().parent.parent / "config"
# The examples' placeholders for what only the operator has, and what stands in for them here.
PLACEHOLDERS = {
    "xpub6.../0/*)#checksum": f"{account('m/84h/0h/0h')}/0/*)",  # a descriptor's checksum is optional
    "xpub6...": ETH_XPUB,
    "/etc/deposit-watcher/addresses.d": "none.d",
    "/etc/deposit-watcher/outlet.d": "none.d",
}


def example_with(tmp_path: Path, text: str) -> tuple[str, dict[str, str]]:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    credentials = tmp_path / "credentials"
    for name, value in {
        "secret": "s",
        "bitcoin-rpc-password": "p",
        "shop.keys": LIVE_1_HASH.line(),
        "outlet.keys": LIVE_2_HASH.line(),
        "checkout-secret": "checkout-secret",
        "checkout.keys": LIVE_3_HASH.line(),
    }.items():
        write(credentials / name, value + "\n")
    write(tmp_path / "outlet.secret", "outlet-secret\n")
    return write(tmp_path / "mainnet.yaml", text), {"CREDENTIALS_DIRECTORY": str(credentials)}


def test_the_mainnet_example_s_api_lines_work_once_uncommented(tmp_path: Path) -> None:
    lines = (EXAMPLES / "mainnet.yaml").read_text().splitlines(keepends=True)
    api_keys = ("  # api_keys_file:", "  # api_keys:", "  # allow_from:", "  # public_keys:", "  #   ")
    text = "".join(line.replace("# ", "", 1) if line.startswith(api_keys) else line for line in lines)
    path, env = example_with(tmp_path, text.replace("/etc/deposit-watcher}/api-keys", "/x}/shop.keys"))
    config = load_config(path, env)
    [merchant] = config.integrations
    assert merchant.api_keys[0].prefix == "sk_live_Ab12" and merchant.api_keys[1] == LIVE_1_HASH
    assert [(k.chain, k.deriver.kind) for k in merchant.public_keys] == [
        ("bitcoin", "wpkh"),
        ("ethereum", "evm"),
    ]
    assert merchant.allow_from[-1] == ip_network("10.1.2.0/24")
    assert config.api == ApiConfig()


def test_the_mainnet_example_s_integrations_work_once_uncommented(tmp_path: Path) -> None:
    text = (EXAMPLES / "mainnet.yaml").read_text()
    start, end = text.index("\nmerchant:\n"), text.index("\nchains:\n")
    text = text[:start] + text[end:]
    head, tail = text.split("# integrations:\n")
    tail = "".join(line[2:] for line in tail.splitlines(keepends=True))
    path, env = example_with(tmp_path, head + "integrations:\n" + tail)
    config = load_config(path, env)
    shop, outlet, checkout = config.integrations
    assert (shop.id, shop.name, shop.api_keys) == (DEFAULT_INTEGRATION_ID, "shop", (LIVE_1_HASH,))
    assert (outlet.name, outlet.callback.secret, outlet.api_keys) == (
        "outlet",
        "outlet-secret",
        (LIVE_2_HASH,),
    )
    # The payments shop: Coinskro webhooks, no key, the payments defaults written out.
    cb = checkout.callback
    assert (checkout.name, cb.format, cb.key, cb.secret) == ("checkout", "coinskro", "", "checkout-secret")
    assert cb.events == ("payment_completed", "payment_abandoned")
    assert cb.retry_schedule_min == (1, 5, 30, 120, 1440)
    assert checkout.payments == PaymentsConfig() and checkout.api_keys == (LIVE_3_HASH,)
    assert [k.chain for k in checkout.public_keys] == ["ethereum"]
    assert {e.integration for e in config.addresses} == {DEFAULT_INTEGRATION_ID}


def test_the_mainnet_example_s_merchant_webhook_lines_work_once_uncommented(tmp_path: Path) -> None:
    text = (EXAMPLES / "mainnet.yaml").read_text()
    assert "  format: coinspaid\n" in text
    text = text.replace("  format: coinspaid\n", "  format: coinskro\n")
    text = text.replace("  # events: [", "  events: [").replace("  # payments: {", "  payments: {")
    path, env = example_with(tmp_path, text)
    [merchant] = load_config(path, env).integrations
    assert (merchant.callback.format, merchant.callback.events) == ("coinskro", ("payment_completed",))
    assert merchant.payments == PaymentsConfig()
