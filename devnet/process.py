"""The life cycle shared by the local node launchers (anvil, bcoin): a process in a temp directory.

A subclass says how to start (`_command`), how to tell it is ready (`_probe`) and which error to raise.
This class starts the process in its own session (a Ctrl-C in the terminal running pytest must not kill
it behind our back) with its output in a log file, polls until it is ready or the deadline passes
(quoting the log's tail on failure), and stops it with SIGTERM, then SIGKILL. It works as a sync context
manager (pytest fixtures) and an async one (the demo), starting in a thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self


class LocalProcess:
    name = "process"  # for messages and the temp directory's prefix
    error: type[Exception] = RuntimeError
    startup_timeout_s: float = 30.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    # ------------------------------------------------------------------------------ to override

    def _command(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the process answers; called every 50 ms while starting."""
        raise NotImplementedError

    def _forget(self) -> None:
        """Drop what `_probe` learned (ports, URLs) when the process stops."""

    # ------------------------------------------------------------------------------ properties

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def workdir(self) -> Path:
        if self._dir is None:
            raise self.error(f"{self.name} was not started")
        return self._dir

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    # ------------------------------------------------------------------------------ life cycle

    def start(self) -> Self:
        """Start and return once ready; raises `error` with the log's tail."""
        if self._proc is not None:
            raise self.error(f"{self.name} is already running")
        self._dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        command = self._command(self._dir)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self._wait_ready(time.monotonic() + self.startup_timeout_s)
        except BaseException:
            self.stop(keep_log=True)
            raise
        return self

    def stop(self, *, keep_log: bool = False) -> None:
        """Stop (SIGTERM, then SIGKILL after 5 s); remove the directory and log unless `keep_log`."""
        proc, self._proc = self._proc, None
        self._forget()
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._dir is not None and not keep_log:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------------------ internals

    def _wait_ready(self, deadline: float) -> None:
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise self.error(f"{self.name} exited with code {code} while starting{self.tail()}")
            if self._probe():
                return
            if time.monotonic() > deadline:
                raise self.error(f"{self.name} did not answer within {self.startup_timeout_s} s{self.tail()}")
            time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log, as a suffix for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, self.error):
            return ""
        return f"; log {self.log_path}:\n" + "\n".join(text.splitlines()[-lines:])
