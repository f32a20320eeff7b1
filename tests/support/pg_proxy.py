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
import struct

from support.tcp_proxy import TcpProxy


class PgProxy(TcpProxy):
    def __init__(self, upstream_port: int, max_message: int, host: str = "127.0.0.1") -> None:
        super().__init__(upstream_port, 0, host)
        self.max_message = max_message
        self.cut = 0  # connections closed for an oversized message

    async def forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
