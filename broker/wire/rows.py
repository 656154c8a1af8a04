"""A batch's answers encoded together: the first one's envelope, spliced for the others.

The answers of one batch (``encode_rows`` of each request's rows) are envelopes of one shape:
the same model name, version, parameters and outputs' names, datatypes and shapes (requests
of as many rows), with each request's own response id and its rows' data. In msgpack a str
or a bin never changes how the bytes around it pack (no map or array counts bytes), so two
such envelopes whose data have the same lengths are the same bytes but for the packed id and
the data. :class:`RowsEncoder` encodes a batch's first answer in full (``encode_rows``) and
keeps its *template*: where the id (with its str header) and each output's data lie in its
envelope, proven once by encoding it again with every byte of them changed (the id's ASCII
characters each flipped, the data's bytes inverted) and finding exactly those runs changed.
A later answer of the same batch, rows of the same size, is the template with its packed id
and its rows put in; anything else (other sizes, big arrays in fields of their own, text
arrays, a first id not ASCII) is encoded in full.
``tests/unit/test_wire_rows.py`` compares every answer with ``encode_rows``'s, byte for byte.
"""

from __future__ import annotations

import numpy as np

from conveyor.batching import Rows
from conveyor.broker.wire.arrays import _RAW_DTYPE_STRS
from conveyor.broker.wire.messages import encode_rows
from conveyor.broker.wire.schema import INLINE_MAX_BYTES, Fields

__all__ = ("RowsEncoder",)

_READABLE = frozenset(("type", "id", "attempt", "seq", "entry", "envelope"))


class _Template:
    """A proven answer envelope: its bytes around the id's span (its packed str; none if
    not ``has_id``) and each output's data span, and what an answer must share with it."""

    def __init__(
        self, envelope: bytes, spans: list[tuple[int, int]], rows: Rows, has_id: bool
    ) -> None:
        # the envelope's bytes around the spans: before the first, between them, after the last
        edges = [0, *(edge for span in spans for edge in span), len(envelope)]
        self.gaps = [envelope[edges[i] : edges[i + 1]] for i in range(0, len(edges), 2)]
        self.response = rows.response
        self.arrays = rows.arrays
        # each output's bytes in C order, and a row's size: a request's data is their slice
        # (``arr[a:b].tobytes()`` is ``arr.tobytes()``'s bytes of rows a to b)
        self.blobs = [
            (np.ascontiguousarray(array).tobytes(), array.nbytes // array.shape[0])
            for array in rows.arrays
        ]
        self.size = rows.size
        self.has_id = has_id


class RowsEncoder:
    """``encode_rows`` of one batch's answers (see the module's docstring): one per batch."""

    def __init__(self) -> None:
        self._template: _Template | None = None
        self._tried = False

    def encode(
        self, message_id: str, attempt: int, entry: str, rows: Rows, response_id: str | None
    ) -> Fields:
        """What ``encode_rows(message_id, attempt, entry, rows, response_id)`` gives."""
        template = self._template
        if (
            template is not None
            and message_id
            and type(attempt) is int
            and attempt >= 0
            and rows.response is template.response
            and rows.arrays is template.arrays
            and rows.size == template.size
        ):
            envelope = _spliced(template, rows, response_id)
            if envelope is not None:
                fields: Fields = {
                    "type": "result",
                    "id": message_id,
                    "attempt": str(attempt),
                    "seq": "0",
                }
                if entry:
                    fields["entry"] = entry
                fields["envelope"] = envelope
                return fields
        fields = encode_rows(message_id, attempt, entry, rows, response_id)
        if not self._tried:
            self._tried = True
            self._template = _template_of(fields, rows, response_id)
        return fields


def _id_bytes(response_id: str | None) -> bytes | None:
    """The id's bytes if it is ASCII (one byte a character: its flipped twin is too)."""
    if response_id is None or not response_id.isascii():
        return None
    return response_id.encode()


def _packed(text: str) -> bytes | None:
    """``text`` as msgpack packs a str (``use_bin_type``): its header, then its UTF-8."""
    try:
        data = text.encode()
    except UnicodeEncodeError:
        return None  # the full encoding says why
    size = len(data)
    if size < 32:
        head = bytes((0xA0 | size,))
    elif size < 0x100:
        head = bytes((0xD9, size))
    elif size < 0x10000:
        head = b"\xda" + size.to_bytes(2, "big")
    else:
        head = b"\xdb" + size.to_bytes(4, "big")
    return head + data


def _spliced(template: _Template, rows: Rows, response_id: str | None) -> bytes | None:
    pieces: list[bytes] = []
    if not template.has_id:
        if response_id is not None:
            return None
    else:
        own = _packed(response_id) if type(response_id) is str else None
        if own is None:
            return None
        pieces.append(own)  # its header too: nothing around a str counts its bytes
    start, end = rows.start, rows.start + rows.size
    pieces.extend([blob[start * row : end * row] for blob, row in template.blobs])
    gaps = template.gaps
    out = [gaps[0]]
    for piece, gap in zip(pieces, gaps[1:], strict=True):
        out.append(piece)
        out.append(gap)
    return b"".join(out)


def _template_of(fields: Fields, rows: Rows, response_id: str | None) -> _Template | None:
    """The template of an answer just encoded in full, once proven; None if it has none."""
    envelope = fields.get("envelope")
    if type(envelope) is not bytes or not set(fields) <= _READABLE or not rows.arrays:
        return None
    own = _id_bytes(response_id)
    if response_id is not None and own is None:
        return None
    start, end = rows.start, rows.start + rows.size
    twins = []
    for array in rows.arrays:
        part = array[start:end]
        if _RAW_DTYPE_STRS.get(part.dtype) is None or not 0 < part.nbytes < INLINE_MAX_BYTES:
            return None  # a text array, or one in a field of its own, or none at all
        inverted = np.bitwise_not(np.frombuffer(part.tobytes(), np.uint8))
        twins.append(inverted.view(part.dtype).reshape(part.shape))
    flipped = None if own is None else bytes(byte ^ 1 for byte in own).decode()
    twin = Rows(rows.response, twins, 0, rows.size)
    try:
        other = encode_rows("twin", 0, "", twin, flipped)["envelope"]
    except Exception:
        return None
    if type(other) is not bytes or len(other) != len(envelope):
        return None
    changed = np.flatnonzero(np.frombuffer(envelope, np.uint8) != np.frombuffer(other, np.uint8))
    # the runs of changed bytes: exactly the id's and each output's data, in order
    breaks = np.flatnonzero(np.diff(changed) != 1)
    starts = [int(changed[0])] + [int(changed[i + 1]) for i in breaks] if len(changed) else []
    ends = [int(changed[i]) + 1 for i in breaks] + ([int(changed[-1]) + 1] if len(changed) else [])
    sizes = ([] if own is None else [len(own)]) + [array[start:end].nbytes for array in rows.arrays]
    if [b - a for a, b in zip(starts, ends, strict=True)] != sizes:
        return None
    spans = list(zip(starts, ends, strict=True))
    if own is not None:  # the id's span takes in its header, found where it must be
        packed = _packed(own.decode())
        assert packed is not None  # ASCII
        head = len(packed) - len(own)
        first, last = spans[0]
        if envelope[first - head : last] != packed:
            return None
        spans[0] = (first - head, last)
    return _Template(envelope, spans, rows, own is not None)
