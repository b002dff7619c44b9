"""The back office's sessions and its gate.

A session is a random 256-bit id in a cookie (`office_session`: HttpOnly, SameSite=Strict, Path=/ui/,
Secure over TLS or when `ui.secure_cookie` says a TLS proxy is in front). The table lives in memory only:
a restart signs everybody out, which is the safe direction. It is bounded (`MAX_SESSIONS`; the least
recently used goes first) and keyed by the id's SHA-256, so not even the table holds a usable id.

A session ends when unused for `ui.session_idle_s`, `ui.session_max_s` after its sign-in, at sign-out,
and at the first request after a reload took away what it was signed in with: the integration or its API
key, the operator's password (a new hash line), or the client's network. So revoking a key or changing the
password also ends the sessions opened with it.

The gate (`Gate.middleware`) guards every path under /ui/ but the static files and the sign-in page:
without a valid session a GET is sent (303) to /ui/signin?next=<path>, any other method gets 403; every
POST must carry the form field `csrf_token` equal to the session's (compared in constant time), or it gets
403 before its handler runs. A handler finds the signed-in `Viewer` as `request[VIEWER]`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from aiohttp.typedefs import Handler

from watcher.api.auth import client_address
from watcher.config import Config, IPNetwork
from watcher.ui import pages

PREFIX = "/ui/"
SIGNIN_PATH = "/ui/signin"
SESSION_COOKIE = "office_session"
MAX_SESSIONS = 10_000
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True, slots=True)
class Viewer:
    integration_id: str | None  # None: the operator, who sees every integration
    label: str  # shown in the page header: "operator" or the integration's name
    csrf_token: str  # the session's token; every form posts it as the field `csrf_token`

    def sees(self, integration_id: str) -> bool:
        return self.integration_id is None or self.integration_id == integration_id


VIEWER = web.RequestKey("viewer", Viewer)


@dataclass(slots=True)
class Session:
    integration_id: str | None  # None: the operator
    # What it was signed in with: the API key's SHA-256, or the operator password's scrypt hash. A reload
    # that no longer has it ends the session.
    credential: bytes
    csrf_token: str
    created_at: float
    used_at: float


def new_token() -> str:
    """256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def _key(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).digest()


class Sessions:
    """The in-memory session table. `now` is the caller's monotonic clock (tests pass their own)."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._table: OrderedDict[bytes, Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._table)

    def create(self, integration_id: str | None, credential: bytes, now: float) -> tuple[str, Session]:
        """A new session with a new id and CSRF token: the id never comes from the client (no fixation)."""
        session_id = new_token()
        session = Session(integration_id, credential, new_token(), now, now)
        while len(self._table) >= self.max_sessions:
            self._table.popitem(last=False)
        self._table[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str, now: float, idle_s: float, max_s: float) -> Session | None:
        """The live session with this id, marked used; None (and forgotten) when unknown or expired."""
        key = _key(session_id)
        session = self._table.get(key)
        if session is None:
            return None
        if now - session.used_at > idle_s or now - session.created_at > max_s:
            del self._table[key]
            return None
        session.used_at = now
        self._table.move_to_end(key)
        return session

    def drop(self, session_id: str) -> None:
        self._table.pop(_key(session_id), None)


def inside(remote: str | None, networks: Iterable[IPNetwork]) -> bool:
    client = client_address(remote)
    return client is not None and any(client in network for network in networks)


def viewer_of(config: Config, session: Session, remote: str | None) -> Viewer | None:
    """Who the session shows pages to, under the config in force now; None when it no longer holds."""
    if session.integration_id is None:
        password = config.ui.operator_password
        if password is None or not hmac.compare_digest(password.digest, session.credential):
            return None
        if not inside(remote, config.ui.operator_allow_from):
            return None
        return Viewer(None, "operator", session.csrf_token)
    try:
        integration = config.integration(session.integration_id)
    except KeyError:
        return None
    if not any(hmac.compare_digest(k.digest, session.credential) for k in integration.api_keys):
        return None
    if not inside(remote, integration.allow_from):
        return None
    return Viewer(integration.id, integration.name, session.csrf_token)


def secure_cookie(request: web.Request, config: Config) -> bool:
    return request.secure or config.ui.secure_cookie


def set_session_cookie(response: web.StreamResponse, session_id: str, secure: bool) -> None:
    # No Max-Age: a browser session cookie; the server ends the session itself (idle and absolute limits).
    response.set_cookie(
        SESSION_COOKIE, session_id, path=PREFIX, httponly=True, samesite="Strict", secure=secure
    )


def clear_session_cookie(response: web.StreamResponse, secure: bool) -> None:
    response.del_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="Strict", secure=secure)


def same_token(presented: object, expected: str) -> bool:
    """Constant-time comparison of a form's token with the expected one; a missing or non-text value
    (a file upload) is simply not equal."""
    if not isinstance(presented, str):
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def denied(message: str, status: int = 403, headers: dict[str, str] | None = None) -> web.Response:
    response = pages.render("office/denied.html", status=status, message=message)
    if headers:
        response.headers.update(headers)
    return response


def guarded(path: str) -> bool:
    """Whether `path` needs a session: everything under /ui/ but the static files and the sign-in page."""
    return path.startswith(PREFIX) and not path.startswith(pages.STATIC_PREFIX) and path != SIGNIN_PATH


class Gate:
    """The middleware that lets a request under /ui/ through only with a live session (module docstring).
    `config` and `clock` are called per request: a reload applies to the next request."""

    def __init__(self, config: Callable[[], Config], sessions: Sessions, clock: Callable[[], float]) -> None:
        self._config = config
        self.sessions = sessions
        self._clock = clock

    def viewer(self, request: web.Request) -> Viewer | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        config = self._config()
        session = self.sessions.get(
            session_id, self._clock(), config.ui.session_idle_s, config.ui.session_max_s
        )
        if session is None:
            return None
        viewer = viewer_of(config, session, request.remote)
        if viewer is None:
            self.sessions.drop(session_id)
        return viewer

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guarded(request.path):
            return await handler(request)
        viewer = self.viewer(request)
        if viewer is None:
            if request.method in _SAFE_METHODS:
                return see_other(signin_url(request.rel_url.path_qs))
            return denied("Your session has ended. Sign in again.")
        if request.method not in _SAFE_METHODS:
            form = await request.post()  # aiohttp keeps it: the handler's own post() reads the same
            if not same_token(form.get("csrf_token"), viewer.csrf_token):
                return denied("This form has expired. Go back, reload the page and try again.")
        request[VIEWER] = viewer
        return await handler(request)


def see_other(location: str) -> web.Response:
    # Returned, not raised: the API's error middleware turns a raised HTTPException into its JSON error.
    return web.Response(status=303, headers={"Location": location})


def signin_url(next_path: str) -> str:
    return f"{SIGNIN_PATH}?next={quote(next_path, safe='/')}"


def safe_next(value: object) -> str:
    """Where to go after signing in: `value` when it is a path under /ui/ on this site, else /ui/.
    Never another site: no scheme, no host, no `//` or backslash a browser could read as one, and no dot
    segment leading out of /ui/."""
    if not isinstance(value, str) or not value.startswith(PREFIX) or len(value) > 2000:
        return PREFIX
    if "\\" in value or "//" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return PREFIX
    # Dot segments (also percent-encoded): a browser resolves /ui/../v1 to /v1, out of the back office.
    path = value.split("?", 1)[0].split("#", 1)[0].lower().replace("%2e", ".")
    if any(segment in (".", "..") for segment in path.split("/")):
        return PREFIX
    return value
