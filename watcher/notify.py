"""systemd's notify protocol (sd_notify): READY=1, STATUS=..., WATCHDOG=1, RELOADING=1, STOPPING=1.

A few lines over the datagram socket named by $NOTIFY_SOCKET (a path, or "@name" for the abstract
namespace). Without $NOTIFY_SOCKET (not started by systemd) every call does nothing. The watchdog
interval is half of $WATCHDOG_USEC, as systemd recommends.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid()))
        self.watchdog_interval_s: float | None = int(usec) / 2e6 if enabled else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def send(self, **fields: str) -> bool:
        """Send one message, e.g. send(READY="1", STATUS="..."); False if not under systemd or it fails."""
        if not self._address:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full socket: a lost ping is better than a frozen daemon.
                self._sock.setblocking(False)
            self._sock.sendto(message, self._address)
        except OSError:
            return False  # systemd went away or the socket is full: never fatal for the daemon
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) match the reload to its end (READY=1).
        return self.send(
            RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
        )

    def stopping(self) -> bool:
        return self.send(STOPPING="1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
