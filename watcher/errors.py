"""The daemon's errors: one root, `WatcherError`, and the few kinds an operator or a caller tells apart.

Each error says what went wrong in one line (`str(exc)`) and keeps its raw cause (`raise ... from exc`,
or the fields a caller needs, such as a config error's file and line). Each class also says how the
process ends when that error ends it (`exit_code`): the CLI and `run` map an error to its code here, in
one place, so the codes documented in the README and relied on by the systemd unit
(`RestartPreventExitStatus=78`) cannot drift command by command.

The chain adapters have their own root, `chains.base.ChainError` (`chains/` never imports `watcher/`).
"""

from __future__ import annotations

from typing import ClassVar

# A user-facing failure: bad config, a store that cannot be used, a rescan that cannot run.
EXIT_FAILURE = 1
# sysexits' EX_CONFIG: the unit file tells systemd not to restart on it (RestartPreventExitStatus).
EXIT_CONFIG = 78


class WatcherError(Exception):
    """Root of the daemon's own errors."""

    exit_code: ClassVar[int] = EXIT_FAILURE


class ConfigError(WatcherError):
    """A configuration problem. str() is one line: 'FILE:LINE: KEY: what is wrong'."""

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        where = f"{file}:{line}" if line is not None else file
        text = f"{where}: {key}: {message}"
        # Key names come from the file as written and may hold a newline or a tab: escape, keep one line.
        if not text.isprintable():
            text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
        super().__init__(text)


class NestingError(ConfigError):
    """A YAML node nested deeper than the limit (libyaml's composer would recurse once per level)."""

    def __init__(self, file: str, line: int | None, max_depth: int) -> None:
        super().__init__(file, line, "(yaml)", f"nested more than {max_depth} levels deep")


class ConfigRefused(WatcherError):
    """The configuration contradicts the chain (a token's decimals, a contract that is not there): the
    daemon stops rather than credit amounts scaled wrongly. Fix the config, then start again."""

    # A restart with the same config cannot help: systemd must not restart on it.
    exit_code: ClassVar[int] = EXIT_CONFIG


class StoreError(WatcherError):
    """The store cannot be used: locked by another daemon, unreadable, or from a newer version."""


class HelperFailed(StoreError):
    """The start-up's helper process (watcher/watchload.py) died or handed over something unexpected:
    caught there, and its half of the watch sets loaded by the daemon itself."""


class ChainHalted(WatcherError):
    """The chain cannot be followed safely any more; an operator must look (see the README)."""


class Deposed(WatcherError):
    """This daemon is no longer the leader (watcher/leadership.py): a write fenced with its term was
    refused and rolled back, or it was about to act after its lease lapsed. Nothing of it was committed.

    `term` is the term the writer held; `current` the term in the lease row, when the database was asked.
    """

    def __init__(self, term: int | None, current: int | None = None, reason: str = "") -> None:
        self.term = term
        self.current = current
        held = "no term" if term is None else f"term {term}"
        now = "" if current is None else f", the lease is at term {current}"
        super().__init__(f"not the leader ({held}{now}){': ' + reason if reason else ''}")


class RescanError(WatcherError):
    """The rescan cannot run (unknown chain, nothing processed yet, a start above the processed height)."""


def exit_code_of(exc: BaseException) -> int:
    """The process exit code for an error that ends a command: its class's code, 1 for anything else."""
    return exc.exit_code if isinstance(exc, WatcherError) else EXIT_FAILURE


class RequestRefused(WatcherError):
    """A merchant request (API or CLI) that cannot be done as asked: nothing was written.

    `status` is the HTTP status the API answers with (400, 404, 409, 413, 422, ...), `code` a stable
    machine name ("invalid_field", "not_found", "conflict", ...), `field` the request field at fault.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ImportFileError(WatcherError):
    """A file of addresses that cannot be imported (`addresses import`); nothing of it was written.

    str() is one line, 'FILE:LINE: FIELD: what is wrong'. The readers of watcher/address_import.py raise
    it without the file's name (they read a stream); the command adds it with `in_file`.
    """

    def __init__(self, file: str, line: int | None, field: str, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = message
        where = ":".join(part for part in (file, "" if line is None else str(line)) if part)
        super().__init__(f"{where}: {field}: {message}" if where else f"{field}: {message}")

    def in_file(self, file: str) -> ImportFileError:
        return ImportFileError(file, self.line, self.field, self.message)
