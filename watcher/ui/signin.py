"""Signing in to the back office and out again: `GET/POST /ui/signin`, `POST /ui/signout`.

One field takes an integration's API key or the operator's password: a value shaped like a key
(`sk_live_...`, `sk_test_...`) is checked as a key, by the API's own rules (watcher.api.auth: the hash,
the daemon's mode, the integration's `allow_from` networks); anything else as the operator's password
(`ui.operator_password_file`, from `ui.operator_allow_from` only). A failure says nothing of which part was
wrong. Success opens a new session with a new id (an id the client had before is dropped: no fixation) and
goes to `next` when that is a path under /ui/ (never another site).

Attempts are limited per client (an IPv6 client by its /64, which one host usually has whole) and overall:
at most `PER_CLIENT` and `OVERALL` failed attempts in `WINDOW_S`; beyond that 429 with Retry-After, even
for the right password. An attempt counts from its start (so parallel guesses count too) and is handed
back when it succeeds.

The sign-in form has its own CSRF token (double submit: a cookie for /ui/signin only, and the same value
in the form), so another site cannot sign a browser in to an account of its choosing.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import Callable
from ipaddress import IPv6Network

from aiohttp import web

from watcher.api import auth
from watcher.api.refusals import Refused
from watcher.apikeys import hash_api_key
from watcher.config import Config
from watcher.logs import get_logger
from watcher.ui import pages
from watcher.ui.session import (
    SESSION_COOKIE,
    SIGNIN_PATH,
    VIEWER,
    Sessions,
    clear_session_cookie,
    denied,
    inside,
    new_token,
    safe_next,
    same_token,
    secure_cookie,
    see_other,
    set_session_cookie,
)

log = get_logger(component="office")

SIGNOUT_PATH = "/ui/signout"
SIGNIN_COOKIE = "office_signin"
WINDOW_S = 60.0
PER_CLIENT = 5
OVERALL = 30
MAX_CLIENTS = 10_000
MAX_SECRET_CHARS = 1024
FAILED_MESSAGE = "Sign-in failed. Check the API key or password, and that you may sign in from this network."
HASHING_AT_ONCE = 2  # scrypt takes 32 MiB a check: at most this many at once, whatever arrives


def client_bucket(remote: str | None) -> str:
    """The client a failure is counted against: its address, or an IPv6 address's /64."""
    client = auth.client_address(remote)
    if client is None:
        return "unknown"
    if client.version == 6:
        return str(IPv6Network((int(client) >> 64 << 64, 64)))
    return str(client)


class SignInLimiter:
    """Failed sign-in attempts in the last `window_s`, per client and overall. Bounded: past `max_clients`
    the client seen least recently is forgotten first."""

    def __init__(
        self,
        per_client: int = PER_CLIENT,
        overall: int = OVERALL,
        window_s: float = WINDOW_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.per_client, self.overall, self.window_s, self.max_clients = (
            per_client,
            overall,
            window_s,
            max_clients,
        )
        self._clients: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def _trim(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_s:
            times.popleft()

    def wait_s(self, client: str, now: float) -> float:
        """0.0 when `client` may try now, else the seconds until it may."""
        self._trim(self._all, now)
        mine = self._clients.get(client)
        if mine is not None:
            self._trim(mine, now)
        waits = [0.0]
        if len(self._all) >= self.overall:
            waits.append(self._all[-self.overall] + self.window_s - now)
        if mine is not None and len(mine) >= self.per_client:
            waits.append(mine[-self.per_client] + self.window_s - now)
        return max(waits)

    def attempt(self, client: str, now: float) -> None:
        mine = self._clients.pop(client, None) or deque()
        mine.append(now)
        self._clients[client] = mine  # now the most recent
        while len(self._clients) > self.max_clients:
            self._clients.popitem(last=False)
        self._all.append(now)

    def succeeded(self, client: str, now: float) -> None:
        """Hand back the attempt `attempt` counted at `now`: a right answer is not a failure."""
        mine = self._clients.get(client)
        if mine is not None and now in mine:
            mine.remove(now)
        if now in self._all:
            self._all.remove(now)


class SignIn:
    def __init__(self, config: Callable[[], Config], sessions: Sessions, clock: Callable[[], float]) -> None:
        self._config = config
        self.sessions = sessions
        self._clock = clock
        self.limiter = SignInLimiter()
        self._hashing = asyncio.Semaphore(HASHING_AT_ONCE)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(SIGNIN_PATH, self.form),
            web.post(SIGNIN_PATH, self.sign_in),
            web.post(SIGNOUT_PATH, self.sign_out),
        ]

    async def form(self, request: web.Request) -> web.Response:
        return self._form(request, safe_next(request.query.get("next")))

    def _form(
        self, request: web.Request, next_path: str, error: str | None = None, status: int = 200
    ) -> web.Response:
        token = new_token()
        response = pages.render(
            "office/signin.html", status=status, csrf_token=token, next=next_path, error=error
        )
        response.set_cookie(
            SIGNIN_COOKIE, token, path=SIGNIN_PATH, httponly=True, samesite="Strict",
            secure=secure_cookie(request, self._config()),
        )  # fmt: skip
        return response

    async def sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        expected = request.cookies.get(SIGNIN_COOKIE)
        if not expected or not same_token(form.get("csrf_token"), expected):
            return denied("This sign-in form has expired. Reload the page and try again.")
        next_path = safe_next(form.get("next"))
        client = client_bucket(request.remote)
        now = self._clock()
        wait_s = self.limiter.wait_s(client, now)
        if wait_s > 0:
            log.warning("office_signin_rate_limited", client=request.remote)
            retry_after = str(max(1, math.ceil(wait_s)))
            message = f"Too many failed sign-in attempts. Try again in {retry_after} s."
            return denied(message, 429, {"Retry-After": retry_after})
        self.limiter.attempt(client, now)
        config = self._config()
        signed = await self._credential(config, form.get("secret"), request.remote)
        if signed is None:
            log.warning("office_signin_failed", client=request.remote)
            return self._form(request, next_path, FAILED_MESSAGE, 403)
        self.limiter.succeeded(client, now)
        integration_id, credential = signed
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            self.sessions.drop(old)
        session_id, _ = self.sessions.create(integration_id, credential, self._clock())
        log.info("office_signed_in", integration_id=integration_id or "operator", client=request.remote)
        response = see_other(next_path)
        set_session_cookie(response, session_id, secure_cookie(request, config))
        response.del_cookie(SIGNIN_COOKIE, path=SIGNIN_PATH)
        return response

    async def _credential(
        self, config: Config, secret: object, remote: str | None
    ) -> tuple[str | None, bytes] | None:
        """(integration id or None for the operator, what signed in) when `secret` signs `remote` in."""
        if not isinstance(secret, str) or not secret or len(secret) > MAX_SECRET_CHARS:
            return None
        presented = hash_api_key(secret.strip())
        if presented is not None:
            try:
                integration = auth.identify(config, presented)
                auth.check_client(integration, remote)
            except Refused:
                return None
            return integration.id, presented.digest
        password = config.ui.operator_password
        if password is None or not inside(remote, config.ui.operator_allow_from):
            return None
        async with self._hashing:
            right = await asyncio.to_thread(password.verify, secret)
        return (None, password.digest) if right else None

    async def sign_out(self, request: web.Request) -> web.Response:
        """Behind the gate: only a live session with its CSRF token gets here."""
        viewer = request[VIEWER]
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            self.sessions.drop(session_id)
        log.info(
            "office_signed_out", integration_id=viewer.integration_id or "operator", client=request.remote
        )
        response = see_other(SIGNIN_PATH)
        clear_session_cookie(response, secure_cookie(request, self._config()))
        return response
