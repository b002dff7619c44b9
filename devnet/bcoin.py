"""Starts and stops a local bcoin regtest node (a real Bitcoin full node) for tests and the demo.

`BcoinNode` runs `node devnet/bcoin_node.js`, the launcher that patches bcoin 1.0.2 to behave
like a Bitcoin Core regtest node (address formats, no outbound dialing, reorged transactions back in the
mempool, sendrawtransaction errors; see the launcher's header). The node keeps everything in memory and
binds its node RPC and wallet RPC on 127.0.0.1 with ports the kernel picks (the launcher reports them),
so any number of nodes can run side by side without ever connecting to each other. Connect two on
purpose with `listen=True` and `btc_tools.connect_nodes`.

Like `AnvilNode`: sync start()/stop() and context managers (sync for pytest fixtures, async for the
demo); the node's output goes to a log file whose tail is quoted when it fails to start; stop() sends
SIGTERM, then SIGKILL.

Credentials: bcoin's RPC takes HTTP Basic auth with any user name and the api key as password, so a
daemon config uses `rpc_url`, `rpc_user` (any) and `rpc_password`. The wallet RPC (`wallet_url`) has
its own port and, here, the same key.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from devnet import REPO_ROOT
from devnet.process import LocalProcess

LAUNCHER = Path(__file__).with_name("bcoin_node.js")
BCOIN_PACKAGE = REPO_ROOT / "node_modules" / "bcoin" / "package.json"
RPC_USER = "deposit-watcher"
_READY_EVENT = "bcoin_ready"


class BcoinError(RuntimeError):
    """bcoin or node is missing, the node did not start in time, or it exited unexpectedly."""


def find_node_binary() -> str:
    """The `node` executable: $NODE_BIN, else node on PATH."""
    env = os.environ.get("NODE_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise BcoinError(f"NODE_BIN={env!r} is not an executable file")
        return env
    on_path = shutil.which("node")
    if on_path is None:
        raise BcoinError("node (Node.js) not found on PATH: bcoin needs it; set NODE_BIN or install Node.js")
    return on_path


def check_bcoin_installed() -> None:
    """Raise BcoinError with the fix when node_modules/bcoin is missing."""
    if not BCOIN_PACKAGE.is_file():
        raise BcoinError(f"bcoin not installed ({BCOIN_PACKAGE.parent} missing): run `npm ci` in {REPO_ROOT}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class BcoinNode(LocalProcess):
    """One bcoin regtest full node (memory mode) with node RPC and wallet RPC on 127.0.0.1.

    `listen=True` also opens a P2P port (`p2p_port`) so another node can `addnode` it; a node never
    dials anyone by itself. `extra_args` are passed to bcoin (e.g. `("--log-level=debug",)`).
    """

    name = "bcoin"
    error = BcoinError

    def __init__(
        self,
        *,
        api_key: str | None = None,
        listen: bool = False,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        startup_timeout_s: float = 30.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key if api_key is not None else secrets.token_hex(16)
        self.listen = listen
        self.log_level = log_level
        self.extra_args = extra_args
        self.startup_timeout_s = startup_timeout_s
        self._ready: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------ properties

    @property
    def rpc_url(self) -> str:
        """Node JSON-RPC endpoint, e.g. http://127.0.0.1:41234 (for the daemon's config)."""
        return f"http://127.0.0.1:{self._port('http_port')}"

    @property
    def wallet_url(self) -> str:
        """Wallet JSON-RPC endpoint (its own port; the wallet is bcoin's "primary" wallet)."""
        return f"http://127.0.0.1:{self._port('wallet_http_port')}"

    @property
    def rpc_user(self) -> str:
        """Any user name is accepted; this one is what the harness sends."""
        return RPC_USER

    @property
    def rpc_password(self) -> str:
        """The api key, for both the node RPC and the wallet RPC."""
        return self.api_key

    @property
    def p2p_port(self) -> int:
        """The P2P port (only with listen=True)."""
        if not self.listen:
            raise BcoinError("the node was started without listen=True: no P2P port")
        return self._port("p2p_port")

    @property
    def prefix(self) -> Path:
        """bcoin's --prefix (its data directory; memory mode keeps almost nothing there)."""
        return self.workdir / "data"

    def command(self, prefix: Path) -> list[str]:
        args = [find_node_binary(), str(LAUNCHER), f"--prefix={prefix}", f"--log-level={self.log_level}"]
        args += ["--http-port=0", "--wallet-http-port=0", f"--api-key={self.api_key}"]
        args += [f"--wallet-api-key={self.api_key}"]
        if self.listen:
            # bcoin refuses P2P port 0 (its host list asserts port > 0): take a free one.
            args += ["--p2p-listen=true", f"--port={_free_port()}"]
        return args + list(self.extra_args)

    # ------------------------------------------------------------------------------ LocalProcess

    def start(self) -> Self:
        """Start the node; return once both RPC servers answer. Raises BcoinError with the log's tail."""
        check_bcoin_installed()
        for attempt in range(3):
            try:
                return super().start()
            except BcoinError as err:
                # Only the P2P port is chosen here (RPC ports are bound by the node itself): retry if
                # another process took it between the probe and bcoin's bind.
                if not (self.listen and "EADDRINUSE" in str(err)) or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _command(self, workdir: Path) -> list[str]:
        self.prefix.mkdir()
        return self.command(self.prefix)

    def _probe(self) -> bool:
        if self._ready is None:
            self._ready = self._read_ready()
        return self._ready is not None and self._answers(self.rpc_url) and self._answers(self.wallet_url)

    def _forget(self) -> None:
        self._ready = None

    # ------------------------------------------------------------------------------- internals

    def _port(self, key: str) -> int:
        if self._ready is None:
            raise BcoinError("bcoin is not running")
        return int(self._ready[key])

    def _read_ready(self) -> dict[str, Any] | None:
        # The launcher prints one JSON line with the ports it bound (it is given port 0).
        for line in self.log_path.read_bytes().splitlines():
            if line.startswith(b"{") and _READY_EVENT.encode() in line:
                ready: dict[str, Any] = json.loads(line)
                return ready
        return None

    def _answers(self, url: str) -> bool:
        body = json.dumps({"method": "getblockcount", "params": [], "id": 1}).encode()
        token = base64.b64encode(f"{self.rpc_user}:{self.rpc_password}".encode()).decode()
        headers = {"Content-Type": "application/json", "Authorization": f"Basic {token}"}
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                return "result" in json.loads(response.read())
        except (OSError, ValueError):
            return False
