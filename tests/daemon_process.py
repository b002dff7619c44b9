"""Runs the real daemon as a separate process (`python -m watcher run`), for end-to-end tests.

The tests kill it with SIGKILL and restart it on the same store, so it must be a real process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def database_config(location: str | Path) -> str | dict[str, str]:
    """A store location (an SQLite file, or a `postgresql://` URL as the `pg_url` fixture gives) as config
    `database` takes it: a file as itself, a URL as `{url: ...}`."""
    text = str(location)
    return {"url": text} if text.startswith("postgresql://") else text


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class DaemonProcess:
    def __init__(self, config_path: Path, status_port: int, log_path: Path) -> None:
        self.config_path = config_path
        self.status_port = status_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "watcher", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()

    async def wait_live(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    async with session.get(f"http://127.0.0.1:{self.status_port}/livez") as r:
                        if r.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"daemon not live after {timeout_s} s:\n{self.log()}")

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async with session.get(f"http://127.0.0.1:{self.status_port}{path}") as r:
                return r.status, await r.json()

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a crash or the OOM killer would."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait: the clean shutdown systemd does. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the daemon prints its stacks to the log
            time.sleep(1)
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"daemon ignored SIGTERM for {timeout_s} s:\n{self.log()}") from None

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-6000:]
        except FileNotFoundError:
            return ""
