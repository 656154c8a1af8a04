"""The proof a read's layout (``wire.layout``) takes before it is used: its envelope decoded
again in full with every input's data changed (an array's bytes inverted, a BYTES input's
items each made longer) and the request's id replaced by a longer one gives the same job
but for those."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from conveyor.broker.wire.jobs import decode_job
from conveyor.broker.wire.layout_parts import DATA, ID, Piece
from conveyor.broker.wire.schema import Job, RawFields
from conveyor.types import InferenceRequest

__all__ = ("proven",)

# Each item made this much longer: from a fixstr or bin 8 to a str 16 or bin 16, or longer.
_PAD = 300


def _other(item: bytes | str) -> bytes | str:
    if isinstance(item, bytes):
        return item + b"~" * _PAD
    return item + "~" * _PAD


def proven(fields: RawFields, envelope: bytes, pieces: list[Piece], job: Job) -> bool:
    """Whether the envelope with every piece changed (see the module's head; a piece is
    ``wire.layout``'s: an input's data, the request's id or an input's items, in envelope
    order) decodes, in full, to the same job but for each input's data, which is then the
    changed data, and for the id."""
    request = job.args[0]
    if not isinstance(request, InferenceRequest):
        return False
    changed = bytearray()
    expected_id = request.id
    expected: list[Any] = []  # each input's data, as the changed envelope holds it
    at = 0
    for start, end, kind, _, _ in pieces:
        changed += envelope[at:start]
        if kind == DATA:  # an array's bytes: inverted, of the same length
            data = bytes(255 - byte for byte in envelope[start:end])
            expected.append(data)
        elif kind == ID:  # the id: another, longer one (from a fixstr to a str 8, or longer)
            expected_id = f"{request.id}{'~' * 40}"
            data = msgpack.packb(expected_id)
        else:  # the items: each longer
            items = [_other(item) for item in request.inputs[len(expected)].data.root]
            expected.append(items)
            data = b"".join(msgpack.packb(item, use_bin_type=True) for item in items)
        changed += data
        at = end
    changed += envelope[at:]
    try:
        other = decode_job({**fields, b"envelope": bytes(changed)})
    except Exception:
        return False
    got = other.args[0] if len(other.args) == 1 and not other.kwargs else None
    if (
        type(got) is not InferenceRequest
        or len(got.inputs) != len(expected)
        or other.inline_reply != job.inline_reply
        or (got.id, got.parameters, got.outputs) != (expected_id, None, None)
        or got.__pydantic_fields_set__ != request.__pydantic_fields_set__
    ):
        return False
    for want, part, mine in zip(expected, got.inputs, request.inputs, strict=True):
        if (part.name, part.shape, part.datatype, part.parameters) != (
            mine.name,
            mine.shape,
            mine.datatype,
            mine.parameters,
        ) or part.__pydantic_fields_set__ != mine.__pydantic_fields_set__:
            return False
        root, own = part.data.root, mine.data.root
        if type(want) is bytes:
            if (
                type(root) is not np.ndarray
                or type(own) is not np.ndarray
                or (root.dtype, root.shape) != (own.dtype, own.shape)
                or root.tobytes() != want
            ):
                return False
        elif type(root) is not list or [(type(x), x) for x in root] != [(type(x), x) for x in want]:
            return False
    return True
