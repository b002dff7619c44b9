"""Walks docs/operations.md: every command it shows runs, from a root shell and under the unit's environment.

The walk takes the commands from the guide itself (each line of a fenced `sh` block, and each inline code
span that is a command line), in the order the guide gives them, and runs them with bash on a temporary
root: `/etc/deposit-watcher`, `/opt/deposit-watcher`, `/var/lib/deposit-watcher` and the other host paths
are moved under it (HOST_PATHS), `/path/to/deposit-watcher` is this checkout. Nothing is skipped silently:

- `deposit-watcher ... --config ...` commands run twice: from a root shell (a plain PATH, no
  $CREDENTIALS_DIRECTORY) and under the unit's environment (built from the unit file the guide installed:
  $CREDENTIALS_DIRECTORY holding a copy of every LoadCredential= source, Environment= and
  EnvironmentFile= applied, systemd's PATH).
  Other commands (install, cp, pip, kill, ...) are the operator's and run once, from the shell.
- Commands that need systemd as PID 1 are listed in SYSTEMD and replaced by what systemd would do, read
  from the unit file: `systemctl enable --now` starts ExecStart as the unit's user with the unit's
  environment and umask and waits for READY=1 on a notify socket and /readyz; `reload` runs ExecReload;
  `restart` stops with SIGTERM (exit 0 required) and starts again, copying the credentials anew.
- Commands that cannot run here for another reason are in NOT_RUN, with the reason.
A command the guide gains is run by the walk at once; if it cannot run here it fails until it is listed.

The guide tells the operator to edit the copied mainnet config: the walk first runs `check-config` on the
config exactly as shipped, then makes the edits a local trial needs (LOCAL_EDITS: real regtest nodes,
bcoin and anvil, a local merchant receiver, regtest addresses), so the daemon follows real chains and
`status`, `deposits`, `callbacks`, `resend`, `rescan` and `backup` work on real deposits and callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from devnet import btc_tools as btc
from devnet import evm_tools as evm
from devnet.anvil import AnvilNode
from devnet.bcoin import BcoinNode
from devnet.receiver import Receiver
from tests.daemon_process import free_port

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "operations.md"
UNIT = REPO / "systemd" / "deposit-watcher.service"
CONFIG = "/etc/deposit-watcher/config.yaml"
INSTALLED_UNIT = "/etc/systemd/system/deposit-watcher.service"
SECRET = "walk-merchant-secret-4d1f"

# Host paths the guide writes to, moved under the walk's root ("/path/to..." is the checkout itself).
HOST_PATHS = (
    "/opt/deposit-watcher",
    "/etc/deposit-watcher",
    "/etc/systemd/system",
    "/var/lib/deposit-watcher",
    "/var/backups/deposit-watcher",
    "/usr/local/bin/deposit-watcher",
    "/run/credentials",
)
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # root's login PATH (Debian)
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"  # what systemd gives a service

# Need systemd as PID 1: what the walk does instead (see the module docstring).
SYSTEMD = {
    "systemctl daemon-reload": "none",
    "systemctl enable --now deposit-watcher": "start",
    "systemctl status deposit-watcher": "status",
    "systemctl reload deposit-watcher": "reload",
    "systemctl restart deposit-watcher": "restart",
    "journalctl -u deposit-watcher": "log",
    "journalctl -u deposit-watcher -f": "log",
}
NOT_RUN = {
    "make check-unit": "a check of the checkout, not of the host; `make test` runs it (check-unit target)",
    "deposit-watcher run --config config/testnet.yaml": "follows public test networks (mempool.space, "
    "Sepolia): tests may reach 127.0.0.1 only; the same `run` is walked as the unit's ExecStart",
}
# A code span is a command line when it has arguments and starts with a program or a path.
PROGRAMS = frozenset(
    "deposit-watcher systemctl journalctl systemd-analyze kill make pip pip3 python python3 install cp mv "
    "rm ln printf echo cd export curl wget chmod chown sqlite3 bash sh sudo tar mkdir df dmesg cat tee "
    "touch git apt apt-get useradd sed openssl".split()
)


# ------------------------------------------------------------------------------------- the guide


@dataclass(frozen=True)
class Command:
    text: str
    line: int  # in the guide, for messages
    block: int | None  # the fenced block it is in; cd and export carry over within a block


def guide_commands(text: str) -> list[Command]:
    """Every command line of the guide, in order: lines of ```sh blocks and inline command spans."""
    found: list[tuple[int, Command]] = []
    fence = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
    for number, m in enumerate(fence.finditer(text)):
        if m.group(2) != "sh":
            continue
        first = text.count("\n", 0, m.start(3)) + 1
        for offset, raw in enumerate(m.group(3).splitlines()):
            line = re.sub(r"\s+#\s.*$", "", raw).strip()
            if line and not line.startswith("#"):
                found.append((m.start(), Command(line, first + offset, number)))
    prose = fence.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # same offsets as `text`
    for m in re.finditer(r"`([^`]+)`", prose):
        span = " ".join(m.group(1).split())
        words = span.split()
        if len(words) > 1 and (words[0] in PROGRAMS or words[0].startswith("/")):
            found.append((m.start(), Command(span, text.count("\n", 0, m.start()) + 1, None)))
    return [c for _, c in sorted(found, key=lambda pair: pair[0])]


def fenced(text: str, lang: str) -> list[str]:
    return [m.group(2) for m in re.finditer(rf"^( *)```{lang}\n(.*?)^\1```", text, re.M | re.S)]


def localize(text: str, root: Path) -> str:
    """Host paths moved under `root`, the checkout's placeholder path made the checkout. Idempotent: a
    path already under the root is preceded by a path character and left alone."""
    moves = {p: f"{root}{p}" for p in HOST_PATHS} | {"/path/to/deposit-watcher": str(REPO)}
    pattern = "|".join(re.escape(p) for p in sorted(moves, key=len, reverse=True))
    return re.sub(rf"(?<![\w/])({pattern})", lambda m: moves[m.group(1)], text)


# ------------------------------------------------------------------------------------- the unit


@dataclass
class Unit:
    service: dict[str, list[str]]

    @classmethod
    def read(cls, path: Path) -> Unit:
        return cls.parse(path.read_text())

    @classmethod
    def parse(cls, text: str) -> Unit:
        service: dict[str, list[str]] = {}
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                service.setdefault(key, []).append(value)
        return cls(service)

    def one(self, key: str) -> str:
        [value] = self.service[key]
        return value

    def get(self, key: str, default: str) -> str:
        return self.service.get(key, [default])[-1]

    def credentials(self) -> dict[str, str]:
        return dict(value.split(":", 1) for value in self.service.get("LoadCredential", []))

    def seconds(self, key: str) -> float:
        value = self.one(key)
        return float(value.removesuffix("s")) if value.endswith("s") else float(value)

    def environment(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for path in self.service.get("EnvironmentFile", []):
            optional = path.startswith("-")
            file = Path(path.removeprefix("-"))
            if file.exists() or not optional:
                for line in file.read_text().splitlines():
                    if line.strip() and not line.lstrip().startswith("#"):
                        key, _, value = line.partition("=")
                        env[key.strip()] = value.strip().strip("\"'")
        for value in self.service.get("Environment", []):
            env.update(word.split("=", 1) for word in shlex.split(value))
        return env


class NotifySocket:
    """The datagram socket systemd listens on for a Type=notify service; read as soon as data arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        path.chmod(0o777)  # the service runs as another user
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._drain)

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(65536).decode()
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))

    def count(self, key: str) -> int:
        return sum(1 for m in self.messages if key in m)

    def last(self, key: str) -> str:
        values = [m[key] for m in self.messages if key in m]
        return values[-1] if values else ""

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


# ------------------------------------------------------------------------------------- the walk


@dataclass
class Walk:
    root: Path
    bcoin: BcoinNode
    anvil: AnvilNode
    receiver: Receiver
    notify: NotifySocket
    facts: dict[str, str] = field(default_factory=dict)  # placeholders of the guide -> values here
    daemon: subprocess.Popen[bytes] | None = None
    ran: list[tuple[str, str]] = field(default_factory=list)  # (pass, command) in order
    # DynamicUser=yes: a user that cannot read root's files (nobody), when the walk runs as root.
    uid: int = 65534 if os.geteuid() == 0 else os.geteuid()
    gid: int = 65534 if os.geteuid() == 0 else os.getegid()

    @property
    def log_path(self) -> Path:
        return self.root / "journal.log"

    def path(self, host_path: str) -> Path:
        return Path(localize(host_path, self.root))

    def log(self) -> str:
        """The daemon's output (its journal), all of it; messages quote its tail."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self) -> str:
        return self.log()[-5000:]

    # ------------------------------------------------------------------ environments

    def shell_env(self) -> dict[str, str]:
        """A root login shell: no venv, no $CREDENTIALS_DIRECTORY; pip keeps this machine's settings."""
        env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
        path = ROOT_PATH.replace("/usr/local/bin", f"{self.root}/usr/local/bin:/usr/local/bin", 1)
        return env | {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}

    def unit_env(self, unit: Unit) -> dict[str, str]:
        """What systemd gives the service (see systemd.exec(5), "Environment variables in spawned
        processes"), with the unit's own Environment= and EnvironmentFile= applied."""
        state = unit.one("StateDirectory")
        path = SYSTEMD_PATH.replace("/usr/local/bin", f"{self.root}/usr/local/bin:/usr/local/bin", 1)
        return {
            "PATH": path,
            "LANG": "C.UTF-8",
            "HOME": "/",
            "CREDENTIALS_DIRECTORY": str(self.credentials_dir),
            "STATE_DIRECTORY": str(self.path(f"/var/lib/{state}")),
            "CONFIGURATION_DIRECTORY": str(self.root / "etc" / unit.one("ConfigurationDirectory")),
            **unit.environment(),
        }

    @property
    def credentials_dir(self) -> Path:
        return self.path("/run/credentials") / "deposit-watcher.service"

    def unit(self) -> Unit:
        """The unit the guide installed; before that, the checkout's (its commands come first)."""
        path = self.path(INSTALLED_UNIT)
        return Unit.read(path) if path.exists() else Unit.parse(localize(UNIT.read_text(), self.root))

    # ------------------------------------------------------------------ commands

    def fill(self, text: str) -> str:
        for placeholder, value in self.facts.items():
            text = re.sub(rf"(?<![\w-]){re.escape(placeholder)}(?![\w-])", value, text)
        return localize(text, self.root)

    async def sh(self, script: str, env: dict[str, str], where: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "/bin/bash", "-euo", "pipefail", "-c", script, env=env, cwd=self.root,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, (
            f"{where} failed with exit code {proc.returncode}\n$ {script}\n{out.decode()}{err.decode()}"
            f"\n--- daemon log ---\n{self.tail()}"
        )
        return out.decode()

    async def run(self, command: Command, carried: list[str]) -> None:
        """Run one command of the guide in each environment it belongs to, then check what it did."""
        script = "\n".join(self.fill(text) for text in [*carried, command.text])
        passes = ["shell", "unit"] if uses_config(command.text) else ["shell"]
        for name in passes:
            if name == "unit" and not self.credentials_dir.exists():
                self.prepare(self.unit())  # as at the service's first start
            env = self.shell_env() if name == "shell" else self.unit_env(self.unit())
            before = len(self.receiver.delivered)
            out = await self.sh(script, env, f"guide line {command.line} ({name})")
            self.ran.append((name, command.text))
            await self.check(command.text, out, before)

    async def check(self, text: str, out: str, delivered_before: int) -> None:
        """What a command must have done, beyond exiting 0."""
        if text.startswith("deposit-watcher check-config"):
            assert SECRET not in out and self.bcoin.rpc_password not in out, "check-config shows a secret"
        elif text.startswith("deposit-watcher deposits") and "ADDRESS" in text:
            [deposit] = json.loads(out)
            assert (deposit["id"], deposit["status"]) == (int(self.facts["DEPOSIT_ID"]), "confirmed")
        elif text.startswith("deposit-watcher callbacks"):
            ids = {entry["deposit_id"] for entry in json.loads(out)}
            assert int(self.facts["DEPOSIT_ID"]) in ids
        elif text.startswith("deposit-watcher resend"):
            await self.receiver.wait_for(lambda rx: len(rx.delivered) > delivered_before, 60)
            assert self.receiver.delivered[-1].body["id"] == int(self.facts["DEPOSIT_ID"])
        elif text.startswith("deposit-watcher backup"):
            [copy] = self.path("/var/backups/deposit-watcher").glob("watcher-*.sqlite3")
            assert "(integrity: ok)" in out
            copy.unlink()  # the next pass writes the same name, and backup never overwrites
        elif text.startswith("deposit-watcher rescan"):
            assert ", 0 new deposits" in out, out  # the deposits are known: nothing twice
        elif text.startswith("kill -USR1"):
            await self.until(lambda: "most recent call first" in self.log(), "the stacks in the log")

    async def until(self, predicate: Any, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{self.tail()}"
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ systemd's part

    async def systemd(self, action: str) -> None:
        assert self.path(INSTALLED_UNIT).exists(), f"systemctl {action} before the guide installed the unit"
        if action == "start":
            await self.start()
        elif action == "restart":
            await self.stop()
            await self.start()
        elif action == "reload":
            reloaded = self.log().count('"config_reloaded"')
            argv = shlex.split(self.unit().one("ExecReload").replace("$MAINPID", str(self.pid)))
            proc = await asyncio.create_subprocess_exec(*argv)
            assert await proc.wait() == 0, argv
            await self.until(lambda: self.log().count('"config_reloaded"') > reloaded, "config_reloaded")
        elif action == "status":
            status = self.notify.last("STATUS")
            assert "bitcoin" in status and "ethereum" in status, status
        elif action == "log":
            # JSON lines, and around them what is not an event (the stacks `kill -USR1` prints).
            lines = [line for line in self.log().splitlines() if line.startswith("{")]
            assert "chain_opened" in {json.loads(line)["event"] for line in lines}

    @property
    def pid(self) -> int:
        assert self.daemon is not None and self.daemon.poll() is None, self.tail()
        return self.daemon.pid

    def prepare(self, unit: Unit) -> None:
        """What systemd does before ExecStart: the state directory and the credentials, owned by the
        service's user. A LoadCredential= file that does not exist stops the start, as in systemd."""
        state = self.path(f"/var/lib/{unit.one('StateDirectory')}")
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(int(unit.get("StateDirectoryMode", "0755"), 8))
        shutil.rmtree(self.credentials_dir, ignore_errors=True)
        self.credentials_dir.mkdir(parents=True)
        for name, source in unit.credentials().items():
            copy = self.credentials_dir / name
            shutil.copyfile(source, copy)
            copy.chmod(0o400)
            os.chown(copy, self.uid, self.gid)
        self.credentials_dir.chmod(0o500)
        for path in (state, self.credentials_dir):
            os.chown(path, self.uid, self.gid)

    async def start(self) -> None:
        unit = self.unit()
        self.prepare(unit)
        readies = self.notify.count("READY")
        env = self.unit_env(unit) | {
            "NOTIFY_SOCKET": str(self.notify.path),
            "WATCHDOG_USEC": str(int(unit.seconds("WatchdogSec") * 1_000_000)),
        }
        self.daemon = self.spawn(unit, env)
        await self.until(lambda: self.pid > 0 and self.notify.count("READY") > readies, "READY=1")
        await self.until_ready()

    def spawn(self, unit: Unit, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """ExecStart as the service's user, with its umask; its output goes to the journal (a file)."""
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                shlex.split(unit.one("ExecStart")), env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT,
                user=self.uid, group=self.gid, extra_groups=[], umask=int(unit.get("UMask", "0022"), 8),
            )  # fmt: skip

    async def until_ready(self) -> None:
        config = yaml.safe_load(self.path(CONFIG).read_text())
        url = f"http://{config['status']['listen']}/readyz"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            for _ in range(600):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise AssertionError(f"/readyz never answered 200\n{self.tail()}")

    async def stop(self) -> None:
        """systemctl stop: SIGTERM, then wait TimeoutStopSec; a clean stop exits 0."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        timeout_s = self.unit().seconds("TimeoutStopSec")
        code = await asyncio.to_thread(self.daemon.wait, timeout_s)
        assert code == 0, f"the daemon exited {code} on SIGTERM\n{self.tail()}"
        self.daemon = None

    # ------------------------------------------------------------------ the operator's part

    def edit_for_local_nodes(self) -> None:
        """LOCAL_EDITS: the edits the guide asks for, made for a trial on this machine's regtest nodes."""
        path = self.path(CONFIG)
        config = yaml.safe_load(path.read_text())
        config["network"] = "regtest"
        config["status"]["listen"] = f"127.0.0.1:{free_port()}"
        config["merchant"]["callback_url"] = self.receiver.url
        bitcoin, ethereum = config["chains"]["bitcoin"], config["chains"]["ethereum"]
        bitcoin.update(rpc_url=self.bcoin.rpc_url, poll_interval_s=0.5)
        ethereum.update(rpc_url=self.anvil.url, chain_id=self.anvil.chain_id, poll_interval_s=0.5)
        # The mainnet token contracts do not exist on a local chain.
        ethereum["currencies"] = {"ETH": ethereum["currencies"]["ETH"]}
        config["addresses"] = [
            {"currency": "BTC", "address": self.facts["ADDRESS"], "foreign_id": "customer-btc"},
            {"currency": "ETH", "address": self.facts["ETH_ADDRESS"], "foreign_id": "customer-eth"},
        ]
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    async def pay(self) -> None:
        """A Bitcoin and an Ether payment, each confirmed and delivered, for the commands that follow."""
        txid = btc.pay(self.bcoin, self.facts["ADDRESS"], 150_000)
        await self.until(lambda: txid in btc.mempool(self.bcoin), "the payment in the mempool")
        height = btc.height(self.bcoin) + 1
        btc.mine(self.bcoin, 1)
        sender = evm.accounts(self.anvil.url)[0]
        evm.send_eth(self.anvil.url, sender, self.facts["ETH_ADDRESS"], 10**17, wait=True)
        evm.mine(self.anvil.url, 10)
        await self.receiver.wait_for(
            lambda rx: (
                {(r.body["currency_sent"]["currency"], r.body["status"]) for r in rx.delivered}
                >= {("BTC", "confirmed"), ("ETH", "confirmed")}
            ),
            120,
        )
        delivered = self.receiver.delivered
        [btc_deposit] = {r.body["id"] for r in delivered if r.body["currency_sent"]["currency"] == "BTC"}
        self.facts |= {"DEPOSIT_ID": str(btc_deposit), "N": str(height)}


def uses_config(text: str) -> bool:
    """A deposit-watcher command that reads the config: run from the shell and under the unit."""
    return text.startswith("deposit-watcher ") and "--config" in text


def carried_state(commands: list[Command], index: int) -> list[str]:
    """The `cd` and `export` lines before this command in its block: the shell state it runs in."""
    here = commands[index]
    if here.block is None:
        return []
    return [
        c.text for c in commands[:index] if c.block == here.block and c.text.split()[0] in ("cd", "export")
    ]


@pytest.fixture
def root() -> Iterator[Path]:
    # Not under pytest's tmp_path: its parent is root-only, and the service's user must reach its files.
    path = Path(tempfile.mkdtemp(prefix="ops-guide-"))
    path.chmod(0o755)
    for host_dir in ("/etc/systemd/system", "/usr/local/bin", "/var/lib", "/var/backups", "/opt", "/run"):
        (path / host_dir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def walk_on(root: Path, bcoin: BcoinNode, anvil: AnvilNode) -> AsyncIterator[Walk]:
    config = yaml.safe_load((REPO / "config" / "mainnet.yaml").read_text())
    async with Receiver(key=config["merchant"]["key"], secret=SECRET) as receiver:
        notify = NotifySocket(root / "notify.sock")
        walk = Walk(root, bcoin, anvil, receiver, notify)
        walk.facts = {
            "the-merchant-secret": SECRET,
            "the-bitcoin-rpc-password": bcoin.rpc_password,
            "ADDRESS": btc.make_address("p2wpkh").address,
            "ETH_ADDRESS": evm.accounts(anvil.url)[2],
            "NAME": "bitcoin",
        }
        try:
            yield walk
        finally:
            if walk.daemon is not None:
                walk.daemon.kill()
                walk.daemon.wait()
            notify.close()


# ------------------------------------------------------------------------------------- tests


def test_the_guide_shows_the_commands_the_walk_expects() -> None:
    """The extraction finds the guide's commands (a parser that finds nothing would make the walk pass)."""
    texts = [c.text for c in guide_commands(GUIDE.read_text())]
    for expected in (
        f"deposit-watcher check-config --config {CONFIG}",
        "systemctl enable --now deposit-watcher",
        "kill -USR1 PID",
        f"deposit-watcher resend --config {CONFIG} DEPOSIT_ID",
        f"deposit-watcher status --config {CONFIG}",
    ):
        assert expected in texts
    assert len(texts) >= 25, texts
    stale = (set(SYSTEMD) | set(NOT_RUN)) - set(texts)
    assert not stale, f"listed in the test but no longer in the guide: {stale}"


def test_guide_unit_and_config_agree_on_paths_and_secrets() -> None:
    guide = GUIDE.read_text()
    unit = Unit.read(UNIT)
    mainnet = (REPO / "config" / "mainnet.yaml").read_text()
    assert unit.one("ExecStart") == f"/opt/deposit-watcher/venv/bin/deposit-watcher run --config {CONFIG}"
    assert f"deposit-watcher check-config --config {CONFIG}" in mainnet.splitlines()[2]
    assert f"/var/lib/{unit.one('StateDirectory')}/watcher.sqlite3" in yaml.safe_load(mainnet)["database"]
    sh = "\n".join(fenced(guide, "sh"))
    for name, source in unit.credentials().items():
        # The guide creates the file root-only, and the config reads the copy, or from a shell the file.
        assert f"install -m 0600 /dev/null {source}" in sh
        assert f"${{CREDENTIALS_DIRECTORY:-{Path(source).parent}}}/{name}" in mainnet
    # The config lines the guide quotes are the shipped config's.
    shipped = {re.sub(r"\s+#.*$", "", line).strip() for line in mainnet.splitlines()}
    [quoted] = [block for block in fenced(guide, "yaml") if "secret_file" in block]
    assert {line.strip() for line in quoted.splitlines()} <= shipped


@pytest.mark.timeout(900)
async def test_walk_the_guide(root: Path, bcoin: BcoinNode, anvil: AnvilNode) -> None:
    commands = guide_commands(GUIDE.read_text())
    async with walk_on(root, bcoin, anvil) as walk:
        for index, command in enumerate(commands):
            if command.text in NOT_RUN:
                continue
            if command.text in SYSTEMD:
                await walk.systemd(SYSTEMD[command.text])
                if SYSTEMD[command.text] == "start":
                    await walk.pay()
                continue
            if command.text.startswith("kill "):
                walk.facts["PID"] = str(walk.pid)
            if command.text.startswith("cp ") and command.text.endswith("/etc/systemd/system/"):
                walk.edit_for_local_nodes()  # the operator has edited the config before installing the unit
            await walk.run(command, carried_state(commands, index))
            if command.text.startswith("python3 -m venv"):
                provide_dependencies(walk.path("/opt/deposit-watcher/venv"))
            for copied in (CONFIG, INSTALLED_UNIT):
                if walk.path(copied).exists():
                    walk.path(copied).write_text(localize(walk.path(copied).read_text(), root))
        await walk.stop()
    ran = {text for _, text in walk.ran}
    walked = ran | set(SYSTEMD) | set(NOT_RUN)
    assert {c.text for c in commands} <= walked
    assert {text for name, text in walk.ran if name == "unit"} == {
        c.text for c in commands if uses_config(c.text) and c.text not in NOT_RUN
    }


def provide_dependencies(venv: Path) -> None:
    """The new venv sees the project venv's packages, so the guide's `pip install` of the checkout finds
    its dependencies installed instead of downloading them again (75 s here, against 15 s); it still
    builds and installs the package itself, with its `deposit-watcher` command and adapters."""
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    project = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(site, "project-dependencies.pth").write_text(project + "\n")


# --------------------------------------------------------------------------- the PostgreSQL section
# Its commands need a PostgreSQL server, a second machine or an interactive password prompt, so they are in
# `text` blocks (the walk above runs `sh` blocks): the tests below check each against the program instead.

PG_SECTION = "## PostgreSQL: two daemons on two machines"
DROP_IN = "/etc/systemd/system/deposit-watcher.service.d/postgresql.conf"


def pg_section() -> str:
    text = GUIDE.read_text()
    start = text.index(PG_SECTION)
    end = text.index("\n## ", start + 1)
    return text[start:end]


def text_commands(section: str) -> list[str]:
    """The command lines of the section's `text` blocks, continuation lines (a trailing \\) joined."""
    lines: list[str] = []
    for block in fenced(section, "text"):
        for raw in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", raw).strip()
            if line:
                lines.append(line)
    return lines


def pg_settings(section: str) -> dict[str, str]:
    """The postgresql.conf lines of the section's `ini` blocks (the unit's drop-in is the other one)."""
    found: dict[str, str] = {}
    for block in fenced(section, "ini"):
        if "[Service]" in block:
            continue
        for raw in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", raw).strip()
            if line:
                key, _, value = line.partition("=")
                found[key.strip()] = value.strip().strip("'")
    return found


def drop_in(section: str) -> Unit:
    [block] = [textwrap.dedent(b) for b in fenced(section, "ini") if "[Service]" in b]
    assert block.splitlines()[0] == f"# {DROP_IN}"
    return Unit.parse(block)


def test_the_postgresql_section_s_deposit_watcher_commands_are_the_program_s() -> None:
    """Each `deposit-watcher` line parses with the program's own parser; migrate-store's names the shipped
    config's SQLite file, the URL of the section's config and the password file the drop-in copies."""
    from watcher.cli import _parser

    section = pg_section()
    commands = text_commands(section)
    ours = [shlex.split(c)[1:] for c in commands if c.startswith("deposit-watcher ")]
    assert len(ours) >= 2
    for argv in ours:
        _parser().parse_args(argv)  # SystemExit (usage error) fails the test
    [migrate] = [_parser().parse_args(argv) for argv in ours if argv[0] == "migrate-store"]
    mainnet = yaml.safe_load((REPO / "config" / "mainnet.yaml").read_text())
    database = yaml.safe_load(fenced(section, "yaml")[0])["database"]
    assert migrate.source == mainnet["database"]
    assert migrate.url == database["url"]
    assert migrate.password_file == drop_in(section).credentials()["database-password"]
    assert database["password_file"] == "${CREDENTIALS_DIRECTORY:-/etc/deposit-watcher}/database-password"
    assert f"install -m 0600 /dev/null {migrate.password_file}" in commands
    shown = subprocess.run(
        [sys.executable, "-m", "watcher", "migrate-store", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [line] = [c for c in commands if c.startswith("deposit-watcher migrate-store ")]
    for option in re.findall(r"--[a-z-]+", line):
        assert option in shown, option
    # The other commands: systemd's, pip's as in "Upgrade", and the database server's own tools.
    upgrade_pip = "/opt/deposit-watcher/venv/bin/pip install --upgrade /path/to/deposit-watcher"
    assert upgrade_pip in GUIDE.read_text().split(PG_SECTION)[0]
    for command in commands:
        first = command.split()[0]
        assert first in (
            "deposit-watcher",
            "systemctl",
            "sudo",
            "install",
            "printf",
            "pg_dump",
            "pg_restore",
        ) or (command == upgrade_pip), command
        if first == "systemctl":
            assert command in ("systemctl stop deposit-watcher", "systemctl start deposit-watcher",
                               "systemctl daemon-reload"), command  # fmt: skip


def test_the_postgresql_section_s_configs_load(tmp_path: Path) -> None:
    """The `database:` snippets load (the password from the credentials directory, never in the URL), the
    two daemons' config has the same database, and its `leadership:` keeps the take-over bound the guide
    states (and, once the daemon reads `leadership:`, loads with the defaults the guide says it shows)."""
    import watcher.config as config_module
    from watcher.config import load_config

    snippets = [yaml.safe_load(block) for block in fenced(pg_section(), "yaml")]
    assert len(snippets) == 2 and snippets[0]["database"] == snippets[1]["database"]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "database-password").write_text("the-database-password\n")
    base = {
        "network": "regtest",
        "merchant": {"callback_url": "https://shop.example/cb", "key": "k", "secret": "s"},
        "chains": {
            "ethereum": {"adapter": "evm", "rpc_url": "http://127.0.0.1:8545", "currencies": {"ETH": {}}}
        },
    }
    lead = snippets[1]["leadership"]
    assert set(lead) == {"name", "lease_s", "poll_interval_s", "takeover_s"}
    assert lead["poll_interval_s"] <= lead["lease_s"]
    assert lead["takeover_s"] >= lead["lease_s"] + lead["poll_interval_s"] + lead["lease_s"] / 5
    leadership_known = hasattr(config_module, "LeadershipConfig")
    for snippet in snippets:
        if not leadership_known:
            snippet.pop("leadership", None)  # the election's branch is not merged yet
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(base | snippet))
        loaded = load_config(str(path), {"CREDENTIALS_DIRECTORY": str(credentials)})
        assert loaded.database == snippet["database"]["url"]
        assert loaded.database_password == "the-database-password"
        if "leadership" in snippet:
            defaults = config_module.LeadershipConfig()  # type: ignore[attr-defined]
            got = loaded.leadership  # type: ignore[attr-defined]
            assert got.name == lead["name"]
            for key in ("lease_s", "poll_interval_s", "takeover_s"):
                assert getattr(got, key) == getattr(defaults, key) == lead[key], key


async def test_the_postgresql_settings_the_guide_gives_start_a_server() -> None:
    """A server started with the guide's postgresql.conf lines takes each of them; the per-role form of
    the statement timeout runs as written."""
    from devnet.postgres import PostgresServer

    section = pg_section()
    settings = pg_settings(section)
    assert {"fsync", "synchronous_commit", "max_connections", "idle_in_transaction_session_timeout",
            "statement_timeout", "wal_level"} <= set(settings)  # fmt: skip
    with PostgresServer(fsync=True, settings=settings) as server:
        applied = dict(
            line.split("|", 1)
            for line in server.psql(
                "SELECT name, setting FROM pg_settings WHERE source = 'command line'"
            ).split()
        )
        assert set(settings) <= set(applied), set(settings) - set(applied)
        [alter] = re.findall(r"`(ALTER ROLE watcher SET [^`]+)`", section)
        server.psql("CREATE ROLE watcher LOGIN")
        server.psql(alter)
        assert "statement_timeout=15min" in server.psql(
            "SELECT rolconfig FROM pg_roles WHERE rolname = 'watcher'"
        )


def test_the_guide_quotes_migrate_store_s_own_words() -> None:
    """The refusal and the difference the guide quotes are the program's messages (tested in
    test_migrate_store.py as the command prints them)."""
    from watcher.migrate_store import Difference

    section = " ".join(pg_section().split())
    difference = Difference("deposits", (1002,), "amount is '5' in the store, '6' in the copy")
    assert f"the copy differs from the store: {difference}; nothing was committed" in section
