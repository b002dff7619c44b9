"""Each chain's lag over the last hours, for the back office's chart: one sample a minute of what Health
says, kept for six hours, in memory only (a restart starts the chart again; the metrics endpoint is the
place for long history).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from watcher.health import Health

SAMPLE_EVERY_S = 60.0
SPAN_S = 6 * 3600.0

Sample = tuple[float, int | None]  # (unix time, lag in blocks; None: not known then, e.g. node down)


class LagHistory:
    def __init__(self, health: Health, every_s: float = SAMPLE_EVERY_S, span_s: float = SPAN_S) -> None:
        self.health = health
        self.every_s = every_s
        self.span_s = span_s
        self._samples: dict[str, deque[Sample]] = {}

    def sample(self, now: float) -> None:
        keep = int(self.span_s // self.every_s) + 1
        for name, chain in self.health.chains.items():
            samples = self._samples.setdefault(name, deque(maxlen=keep))
            samples.append((now, chain.lag()))

    def series(self) -> dict[str, list[Sample]]:
        return {name: list(samples) for name, samples in sorted(self._samples.items())}

    async def run(self, clock: Callable[[], float] = time.time) -> None:
        while True:
            self.sample(clock())
            await asyncio.sleep(self.every_s)
