"""Starts and stops a local PostgreSQL server for tests and benchmarks: Debian's `postgresql` package
(installed by scripts/install-system-packages.sh), a cluster made by `initdb` in a temp directory, on
127.0.0.1 with a free port, trusted on loopback only.

PostgreSQL refuses to run as root: when this process is root (CI, the machines here), the server runs
as the unprivileged `postgres` user the Debian package creates (else `nobody`), through `setpriv`, which
execs the server itself, so the pid is the postmaster's and signals reach it directly.

`PostgresServer` works as a sync or async context manager like the node launchers (devnet.process).
Beyond start and stop, what the fault tests need: `kill` (SIGKILL, no shutdown), `shutdown` (fast, the
data kept), `restart` (the same data directory again, on the same port), `pause`/`resume`
(SIGSTOP/SIGCONT), `create_database`; a hot standby of a running server (`standby_of`: pg_basebackup -R,
read-only until `promote`); the data directory on a path of the caller's (`data_dir`: a small mount).
fsync is off by default: the tests kill processes, never the machine, so the OS's page cache keeps
every commit; `synchronous_commit` stays on, so a commit the client saw survives a SIGKILL of the server.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from devnet.process import LocalProcess

SUPERUSER = "postgres"  # the cluster's superuser (initdb -U), whatever OS user runs it
_READY = b"database system is ready to accept connections"
_READY_READ_ONLY = b"database system is ready to accept read-only connections"  # a hot standby


class PostgresError(RuntimeError):
    """PostgreSQL is not installed, did not start in time, or a command against it failed."""


def find_bin_dir() -> Path:
    """The directory of Debian's PostgreSQL programs (initdb, postgres, createdb): $PG_BIN_DIR, else the
    newest /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH), else the one holding initdb on
    PATH."""
    env = os.environ.get("PG_BIN_DIR")
    if env:
        if not os.access(os.path.join(env, "initdb"), os.X_OK):
            raise PostgresError(f"PG_BIN_DIR={env!r} holds no initdb")
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PostgresError(
        "PostgreSQL not found: install Debian's `postgresql` package "
        "(as root: bash scripts/install-system-packages.sh), or set PG_BIN_DIR"
    )


def _version_key(path: str) -> int:
    version = path.split("/")[4]
    return int(version) if version.isdigit() else 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run as when root; None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresError("running as root and neither a `postgres` nor a `nobody` user exists")


class PostgresServer(LocalProcess):
    """One PostgreSQL cluster and its postmaster."""

    name = "postgres"
    error = PostgresError
    startup_timeout_s = 60.0

    def __init__(
        self, *, fsync: bool = False, settings: dict[str, str] | None = None, data_dir: Path | None = None
    ) -> None:
        """`data_dir`: the cluster's directory elsewhere than the work directory (a mount the caller made,
        its parents open to the server's user); its WAL stays in the work directory (initdb --waldir), so
        that a full disk there is what it is under a table: the writing transaction fails (on the WAL
        PostgreSQL would PANIC, a crash the `kill` tests cover)."""
        super().__init__()
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.port = _free_port()
        self._user = _run_as()
        self._initialised = False
        self._log_offset = 0
        self._data_dir = data_dir
        self._primary: PostgresServer | None = None  # set by standby_of: copy it instead of initdb
        self._ready = _READY

    @classmethod
    def standby_of(cls, primary: PostgresServer) -> PostgresServer:
        """A hot standby of the running `primary` (not started: `start` makes it): a base backup taken with
        `pg_basebackup -R`, which streams the primary's WAL and answers read-only queries until `promote`.
        (initdb's pg_hba.conf trusts replication connections on loopback.)"""
        standby = cls(fsync=primary.fsync, settings=primary.settings)
        standby._primary = primary
        standby._ready = _READY_READ_ONLY
        return standby

    # --------------------------------------------------------------------------------- addresses

    def url(self, database: str = "postgres") -> str:
        """A libpq/asyncpg URL of `database`, as the superuser (no password: trusted on loopback)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        return self._data_dir if self._data_dir is not None else self.workdir / "data"

    # --------------------------------------------------------------------------------- commands

    def create_database(self, database: str) -> str:
        """Create `database` (empty) and return its URL."""
        self.psql(f'CREATE DATABASE "{database}"')
        return self.url(database)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` with psql as the superuser; its output (unaligned, tuples only)."""
        command = [str(find_bin_dir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", database, "-c", sql]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise PostgresError(f"psql {sql!r} failed: {done.stderr.strip()}")
        return done.stdout

    def promote(self) -> None:
        """Make a standby a primary (`pg_promote()` waits until it accepts writes)."""
        promoted = self.psql("SELECT pg_promote(true, 60)").strip()
        if promoted != "t":
            raise PostgresError(f"pg_promote() answered {promoted!r}")
        self._ready = _READY

    def replay_lsn(self) -> str:
        """How far a standby has replayed its primary's WAL."""
        return self.psql("SELECT pg_last_wal_replay_lsn()").strip()

    # --------------------------------------------------------------------------------- faults

    def kill(self) -> None:
        """SIGKILL the postmaster (its backends notice and exit): a crash, not a shutdown. `restart`
        brings it back, running crash recovery."""
        self._signal(signal.SIGKILL)
        assert self._proc is not None
        self._proc.wait(timeout=30)
        self._proc = None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def shutdown(self) -> None:
        """Fast shutdown (transactions rolled back, clients disconnected), the data kept: the server is
        down until `restart`."""
        if self._proc is not None:
            self._shutdown()

    def restart(self) -> None:
        """Stop (fast shutdown: clients are disconnected) unless killed already, and start again on the
        same data directory and port."""
        if self._proc is not None:
            self._shutdown()
        self._launch()

    # --------------------------------------------------------------------------------- LocalProcess

    def start(self) -> PostgresServer:
        super().start()
        return self

    def stop(self, *, keep_log: bool = False) -> None:
        if self._proc is not None:
            self._shutdown()
        super().stop(keep_log=keep_log)

    def _command(self, workdir: Path) -> list[str]:
        if not self._initialised:
            self._initdb(workdir)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [str(find_bin_dir() / "postgres"), "-D", str(self.data_dir)]
        command += ["-h", "127.0.0.1", "-p", str(self.port), "-k", str(workdir)]
        for name, value in self._settings().items():
            command += ["-c", f"{name}={value}"]
        return self._as_user(command)

    def _probe(self) -> bool:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return self._ready in log.read()
        except OSError:
            return False

    # --------------------------------------------------------------------------------- internals

    def _settings(self) -> dict[str, str]:
        settings = {
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "200",
            "shared_buffers": "128MB",
            "listen_addresses": "127.0.0.1",
            "unix_socket_permissions": "0700",
        }
        settings.update(self.settings)
        return settings

    def _initdb(self, workdir: Path) -> None:
        if self._user is not None:
            os.chmod(workdir, 0o700)
            os.chown(workdir, self._user.pw_uid, self._user.pw_gid)
            if self._data_dir is not None:
                self._data_dir.mkdir(mode=0o700, exist_ok=True)
                os.chown(self._data_dir, self._user.pw_uid, self._user.pw_gid)
        if self._primary is not None:
            command = [str(find_bin_dir() / "pg_basebackup"), "-D", str(self.data_dir), "-R", "-X", "stream"]
            command += ["-h", "127.0.0.1", "-p", str(self._primary.port), "-U", SUPERUSER, "--no-sync"]
            command += ["--checkpoint=fast"]  # not a spread checkpoint: minutes on an idle server
            what = "pg_basebackup"
        else:
            command = [str(find_bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER]
            command += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"]
            if self._data_dir is not None:
                command += [f"--waldir={workdir / 'wal'}"]
            what = "initdb"
        done = subprocess.run(self._as_user(command), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise PostgresError(f"{what} failed: {done.stdout.strip()} {done.stderr.strip()}")
        self._initialised = True

    def _as_user(self, command: list[str]) -> list[str]:
        if self._user is None:
            return command
        ids = [f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}", "--clear-groups"]
        return ["setpriv", *ids, "--", *command]

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            raise PostgresError("postgres is not running")
        os.kill(self._proc.pid, sig)

    def _shutdown(self) -> None:
        proc, self._proc = self._proc, None
        assert proc is not None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a paused server cannot shut down
            proc.send_signal(signal.SIGINT)  # fast shutdown: roll back and disconnect clients
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _launch(self) -> None:
        """Start the postmaster on the existing directory (LocalProcess.start makes a new one)."""
        command = self._command(self.workdir)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready(time.monotonic() + self.startup_timeout_s)
