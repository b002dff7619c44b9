"""In-memory health of the running daemon: what the status port, readyz and the logs report.

Followers and the dispatcher write here; the status server reads. Nothing here is persisted: after a
restart it is rebuilt from the nodes and the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class ChainHealth:
    name: str
    node_height: int | None = None
    node_hash: str | None = None
    processed_height: int | None = None
    # When the node's head last changed, as seen from here: the freshness of the newest block.
    head_changed_at: float | None = None
    connected: bool = False
    last_error: str | None = None
    last_error_at: float | None = None
    halted_reason: str | None = None
    reorgs: int = 0
    deepest_reorg: int = 0
    last_step_at: float | None = None
    # The node URL in use, once a fail-over moved away from the first configured one.
    rpc_url: str | None = None

    def saw_head(self, height: int, block_hash: str, now: float) -> None:
        if block_hash != self.node_hash:
            self.head_changed_at = now
        self.node_height, self.node_hash = height, block_hash
        self.connected = True

    def lag(self) -> int | None:
        if self.node_height is None or self.processed_height is None:
            return None
        return max(0, self.node_height - self.processed_height)

    def head_age_s(self, now: float) -> float | None:
        return None if self.head_changed_at is None else now - self.head_changed_at

    def not_ready_reason(self, now: float, max_head_age_s: float, max_lag_blocks: int) -> str | None:
        """Why this chain is not ready, or None when it is followed, fresh and not lagging."""
        if self.halted_reason:
            return f"halted: {self.halted_reason}"
        if not self.connected:
            return f"node unavailable: {self.last_error or 'not connected yet'}"
        if self.processed_height is None:
            return "not synced yet"
        lag = self.lag()
        if lag is not None and lag > max_lag_blocks:
            return f"lag {lag} blocks exceeds {max_lag_blocks}"
        age = self.head_age_s(now)
        if age is not None and age > max_head_age_s:
            return f"node head unchanged for {age:.0f} s (limit {max_head_age_s:g} s)"
        return None


@dataclass(slots=True)
class Health:
    chains: dict[str, ChainHealth] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    store_ok: bool = True
    store_error: str | None = None
    # Component (its supervisor's task name, e.g. `follower:bitcoin`) -> why it crashed, until restarted.
    crashes: dict[str, str] = field(default_factory=dict)
    # Component -> monotonic time by which it promised to beat again (see `beat`).
    beats: dict[str, float] = field(default_factory=dict)

    def chain(self, name: str) -> ChainHealth:
        if name not in self.chains:
            self.chains[name] = ChainHealth(name)
        return self.chains[name]

    def beat(self, component: str, within_s: float) -> None:
        """A component's promise to beat again within `within_s`. Before every wait that may be long
        (a sleep, a step of node calls bounded by their timeouts) it beats with that wait's bound, so
        a node outage (a loop that keeps retrying) keeps beating, while a wedged loop stops."""
        self.beats[component] = time.monotonic() + within_s

    def stalled(self) -> list[str]:
        now = time.monotonic()
        return sorted(name for name, deadline in self.beats.items() if deadline < now)

    def crashed(self, component: str, reason: str, *, store_fault: bool) -> None:
        """A component crashed and waits to be restarted; `store_fault`: the store is why (see supervisor)."""
        self.crashes[component] = reason
        if store_fault:
            self.store_ok, self.store_error = False, reason

    def restarting(self, component: str) -> None:
        reason = self.crashes.pop(component, None)
        if reason is not None and reason == self.store_error:
            self.store_ok, self.store_error = True, None

    def summary(self) -> str:
        """One line for systemd's STATUS=: each chain's processed height and lag, or its trouble, and the
        components that crashed."""
        parts = []
        for name, h in sorted(self.chains.items()):
            if h.halted_reason:
                parts.append(f"{name}: HALTED")
            elif not h.connected:
                parts.append(f"{name}: node unavailable")
            else:
                parts.append(f"{name}: height {h.processed_height} lag {h.lag()}")
        parts.extend(reason for _, reason in sorted(self.crashes.items()))
        return "; ".join(parts) or "starting"
