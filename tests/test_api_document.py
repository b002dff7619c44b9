"""The merchant API's OpenAPI document and the harness every API test goes through.

The document validates (openapi-spec-validator); docs/api.md lists the same paths, methods and error codes.
`ApiHarness` runs a real `ApiServer` on 127.0.0.1 over a real SQLite store and a config loaded from YAML,
and `Client.call` checks EVERY answer against the document with openapi-core: status, declared headers and
body; and every request the API accepted (2xx) must be valid by the document too, so the document cannot
be stricter or looser than the server in what succeeds. An answer for a path or method the document does
not have (404/405) is checked against its Error schema.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from chains.registry import adapter_class
from tests.test_derivation import account
from watcher.address_book import AddressBook
from watcher.api import ApiServer
from watcher.api.document import document
from watcher.apikeys import hash_api_key, new_api_key
from watcher.callbacks import build_body
from watcher.config import ApiConfig, Config, IntegrationConfig, PublicKeyConfig, load_config
from watcher.model import (
    AttemptResult,
    Deposit,
    DepositStatus,
    IssuedAddress,
    Plan,
    QueuedCallback,
    TrackedDeposit,
)
from watcher.store import Store
from watcher.ui import passes_api_gate

ROOT = Path(__file__).resolve().parent.parent
USDT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SHOP_A = "0b7a6c3e-5d1f-4e8a-9c2b-1a2b3c4d5e6f"
SHOP_B = "1c8b7d4f-6e2a-4f9b-8d3c-2b3c4d5e6f70"
BTC_A = f"wpkh([73c5da0a/84h/1h/0h]{account('m/84h/1h/0h', 'tpub')}/0/*)"
BTC_B = f"tr({account('m/86h/1h/0h', 'tpub')}/0/*)"
CONFIG = f"""
network: regtest
database: watcher.sqlite3
merchant: {{callback_url: "http://127.0.0.1:1/cb", key: k, secret: s}}
chains:
  ethereum:
    adapter: evm
    rpc_url: http://127.0.0.1:1
    chain_id: 31337
    currencies:
      ETH: {{}}
      USDT: {{contract: "{USDT}", decimals: 6}}
  bitcoin:
    adapter: bitcoin-core
    rpc_url: http://127.0.0.1:2
    currencies:
      BTC: {{}}
"""
OPENAPI = OpenAPI.from_dict(document())
ERROR_SCHEMA = OAS31Validator(document()["components"]["schemas"]["Error"])


# ------------------------------------------------------------------------------------------ the document


def test_the_document_is_a_valid_openapi_3_1_document() -> None:
    assert document()["openapi"].startswith("3.1")
    validate(document())


def _documented_paths() -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "patch"}
    return {(m.upper(), p) for p, item in document()["paths"].items() for m in item if m in methods}


def _error_codes() -> set[str]:
    error = document()["components"]["schemas"]["Error"]["properties"]["error"]
    return set(error["properties"]["code"]["enum"])


def test_docs_api_md_lists_the_same_paths_methods_and_error_codes() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    # Each endpoint is a heading `### METHOD /v1/...`; each error code a table row starting `| \`code\``.
    in_docs = set(re.findall(r"^### (GET|PUT|POST|DELETE|PATCH) (/v1/\S*)$", text, re.MULTILINE))
    assert in_docs == _documented_paths()
    codes = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    assert codes == _error_codes()


def test_error_codes_in_the_code_are_in_the_document() -> None:
    # Every code the API layer and the address book can raise (string literals in their source).
    found: set[str] = set()
    books = (ROOT / "watcher" / "address_book.py", ROOT / "watcher" / "payment_book.py")
    for path in (*sorted((ROOT / "watcher" / "api").glob("*.py")), *books):
        source = path.read_text(encoding="utf-8")
        found |= set(re.findall(r'^[A-Z_]+ = "([a-z_]+)"$', source, re.MULTILINE))
        found |= set(re.findall(r'RequestRefused\(\s*\d{3},\s*"([a-z_]+)"', source))
    assert found and found <= _error_codes(), found - _error_codes()


# ------------------------------------------------------------------------------------------ the harness


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def error(self) -> dict[str, Any]:
        found: dict[str, Any] = self.body["error"]
        return found


def check_against_document(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
    answer: Answer,
) -> None:
    """Validate one exchange with openapi-core; raise on any disagreement with the document."""
    request = MockRequest(
        "http://127.0.0.1",
        method,
        path,
        args=dict(query),
        headers=dict(headers),
        data=body,
        content_type=headers.get("Content-Type", "application/json"),
    )
    response = MockResponse(
        answer.raw,
        status_code=answer.status,
        headers=dict(answer.headers),
        content_type=answer.headers.get("Content-Type", "").split(";")[0],
    )
    try:
        OPENAPI.validate_response(request, response)
    except (PathNotFound, OperationNotFound):
        assert answer.status in (404, 405), f"{method} {path} is not in the document"
        ERROR_SCHEMA.validate(answer.body)
        return
    if 200 <= answer.status < 300:
        OPENAPI.validate_request(request)


@dataclass
class Client:
    base_url: str
    session: aiohttp.ClientSession
    key: str | None
    calls: list[tuple[str, str, int]] = field(default_factory=list)

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        key: str | None = "default",
    ) -> Answer:
        sent = dict(headers or {})
        use_key = self.key if key == "default" else key
        if use_key is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {use_key}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        query = dict(params or {})
        async with self.session.request(
            method, self.base_url + path, data=data, params=query, headers=sent
        ) as response:
            answer = Answer(response.status, dict(response.headers), await response.read())
        check_against_document(method, path, query, sent, data or b"", answer)
        self.calls.append((method, path, answer.status))
        return answer


@dataclass
class ApiHarness:
    server: ApiServer
    book: AddressBook
    store: Store
    session: aiohttp.ClientSession
    keys: dict[str, str]  # integration id -> its API key
    base_url: str

    def client(self, integration_id: str | None = SHOP_A, key: str | None = None) -> Client:
        chosen = key or (self.keys[integration_id] if integration_id else None)
        return Client(self.base_url, self.session, chosen)

    @property
    def config(self) -> Config:
        return self.server.config

    def reconfigure(self, **changes: Any) -> None:
        """A reload: the server and the book get a new config, as the daemon's SIGHUP gives them."""
        self.server.config = self.book.config = replace(self.server.config, **changes)

    def integration(self, integration_id: str) -> IntegrationConfig:
        return self.config.integration(integration_id)

    async def pay(self, address: IssuedAddress, amount: int, statuses: tuple[DepositStatus, ...]) -> Deposit:
        """A deposit to `address` that goes through `statuses`, written as the ledger writes it: one plan
        inserting it with its first callback, then one per later status (each queues an event)."""
        _, currency = self.config.currency(address.currency)
        now = time.time()
        deposit: Deposit | None = None
        for n, status in enumerate(statuses):
            async with self.store.transaction() as tx:
                if deposit is None:
                    view = await tx.load(address.chain)
                    deposit = Deposit(
                        view.next_id, address.chain, address.currency, address.id, address.address,
                        address.foreign_id, f"{view.next_id:064x}", 0, amount, None, None, 0, status, "", now,
                        now,
                    )  # fmt: skip
                    tracked = TrackedDeposit(deposit, None, None, (), None)
                    plan = Plan(inserts=(tracked,))
                else:
                    deposit = replace(
                        deposit, status=status, confirmations=n, block_height=100 + n, updated_at=now
                    )
                    plan = Plan(updates=(TrackedDeposit(deposit, None, None, (), None),))
                body = build_body(deposit, currency.decimals, self.config.network)
                callback = QueuedCallback(deposit.id, status, body, deposit.txid, deposit.confirmations, now)
                await tx.apply(replace(plan, callbacks=(callback,)))
        assert deposit is not None
        return deposit

    async def attempt(self, deposit_id: int, http_status: int | None, error: str = "") -> None:
        entries = await self.store.outbox_entries(deposit_id=deposit_id)
        excerpt = "" if error else "ok"
        result = AttemptResult(entries[-1].id, time.time(), 12.5, http_status, error, excerpt)
        await self.store.record_attempts([(result, None)])


def _adapter(config: Config, chain: str) -> Any:
    return adapter_class(config.chain(chain).adapter)


def _integration(config: Config, id_: str, key: str, **public: str) -> IntegrationConfig:
    found = tuple(
        PublicKeyConfig(chain, _adapter(config, chain).parse_public_key(text, config.network))
        for chain, text in public.items()
    )
    hashed = hash_api_key(key)
    assert hashed is not None
    return IntegrationConfig(id_, id_[:4], config.merchant, api_keys=(hashed,), public_keys=found)


@contextlib.asynccontextmanager
async def open_harness(tmp_path: Path, **api: Any) -> AsyncIterator[ApiHarness]:
    """Two integrations (shop A: BIP-84 and an EVM account; shop B: BIP-86 and another EVM account), each
    with one test key, on a regtest config read from YAML; `api` overrides ApiConfig fields."""
    (tmp_path / "watcher.yaml").write_text(CONFIG)
    loaded = load_config(str(tmp_path / "watcher.yaml"))
    keys = {SHOP_A: new_api_key(live=False)[0], SHOP_B: new_api_key(live=False)[0]}
    a = _integration(loaded, SHOP_A, keys[SHOP_A], ethereum=account("m/44h/60h/0h"), bitcoin=BTC_A)
    b = _integration(loaded, SHOP_B, keys[SHOP_B], ethereum=account("m/44h/60h/1h"), bitcoin=BTC_B)
    settings = {"port": 0, "max_body_bytes": 4096, "burst": 1000, **api}
    config = replace(loaded, integrations=(a, b), api=ApiConfig(**settings))
    store = await Store.open(config.database)
    book = AddressBook(store, config)
    server = ApiServer(config, book)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield ApiHarness(server, book, store, session, keys, f"http://127.0.0.1:{server.port}")
    finally:
        await server.stop()
        await store.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with open_harness(tmp_path) as h:
        yield h


async def test_the_document_is_served_without_a_key(harness: ApiHarness) -> None:
    answer = await harness.client(None).call("GET", "/v1/openapi.json")
    assert answer.status == 200
    assert answer.body == document()


async def test_served_routes_are_the_documented_ones(harness: ApiHarness) -> None:
    served = {
        (r.method, r.resource.canonical)
        for r in harness.server.app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    # The pages of watcher.ui (the customer's checkout, the back office) share the listener; they are
    # pages, not the API: only the back office's forms post, and its catch-all answers a plain 404 page.
    pages = {(method, path) for method, path in served if passes_api_gate(path)}
    assert pages and all(method == "GET" or path.startswith("/ui/") for method, path in pages), pages
    assert served - pages == _documented_paths()
