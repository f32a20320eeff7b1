"""Where a record has been, as the worker vouches for it (docs/contract.md §6, §7).

A record's *chain* is its own coordinates (topic, partition, offset) followed by those of the
records it is a replay of. The worker writes the chain on every dead letter as `dlq.origin`,
signed: an HMAC-SHA256 under the erasure ledger's key over the coordinates and the value sent.
`worker dlq replay` copies that header verbatim onto the replayed record as
`dlq.replay.origin`. Reading a record, the worker believes the coordinates of a
`dlq.replay.origin` only when the signature verifies for that record's value:

- a producer cannot forge one (it has no key), nor move a genuine one onto another value;
- the tool needs no key, so the key never leaves the database and the worker's memory;
- an unsigned or unverifiable origin (a producer's header, one written before signing) is
  ignored, so it can neither make an old record new (its own offset still counts) nor make a
  new record old.

Coordinates are written `<topic>:<partition>:<offset>` (Kafka topic names hold no `:`, `,`
or `;`), joined by `,`, and the signature follows a `;` in hex.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

Coordinate = tuple[str, int, int]

# The two headers (listed with the others in worker/dlq.py's `Header`): the worker writes the
# first on a dead letter, the replay tool copies it onto the replayed record as the second.
ORIGIN_HEADER = "dlq.origin"
REPLAY_ORIGIN_HEADER = "dlq.replay.origin"

_DOMAIN = b"event-worker dlq.origin v1\x00"


def _mac(key: bytes, text: str, value: bytes | None) -> str:
    body = b"-" if value is None else b"+" + value
    return hmac.new(key, _DOMAIN + text.encode() + b"\x00" + body, hashlib.sha256).hexdigest()


def encode(coordinates: Iterable[Coordinate]) -> str:
    return ",".join(f"{t}:{p}:{o}" for t, p, o in coordinates)


def sign(key: bytes, coordinates: Iterable[Coordinate], value: bytes | None) -> bytes:
    """The `dlq.origin` header value of a record with `value` and this chain."""
    text = encode(coordinates)
    return f"{text};{_mac(key, text, value)}".encode()


def verify(key: bytes, header: bytes | None, value: bytes | None) -> tuple[Coordinate, ...]:
    """The coordinates of a signed origin, or () when it does not verify for `value`."""
    if not header:
        return ()
    text, _, mac = header.decode("ascii", "replace").rpartition(";")
    if not text or not hmac.compare_digest(mac, _mac(key, text, value)):
        return ()
    found: list[Coordinate] = []
    for part in text.split(","):
        topic, _, rest = part.rpartition(":")
        topic, _, partition = topic.rpartition(":")
        try:
            found.append((topic, int(partition), int(rest)))
        except ValueError:
            return ()
    return tuple(found)


def believed(key: bytes, record: Any) -> tuple[Coordinate, ...]:
    """The coordinates of the records `record` replays, from its `dlq.replay.origin` headers
    that verify (several, each verified, are united)."""
    found: list[Coordinate] = []
    for name, header in record.headers or ():
        if name == REPLAY_ORIGIN_HEADER:
            found.extend(c for c in verify(key, header, record.value) if c not in found)
    return tuple(found)


def chain(key: bytes, record: Any) -> tuple[Coordinate, ...]:
    """`record`'s own coordinates, then those of the records it believably replays."""
    own = (record.topic, record.partition, record.offset)
    return (own, *(c for c in believed(key, record) if c != own))
