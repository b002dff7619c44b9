"""Coinskro's own webhook handlers (tests/seed_handlers/, copied unchanged from Coinskro's Webhooks
documentation), each run as published behind its signature check (tests/seed_handlers/fronts/), as real
processes on loopback.

`run_seed_handler` starts one and gives its `url`, where webhooks go: a test posts to it, or points a
daemon's callback_url at it. The handlers listen on port 3000, fixed in their code, so only one runs at
a time: each is stopped, and the port free again, before `run_seed_handler` returns from its block.

- flask: fronts/flask_front.py, one process: the handler's app with the documented check as a
  `before_request`, listening on 3000 itself.
- express, go: the handler on 3000 and a front process on a free port that checks and forwards.
- php: `php -S 127.0.0.1:3000 fronts/php_front.php`, which checks, then includes the handler.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon_process import free_port

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "tests" / "seed_handlers"
FRONTS = SEEDS / "fronts"
HANDLER_PORT = 3000  # in the handlers' code (app.listen(3000), app.run(port=3000), ":3000")
PATH = "/webhooks/coinskro"  # the handlers' route
WAIT_S = 30.0
INSTALL_HINT = {
    "php": "run scripts/install-system-packages.sh (as root; `make test` runs it)",
    "go": "run scripts/install-system-packages.sh (as root; `make test` runs it)",
    "flask": "pip install -e '.[test]' (`make setup`)",
    "express": "npm ci (package.json devDependencies; `make setup`), or put it on NODE_PATH",
}
# The line each handler prints for a payment_completed, wherever it prints it (PHP's error_log adds a date).
PRINTED = re.compile(r"Payment (\S+) completed for \$(\S+)$")


@dataclass(frozen=True, slots=True)
class SeedHandler:
    name: str
    handler: str  # the published handler, in tests/seed_handlers/
    front: str  # its signature check, in tests/seed_handlers/fronts/


HANDLERS = (
    SeedHandler("flask", "flask_app.py", "flask_front.py"),
    SeedHandler("express", "express_app.js", "express_front.js"),
    SeedHandler("php", "handler.php", "php_front.php"),
    SeedHandler("go", "main.go", "go_front.go"),
)


@dataclass(frozen=True, slots=True)
class SeedServer:
    handler: SeedHandler
    url: str  # the front's http://127.0.0.1:PORT/webhooks/coinskro: a daemon's callback_url
    output: Path  # what the handler's process printed, stdout and stderr together
    front_output: Path  # the front's, when it is a process of its own (else the same file)

    def printed(self) -> list[str]:
        """The `Payment REF completed for $AMOUNT` lines the handler printed so far, in order."""
        text = self.output.read_text("utf-8", "replace")
        return [m.group(0) for m in map(PRINTED.search, text.splitlines()) if m]

    def wait_printed(self, count: int, timeout_s: float = WAIT_S) -> list[str]:
        """`printed()` once it has at least `count` lines (output may lag an answer a moment), or as it
        is after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        lines = self.printed()
        while len(lines) < count and time.monotonic() < deadline:
            time.sleep(0.05)
            lines = self.printed()
        return lines

    def outputs(self) -> str:
        """Everything the processes printed, for failure messages."""
        files = dict.fromkeys((self.output, self.front_output))
        return "\n".join(f"--- {p.name}\n{p.read_text('utf-8', 'replace')}" for p in files)


def _missing(what: str) -> None:
    """Fails in CI (env CI set), where everything is installed; skips elsewhere."""
    message = f"{what} is not installed: {INSTALL_HINT[what]}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(name)
    assert path is not None
    return path


def _require(handler: SeedHandler) -> None:
    if handler.name == "flask" and importlib.util.find_spec("flask") is None:
        _missing("flask")
    if handler.name == "express":
        # Resolved as the handler's require('express') is: the repository's node_modules, then NODE_PATH.
        found = subprocess.run(
            [_tool("node"), "-e", "require.resolve('express')"], cwd=SEEDS, capture_output=True, timeout=60
        )
        if found.returncode != 0:
            _missing("express")


def _go_build(source: Path, workdir: Path) -> str:
    """A binary of one Go file, built offline with caches under `workdir` (standard library only)."""
    binary = workdir / source.stem
    env = {**os.environ, "GOCACHE": str(workdir / "gocache"), "GOPATH": str(workdir / "gopath"),
           "GOPROXY": "off", "GOFLAGS": "", "GOENV": "off", "GO111MODULE": ""}  # fmt: skip
    built = subprocess.run(
        [_tool("go"), "build", "-o", str(binary), str(source)], env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert built.returncode == 0, f"go build {source.name}:\n{built.stderr}"
    return str(binary)


def _commands(handler: SeedHandler, workdir: Path) -> tuple[list[str], list[str] | None]:
    """(the process that prints the handler's lines, the front's own process or None)."""
    seed, front = SEEDS / handler.handler, FRONTS / handler.front
    if handler.name == "flask":
        return [sys.executable, str(front)], None
    if handler.name == "php":
        return [_tool("php"), "-S", f"127.0.0.1:{HANDLER_PORT}", str(front)], None
    if handler.name == "express":
        node = _tool("node")
        return [node, str(seed)], [node, str(front)]
    return [_go_build(seed, workdir)], [_go_build(front, workdir)]


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def _wait_listening(proc: subprocess.Popen[bytes], port: int, output: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{output.read_text()}")
        if _listening(port):
            return
        time.sleep(0.05)
    raise AssertionError(f"{proc.args} did not listen on {port} within {WAIT_S} s:\n{output.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def run_seed_handler(handler: SeedHandler, secret: str, workdir: Path) -> Iterator[SeedServer]:
    """Coinskro's `handler` behind its signature check (keyed with `secret`), until the block ends.

    Skipped where its runtime is missing, except in CI (env CI), where that fails.
    """
    _require(handler)
    # Something else on 3000 would answer in the handler's place: refuse rather than test it.
    assert not _listening(HANDLER_PORT), f"port {HANDLER_PORT} is in use; the seed handlers need it"
    handler_command, front_command = _commands(handler, workdir)
    front_port = free_port() if front_command else HANDLER_PORT
    # PYTHONUNBUFFERED: Flask's print reaches the file as it happens, not when the buffer fills.
    env = {**os.environ, "WEBHOOK_SECRET": secret, "PORT": str(front_port), "PYTHONUNBUFFERED": "1"}
    output = workdir / f"{handler.name}.out"
    front_output = workdir / f"{handler.name}-front.out" if front_command else output
    started: list[subprocess.Popen[bytes]] = []
    try:
        for command, out_path, port in ((handler_command, output, HANDLER_PORT),
                                        (front_command, front_output, front_port)):  # fmt: skip
            if command is None:
                continue
            with open(out_path, "ab") as out:
                started.append(
                    subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
                )
            _wait_listening(started[-1], port, out_path)
        yield SeedServer(handler, f"http://127.0.0.1:{front_port}{PATH}", output, front_output)
    finally:
        for proc in reversed(started):
            _stop(proc)
    # The next handler binds 3000 again.
    deadline = time.monotonic() + WAIT_S
    while _listening(HANDLER_PORT) and time.monotonic() < deadline:
        time.sleep(0.05)
