"""The back office's sign-in, sessions and gate (watcher/ui/session.py, signin.py) against the real API
listener (the harness of tests/test_api_document.py: a real aiohttp server, a real SQLite store): no page
under /ui/ without a session, forged and expired sessions, CSRF, the sign-in rate limit, keys and passwords
from networks that may not use them, the `next` redirect, the cookie's attributes (also over real TLS),
sign-out and the session id's rotation. Cookies are kept by hand, so every Set-Cookie is looked at."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from http.cookies import SimpleCookie
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from tests.test_api_document import SHOP_A, SHOP_B, ApiHarness, open_harness
from watcher.apikeys import new_api_key
from watcher.config import UiConfig
from watcher.operator_password import hash_password
from watcher.ui.pages import SECURITY_HEADERS
from watcher.ui.session import SESSION_COOKIE, Sessions, Viewer
from watcher.ui.signin import PER_CLIENT, SignInLimiter, client_bucket

PASSWORD = "correct horse battery staple"
HASHED = hash_password(PASSWORD)
NOWHERE = (ip_network("10.0.0.0/8"),)  # a network the test client (127.0.0.1) is not in
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Answer:
    status: int
    headers: Any
    text: str
    cookies: SimpleCookie = field(default_factory=SimpleCookie)

    @property
    def location(self) -> str:
        return str(self.headers.get("Location"))


class Browser:
    """A client that keeps cookies as a browser would for one origin (by name; the paths are checked by the
    tests that care), and never follows redirects by itself."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url, self.session = base_url, session
        self.cookies: dict[str, str] = {}

    async def call(self, method: str, path: str, data: dict[str, str] | None = None) -> Answer:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        async with self.session.request(
            method, self.base_url + path, data=data, headers=headers, allow_redirects=False, ssl=False
        ) as response:
            answer = Answer(response.status, response.headers, await response.text())
        for line in answer.headers.getall("Set-Cookie", []):
            answer.cookies.load(line)
        for name, morsel in answer.cookies.items():
            if morsel["max-age"] == "0" or (morsel["expires"] and "1970" in morsel["expires"]):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value
        return answer

    async def get(self, path: str) -> Answer:
        return await self.call("GET", path)

    async def post(self, path: str, data: dict[str, str]) -> Answer:
        return await self.call("POST", path, data)

    async def sign_in(self, secret: str, next_path: str | None = None) -> Answer:
        form = await self.get("/ui/signin" + ("" if next_path is None else f"?next={next_path}"))
        assert form.status == 200, form.text
        data = {"csrf_token": csrf_of(form.text), "secret": secret}
        if next_path is not None:
            data["next"] = next_path
        return await self.post("/ui/signin", data)

    @property
    def session_id(self) -> str | None:
        return self.cookies.get(SESSION_COOKIE)


def csrf_of(html: str) -> str:
    found = TOKEN.search(html)
    assert found is not None, html
    return found[1]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    async with open_harness(tmp_path) as h:
        h.reconfigure(ui=UiConfig(operator_password=HASHED))
        yield h


def browser(harness: ApiHarness, base_url: str | None = None) -> Browser:
    return Browser(base_url or harness.base_url, harness.session)


def office_paths(harness: ApiHarness) -> set[tuple[str, str]]:
    """Every (method, path) the app serves under /ui/ but the public ones, with sample path parameters."""
    found = set()
    for route in harness.server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith("/ui/") or path.startswith("/ui/static/") or path == "/ui/signin":
            continue
        path = re.sub(r"\{[^}]+\}", "7", path)
        methods = ["GET", "POST"] if route.method in ("*", "HEAD") else [route.method]
        found.update((m, path) for m in methods)
    found.update({("GET", "/ui/no-such-page"), ("POST", "/ui/no-such-page"), ("GET", "/ui")})
    return found


# ------------------------------------------------------------------------------------------ the gate


async def test_no_page_without_a_session(harness: ApiHarness) -> None:
    paths = office_paths(harness)
    assert ("GET", "/ui/") in paths and ("POST", "/ui/signout") in paths
    for method, path in sorted(paths):
        answer = await browser(harness).call(method, path, {} if method == "POST" else None)
        if path == "/ui":
            assert answer.status == 303 and answer.location == "/ui/"  # to the gate, no data
        elif method == "GET":
            assert answer.status == 303, (method, path, answer.status)
            assert answer.location == f"/ui/signin?next={path}"
        else:
            assert answer.status == 403, (method, path, answer.status)
            assert "Sign in" in answer.text
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value
    # The API's key is not a session: a Bearer header opens no page.
    async with harness.session.get(
        harness.base_url + "/ui/", headers={"Authorization": f"Bearer {harness.keys[SHOP_A]}"},
        allow_redirects=False,
    ) as response:  # fmt: skip
        assert response.status == 303


async def test_a_forged_or_ended_session_cookie_is_refused(harness: ApiHarness) -> None:
    forged = browser(harness)
    forged.cookies[SESSION_COOKIE] = "A" * 43
    assert (await forged.get("/ui/")).status == 303
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_A])
    assert (await b.get("/ui/")).status == 200
    # A cookie one character off is another (unknown) session.
    kept = b.cookies[SESSION_COOKIE]
    b.cookies[SESSION_COOKIE] = kept[:-1] + ("B" if kept[-1] != "B" else "C")
    assert (await b.get("/ui/")).status == 303


async def test_an_idle_session_ends(harness: ApiHarness) -> None:
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_A])
    assert (await b.get("/ui/")).status == 200
    harness.reconfigure(ui=replace(harness.config.ui, session_idle_s=0.05))
    await asyncio.sleep(0.2)
    assert (await b.get("/ui/")).status == 303
    # It is gone, not just refused once: a longer idle limit does not bring it back.
    harness.reconfigure(ui=replace(harness.config.ui, session_idle_s=1800.0))
    assert (await b.get("/ui/")).status == 303


async def test_a_session_ends_at_its_absolute_limit_even_when_used(harness: ApiHarness) -> None:
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_A])
    harness.reconfigure(ui=replace(harness.config.ui, session_max_s=0.3))
    for _ in range(3):
        await asyncio.sleep(0.05)
        await b.get("/ui/")
    await asyncio.sleep(0.3)
    assert (await b.get("/ui/")).status == 303


def test_the_session_table_expires_and_is_bounded() -> None:
    table = Sessions(max_sessions=3)
    ids = [table.create("i", b"k", now=0.0)[0] for _ in range(3)]
    assert len({*ids}) == 3 and all(len(i) >= 43 for i in ids)
    assert table.get(ids[0], now=1.0, idle_s=10, max_s=100) is not None  # ids[0] is now the most recent
    table.create("i", b"k", now=2.0)  # the least recently used (ids[1]) makes room
    assert len(table) == 3
    assert table.get(ids[1], now=2.0, idle_s=10, max_s=100) is None
    assert table.get(ids[2], now=20.0, idle_s=10, max_s=100) is None  # idle since 0.0
    assert table.get(ids[0], now=10.5, idle_s=10, max_s=100) is not None  # used at 1.0
    assert table.get(ids[0], now=100.5, idle_s=1000, max_s=100) is None  # signed in at 0.0


async def test_revoking_the_key_or_changing_the_password_ends_the_sessions(harness: ApiHarness) -> None:
    shop, operator = browser(harness), browser(harness)
    await shop.sign_in(harness.keys[SHOP_A])
    await operator.sign_in(PASSWORD)
    assert (await shop.get("/ui/")).status == (await operator.get("/ui/")).status == 200
    a = harness.integration(SHOP_A)
    harness.reconfigure(
        integrations=(replace(a, api_keys=(new_api_key(live=False)[1],)), harness.integration(SHOP_B)),
        ui=UiConfig(operator_password=hash_password("another long password")),
    )
    assert (await shop.get("/ui/")).status == 303
    assert (await operator.get("/ui/")).status == 303


# ------------------------------------------------------------------------------------------ CSRF


async def test_a_post_without_the_sessions_csrf_token_is_refused(harness: ApiHarness) -> None:
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_A])
    page = await b.get("/ui/")
    token = csrf_of(page.text)
    for data in ({}, {"csrf_token": ""}, {"csrf_token": token[:-1]}, {"csrf_token": token + "x"},
                 {"csrf_token": "é" * 43}):  # fmt: skip
        answer = await b.post("/ui/signout", data)
        assert answer.status == 403 and "expired" in answer.text
        assert (await b.get("/ui/")).status == 200  # not signed out
    # Another session's token is no good either.
    other = browser(harness)
    await other.sign_in(harness.keys[SHOP_B])
    other_token = csrf_of((await other.get("/ui/")).text)
    assert other_token != token
    assert (await b.post("/ui/signout", {"csrf_token": other_token})).status == 403


async def test_the_signin_form_has_its_own_csrf_token(harness: ApiHarness) -> None:
    b = browser(harness)
    form = await b.get("/ui/signin")
    token = csrf_of(form.text)
    cookie = form.cookies["office_signin"]
    assert cookie.value == token and cookie["path"] == "/ui/signin" and cookie["httponly"]
    assert cookie["samesite"] == "Strict"
    # A sign-in posted from elsewhere (no cookie, or a token of the attacker's) is refused unchecked.
    stranger = browser(harness)
    answer = await stranger.post("/ui/signin", {"csrf_token": token, "secret": harness.keys[SHOP_A]})
    assert answer.status == 403 and stranger.session_id is None
    answer = await b.post("/ui/signin", {"csrf_token": "x" * 43, "secret": harness.keys[SHOP_A]})
    assert answer.status == 403 and b.session_id is None


# ------------------------------------------------------------------------------------------ signing in


async def test_an_integration_key_signs_in_as_that_integration(harness: ApiHarness) -> None:
    b = browser(harness)
    answer = await b.sign_in(harness.keys[SHOP_A])
    assert answer.status == 303 and answer.location == "/ui/"
    page = await b.get("/ui/")
    assert page.status == 200
    assert f'<span class="office-viewer" id="viewer">{SHOP_A[:4]}</span>' in page.text


async def test_the_operator_password_signs_in_as_the_operator(harness: ApiHarness) -> None:
    b = browser(harness)
    assert (await b.sign_in(PASSWORD)).status == 303
    assert '<span class="office-viewer" id="viewer">operator</span>' in (await b.get("/ui/")).text


async def test_every_failed_signin_says_the_same(harness: ApiHarness) -> None:
    a = harness.integration(SHOP_A)
    live_key = new_api_key(live=True)[0]
    unknown_key = new_api_key(live=False)[0]
    cases = [
        ("wrong password", lambda: None),
        (PASSWORD[:-1], lambda: None),
        (unknown_key, lambda: None),
        (live_key, lambda: None),  # the other mode's key
        ("", lambda: None),
        ("x" * 5000, lambda: None),
        # The right key from a network its integration does not allow.
        (harness.keys[SHOP_A], lambda: harness.reconfigure(
            integrations=(replace(a, allow_from=NOWHERE), harness.integration(SHOP_B)))),
        # The right password from a network the operator may not sign in from.
        (PASSWORD, lambda: harness.reconfigure(
            ui=UiConfig(operator_password=HASHED, operator_allow_from=NOWHERE))),
        # No operator password configured at all.
        (PASSWORD, lambda: harness.reconfigure(ui=UiConfig())),
    ]  # fmt: skip
    texts = set()
    for n, (secret, prepare) in enumerate(cases):
        prepare()
        _reset_limits(harness)  # every case comes from 127.0.0.1: each starts with a fresh limiter
        b = browser(harness)
        answer = await b.sign_in(secret)
        assert answer.status == 403, (n, answer.status)
        assert b.session_id is None
        texts.add(re.sub(TOKEN, "", answer.text))
        assert (await b.get("/ui/")).status == 303
    assert len(texts) == 1, "a failed sign-in must not say which part was wrong"
    assert "Sign-in failed" in texts.pop()


async def test_signin_attempts_are_rate_limited(harness: ApiHarness) -> None:
    b = browser(harness)
    for _ in range(PER_CLIENT):
        assert (await b.sign_in("not the password")).status == 403
    answer = await b.sign_in("not the password")
    assert answer.status == 429
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    # Even the right key waits: the limit is on the client, not on the guess.
    answer = await b.sign_in(harness.keys[SHOP_A])
    assert answer.status == 429 and b.session_id is None


async def test_a_successful_signin_does_not_count_against_the_limit(harness: ApiHarness) -> None:
    for _ in range(PER_CLIENT + 2):
        b = browser(harness)
        assert (await b.sign_in(harness.keys[SHOP_A])).status == 303


def test_the_limiter_counts_per_client_and_overall() -> None:
    limiter = SignInLimiter(per_client=2, overall=3, window_s=60)
    for client in ("a", "a"):
        assert limiter.wait_s(client, 0.0) == 0.0
        limiter.attempt(client, 0.0)
    assert limiter.wait_s("a", 10.0) == 50.0
    assert limiter.wait_s("b", 10.0) == 0.0
    limiter.attempt("b", 10.0)
    assert limiter.wait_s("c", 20.0) == 40.0  # three failures in the window overall: everyone waits
    assert limiter.wait_s("a", 60.0) == 0.0  # the window moved on
    limiter.attempt("c", 61.0)
    limiter.succeeded("c", 61.0)
    assert limiter.wait_s("d", 61.0) == 0.0


def test_ipv6_clients_are_limited_by_their_64() -> None:
    assert client_bucket("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_bucket("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_bucket("2001:db8:1:3::1") != client_bucket("2001:db8:1:2::1")
    assert client_bucket("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_bucket(None) == "unknown"


async def test_the_session_id_is_rotated_at_signin(harness: ApiHarness) -> None:
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_A])
    first = b.session_id
    assert first is not None
    await b.sign_in(harness.keys[SHOP_B])
    second = b.session_id
    assert second is not None and second != first
    # The old id is gone (not merely replaced in this browser).
    old = browser(harness)
    old.cookies[SESSION_COOKIE] = first
    assert (await old.get("/ui/")).status == 303
    # An id planted before sign-in (fixation) is never adopted.
    planted = browser(harness)
    planted.cookies[SESSION_COOKIE] = "P" * 43
    await planted.sign_in(harness.keys[SHOP_A])
    assert planted.session_id not in (None, "P" * 43)


async def test_signing_out_ends_the_session(harness: ApiHarness) -> None:
    b = browser(harness)
    await b.sign_in(harness.keys[SHOP_A])
    kept = b.session_id
    token = csrf_of((await b.get("/ui/")).text)
    answer = await b.post("/ui/signout", {"csrf_token": token})
    assert answer.status == 303 and answer.location == "/ui/signin"
    morsel = answer.cookies[SESSION_COOKIE]
    assert morsel.value == "" and morsel["path"] == "/ui/"
    assert b.session_id is None
    replay = browser(harness)
    replay.cookies[SESSION_COOKIE] = str(kept)
    assert (await replay.get("/ui/")).status == 303


# ------------------------------------------------------------------------------------------ next


async def test_next_only_ever_leads_under_ui(harness: ApiHarness) -> None:
    b = browser(harness)
    answer = await b.sign_in(harness.keys[SHOP_A], "/ui/deposits?status=confirmed")
    assert answer.status == 303 and answer.location == "/ui/deposits?status=confirmed"
    hostile = [
        "https://evil.example/", "//evil.example/", "/\\evil.example", "/ui//evil.example",
        "/ui/\\evil.example", "http:/ui/", "/v1/keys", "javascript:alert(1)",
        "/ui/\r\nLocation: https://evil.example/", "/uievil", " /ui/", "/ui/\t/evil.example",
        "/ui/../v1/keys", "/ui/%2e%2E/v1/keys", "/ui/./..", "/ui/deposits/..",
    ]  # fmt: skip
    for target in hostile:
        b = browser(harness)
        form = await b.get("/ui/signin?next=" + quote(target, safe=""))
        assert 'name="next" value="/ui/"' in form.text, target
        answer = await b.post(
            "/ui/signin", {"csrf_token": csrf_of(form.text), "secret": harness.keys[SHOP_A], "next": target}
        )
        assert answer.status == 303 and answer.location == "/ui/", (target, answer.location)


# ------------------------------------------------------------------------------------------ the cookie


async def test_the_session_cookie_is_httponly_strict_and_scoped_to_ui(harness: ApiHarness) -> None:
    answer = await browser(harness).sign_in(harness.keys[SHOP_A])
    raw = [line for line in answer.headers.getall("Set-Cookie") if line.startswith(SESSION_COOKIE + "=")]
    assert len(raw) == 1
    attributes = {part.strip().split("=")[0].lower() for part in raw[0].split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= attributes and "secure" not in attributes  # plain HTTP
    morsel = answer.cookies[SESSION_COOKIE]
    assert morsel["path"] == "/ui/" and morsel["samesite"] == "Strict" and morsel["httponly"]
    assert not morsel["max-age"] and not morsel["expires"]  # a browser-session cookie
    assert len(morsel.value) >= 43  # 256 random bits
    # Behind a TLS-terminating proxy the config says so.
    harness.reconfigure(ui=replace(harness.config.ui, secure_cookie=True))
    answer = await browser(harness).sign_in(harness.keys[SHOP_A])
    assert answer.cookies[SESSION_COOKIE]["secure"]


@pytest.fixture
def tls_context(tmp_path: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate (openssl)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_the_cookie_is_secure_when_served_over_tls(
    harness: ApiHarness, tls_context: ssl.SSLContext
) -> None:
    context = tls_context
    runner = harness.server._runner
    assert runner is not None
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        answer = await browser(harness, f"https://127.0.0.1:{port}").sign_in(harness.keys[SHOP_A])
        assert answer.status == 303
        assert answer.cookies[SESSION_COOKIE]["secure"]
        assert answer.cookies[SESSION_COOKIE]["samesite"] == "Strict"
    finally:
        await site.stop()


# ------------------------------------------------------------------------------------------ helpers


def _reset_limits(harness: ApiHarness) -> None:
    """All requests come from 127.0.0.1: a test of many failures starts each case with a fresh limiter."""
    for route in harness.server.app.router.routes():
        owner = getattr(route.handler, "__self__", None)
        if isinstance(getattr(owner, "limiter", None), SignInLimiter):
            owner.limiter = SignInLimiter()  # type: ignore[union-attr]


def test_the_operator_sees_every_integration_and_an_integration_its_own() -> None:
    operator = Viewer(None, "operator", "t")
    shop = Viewer(SHOP_A, "shop", "t")
    assert operator.sees(SHOP_A) and operator.sees(SHOP_B)
    assert shop.sees(SHOP_A) and not shop.sees(SHOP_B)
