"""A one-line progress bar for long CLI commands (`addresses import`): rows, rate, ETA, on stderr.

Plain text and a carriage return, no dependency. Drawn only when told to (the CLI passes
`stderr.isatty()`), at most a few times a second so that drawing never costs the work it reports on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

BAR_WIDTH = 24
REDRAW_S = 0.2


class Progress:
    """`update(rows, fraction)` as work goes; `done()` ends the line. `fraction` (0..1) of the whole, when
    known (bytes read of a file's size), gives the bar and the ETA; without it only rows and rate show."""

    def __init__(
        self, stream: TextIO, *, enabled: bool, label: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._stream = stream
        self._enabled = enabled
        self._label = label
        self._clock = clock
        self._started = clock()
        self._drawn_at = float("-inf")
        self._width = 0

    def update(self, rows: int, fraction: float | None = None) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if now - self._drawn_at < REDRAW_S:
            return
        self._drawn_at = now
        self._draw(line(self._label, rows, now - self._started, fraction))

    def done(self) -> None:
        """Clear the bar: the caller prints its own summary line."""
        if self._enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _draw(self, text: str) -> None:
        # Pad over the previous, longer line rather than clearing it: no flicker.
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)


def line(label: str, rows: int, elapsed_s: float, fraction: float | None) -> str:
    """The bar's text, e.g. `importing [#######.....]  35%  350,000 rows  61,204/s  ETA 0:11`."""
    rate = rows / elapsed_s if elapsed_s > 0 else 0.0
    parts = [label]
    if fraction is not None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = round(fraction * BAR_WIDTH)
        parts.append(f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}%")
    parts.append(f"{rows:,} rows  {rate:,.0f}/s")
    if fraction is not None and fraction > 0:
        parts.append(f"ETA {clock_text(elapsed_s * (1 - fraction) / fraction)}")
    return "  ".join(parts)


def clock_text(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
