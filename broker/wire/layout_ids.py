"""A request's own id in its job's envelope, for a read's layout (``wire.layout``): where it
lies in the envelope that proves the layout, and what it is in each later envelope (a msgpack
str of any length: the bytes after it shift by as much)."""

from __future__ import annotations

import msgpack

__all__ = ("NO_LAYOUT", "id_span", "read_str")

_ID_KEY = msgpack.packb("id")
NO_LAYOUT = (-1, -1)  # what id_span says of a request whose id cannot be laid out


def id_span(
    envelope: bytes, request_id: object, spans: list[tuple[int, int]]
) -> tuple[int, int] | None:
    """Where the request's own id lies in its envelope (a msgpack str, of any length in the
    layout's other envelopes), before every input's data; None when it has none;
    ``NO_LAYOUT`` when it cannot be found so."""
    if request_id is None:
        return None
    if type(request_id) is not str:
        return NO_LAYOUT
    pair = _ID_KEY + msgpack.packb(request_id)
    found = envelope.find(pair)
    if found < 0 or envelope.find(pair, found + 1) >= 0:
        return NO_LAYOUT
    span = (found + len(_ID_KEY), found + len(pair))
    return span if not spans or span[1] <= spans[0][0] else NO_LAYOUT


def read_str(buffer: bytes, at: int) -> tuple[str, int] | None:
    """The msgpack str at ``at`` in ``buffer`` and where it ends; None if none is there whole
    (or its bytes are not UTF-8, which decoding in full refuses)."""
    if at >= len(buffer):
        return None
    first = buffer[at]
    if 0xA0 <= first <= 0xBF:
        size, start = first & 0x1F, at + 1
    else:
        width = _STR_WIDTHS.get(first)
        if width is None or at + 1 + width > len(buffer):
            return None
        size, start = int.from_bytes(buffer[at + 1 : at + 1 + width], "big"), at + 1 + width
    end = start + size
    if end > len(buffer):
        return None
    try:
        return buffer[start:end].decode(), end
    except UnicodeDecodeError:
        return None


_STR_WIDTHS = {0xD9: 1, 0xDA: 2, 0xDB: 4}  # str 8, 16 and 32: their length's bytes
