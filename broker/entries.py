"""Stream entries as the worker and the client receive them, and the id arithmetic both use.

Shared by ``worker_streams`` and ``client_streams`` (the two sides of the protocol).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import msgpack
from redis import exceptions as redis_errors

from conveyor.broker.replies import INLINE_MARK
from conveyor.broker.wire import RawFields

__all__ = (
    "Delivery",
    "Rung",
    "claim_ttl",
    "entries_by_stream",
    "id_tuple",
    "is_nogroup",
    "next_id",
    "read_rung",
    "text",
)

@dataclass(frozen=True, slots=True)
class Delivery:
    """One job entry as a worker received it."""

    stream: str
    entry_id: bytes
    fields: RawFields
    deliveries: int = 1  # how many times Redis has handed this entry out (fencing attempt)


def is_nogroup(error: BaseException) -> bool:
    """The consumer group is gone: destroyed, or its stream deleted (a blocked XREADGROUP is
    then answered "UNBLOCKED the stream key no longer exists")."""
    return isinstance(error, redis_errors.ResponseError) and str(error).startswith(
        ("NOGROUP", "UNBLOCKED")
    )


def entries_by_stream(response: Any) -> list[tuple[str, list[tuple[bytes, RawFields]]]]:
    """XREAD/XREADGROUP's RESP2 reply (connections pin RESP2) as (stream, entries) pairs."""
    if not response:
        return []
    return [
        (key.decode() if isinstance(key, bytes) else str(key), [(i, f or {}) for i, f in entries])
        for key, entries in response
    ]



def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Rung:
    """What a client found on its doorbell."""

    ids: list[str]  # request ids whose reply streams have news
    messages: list[RawFields]  # final answers that came inline, as a reply stream's fields


def read_rung(values: Sequence[bytes | str]) -> Rung:
    found = Rung([], [])
    for value in values:
        if isinstance(value, bytes) and value[:1] == INLINE_MARK:
            found.messages.append(_inline_fields(value))
        else:
            found.ids.append(value.decode() if isinstance(value, bytes) else str(value))
    return found


def _inline_fields(value: bytes) -> RawFields:
    """An inline answer's fields; an entry that is not one gives ``{}``, which the wire
    decoder refuses with a reason (nothing read from Redis is trusted)."""
    try:
        fields = msgpack.unpackb(value[1:], raw=True, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        return {}
    if type(fields) is not dict:
        return {}
    return cast("RawFields", fields)

def claim_ttl(deadline: float) -> float:
    """A claim lives until the job's deadline: a copy read later is skipped as expired."""
    return max(deadline - time.time(), 1.0)


def next_id(entry_id: bytes | str) -> str:
    """The smallest stream id after ``entry_id``: XTRIM MINID to it deletes up to it."""
    ms, seq = id_tuple(entry_id)
    return f"{ms}-{seq + 1}"


def id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
