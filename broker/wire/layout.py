"""A read's jobs decoded together: the common ``predict`` job's envelope parsed once a read.

The jobs of one read are most often one client's calls of one model: their envelopes are the
same bytes but for the tensors' data (``{"v", "args": [["InferenceRequest", {"inputs": [...]}]],
...}`` with each array's bytes inline, or a text input's items) and each request's own id, when
it has one (the gateway gives every request one). :class:`JobDecoder` decodes the first such
job in full (:func:`~conveyor.broker.wire.jobs.decode_job`) and keeps it as the read's
*layout*: its pieces, in envelope order (``layout_parts``):

- a numeric input's data: an array's bytes, of a fixed length;
- the request's id: a msgpack str of any length;
- a BYTES input's items (text): a msgpack array of bin or str items, their count fixed by
  the input's shape, each of any length.

A later entry whose envelope has the layout's bytes everywhere else is the same request with
other data (a msgpack bin's or str's content never changes how the bytes around it parse; a
piece of any length shifts the bytes after it by as much), so its request is the layout's with
each input's data cut from its own envelope, built without unpacking or validating again.
Anything else — another layout, a bad entry — is decoded in full, and fails with the same
reason as it would alone. Its readable fields are read for every entry
(:func:`~conveyor.broker.wire.jobs.common_head`).

A layout is only taken once it is proven (``layout_proof``): its pieces found once in its
envelope (a canonical ext body, an items array found once, the id as the one ``"id"`` key with
its value), and the envelope decoded again in full with every array's bytes inverted, every
item made longer and the id replaced by a longer one, giving the same request but for those.
Each request gets its own models (parameters too: a codec may cache a decoded payload in them),
its own arrays (read-only, over a copy of their bytes, as decoding in full makes them) and its
own lists of items.
Measured in process (``bench.batchpath``'s requests, best of 30 reads of 256): ``decode_job``
12-15 us a job, this 10 us (the readable fields and the ``Job`` 3.3 us, each request's own
models ~4 us: building them in Python costs about what pydantic's validation does, so only
the envelope's unpacking is saved). With the batch key kept per layout (``worker.batch_jobs``),
the batch path's worker went from 85 to 72 us of CPU a request (``bench.batchpath``).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any, cast

import numpy as np

from conveyor.broker.wire.jobs import common_head, decode_job
from conveyor.broker.wire.layout_inputs import (
    Input,
    State,
    input_of,
    laid_input,
    parameters_of,
    state_of,
)
from conveyor.broker.wire.layout_parts import (
    DATA,
    ID,
    ITEMS,
    NO_LAYOUT,
    STR,
    Piece,
    id_span,
    read_items,
    read_str,
)
from conveyor.broker.wire.layout_proof import proven
from conveyor.broker.wire.schema import AsRead, Job, Payload, RawFields
from conveyor.laid_requests import LaidRequest
from conveyor.types import InferenceRequest, RequestInput, TensorData

__all__ = ("JobDecoder",)

_new = object.__new__
_set = object.__setattr__
_TRIES = 2  # full decodes a read may spend finding a layout that proves to be none


# What a matched envelope holds for each input: how far its data lies from the layout's, or
# its items.
Parts = list[Any]


class _Layout:
    """A proven envelope layout: its bytes, its pieces (each input's span, the id's), each
    input's kind and the state of the request every envelope of the layout decodes to, but
    for the data (copied when the layout was found: the caller may change its request
    afterwards)."""

    def __init__(
        self,
        envelope: bytes,
        pieces: list[Piece],
        request: State,
        inputs: list[Input],
        inline: bool,
        laid: bool,
    ) -> None:
        self.envelope = envelope
        self.size = len(envelope)
        # in envelope order; the id's and the items' may be of any length in each envelope
        # (the pieces after them then shift by as much)
        self.pieces = pieces
        self.request = request
        self.inputs = inputs
        self.inline = inline
        # whether its requests may stay bytes until a model needs them (see _Laid), and
        # their rows (their first input's first dimension)
        self.laid = laid
        self.rows = inputs[0][3][0] if laid else 0

    def match(self, envelope: bytes) -> tuple[Parts, str | None] | None:
        """Whether ``envelope`` has the layout (its bytes but for its inputs' data and items
        and its request's id), as what it holds for each input (see ``Parts``) and its
        request's id; else None."""
        layout, at, shift = self.envelope, 0, 0
        request_id: str | None = self.request[0]["id"]
        parts: Parts = []
        for start, end, kind, count, binary in self.pieces:
            if envelope[at + shift : start + shift] != layout[at:start]:
                return None
            if kind == DATA:
                parts.append(shift)
            elif kind == ID:
                found_id = read_str(envelope, start + shift)
                if found_id is None:
                    return None
                request_id, after = found_id
                shift = after - end
            else:
                found = read_items(envelope, start + shift, count, binary)
                if found is None:
                    return None
                items, after = found
                parts.append(items)
                shift = after - end
            at = end
        # its length too: an array's bytes are only skipped above (an envelope cut short in
        # an array that ends it would otherwise match)
        if len(envelope) != self.size + shift or envelope[at + shift :] != layout[at:]:
            return None
        return parts, request_id

    def request_of(self, envelope: bytes, parts: Parts, request_id: str | None) -> InferenceRequest:
        """The layout's request with ``envelope``'s data and id (an envelope it matches, with
        what :meth:`match` said of it)."""
        new, put, frombuffer = _new, _set, np.frombuffer
        inputs: list[RequestInput] = []
        for (start, end, dtype, shape, _, state, parameters), part in zip(
            self.inputs, parts, strict=True
        ):
            data = new(TensorData)
            if dtype is None:  # its items, a list of its own
                root = part
            else:
                root = frombuffer(envelope[start + part : end + part], dtype).reshape(shape)
            put(data, "__dict__", {"root": root})
            put(data, "__pydantic_fields_set__", {"root"})
            values, fields_set, _ = state
            values = values.copy()
            values["shape"] = values["shape"][:]
            values["data"] = data
            if parameters is not None:
                values["parameters"] = parameters_of(parameters)
            built = new(RequestInput)
            put(built, "__dict__", values)
            put(built, "__pydantic_fields_set__", set(fields_set))
            put(built, "__pydantic_extra__", None)
            put(built, "__pydantic_private__", None)
            inputs.append(built)
        values = self.request[0].copy()
        values["inputs"] = inputs
        values["id"] = request_id
        request = new(InferenceRequest)
        put(request, "__dict__", values)
        put(request, "__pydantic_fields_set__", set(self.request[1]))
        put(request, "__pydantic_extra__", None)
        put(request, "__pydantic_private__", None)
        return request


def _layout_of(fields: RawFields, job: Job) -> _Layout | None:
    """The layout of a job just decoded in full, once proven; None if it has none."""
    envelope = cast(AsRead, fields).get(b"envelope")
    if type(envelope) is not bytes or job.kwargs or len(job.args) != 1:
        return None
    request = job.args[0]
    if type(request) is not InferenceRequest or not request.inputs:
        return None
    if request.parameters is not None or request.outputs is not None:
        return None
    request_state = state_of(request)
    if request_state is None:
        return None
    inputs: list[Input] = []
    for part in request.inputs:
        found = input_of(envelope, part)
        if found is None:
            return None
        inputs.append(found)
    spans = [(start, end) for start, end, *_ in inputs]
    if sorted(spans) != spans:
        return None
    pieces: list[Piece] = [
        (start, end, DATA if dtype is not None else ITEMS, math.prod(shape), kind)
        for start, end, dtype, shape, kind, _, _ in inputs
    ]
    found_id = id_span(envelope, request.id, spans)
    if found_id == NO_LAYOUT:
        return None
    if found_id is not None:
        pieces.insert(0, (*found_id, ID, 0, STR))
    if not proven(fields, envelope, pieces, job):
        return None
    laid = all(
        laid_input(part, found[2]) for part, found in zip(request.inputs, inputs, strict=True)
    )
    return _Layout(envelope, pieces, request_state, inputs, job.inline_reply, laid)


class _Laid(LaidRequest):
    """A request of a proven layout, kept as its envelope's bytes (see ``LaidRequest``)."""

    def __init__(
        self, layout: _Layout, envelope: bytes, parts: Parts, request_id: str | None
    ) -> None:
        super().__init__(request_id, layout.rows)
        self._layout = layout
        self._envelope = envelope
        self._parts = parts  # what _Layout.match found in its envelope
        self._own_id = request_id  # its envelope's (``id`` may be given the job's)
        self._built: InferenceRequest | None = None

    def data(self, index: int) -> bytes:
        start, end = self._layout.inputs[index][:2]
        shift: int = self._parts[index]
        return self._envelope[start + shift : end + shift]

    def items(self, index: int) -> list[bytes] | list[str]:
        items: list[bytes] | list[str] = self._parts[index]
        return items

    def build(self) -> InferenceRequest:
        built = self._built
        if built is None:
            parts = [part[:] if type(part) is list else part for part in self._parts]
            built = self._layout.request_of(self._envelope, parts, self._own_id)
            self._built = built
        if built.id is None and self.id is not None:  # as ``give_id`` sets it
            built.__dict__["id"] = self.id
            built.__pydantic_fields_set__.add("id")
        return built


class JobDecoder:
    """Decodes the job entries of one read, as :func:`decode_job` does each (the same jobs, the
    same ``WireError`` for a bad one), parsing the common layout once (see the module head).
    One per read: it keeps the layout of its first common job."""

    def __init__(self, *, lazy: bool = False) -> None:
        self._layout: _Layout | None = None
        # whether a request of the layout may be a ``LaidRequest`` (the batch path's), which
        # only ``merge_requests`` and ``LaidRequest.build`` read
        self.lazy = lazy
        self._tries = _TRIES
        # see next_read: whether the layout was found or used here, jobs decoded here, and
        # reads since a layout last served
        self._served = False
        self._decoded = 0
        self._reads = 0
        self.laid_out = False  # whether the last job's request was built from the layout
        # The caller's own: anything it derives from a request that all the layout's requests
        # share (the worker keeps their batch key here).
        self.key: Hashable | None = None

    def decode(self, fields: RawFields) -> Job:
        """The job of one entry; raises ``WireError`` as :func:`decode_job` does."""
        self.laid_out = False
        self._decoded += 1
        layout = self._layout
        if layout is not None and type(fields) is dict:
            envelope = cast(AsRead, fields).get(b"envelope")
            head = common_head(fields) if type(envelope) is bytes else None
            matched = None if head is None else layout.match(envelope)  # type: ignore[arg-type]
            if head is not None and matched is not None:
                parts, request_id = matched
                request: InferenceRequest | LaidRequest
                if self.lazy and layout.laid:
                    request = _Laid(layout, envelope, parts, request_id)  # type: ignore[arg-type]
                else:
                    request = layout.request_of(envelope, parts, request_id)  # type: ignore[arg-type]
                self.laid_out = True
                self._served = True
                job_id, method, model, version, reply, bell, deadline, sent_at, attempt = head
                return Job(
                    job_id,
                    method,
                    model,
                    version or None,
                    reply,
                    bell,
                    deadline,
                    sent_at,
                    attempt,
                    (cast("Payload", request),),  # a LaidRequest too: the batch path's
                    {},
                    None,
                    None,
                    0,
                    layout.inline,
                )
        job = decode_job(fields)
        if layout is None and self._tries > 0 and type(fields) is dict:
            self._tries -= 1
            self._layout = layout = _layout_of(fields, job)
            self._served = layout is not None
            if layout is not None and self.lazy and layout.laid:  # merged with the later ones
                first_request = cast("InferenceRequest", job.args[0])
                own = fields[b"envelope"]
                matched = layout.match(own)  # its own envelope: always matches
                if matched is not None:
                    first = _Laid(layout, own, matched[0], first_request.id)
                    first._built = first_request  # as _layout_of found it
                    job = job._replace(args=(cast("Payload", first),))
        return job

    def next_read(self) -> JobDecoder:
        """A decoder for the next read, which keeps this one's layout unless it served none of
        this read's jobs: a worker's unary jobs, a few a read, are mostly one client's calls,
        whose layout is then proven once, not once a read. Finding one (a full decode more)
        is tried again at most twice per 64 reads where none served."""
        following = JobDecoder(lazy=self.lazy)
        if self._served or not self._decoded:
            following._layout = self._layout
            following.key = self.key if self._layout is not None else None  # the layout's
        if self._served:
            return following
        following._reads = self._reads + 1
        following._tries = _TRIES if following._reads % 64 == 0 else self._tries
        return following
