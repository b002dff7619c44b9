"""The back office's frame and its overview page, `/ui/`.

`render` draws a page of the back office: templates/office/base.html (the header with who is signed in,
the sections' links and the sign-out form) around the page's own `{% block content %}`. Its handlers run
behind the gate of watcher/ui/session.py, so `request[VIEWER]` is always set.

The overview (`GET /ui/`): each chain's node and how well it is followed, read from the daemon's
in-memory Health, the outbox and the callbacks failing now, and two charts (watcher/ui/charts.py): each
chain's lag over the last hours (the daemon's LagHistory) and the callback deliveries per 10 minutes (the
attempts table). The chains' state is no secret; an integration sees only its own callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from watcher.config import Config
from watcher.health import Health
from watcher.lag_history import LagHistory, Sample
from watcher.logs import redact_url
from watcher.store import Store
from watcher.ui import charts, pages
from watcher.ui.session import VIEWER

OVERVIEW_PATH = "/ui/"
NAV = (
    ("overview", "Overview", "/ui/"),
    ("deposits", "Deposits", "/ui/deposits"),
    ("payments", "Payments", "/ui/payments"),
    ("addresses", "Addresses", "/ui/addresses"),
)
DELIVERY_HOURS = 6
BUCKET_S = 600  # the deliveries chart's bars: 10 minutes each
FAILING_SHOWN = 20
UNKNOWN = "\u2013"  # an en dash: not known


def section(path: str) -> str:
    """The nav entry a path belongs to ("" for none)."""
    for name, _, href in NAV[1:]:
        if path == href or path.startswith(href + "/"):
            return name
    return "overview" if path == OVERVIEW_PATH else ""


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    """A back-office page: `template` extends office/base.html; `viewer`, `csrf_token` and `nav` (the
    active section, from the path unless given) are added to `context`."""
    viewer = request[VIEWER]
    context.setdefault("nav", section(request.path))
    return pages.render(
        template, status=status, viewer=viewer, csrf_token=viewer.csrf_token, nav_links=NAV, **context
    )


def duration_text(seconds: float | None) -> str:
    """12 s, 4 min, 3.5 h; an en dash when not known."""
    if seconds is None:
        return UNKNOWN
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_text(at: float | None) -> str:
    if at is None:
        return UNKNOWN
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


@dataclass(frozen=True, slots=True)
class ChainRow:
    name: str
    node: str  # the node's URL in use, without credentials
    node_height: int | None
    processed_height: int | None
    lag: int | None
    head_age_s: float | None
    state: str  # following, behind, halted, unavailable, starting
    reason: str | None  # why not following


def chain_rows(config: Config, health: Health, now: float) -> list[ChainRow]:
    """Each configured chain as the overview shows it (its state by the readiness rules of /readyz)."""
    rows = []
    status = config.status
    for chain in config.chains:
        h = health.chain(chain.name)
        reason = h.not_ready_reason(now, status.max_head_age_s, status.max_lag_blocks)
        crashed = health.crashes.get(f"follower:{chain.name}")
        if h.halted_reason:
            state, reason = "halted", h.halted_reason
        elif crashed is not None:
            state, reason = "behind", crashed
        elif h.processed_height is None and reason is not None:
            state = "unavailable" if h.last_error else "starting"
        else:
            state = "behind" if reason is not None else "following"
        rows.append(
            ChainRow(
                name=chain.name,
                node=redact_url(h.rpc_url or chain.settings.rpc_url),
                node_height=h.node_height,
                processed_height=h.processed_height,
                lag=h.lag(),
                head_age_s=h.head_age_s(now),
                state=state,
                reason=reason,
            )
        )
    return rows


class Overview:
    def __init__(
        self,
        config: Callable[[], Config],
        store: Store,
        health: Health,
        lag: LagHistory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.store = store
        self.health = health
        self.lag = lag
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.get(OVERVIEW_PATH, self.page)]

    def _lag_series(self, now: float) -> dict[str, list[Sample]]:
        """The sampled lags and, as the newest point, each chain's lag now (the page is never a minute
        behind the table above it)."""
        series = self.lag.series()
        for name, chain in self.health.chains.items():
            series.setdefault(name, []).append((now, chain.lag()))
        return series

    async def page(self, request: web.Request) -> web.Response:
        viewer = request[VIEWER]
        config, now = self._config(), self._clock()
        only = viewer.integration_id  # None: the operator, every integration
        outbox = await self.store.office_outbox_counts(only)
        failing = await self.store.office_failing_callbacks(only, FAILING_SHOWN)
        since = (now // BUCKET_S + 1) * BUCKET_S - DELIVERY_HOURS * 3600
        buckets = await self.store.office_delivery_buckets(only, since, BUCKET_S)
        names = {i.id: i.name for i in config.integrations}
        return render(
            request,
            "office/overview.html",
            chains=chain_rows(config, self.health, now),
            outbox=outbox,
            failing=failing,
            integration_names=names,
            lag_chart=charts.lag_chart(self._lag_series(now), now, self.lag.span_s),
            delivery_chart=charts.delivery_chart(buckets, since, BUCKET_S, DELIVERY_HOURS * 3600 // BUCKET_S),
            age=duration_text,
            when=time_text,
            delivered_color=charts.DELIVERED_COLOR,
            failed_color=charts.FAILED_COLOR,
        )
