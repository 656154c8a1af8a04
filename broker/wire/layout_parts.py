"""The parts of a read's layout (``wire.layout``) that may differ in length from envelope to
envelope: the request's own id (a msgpack str) and a BYTES input's items (a msgpack array of
bin or str items, their count fixed by the input's shape). Each is found once in the envelope
that proves the layout, and read again, with its length, from each later envelope: the bytes
after it shift by as much."""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = (
    "BIN",
    "DATA",
    "ID",
    "ITEMS",
    "NO_LAYOUT",
    "STR",
    "Piece",
    "id_span",
    "items_kind",
    "items_span",
    "read_items",
    "read_str",
)

_ID_KEY = msgpack.packb("id")
NO_LAYOUT = (-1, -1)  # what id_span says of a request whose id cannot be laid out

# A BYTES input's items: what they are on the wire, each of its kind (msgpack bin or str).
BIN, STR = True, False

# A piece of a layout, in envelope order: its span, and what lies there (an input's data of
# fixed length, the request's id, or an input's items), with the items' count and kind.
DATA, ID, ITEMS = 0, 1, 2
Piece = tuple[int, int, int, int, bool]


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


def items_kind(items: object) -> bool | None:
    """``BIN`` or ``STR``: what a BYTES input's decoded data (a list) holds, when it is a
    non-empty flat list of bytes only or of str only; else None (not laid out)."""
    if type(items) is not list or not items:
        return None
    first = type(items[0])
    if first not in (bytes, str) or any(type(item) is not first for item in items):
        return None
    return BIN if first is bytes else STR


def items_span(envelope: bytes, items: list[Any]) -> tuple[int, int] | None:
    """Where a BYTES input's items lie in its envelope (after their array's header, which
    holds their count): the one place their packed array is; else None."""
    packed = msgpack.packb(items, use_bin_type=True)
    found = envelope.find(packed)
    if found < 0 or envelope.find(packed, found + 1) >= 0:
        return None
    header = len(packed) - sum(len(msgpack.packb(item, use_bin_type=True)) for item in items)
    return found + header, found + len(packed)


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


def read_bin(buffer: bytes, at: int) -> tuple[bytes, int] | None:
    """The msgpack bin at ``at`` in ``buffer`` and where it ends; None if none is there whole."""
    width = _BIN_WIDTHS.get(buffer[at]) if at < len(buffer) else None
    if width is None or at + 1 + width > len(buffer):
        return None
    start = at + 1 + width
    end = start + int.from_bytes(buffer[at + 1 : start], "big")
    if end > len(buffer):
        return None
    return buffer[start:end], end


def read_items(
    buffer: bytes, at: int, count: int, kind: bool
) -> tuple[list[bytes] | list[str], int] | None:
    """``count`` msgpack items of ``kind`` (bin or str) one after the other from ``at``, and
    where the last ends; None if they are not all there, whole and of that kind."""
    read = read_bin if kind is BIN else read_str
    items: list[Any] = []
    for _ in range(count):
        found = read(buffer, at)
        if found is None:
            return None
        item, at = found
        items.append(item)
    return items, at


_STR_WIDTHS = {0xD9: 1, 0xDA: 2, 0xDB: 4}  # str 8, 16 and 32: their length's bytes
_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # bin 8, 16 and 32
