"""Starts and stops a local anvil (Ethereum dev node) for tests and the demo.

`AnvilNode` runs one anvil process on 127.0.0.1 with a port the kernel picks, waits until its JSON-RPC
answers, and stops it (SIGTERM, then SIGKILL) on exit. It works both as a sync context manager (pytest
fixtures) and as an async one (the demo). anvil's own output goes to a log file in a temp directory; the
tail of it is quoted when anvil fails to start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from pathlib import Path

from devnet import REPO_ROOT
from devnet.process import LocalProcess

DEFAULT_CHAIN_ID = 31337
# anvil prints this once its RPC server is bound; with --port 0 it is the only way to learn the port.
_LISTENING = re.compile(rb"Listening on ([0-9.]+):(\d+)")


class AnvilError(RuntimeError):
    """anvil is missing, did not start in time, or exited unexpectedly."""


def find_anvil() -> str:
    """The anvil binary: $ANVIL_BIN, else <repo>/node_modules/.bin/anvil, else anvil on PATH."""
    env = os.environ.get("ANVIL_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise AnvilError(f"ANVIL_BIN={env!r} is not an executable file")
        return env
    local = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("anvil")
    if on_path:
        return on_path
    raise AnvilError(
        f"anvil not found: run `npm ci` in {REPO_ROOT} (installs node_modules/.bin/anvil), "
        "or set ANVIL_BIN to an anvil binary"
    )


class AnvilNode(LocalProcess):
    """One anvil process. Mining: automatic per transaction (default), every `block_time_s`, or only on
    demand (`no_mining=True`, mine with evm_mine/anvil_mine). Mining mode can also be switched at run
    time with `evm_setAutomine` (see evm_tools.set_automine)."""

    name = "anvil"
    error = AnvilError

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        block_time_s: float | None = None,
        no_mining: bool = False,
        accounts: int = 10,
        extra_args: tuple[str, ...] = (),
        startup_timeout_s: float = 30.0,
    ) -> None:
        if block_time_s is not None and no_mining:
            raise ValueError("block_time_s and no_mining exclude each other")
        super().__init__()
        self.chain_id = chain_id
        self.block_time_s = block_time_s
        self.no_mining = no_mining
        self.accounts = accounts
        self.extra_args = extra_args
        self.startup_timeout_s = startup_timeout_s
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise AnvilError("anvil is not running")
        return self._url

    def command(self) -> list[str]:
        args = [find_anvil(), "--host", "127.0.0.1", "--port", "0", "--chain-id", str(self.chain_id)]
        args += ["--accounts", str(self.accounts), "--color", "never"]
        if self.block_time_s is not None:
            args += ["--block-time", str(self.block_time_s)]
        if self.no_mining:
            args.append("--no-mining")
        return args + list(self.extra_args)

    # ---------------------------------------------------------------------------------- LocalProcess

    def _command(self, workdir: Path) -> list[str]:
        return self.command()

    def _probe(self) -> bool:
        if self._url is None:
            self._url = self._read_url()
        return self._url is not None and self._answers()

    def _forget(self) -> None:
        self._url = None

    def _read_url(self) -> str | None:
        match = _LISTENING.search(self.log_path.read_bytes())
        if match is None:
            return None
        return f"http://{match.group(1).decode()}:{int(match.group(2))}"

    def _answers(self) -> bool:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
        req = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                return "result" in json.loads(resp.read())
        except (OSError, ValueError):
            return False
