"""A TCP proxy in front of the shared Redis that a test can cut, to stage a store outage.

The shared Redis server itself is never stopped: ``cut()`` closes every proxied connection and
stops accepting new ones (connects are refused), ``restore()`` listens again on the same port.
``reply_delay`` holds Redis's replies back that many seconds (commands still run at once), so a
client times out on a command that ran.
"""

from __future__ import annotations

import asyncio
import contextlib


class CuttableProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``cut``/``restore`` stage an outage."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.reply_delay = 0.0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (again) on ``port``, or on a fresh port the first time."""
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection and refuse new ones until ``restore``."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Accept connections again."""
        await self.start()

    async def close(self) -> None:
        """Cut, and stop every pipe task."""
        await self.cut()
        for pipe in list(self._pipes):
            pipe.cancel()
        if self._pipes:
            await asyncio.wait(self._pipes)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for source, sink, delayed in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(source, sink, (writer, up_writer), delayed))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        both: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        delayed: bool,
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if delayed and self.reply_delay:
                    await asyncio.sleep(self.reply_delay)
                sink.write(data)
                await sink.drain()
        for writer in both:
            writer.transport.abort()
            self._writers.discard(writer)
