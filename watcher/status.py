"""The HTTP status port (aiohttp, in the daemon's own loop): /livez, /readyz, /status, /metrics.

Nothing here reveals a secret: node URLs are shown without credentials and the merchant secret is never
read. /metrics is the Prometheus text format (see watcher.metrics).

With a leader election (watcher/leadership.py), /status shows this daemon's role and term, and /readyz
judges a standby by what it does: it serves the merchant API, so it is ready while its store and the
election's database answer; the chains' freshness is the leader's business (a standby follows nothing).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from watcher.config import Config
from watcher.errors import StoreError
from watcher.health import Health
from watcher.leadership import LeadershipStatus
from watcher.logs import redact_url
from watcher.metrics import Metrics
from watcher.store import Store

# /status answers within this even when the store does not (its counts are then null).
STORE_READ_TIMEOUT_S = 3.0


class LeadershipView(Protocol):
    """What the status port reads of a leader election (watcher.leadership.Leadership)."""

    def status(self) -> LeadershipStatus: ...


class StatusServer:
    def __init__(
        self,
        config: Config,
        store: Store,
        health: Health,
        metrics: Metrics | None = None,
        leadership: LeadershipView | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.health = health
        self.metrics = metrics
        self.leadership = leadership
        self.app = web.Application()
        self.app.router.add_get("/livez", self.livez)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/status", self.status)
        if metrics is not None:
            self.app.router.add_get("/metrics", self.metrics_text)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.status.host, self.config.status.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.status.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = await self.problems()
        if problems:
            return web.json_response({"ready": False, "problems": problems}, status=503)
        return web.json_response({"ready": True})

    async def problems(self) -> dict[str, str]:
        """What keeps the daemon from being ready: per chain, per crashed component (named by its task,
        e.g. `follower:bitcoin`), 'store' and 'leadership', the reason. A standby's chains do not count."""
        problems: dict[str, str] = {}
        if self.store.write_error is not None:  # until a write commits again
            problems["store"] = f"writes fail: {self.store.write_error}"
        elif not self.health.store_ok:
            problems["store"] = self.health.store_error or "store unavailable"
        problems.update(sorted(self.health.crashes.items()))
        if self.leadership is not None:
            lead = self.leadership.status()
            if (problem := lead.problem()) is not None:
                problems["leadership"] = problem
            if not lead.is_leader:
                return problems
        now = time.time()
        limits = self.config.status
        for chain in self.config.chains:
            reason = self.health.chain(chain.name).not_ready_reason(
                now, limits.max_head_age_s, limits.max_lag_blocks
            )
            if reason:
                problems[chain.name] = reason
        return problems

    async def metrics_text(self, request: web.Request) -> web.Response:
        assert self.metrics is not None
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.snapshot())

    async def snapshot(self) -> dict[str, Any]:
        now = time.time()
        chains = {}
        for chain in self.config.chains:
            h = self.health.chain(chain.name)
            age = h.head_age_s(now)
            chains[chain.name] = {
                "adapter": chain.adapter,
                "rpc_url": redact_url(h.rpc_url or chain.settings.rpc_url),
                "rpc_urls": [redact_url(url) for url in chain.settings.urls],
                "node_height": h.node_height,
                "node_hash": h.node_hash,
                "processed_height": h.processed_height,
                "lag": h.lag(),
                "head_age_s": None if age is None else round(age, 1),
                "connected": h.connected,
                "last_error": h.last_error,
                "halted": h.halted_reason,
                "reorgs": h.reorgs,
                "deepest_reorg": h.deepest_reorg,
            }
        problems = await self.problems()
        try:
            counts = await asyncio.wait_for(self._store_counts(), STORE_READ_TIMEOUT_S)
        except (StoreError, TimeoutError) as e:  # a PostgreSQL server out of reach: show the rest
            counts = {"outbox": None, "deposits": None, "integrations": None}
            reason = str(e) if isinstance(e, StoreError) else f"no answer within {STORE_READ_TIMEOUT_S:g} s"
            problems.setdefault("store", f"reads fail: {reason}")
        leadership = {} if self.leadership is None else {"leadership": self.leadership.status().as_json()}
        return {
            "network": self.config.network,
            **leadership,
            "uptime_s": round(now - self.health.started_at, 1),
            "ready": not problems,
            "problems": problems,
            "chains": chains,
            **counts,
        }

    async def _store_counts(self) -> dict[str, Any]:
        outbox = await self.store.outbox_counts()
        return {
            "outbox": {
                "pending": outbox.get("pending", 0),
                "failed": outbox.get("failed", 0),
                "delivered": outbox.get("delivered", 0),
            },
            "deposits": await self.store.deposit_counts(),
            "integrations": await self._integrations(),
        }

    async def _integrations(self) -> list[dict[str, Any]]:
        """Per integration, its public keys with the highest index issued: the gap the merchant's own
        wallet must scan to see every payment (docs/api.md). Key prefixes and hashes are never shown."""
        found = []
        for integration in self.config.integrations:
            highest = await self.store.highest_indexes(integration.id)
            keys = [
                {
                    "chain": k.chain,
                    "key_id": k.deriver.id,
                    "first_index": k.first_index,
                    "highest_index": highest.get(k.deriver.id),
                }
                for k in integration.public_keys
            ]
            # Keys issued from before and no longer configured still count for the wallet's gap.
            configured = {k.deriver.id for k in integration.public_keys}
            keys += [
                {"chain": None, "key_id": key_id, "first_index": None, "highest_index": index}
                for key_id, index in sorted(highest.items())
                if key_id not in configured
            ]
            found.append({"id": integration.id, "name": integration.name, "public_keys": keys})
        return found
