"""What the merchant API refuses before (and instead of) doing anything: keys, key mode, client networks,
the rate limit, bodies (size, type, JSON, fields), query parameters, unknown paths and methods. Each refusal
has the one error shape (checked against the document by the harness), names the field where there is one,
writes nothing, and is logged with the key's prefix only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.test_api_document import SHOP_A, SHOP_B, Answer, ApiHarness, check_against_document, open_harness
from watcher.api.auth import RateLimiter, TokenBucket, bearer_token
from watcher.apikeys import hash_api_key, new_api_key

TAKE = {"currency": "ETH", "foreign_id": "c1"}
J = "application/json"
REG = "/v1/addresses/BTC/bcrt1qfxy4uv2dwwmyyc4th220cuj3s6cf4d896nslvq"


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with open_harness(tmp_path) as h:
        yield h


async def nothing_written(harness: ApiHarness) -> None:
    for shop in (SHOP_A, SHOP_B):
        assert await harness.book.list(harness.integration(shop)) == []


# ------------------------------------------------------------------------------------------ keys


async def test_missing_malformed_and_unknown_keys_get_the_same_401(harness: ApiHarness) -> None:
    unknown = new_api_key(live=False)[0]
    answers = [
        await harness.client(None).call("POST", "/v1/addresses", json_body=TAKE),
        await harness.client(key="sk_test_short").call("POST", "/v1/addresses", json_body=TAKE),
        await harness.client(key=unknown).call("POST", "/v1/addresses", json_body=TAKE),
        await harness.client(None).call("GET", "/v1/keys", headers={"Authorization": "Basic dXNlcjpwdw=="}),
        await harness.client(None).call("GET", "/v1/keys", headers={"Authorization": "Bearer"}),
    ]
    for answer in answers:
        assert answer.status == 401
        assert answer.body == {
            "error": {"code": "unauthorized", "message": "missing or unknown API key", "field": None}
        }
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    await nothing_written(harness)


async def test_keys_of_the_other_mode_are_refused_saying_which_mode(harness: ApiHarness) -> None:
    live = new_api_key(live=True)[0]
    answer = await harness.client(key=live).call("GET", "/v1/keys")
    assert answer.status == 401 and answer.error["code"] == "wrong_key_mode"
    assert "sk_test_" in answer.error["message"] and "regtest" in answer.error["message"]
    # A mainnet daemon refuses test keys, even one it has the hash of.
    harness.reconfigure(network="mainnet")
    answer = await harness.client(SHOP_A).call("GET", "/v1/keys")
    assert answer.status == 401 and answer.error["code"] == "wrong_key_mode"
    assert "sk_live_" in answer.error["message"]


async def test_a_key_names_its_integration_and_rotation_takes_effect_on_reload(harness: ApiHarness) -> None:
    old = harness.client(SHOP_A)
    assert (await old.call("POST", "/v1/addresses", json_body=TAKE)).status == 201
    new_key, new_hash = new_api_key(live=False)
    a = harness.integration(SHOP_A)
    # Both keys valid while rotating, then the old one removed: each reload applies to the next request.
    harness.reconfigure(
        integrations=(replace(a, api_keys=(*a.api_keys, new_hash)), harness.integration(SHOP_B))
    )
    new = harness.client(key=new_key)
    assert (await new.call("POST", "/v1/addresses", json_body=TAKE)).status == 200
    assert (await old.call("GET", "/v1/keys")).status == 200
    harness.reconfigure(integrations=(replace(a, api_keys=(new_hash,)), harness.integration(SHOP_B)))
    assert (await old.call("GET", "/v1/keys")).status == 401
    assert (await new.call("GET", "/v1/keys")).status == 200


async def test_a_client_outside_the_allowed_networks_is_403(harness: ApiHarness) -> None:
    a = harness.integration(SHOP_A)
    outside = replace(a, allow_from=(ip_network("10.0.0.0/8"), ip_network("::1/128")))
    harness.reconfigure(integrations=(outside, harness.integration(SHOP_B)))
    answer = await harness.client(SHOP_A).call("POST", "/v1/addresses", json_body=TAKE)
    assert answer.status == 403 and answer.error["code"] == "forbidden"
    # The other integration's networks are its own.
    assert (await harness.client(SHOP_B).call("POST", "/v1/addresses", json_body=TAKE)).status == 201
    assert await harness.book.list(a) == []
    # A client no integration allows gets 403 whatever key it holds, so it cannot tell a valid key from
    # an invalid one.
    b = replace(harness.integration(SHOP_B), allow_from=(ip_network("192.0.2.0/24"),))
    harness.reconfigure(integrations=(outside, b))
    for key in (harness.keys[SHOP_A], new_api_key(live=False)[0], None):
        answer = await harness.client(None, key=key).call("GET", "/v1/keys")
        assert answer.status == 403 and answer.error["code"] == "forbidden"


async def test_refusals_are_logged_with_the_key_prefix_and_never_the_key(harness: ApiHarness) -> None:
    key = harness.keys[SHOP_A]
    stored = hash_api_key(key)
    assert stored is not None
    with capture_logs() as logs:
        await harness.client(SHOP_A).call("GET", "/v1/addresses", params={"bogus": "1"})
        await harness.client(key=key[:-1] + ("A" if key[-1] != "A" else "B")).call("GET", "/v1/keys")
        await harness.client(None).call("GET", "/v1/keys")
    refused = [e for e in logs if e["event"] == "api_request_refused"]
    assert [(e["status"], e["path"], e["client"]) for e in refused] == [
        (422, "/v1/addresses", "127.0.0.1"),
        (401, "/v1/keys", "127.0.0.1"),
        (401, "/v1/keys", "127.0.0.1"),
    ]
    assert [e["key_prefix"] for e in refused] == [key[:12], key[:12], None]
    text = repr(logs)
    assert key not in text and key[:-1] not in text
    assert stored.digest.hex() not in text and repr(stored.digest) not in text


# ------------------------------------------------------------------------------------------ rate limit


async def test_each_key_has_its_own_token_bucket(tmp_path: Path) -> None:
    async with open_harness(tmp_path, rate_per_s=0.5, burst=3) as harness:
        a, b = harness.client(SHOP_A), harness.client(SHOP_B)
        statuses = [(await a.call("GET", "/v1/keys")).status for _ in range(3)]
        limited = await a.call("GET", "/v1/keys")
        assert statuses == [200, 200, 200] and limited.status == 429
        assert limited.error["code"] == "rate_limited" and limited.headers["Retry-After"] == "2"
        # Refused requests take tokens too (they still cost the server), and B's bucket is B's own.
        assert (await b.call("GET", "/v1/keys")).status == 200


def test_token_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(2.0, 100.0)
    assert [bucket.take(100.0, 4.0, 2) for _ in range(3)] == [0.0, 0.0, 0.25]
    assert bucket.take(100.25, 4.0, 2) == 0.0
    assert bucket.take(200.0, 4.0, 2) == 0.0 and bucket.tokens == 1.0  # capped at the burst
    limiter = RateLimiter()
    _, key = new_api_key(live=False)
    limiter.check(key, 0.0, 1.0, 1)
    with pytest.raises(Exception) as refused:
        limiter.check(key, 0.1, 1.0, 1)
    assert refused.value.headers == {"Retry-After": "1"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("Bearer  abc ", "abc"),
        ("Bearer a b", None),
        ("Basic abc", None),
        ("Bearer", None),
        ("", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# ------------------------------------------------------------------------------------------ bodies


async def test_a_body_over_the_bound_is_413_announced_or_streamed(harness: ApiHarness) -> None:
    api = harness.client()
    big = {"currency": "ETH", "foreign_id": "x" * 5000}
    answer = await api.call("POST", "/v1/addresses", json_body=big)
    assert answer.status == 413 and answer.error["code"] == "payload_too_large"

    # Without a Content-Length (chunked), the bound holds as the body arrives.
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"currency": "ETH", "foreign_id": "'
        for _ in range(50):
            yield b"x" * 100
        yield b'"}'

    headers = {"Authorization": f"Bearer {harness.keys[SHOP_A]}", "Content-Type": "application/json"}
    async with harness.session.post(f"{harness.base_url}/v1/addresses", data=chunks(), headers=headers) as r:
        assert r.status == 413
        raw = await r.read()
    check_against_document("POST", "/v1/addresses", {}, headers, b"", Answer(r.status, dict(r.headers), raw))
    await nothing_written(harness)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "field"),
    [
        (b'{"currency": "ETH", "foreign_id": ', J, 400, "invalid_json", None),
        (b"\xff\xfe", J, 400, "invalid_json", None),
        (b'{"currency": NaN, "foreign_id": "c"}', J, 400, "invalid_json", None),
        (b'["ETH", "c1"]', J, 422, "invalid_field", None),
        (b'{"currency": "ETH", "foreign_id": "c", "memo": 1}', J, 422, "invalid_field", "memo"),
        (b'{"currency": "ETH"}', J, 422, "invalid_field", "foreign_id"),
        (b'{"currency": 1, "foreign_id": "c"}', J, 422, "invalid_field", "currency"),
        (b'{"currency": "ETH", "foreign_id": 7}', J, 422, "invalid_field", "foreign_id"),
        (b'{"currency": "ETH", "foreign_id": ""}', J, 422, "invalid_field", "foreign_id"),
        (b'{"currency": "ETH", "foreign_id": "a\\nb"}', J, 422, "invalid_field", "foreign_id"),
        (b'{"currency": "ETH", "foreign_id": "a\\u0085b"}', J, 422, "invalid_field", "foreign_id"),
        (b'{"currency": "ETH", "foreign_id": "c", "currency": "BTC"}', J, 422, "invalid_field",
         "currency"),
        (b'{"currency": "DOGE", "foreign_id": "c"}', J, 422, "unknown_currency", "currency"),
        (b'{"currency": "ETH", "foreign_id": "c"}', "text/plain", 415, "unsupported_media_type", None),
    ],
)  # fmt: skip
async def test_bad_take_bodies_name_the_field_and_write_nothing(
    harness: ApiHarness, body: bytes, content_type: str, status: int, code: str, field: str | None
) -> None:
    answer = await harness.client().call(
        "POST", "/v1/addresses", data=body, headers={"Content-Type": content_type}
    )
    assert (answer.status, answer.error["code"], answer.error["field"]) == (status, code, field)
    await nothing_written(harness)


async def test_foreign_id_of_255_characters_passes_and_256_is_refused(harness: ApiHarness) -> None:
    api = harness.client()
    ok = await api.call("POST", "/v1/addresses", json_body={"currency": "ETH", "foreign_id": "é" * 255})
    assert ok.status == 201 and ok.body["foreign_id"] == "é" * 255
    long = await api.call("POST", "/v1/addresses", json_body={"currency": "BTC", "foreign_id": "é" * 256})
    assert (long.status, long.error["field"]) == (422, "foreign_id")


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "field"),
    [
        ("/v1/addresses/BTC/bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", {"foreign_id": "c"}, 422,
         "invalid_address", "address"),  # a mainnet address on a regtest daemon
        ("/v1/addresses/BTC/not-an-address", {"foreign_id": "c"}, 422, "invalid_address", "address"),
        ("/v1/addresses/ETH/0x9858EfFD232B4033E47d90003D41EC34EcaEda95", {"foreign_id": "c"}, 422,
         "invalid_address", "address"),  # bad EIP-55 checksum
        ("/v1/addresses/DOGE/abc", {"foreign_id": "c"}, 422, "unknown_currency", "currency"),
        (REG, {"foreign_id": "c", "from_height": -1},
         422, "invalid_field", "from_height"),
        (REG, {"foreign_id": "c", "from_height": True},
         422, "invalid_field", "from_height"),
        (REG, {"foreign_id": "c", "height": 1},
         422, "invalid_field", "height"),
    ],
)  # fmt: skip
async def test_bad_registrations_name_the_field_and_write_nothing(
    harness: ApiHarness, path: str, body: dict[str, object], status: int, code: str, field: str
) -> None:
    answer = await harness.client().call("PUT", path, json_body=body)
    assert (answer.status, answer.error["code"], answer.error["field"]) == (status, code, field)
    await nothing_written(harness)


# ------------------------------------------------------------------------------------------ query, paths


@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        ("/v1/addresses", {"page": "2"}, 422, "page"),
        ("/v1/addresses", {"limit": "0"}, 422, "limit"),
        ("/v1/addresses", {"limit": "1001"}, 422, "limit"),
        ("/v1/addresses", {"limit": "ten"}, 422, "limit"),
        ("/v1/addresses", {"currency": "DOGE"}, 422, "currency"),
        ("/v1/addresses", {"foreign_id": "a\tb"}, 422, "foreign_id"),
        ("/v1/deposits", {"status": "paid"}, 422, "status"),
        ("/v1/events", {"after": "-1"}, 422, "after"),
        ("/v1/keys", {"verbose": "1"}, 422, "verbose"),
        ("/v1/deposits/abc", {}, 422, "id"),
        ("/v1/deposits/0", {}, 422, "id"),
    ],
)
async def test_bad_query_and_path_parameters_are_named(
    harness: ApiHarness, path: str, params: dict[str, str], status: int, field: str
) -> None:
    answer = await harness.client().call("GET", path, params=params)
    assert (answer.status, answer.error["field"]) == (status, field)


async def test_a_parameter_given_twice_is_refused(harness: ApiHarness) -> None:
    headers = {"Authorization": f"Bearer {harness.keys[SHOP_A]}"}
    async with harness.session.get(f"{harness.base_url}/v1/addresses?limit=1&limit=2", headers=headers) as r:
        body = await r.json()
    assert r.status == 422 and body["error"]["field"] == "limit"


async def test_unknown_paths_and_methods_answer_in_the_error_shape(harness: ApiHarness) -> None:
    api = harness.client()
    missing = await api.call("GET", "/v1/nothing")
    assert missing.status == 404 and missing.error["code"] == "not_found"
    # Answered before any key is looked at: the document is public, so this reveals nothing.
    assert (await harness.client(None).call("GET", "/v2/addresses")).status == 404
    wrong = await api.call("PATCH", "/v1/addresses")
    assert wrong.status == 405 and wrong.error["code"] == "method_not_allowed"
    assert set(wrong.headers["Allow"].split(",")) >= {"GET", "POST"}


async def test_a_crash_is_a_500_in_the_error_shape_without_details(harness: ApiHarness) -> None:
    await harness.store.close()  # every store call fails from here on
    with capture_logs() as logs:
        answer = await harness.client().call("POST", "/v1/addresses", json_body=TAKE)
    assert answer.status == 500 and answer.error == {
        "code": "internal",
        "message": "internal error; nothing was changed",
        "field": None,
    }
    assert any(e["event"] == "api_request_failed" for e in logs)


async def test_requests_run_concurrently_and_each_is_answered(harness: ApiHarness) -> None:
    api = harness.client()
    answers = await asyncio.gather(
        *(
            api.call("POST", "/v1/addresses", json_body={"currency": "BTC", "foreign_id": f"c{n}"})
            for n in range(30)
        )
    )
    assert [a.status for a in answers] == [201] * 30
    assert len({a.body["address"] for a in answers}) == 30
    indexes = sorted(int(a.body["derivation_path"].rsplit("/", 1)[1]) for a in answers)
    assert indexes == list(range(30))
