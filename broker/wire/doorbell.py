"""Doorbell entries: what a worker LPUSHes to a client's ``<p>:bell:{<client id>}`` list.

An entry is either a request id (text: "read my reply stream, it has news"), or
:data:`INLINE_MARK` followed by a msgpack map of a final message's fields, exactly as they
would sit in the reply stream (a small answer that rides in the bell itself, when the job asked
for it with ``inline_reply``). A request id never starts with that byte.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import msgpack

from conveyor.broker.wire.schema import Fields, RawFields

__all__ = ("INLINE_MARK", "Rung", "pack_inline", "read_rung")

INLINE_MARK = b"\x00"


def pack_inline(fields: Fields) -> bytes:
    """The doorbell entry carrying a message's ``fields`` (its values bytes, str or numbers:
    a tensor field of its own, a memoryview, keeps the reply stream)."""
    try:
        packer: msgpack.Packer = _local.packer
    except AttributeError:
        # msgpack.packb makes a Packer (and its buffer) a call: ~1 us of a batch's answer each
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    packed: bytes = packer.pack(fields)
    return INLINE_MARK + packed


_local = threading.local()  # a Packer per thread (they are not reentrant)


@dataclass(frozen=True)
class Rung:
    """What a client found on its doorbell."""

    ids: list[str]  # request ids whose reply streams have news
    messages: list[RawFields]  # final answers that came inline, as a reply stream's fields


def read_rung(values: Sequence[bytes | str]) -> Rung:
    """The doorbell entries a client popped, sorted into request ids and inline answers."""
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
