"""The proof a read's layout (``wire.layout``) takes before it is used: its envelope decoded
again in full with every input's bytes inverted and the request's id replaced by a longer
one gives the same job but for those."""

from __future__ import annotations

import msgpack
import numpy as np

from conveyor.broker.wire.jobs import decode_job
from conveyor.broker.wire.schema import Job, RawFields
from conveyor.types import InferenceRequest

__all__ = ("proven",)


def proven(
    fields: RawFields,
    envelope: bytes,
    spans: list[tuple[int, int]],
    job: Job,
    id_span: tuple[int, int] | None,
) -> bool:
    """Whether the envelope with every span's bytes inverted, and its request's id (if it has
    one) another of another length, decodes, in full, to the same job but for each input's
    data, which is then its span's inverted bytes, and for that id."""
    inverted = bytearray(envelope)
    for start, end in spans:
        inverted[start:end] = bytes(255 - byte for byte in envelope[start:end])
    request = job.args[0]
    expected_id = request.id if isinstance(request, InferenceRequest) else None
    shift = 0
    if id_span is not None and expected_id is not None:
        expected_id += "~" * 40  # from a fixstr to a str 8, or longer
        packed = msgpack.packb(expected_id)
        shift = len(packed) - (id_span[1] - id_span[0])
        inverted[id_span[0] : id_span[1]] = packed
        spans = [(start + shift, end + shift) for start, end in spans]
    try:
        other = decode_job({**fields, b"envelope": bytes(inverted)})
    except Exception:
        return False
    got = other.args[0] if len(other.args) == 1 and not other.kwargs else None
    if (
        type(got) is not InferenceRequest
        or not isinstance(request, InferenceRequest)
        or len(got.inputs) != len(spans)
        or other.inline_reply != job.inline_reply
        or (got.id, got.parameters, got.outputs) != (expected_id, None, None)
        or got.__pydantic_fields_set__ != request.__pydantic_fields_set__
    ):
        return False
    for (start, end), part, mine in zip(spans, got.inputs, request.inputs, strict=True):
        array, own = part.data.root, mine.data.root
        if (
            type(array) is not np.ndarray
            or (array.dtype, array.shape) != (own.dtype, own.shape)
            or array.tobytes() != bytes(inverted[start:end])
            or (part.name, part.shape, part.datatype, part.parameters)
            != (mine.name, mine.shape, mine.datatype, mine.parameters)
            or part.__pydantic_fields_set__ != mine.__pydantic_fields_set__
        ):
            return False
    return True
