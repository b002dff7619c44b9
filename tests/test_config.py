"""Tests of the config loader: a full valid file, one file per kind of mistake, secrets, the examples.

Each file under config_cases/bad/ is a whole config with one mistake; its header says where the error must
point (`expect-line`, `expect-key`, optionally `expect-file`) and what it must say (`expect-message`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from chains.base import ChainSettings, CurrencySpec
from chains.registry import adapter_names
from watcher.config import (
    DEFAULT_RETRY_SCHEDULE_MIN,
    ChainConfig,
    Config,
    CurrencyConfig,
    LeadershipConfig,
    LogConfig,
    StatusConfig,
    load_config,
    summary,
)
from watcher.errors import ConfigError

CASES = Path(__file__).resolve().parent / "config_cases"
EXAMPLES = Path(__file__).resolve().parent.parent / "config"

GOOD_ENV = {
    "ETH_RPC_URL": "http://proxy:url-password-55e1@127.0.0.1:8545",
    "ETH_RPC_PASSWORD": "rpc-password-3b9e",
    "SHOP_KEY": "",  # set but empty: ${SHOP_KEY:-...} takes the default, as in the shell
}
GOOD_SECRET = "merchant-secret-from-file-7f3a"
BAD_ENV = {"DEPOSIT_WATCHER_SECRET": "bad-case-secret-d41d"}
EXAMPLE_ENV = {"DEPOSIT_WATCHER_SECRET": "example-secret-0c7e", "BITCOIN_RPC_PASSWORD": "btc-pw-19aa"}
MAINNET_SECRETS = {"secret": "mainnet-secret-5e21", "bitcoin-rpc-password": "btc-file-pw-8c4d"}


def credentials(tmp_path: Path) -> dict[str, str]:
    """EXAMPLE_ENV plus $CREDENTIALS_DIRECTORY holding the files mainnet.yaml reads, as systemd makes it."""
    directory = tmp_path / "credentials"
    directory.mkdir(exist_ok=True)
    for name, value in MAINNET_SECRETS.items():
        (directory / name).write_text(value + "\n")
    return {**EXAMPLE_ENV, "CREDENTIALS_DIRECTORY": str(directory)}


ADDRESS = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
MINIMAL = f"""\
network: regtest
database: watcher.sqlite3
merchant:
  callback_url: http://127.0.0.1:8390/callbacks
  key: test-key
  secret: ${{DEPOSIT_WATCHER_SECRET}}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:8545
    currencies:
      ETH: {{min_confirmations: 2}}
addresses:
  - {{currency: ETH, address: "{ADDRESS}", foreign_id: customer-1}}
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def load_error(path: str, environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------------- a good file


@pytest.fixture(scope="module")
def good() -> Config:
    return load_config(str(CASES / "good" / "full.yaml"), GOOD_ENV)


def test_good_top_level(good: Config) -> None:
    assert good.path == str(CASES / "good" / "full.yaml")
    assert good.network == "regtest"
    assert good.database == str(CASES / "good" / "data" / "watcher.sqlite3")  # relative to the file
    assert good.status == StatusConfig(host="0.0.0.0", port=9380, max_head_age_s=120.5, max_lag_blocks=7)
    assert good.log == LogConfig(format="console", level="debug")


def test_good_merchant(good: Config) -> None:
    m = good.merchant
    assert m.callback_url == "https://shop.example/callbacks/deposits"
    assert m.key == "shop-public-key"
    assert m.secret == GOOD_SECRET  # from secret_file, relative to the config, stripped
    assert m.timeout_s == 2.5
    assert m.retry_schedule_min == (0.05, 0.05, 1.0, 2.5, 10.0)
    assert m.concurrency == 3


def test_good_chain(good: Config) -> None:
    eth = good.chain("ethereum")
    usdt = CurrencyConfig("USDT", 6, 10, "0x5fbdb2315678afecb367f032d93f642f64180aa3")  # default minimum
    usdc = CurrencyConfig("USDC", 6, 12, "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512")
    assert eth == ChainConfig(
        name="ethereum",
        adapter="evm",
        settings=ChainSettings(
            name="ethereum",
            network="regtest",
            rpc_url=GOOD_ENV["ETH_RPC_URL"],
            currencies=(CurrencySpec("ETH", 18), usdt.spec(), usdc.spec()),
            timeout_s=3.0,
            rpc_user="watcher",
            rpc_password=GOOD_ENV["ETH_RPC_PASSWORD"],
            chain_id=31337,
            extra={},
        ),
        poll_interval_s=0.5,
        currencies=(CurrencyConfig("ETH", 18, 0), usdt, usdc),
        start_height=0,
        batch_blocks=50,
        reorg_depth_limit=32,
        unconfirmed_expiry_s=600.0,
    )


def test_chain_defaults(good: Config) -> None:
    l2 = good.chain("ethereum-l2")
    assert l2.currencies == (CurrencyConfig("L2ETH", 18, 10),)  # `L2ETH:` alone: the adapter's defaults
    assert (l2.poll_interval_s, l2.start_height, l2.batch_blocks) == (5.0, None, 100)
    assert (l2.reorg_depth_limit, l2.unconfirmed_expiry_s) == (256, 86400.0)
    s = l2.settings
    assert (s.timeout_s, s.rpc_user, s.rpc_password, s.chain_id) == (10.0, None, None, None)
    assert s.extra == {}
    assert good.currency("L2ETH") == (l2, l2.currencies[0])


def test_good_addresses(good: Config) -> None:
    full = CASES / "good" / "full.yaml"
    files = CASES / "good" / "addresses.d"
    more = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    rows = [(a.currency, a.address, a.foreign_id, a.source) for a in good.addresses]
    assert rows == [
        # One 0x address watched for three currencies of one chain: three entries, case kept as written.
        ("ETH", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "customer-2048", f"{full}:46"),
        ("USDT", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "customer-2048", f"{full}:47"),
        ("USDC", "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed", "customer-2048", f"{full}:48"),
        # addresses_files: a glob relative to the config, files in name order; numeric ids kept as written.
        ("ETH", ADDRESS, "2049", f"{files / '10-numeric-ids.yaml'}:2"),
        ("L2ETH", ADDRESS, "007", f"{files / '10-numeric-ids.yaml'}:3"),
        ("USDT", more, "customer-2050", f"{files / '20-more.yaml'}:1"),
    ]


def test_minimal_config_takes_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), BAD_ENV)
    assert config.status == StatusConfig()
    assert config.log == LogConfig()
    assert config.merchant.retry_schedule_min == DEFAULT_RETRY_SCHEDULE_MIN
    assert (config.merchant.timeout_s, config.merchant.concurrency) == (10.0, 20)
    assert config.database == str(tmp_path / "watcher.sqlite3")


def test_null_optional_key_takes_default(tmp_path: Path) -> None:
    text = MINIMAL.replace("    currencies:", "    start_height: null\n    timeout_s:\n    currencies:")
    chain = load_config(write(tmp_path, text), BAD_ENV).chain("ethereum")
    assert chain.start_height is None
    assert chain.settings.timeout_s == 10.0


def test_environment_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPOSIT_WATCHER_SECRET", "from-os-environ")
    assert load_config(write(tmp_path, MINIMAL)).merchant.secret == "from-os-environ"


def test_environment_values_are_taken_literally(tmp_path: Path) -> None:
    text = MINIMAL.replace("  key: test-key", "  key: ${KEY_PREFIX:-shop}-${KEY_SUFFIX}")
    config = load_config(write(tmp_path, text), {"DEPOSIT_WATCHER_SECRET": "a${B}c", "KEY_SUFFIX": "01"})
    assert config.merchant.secret == "a${B}c"  # not substituted again
    assert config.merchant.key == "shop-01"


def test_ipv6_listen(tmp_path: Path) -> None:
    text = MINIMAL + "status: {listen: '[::1]:8381'}\n"
    config = load_config(write(tmp_path, text), BAD_ENV)
    assert (config.status.host, config.status.port) == ("::1", 8381)
    assert "status: http://[::1]:8381/" in summary(config)


def test_rpc_password_file_and_cookie_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "rpc").write_text("pw-file\n")
    (tmp_path / "secrets" / ".cookie").write_text("__cookie__:c00k1e")

    def rpc_auth(keys: str) -> tuple[str | None, str | None]:
        text = MINIMAL.replace("    currencies:", keys + "\n    currencies:")
        settings = load_config(write(tmp_path, text), BAD_ENV).chains[0].settings
        return settings.rpc_user, settings.rpc_password

    assert rpc_auth("    rpc_user: watcher\n    rpc_password_file: secrets/rpc") == ("watcher", "pw-file")
    assert rpc_auth("    rpc_cookie_file: secrets/.cookie") == ("__cookie__", "c00k1e")


def test_cookie_file_with_rpc_user_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".cookie").write_text("__cookie__:c00k1e")
    auth = "    rpc_user: watcher\n    rpc_cookie_file: .cookie\n    currencies:"
    message = load_error(write(tmp_path, MINIMAL.replace("    currencies:", auth)), BAD_ENV)
    assert message.startswith(f"{tmp_path / 'config.yaml'}:11: chains.ethereum.rpc_user: ")
    assert "c00k1e" not in message


def test_several_rpc_urls_and_the_answer_limit(tmp_path: Path) -> None:
    backup = "http://u:p4ss@backup.example:8545"
    urls = f"    rpc_urls: [http://127.0.0.1:8545, '{backup}']\n    max_response_mb: 16\n"
    text = MINIMAL.replace("    rpc_url: http://127.0.0.1:8545\n", urls)
    config = load_config(write(tmp_path, text), BAD_ENV)
    s = config.chain("ethereum").settings
    assert s.rpc_url == "http://127.0.0.1:8545" and s.urls == ("http://127.0.0.1:8545", backup)
    assert s.max_response_bytes == 16 * 1024 * 1024
    assert "rpc http://127.0.0.1:8545, http://backup.example:8545," in summary(config)  # no password
    one = load_config(write(tmp_path, MINIMAL), BAD_ENV).chain("ethereum").settings
    assert (one.rpc_urls, one.urls) == ((), ("http://127.0.0.1:8545",))
    assert one.max_response_bytes == 256 * 1024 * 1024


@pytest.mark.parametrize(
    ("keys", "line", "key", "message"),
    [
        ("", 8, "chains.ethereum", "one of rpc_url, rpc_urls is required"),
        ("    rpc_url: http://a.example\n    rpc_urls: [http://b.example]\n", 11, "chains.ethereum.rpc_urls",
         "give only one of rpc_url, rpc_urls"),
        ("    rpc_urls: []\n", 10, "chains.ethereum.rpc_urls", "list at least one node URL"),
        ("    rpc_urls: [http://a.example, http://a.example]\n", 10, "chains.ethereum.rpc_urls[1]",
         "'http://a.example' is listed twice"),
        ("    rpc_urls: [http://a.example, ftp://b.example]\n", 10, "chains.ethereum.rpc_urls[1]",
         "is not an http:// or https:// URL"),
        ("    rpc_url: http://a.example\n    max_response_mb: 0\n", 11, "chains.ethereum.max_response_mb",
         "must be between 1 and 65536, got 0"),
    ],
)  # fmt: skip
def test_bad_rpc_urls(tmp_path: Path, keys: str, line: int, key: str, message: str) -> None:
    text = MINIMAL.replace("    rpc_url: http://127.0.0.1:8545\n", keys)
    error = load_error(write(tmp_path, text), BAD_ENV)
    assert error.startswith(f"{tmp_path / 'config.yaml'}:{line}: {key}: ") and message in error, error


def test_leadership_defaults_and_settings(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, MINIMAL), BAD_ENV).leadership is None  # alone: no election
    text = MINIMAL + "leadership: {}\n"
    assert load_config(write(tmp_path, text), BAD_ENV).leadership == LeadershipConfig()
    text = MINIMAL + "leadership: {name: watcher-2, lease_s: 20, poll_interval_s: 2, takeover_s: 30}\n"
    config = load_config(write(tmp_path, text), BAD_ENV)
    assert config.leadership == LeadershipConfig("watcher-2", 20.0, 2.0, 30.0)
    assert config.leadership.worst_takeover_s == 26.0  # 20 + 2 + a query of 20 / 5
    assert "leadership: as watcher-2, lease 20 s renewed every 6.66667 s" in summary(config)


@pytest.mark.parametrize(
    ("keys", "line", "key", "message"),
    [
        ("  lease_s: 20\n", 1, "leadership", "a take-over within takeover_s (15 s) cannot be promised: it "
         "may take lease_s (20) + poll_interval_s (1) + a query (lease_s / 5 = 4) = 25 s"),
        ("  takeover_s: 12\n", 2, "leadership.takeover_s", "(12 s) cannot be promised"),
        ("  lease_s: 0.5\n", 2, "leadership.lease_s", "must be at least 1, got 0.5"),
        ("  lease_s: 5\n  poll_interval_s: 6\n  takeover_s: 60\n", 3, "leadership.poll_interval_s",
         "at most lease_s (5)"),
        ("  name: ''\n", 2, "leadership.name", "must not be empty"),
        ("  term: 3\n", 2, "leadership.term", "unknown key"),
    ],
)  # fmt: skip
def test_bad_leadership(tmp_path: Path, keys: str, line: int, key: str, message: str) -> None:
    text = MINIMAL + "leadership:\n" + keys
    error = load_error(write(tmp_path, text), BAD_ENV)
    at = MINIMAL.count("\n") + line  # `line` counts from `leadership:`, the line after MINIMAL's last
    assert error.startswith(f"{tmp_path / 'config.yaml'}:{at}: {key}: "), error
    assert message in error, error


def test_yaml_merge_keys(tmp_path: Path) -> None:
    other_chain = """\
  other:  # a second EVM chain: the first one's settings, its own node and currencies
    <<: *evm
    rpc_url: http://127.0.0.1:9545
    currencies: {OTHER: {}}
addresses:
"""
    text = MINIMAL.replace("  ethereum:\n", "  ethereum: &evm\n").replace("addresses:\n", other_chain)
    other = load_config(write(tmp_path, text), BAD_ENV).chain("other")
    assert (other.adapter, other.settings.rpc_url) == ("evm", "http://127.0.0.1:9545")
    assert [c.code for c in other.currencies] == ["OTHER"]


def test_missing_and_empty_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.yaml")
    assert load_error(missing, {}).startswith(f"{missing}: config: cannot read the file")
    empty = write(tmp_path, "# nothing yet\n")
    assert load_error(empty, {}).startswith(f"{empty}: config: the file is empty")


def test_missing_secret_file(tmp_path: Path) -> None:
    text = MINIMAL.replace("  secret: ${DEPOSIT_WATCHER_SECRET}", "  secret_file: secrets/absent")
    message = load_error(write(tmp_path, text), {})
    assert message.startswith(f"{tmp_path / 'config.yaml'}:6: merchant.secret_file: cannot read ")


# ------------------------------------------------------------------------------------------- bad files

BAD_CASES = sorted((CASES / "bad").glob("*.yaml"))


def expectation(case: Path) -> dict[str, str]:
    return dict(re.findall(r"^# expect-(\w+): (.*)$", case.read_text(), re.MULTILINE))


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.stem for c in BAD_CASES])
def test_bad_config(case: Path) -> None:
    expect = expectation(case)
    file = os.path.join(case.parent, expect["file"]) if "file" in expect else str(case)
    message = load_error(str(case), BAD_ENV)
    assert message.startswith(f"{file}:{expect['line']}: {expect['key']}: "), message
    assert expect["message"] in message
    assert BAD_ENV["DEPOSIT_WATCHER_SECRET"] not in message


def test_bad_cases_cover_the_required_mistakes() -> None:
    required = {
        "unknown_key", "wrong_type", "bad_checksum", "wrong_network_address", "unquoted_address",
        "missing_env", "duplicate_currency", "unknown_adapter", "bad_url", "negative_confirmations",
        "missing_key", "retry_decreasing", "duplicate_address", "bad_yaml", "addresses_file_bad_checksum",
    }  # fmt: skip
    assert required <= {c.stem for c in BAD_CASES}


# ------------------------------------------------------------------------------------------- secrets

LEAKY = "s3cr3t-8839201177"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # A YAML syntax error on the secret's own line: the parser's snippet of the line is not shown.
        ("  secret: ${DEPOSIT_WATCHER_SECRET}", f'  secret: "{LEAKY}\n  other: [1'),
        ("  secret: ${DEPOSIT_WATCHER_SECRET}", "  secret: 8839201177"),  # wrong type
        ("    rpc_url: http://127.0.0.1:8545", f"    rpc_url: http://watcher:{LEAKY}@:8545"),  # no host
        ("    currencies:", f"    rpc_password: [{LEAKY}]\n    currencies:"),  # a list, not a string
        ("currency: ETH,", "currency: DAI,"),  # an error after the secrets were read
    ],
)
def test_secret_never_in_errors(tmp_path: Path, old: str, new: str) -> None:
    text = MINIMAL.replace(old, new)
    message = load_error(write(tmp_path, text), {"DEPOSIT_WATCHER_SECRET": LEAKY})
    assert LEAKY not in message
    assert "8839201177" not in message


def test_summary(good: Config) -> None:
    text = summary(good)
    for expected in (
        "network: regtest",
        f"database: {CASES / 'good' / 'data' / 'watcher.sqlite3'}",
        "status: http://0.0.0.0:9380/",
        "merchant: https://shop.example/callbacks/deposits, key 'shop-public-key'",
        "chain ethereum: adapter evm, rpc http://127.0.0.1:8545, chain id 31337",
        "  ETH: native, 18 decimals, 0 confirmations, 2 addresses",
        "  USDT: token 0x5fbdb2315678afecb367f032d93f642f64180aa3, 6 decimals, 10 confirmations, 2 addresses",
        "  USDC: token 0xe7f1725e7734ce288f8367e1bb143e90bb3f0512, 6 decimals, 12 confirmations, 1 address",
        "  L2ETH: native, 18 decimals, 10 confirmations, 1 address",
        "addresses: 6 watched",
    ):
        assert expected in text
    for secret in (GOOD_SECRET, GOOD_ENV["ETH_RPC_PASSWORD"], "url-password-55e1", "proxy:"):
        assert secret not in text
    assert GOOD_SECRET not in repr(good)


# ------------------------------------------------------------------------------------------- examples


def test_regtest_example() -> None:
    config = load_config(str(EXAMPLES / "regtest.yaml"), {})
    assert config.network == "regtest"
    assert config.database == str(EXAMPLES.parent / "devnet-data" / "watcher.sqlite3")  # the demo's
    assert config.merchant.callback_url == "http://127.0.0.1:8390/callbacks"
    assert config.merchant.secret == "devnet-secret"
    eth = config.chain("ethereum")
    assert (eth.adapter, eth.settings.chain_id) == ("evm", 31337)
    assert eth.settings.rpc_url == "http://127.0.0.1:8545"
    assert {c.code: c.min_confirmations for c in eth.currencies} == {"ETH": 2, "USDT": 2, "USDC": 2}
    assert {a.currency for a in config.addresses} == {"ETH", "USDT", "USDC", "BTC"}
    btc = config.chain("bitcoin")
    assert (btc.adapter, [c.code for c in btc.currencies]) == ("bitcoin-core", ["BTC"])


def evm_only_copy(name: str, tmp_path: Path) -> str:
    """The example with its non-EVM chains and their addresses taken out (their adapters may be absent)."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    others = [n for n, chain in data["chains"].items() if chain["adapter"] != "evm"]
    codes = {code for n in others for code in data["chains"].pop(n)["currencies"]}
    data["addresses"] = [a for a in data["addresses"] if a["currency"] not in codes]
    data.pop("addresses_files", None)  # an /etc glob: what this machine has there is not the test's business
    return write(tmp_path, yaml.safe_dump(data, sort_keys=False), name)


def test_mainnet_example_ethereum_part(tmp_path: Path) -> None:
    config = load_config(evm_only_copy("mainnet.yaml", tmp_path), credentials(tmp_path))
    assert (config.network, config.merchant.secret) == ("mainnet", MAINNET_SECRETS["secret"])
    assert config.merchant.retry_schedule_min == DEFAULT_RETRY_SCHEDULE_MIN
    eth = config.chain("ethereum")
    assert eth.settings.chain_id == 1
    assert [(c.code, c.decimals, c.min_confirmations, c.contract) for c in eth.currencies] == [
        ("ETH", 18, 10, None),
        ("USDT", 6, 10, "0xdac17f958d2ee523a2206206994597c13d831ec7"),
        ("USDC", 6, 10, "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"),
    ]
    assert [a.currency for a in config.addresses] == ["USDT"]


def test_testnet_example_ethereum_part(tmp_path: Path) -> None:
    config = load_config(evm_only_copy("testnet.yaml", tmp_path), EXAMPLE_ENV)
    eth = config.chain("ethereum")
    assert (config.network, eth.settings.chain_id, eth.settings.rpc_url) == (
        "testnet",
        11155111,
        "http://127.0.0.1:8545",
    )
    usdc = CurrencyConfig("USDC", 6, 3, "0x1c7d4b196cb0c7b01d743fbc6116a902379c7238")
    assert config.currency("USDC")[1] == usdc


@pytest.mark.parametrize("name", ["mainnet.yaml", "testnet.yaml"])
def test_example_with_its_bitcoin_chain(name: str, tmp_path: Path) -> None:
    """The whole example loads once bitcoin-core is registered; until then only that adapter is missing."""
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:c00k1e")
    text = (EXAMPLES / name).read_text().replace("/var/lib/bitcoind/testnet4/.cookie", str(cookie))
    path = write(tmp_path, text.replace("/etc/deposit-watcher/addresses.d", str(tmp_path / "none")), name)
    env = credentials(tmp_path)
    if "bitcoin-core" in adapter_names():
        assert load_config(path, env).chain("bitcoin").currencies[0].code == "BTC"
    else:
        assert ": chains.bitcoin.adapter: unknown adapter 'bitcoin-core'" in load_error(path, env)


def test_mainnet_example_reads_its_secrets_under_systemd_and_from_a_shell(tmp_path: Path) -> None:
    """Under the unit the files come from $CREDENTIALS_DIRECTORY; from a root shell (the variable unset) the
    same config reads them from /etc/deposit-watcher, here moved to a temporary directory."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in MAINNET_SECRETS:
        (etc / name).write_text(f"shell-{name}")
    text = (EXAMPLES / "mainnet.yaml").read_text().replace("/etc/deposit-watcher", str(etc))
    path = write(tmp_path, text, "mainnet.yaml")
    under_unit = load_config(path, credentials(tmp_path))
    from_shell = load_config(path, EXAMPLE_ENV)
    assert (under_unit.merchant.secret, under_unit.chain("bitcoin").settings.rpc_password) == (
        MAINNET_SECRETS["secret"],
        MAINNET_SECRETS["bitcoin-rpc-password"],
    )
    assert (from_shell.merchant.secret, from_shell.chain("bitcoin").settings.rpc_password) == (
        "shell-secret",
        "shell-bitcoin-rpc-password",
    )
