"""A TCP proxy in front of PostgreSQL that does what the server does with a protocol message
over its size limit, at a limit the test chooses: closes the connection without a word.

PostgreSQL refuses a frontend message longer than 1 GB by logging "invalid message length" and
closing the connection (no ErrorResponse); asyncpg then reports ConnectionDoesNotExistError.
Reproducing that at 1 GB costs gigabytes of memory and seconds per attempt, so the proxy
applies the same rule at `max_message` bytes. Frontend messages are framed (a type byte and a
4-byte length including itself; the startup message has no type byte), so it reads whole
messages and forwards or cuts; the server's answers pass through untouched. Connect with
`sslmode=disable`: the proxy does not speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct


class PgProxy:
    def __init__(self, upstream_port: int, max_message: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.max_message = max_message
        self.port = 0
        self.cut = 0  # connections closed for an oversized message
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        tasks = [
            asyncio.create_task(self._frontend(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _frontend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack(">i", await reader.readexactly(4))
        writer.write(struct.pack(">i", length) + await reader.readexactly(length - 4))
        while True:
            header = await reader.readexactly(5)
            (length,) = struct.unpack(">i", header[1:])
            if length > self.max_message:
                self.cut += 1
                return  # closes both sides, as the server does
            writer.write(header + await reader.readexactly(length - 4))
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
