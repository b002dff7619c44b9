"""A TCP proxy on 127.0.0.1 that a test can switch off and on: the node behind it keeps running (and
keeps its in-memory chain), while the daemon sees exactly what a stopped node looks like: connection
refused, and open connections cut. `pause` holds the bytes instead (connections stay open, nothing
arrives: a stalled network or a frozen peer), `resume` lets them through again. `cut` cuts the open
connections and keeps accepting new ones (a network blip); `retarget` sends new connections elsewhere (a
fail-over address moved to another host)."""

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

    def pause(self) -> None:
        """Hold every byte in both directions until `resume`; connections stay open (a network that drops
        packets silently: a cable pulled, a firewall's DROP)."""
        self._flowing.clear()

    def resume(self) -> None:
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
        writer.close()
        self._writers.discard(writer)
