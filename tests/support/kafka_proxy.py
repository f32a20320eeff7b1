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
import struct

from support.tcp_proxy import TcpProxy

PRODUCE_API_KEY = 0


class KafkaProxy(TcpProxy):
    def __init__(self, upstream_port: int, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(upstream_port, port, host)
        self._released = asyncio.Event()
        self._released.set()
        self._held_client: str | None = None
        # Produce requests from the held client that arrived while it was held.
        self.held_requests = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        self.release()
        await super().close()

    def hold_produce(self, client_id: str) -> None:
        """Stop forwarding produce requests of `client_id` (and what follows them on its
        connections) until release()."""
        self._held_client = client_id
        self._released.clear()

    def release(self) -> None:
        self._held_client = None
        self._released.set()

    async def forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
