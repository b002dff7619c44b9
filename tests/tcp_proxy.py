"""A TCP proxy on 127.0.0.1 that a test can switch off and on: the node behind it keeps running (and
keeps its in-memory chain), while the daemon sees exactly what a stopped node looks like: connection
refused, and open connections cut. `cut` cuts the open connections and keeps accepting new ones (a
network blip); `retarget` sends new connections elsewhere (a fail-over address moved to another host)."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        self._flowing.set()  # a stalled pipe ends with its connection
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def cut(self) -> int:
        """Close every open connection, both ends, mid-stream; new ones are accepted. Returns how many
        connections were open."""
        writers, self._writers = list(self._writers), set()
        for writer in writers:
            writer.close()
        return len(writers) // 2

    def stall(self) -> None:
        """Stop passing bytes and closes, either way, on open and new connections (new ones are accepted):
        a network that drops packets silently (a cable pulled, a firewall's DROP). `flow` ends it, and
        what was held goes through, as TCP's retransmissions would deliver it."""
        self._flowing.clear()

    def flow(self) -> None:
        self._flowing.set()

    def retarget(self, target_host: str, target_port: int) -> None:
        """New connections go to another server from now on; open ones are left to `cut`."""
        self.target = (target_host, target_port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
            await self._flowing.wait()  # a close is a packet too: held as long as the data
        writer.close()
        self._writers.discard(writer)
