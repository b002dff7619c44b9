"""Structured logging (structlog): JSON or console lines, snake_case events, key-value context.

Secrets never reach a log call: config objects hide them from repr, and URLs are logged without
credentials or API keys in their path or query (`redact_url`, from chains.redaction, which the node
transport also uses for its error texts).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

from chains.redaction import redact_url

__all__ = ["ErrorThrottle", "configure", "get_logger", "redact_url"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(fmt: str = "console", level: str = "info") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Whatever sys.stderr is when a line is logged, not when logging was configured: a command run
    # in-process (the CLI's tests capture its output) must not leave loggers writing to a closed file.
    return structlog.PrintLogger(file=sys.stderr)


def get_logger(**bound: Any) -> Any:
    # A lazy proxy: module-level loggers created before `configure` still use its settings.
    return structlog.get_logger(**bound)


class ErrorThrottle:
    """Logs a repeating error once, then at most once per `interval_s`, and a line when it clears.

    A node that is down for an hour should not write thousands of identical lines.
    """

    def __init__(self, log: Any, interval_s: float = 60.0) -> None:
        self._log = log
        self._interval_s = interval_s
        self._failing_since: float | None = None
        self._last_logged = 0.0
        self._suppressed = 0

    def failed(self, event: str, **kw: Any) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_logged >= self._interval_s:
            self._log.warning(event, suppressed=self._suppressed, **kw)
            self._last_logged, self._suppressed = now, 0
        else:
            self._suppressed += 1

    def recovered(self, event: str, **kw: Any) -> None:
        if self._failing_since is not None:
            self._log.info(event, down_s=round(time.monotonic() - self._failing_since, 1), **kw)
        self._failing_since, self._last_logged, self._suppressed = None, 0.0, 0
