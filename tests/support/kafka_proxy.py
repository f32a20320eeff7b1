"""A TCP proxy between Kafka clients and a broker that can hold back one client's produce
requests: a broker that is slow or refusing for the dead-letter producer only, while the
consumer and the tests' own producers go on as normal.

The broker must advertise the proxy's address (`EmbeddedBroker(advertised_port=...)`), or
clients would leave the proxy after bootstrap. Requests are framed (a 4-byte size, then
api_key, api_version, correlation_id and the client id), so the proxy reads whole requests
and decides per request; responses pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

PRODUCE_API_KEY = 0


class KafkaProxy:
    def __init__(self, upstream_port: int, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._released = asyncio.Event()
        self._released.set()
        self._held_client: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Produce requests from the held client that arrived while it was held.
        self.held_requests = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def hold_produce(self, client_id: str) -> None:
        """Stop forwarding produce requests of `client_id` (and what follows them on its
        connections) until release()."""
        self._held_client = client_id
        self._released.clear()

    def release(self) -> None:
        self._held_client = None
        self._released.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self._upstream_port)
        tasks = [
            asyncio.create_task(self._requests(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
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

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            size_bytes = await reader.readexactly(4)
            (size,) = struct.unpack(">i", size_bytes)
            body = await reader.readexactly(size)
            api_key, _version, _correlation, id_len = struct.unpack(">hhih", body[:10])
            client_id = body[10 : 10 + id_len].decode() if id_len >= 0 else None
            if api_key == PRODUCE_API_KEY and client_id == self._held_client:
                self.held_requests += 1
                await self._released.wait()
            writer.write(size_bytes + body)
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
