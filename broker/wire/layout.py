"""A read's jobs decoded together: the common ``predict`` job's envelope parsed once a read.

The jobs of one read are most often one client's calls of one model: their envelopes are the
same bytes but for the tensors' data (``{"v", "args": [["InferenceRequest", {"inputs": [...]}]],
...}`` with each array's bytes inline) and each request's own id, when it has one (the gateway
gives every request one; a msgpack str, of any length: the bytes after it shift by as much).
:class:`JobDecoder` decodes the first such job in full
(:func:`~conveyor.broker.wire.jobs.decode_job`) and keeps it as the read's *layout*: where
each input's bytes lie in its envelope. A later entry whose envelope has the layout's length
and the layout's bytes everywhere else is the same request with other data (a msgpack bin's
content never changes how the bytes around it parse), so its request is the layout's with
each input's data cut from its own envelope, built without unpacking or validating again.
Anything else — another layout, a bad entry — is decoded in full, and fails with the same
reason as it would alone. Its readable fields are read for every entry
(:func:`~conveyor.broker.wire.jobs.common_head`).

A layout is only taken once it is proven: its spans found once in its envelope (a canonical
ext body; the id as the one ``"id"`` key with its value), and the envelope decoded again in
full with every span's bytes inverted and the id replaced by a longer one, giving the same
request but for each input's data, which is then the inverted bytes, and for that id. Each request
gets its own models (parameters too: a codec may cache a decoded payload in them) and its
own arrays (read-only, over a copy of their bytes, as decoding in full makes them).
Measured in process (``bench.batchpath``'s requests, best of 30 reads of 256): ``decode_job``
12-15 us a job, this 10 us (the readable fields and the ``Job`` 3.3 us, each request's own
models ~4 us: building them in Python costs about what pydantic's validation does, so only
the envelope's unpacking is saved). With the batch key kept per layout (``worker.batch_jobs``),
the batch path's worker went from 85 to 72 us of CPU a request (``bench.batchpath``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any, cast

import msgpack
import numpy as np

from conveyor.batching import _DTYPES
from conveyor.broker.wire.jobs import common_head, decode_job
from conveyor.broker.wire.layout_ids import NO_LAYOUT, id_span, read_str
from conveyor.broker.wire.layout_proof import proven
from conveyor.broker.wire.schema import Job, Payload, RawFields
from conveyor.laid_requests import LaidRequest
from conveyor.types import InferenceRequest, Parameters, RequestInput, TensorData

__all__ = ("JobDecoder",)

_new = object.__new__
_set = object.__setattr__
_TRIES = 2  # full decodes a read may spend finding a layout that proves to be none


_LEAVES = frozenset((str, int, float, bool, bytes, type(None)))
_OWN = ("inputs", "data", "parameters")

# A model's state, copied (its fields but for data, its fields set, its extra fields).
_State = tuple[dict[str, Any], frozenset[str], "dict[str, Any] | None"]


def _state(model: Any) -> _State | None:
    """A copy of a model's state, if its fields (but the models ``inputs``, ``data`` and
    ``parameters``, which each request gets its own of) are all immutable leaves, or a shape
    (a list of ints, copied for each request), so that the requests built from it may share
    them; else None."""
    values = dict(model.__dict__)
    extra = model.__pydantic_extra__
    for name, value in values.items():
        if name == "shape":
            if type(value) is not list or any(type(item) is not int for item in value):
                return None
        elif name not in _OWN and type(value) not in _LEAVES:
            return None
    if extra and any(type(value) not in _LEAVES for value in extra.values()):
        return None
    for name in _OWN:
        if name in values:
            values[name] = None  # filled in for each request
    return values, frozenset(model.__pydantic_fields_set__), None if extra is None else dict(extra)


def _parameters(state: _State) -> Parameters:
    """Parameters from a copied state, a request's own."""
    built: Parameters = _new(Parameters)
    values = state[0].copy()
    _set(built, "__dict__", values)
    _set(built, "__pydantic_fields_set__", set(state[1]))
    extra = state[2]
    _set(built, "__pydantic_extra__", None if extra is None else dict(extra))
    _set(built, "__pydantic_private__", None)
    return built


class _Layout:
    """A proven envelope layout: its bytes, each input's span and array kind, and the state of
    the request every envelope of the layout decodes to, but for the data (copied when the
    layout was found: the caller may change its request afterwards)."""

    __slots__ = (
        "envelope",
        "id_span",
        "inline",
        "inputs",
        "laid",
        "request",
        "rows",
        "size",
        "spans",
    )

    def __init__(
        self,
        envelope: bytes,
        spans: list[tuple[int, int]],
        request: _State,
        inputs: list[tuple[int, int, np.dtype[Any], tuple[int, ...], _State, _State | None]],
        inline: bool,
        laid: bool,
        id_span: tuple[int, int] | None = None,
    ) -> None:
        self.envelope = envelope
        # where its request's own id lies, when it has one: each envelope's own, of any length
        # (the spans after it then shift by as much)
        self.id_span = id_span
        self.size = len(envelope)
        self.spans = spans
        self.request = request
        self.inputs = inputs
        self.inline = inline
        # whether its requests may stay bytes until a model needs them (see _Laid), and
        # their rows (their first input's first dimension)
        self.laid = laid
        self.rows = inputs[0][3][0] if laid else 0

    def match(self, envelope: bytes) -> tuple[int, str | None] | None:
        """Whether ``envelope`` has the layout (its bytes but for the spans' and its request's
        id), as how far its spans lie from the layout's and its request's id; else None."""
        layout, at, shift = self.envelope, 0, 0
        request_id: str | None = self.request[0]["id"]
        if self.id_span is not None:
            start, end = self.id_span
            if envelope[:start] != layout[:start]:
                return None
            found = read_str(envelope, start)
            if found is None:
                return None
            request_id, after = found
            shift, at = after - end, end
        if len(envelope) != self.size + shift:
            return None
        for start, end in self.spans:
            if envelope[at + shift : start + shift] != layout[at:start]:
                return None
            at = end
        if envelope[at + shift :] != layout[at:]:
            return None
        return shift, request_id

    def request_of(self, envelope: bytes, shift: int, request_id: str | None) -> InferenceRequest:
        """The layout's request with ``envelope``'s data and id (an envelope it matches, with
        what :meth:`match` said of it)."""
        new, put, frombuffer = _new, _set, np.frombuffer
        inputs: list[RequestInput] = []
        for start, end, dtype, shape, state, parameters in self.inputs:
            data = new(TensorData)
            array = frombuffer(envelope[start + shift : end + shift], dtype).reshape(shape)
            put(data, "__dict__", {"root": array})
            put(data, "__pydantic_fields_set__", {"root"})
            values, fields_set, _ = state
            values = values.copy()
            values["shape"] = values["shape"][:]
            values["data"] = data
            if parameters is not None:
                values["parameters"] = _parameters(parameters)
            part = new(RequestInput)
            put(part, "__dict__", values)
            put(part, "__pydantic_fields_set__", set(fields_set))
            put(part, "__pydantic_extra__", None)
            put(part, "__pydantic_private__", None)
            inputs.append(part)
        values = self.request[0].copy()
        values["inputs"] = inputs
        if self.id_span is not None:
            values["id"] = request_id
        request = new(InferenceRequest)
        put(request, "__dict__", values)
        put(request, "__pydantic_fields_set__", set(self.request[1]))
        put(request, "__pydantic_extra__", None)
        put(request, "__pydantic_private__", None)
        return request


def _layout_of(fields: RawFields, job: Job) -> _Layout | None:
    """The layout of a job just decoded in full, once proven; None if it has none."""
    envelope = fields.get(b"envelope")
    if type(envelope) is not bytes or job.kwargs or len(job.args) != 1:
        return None
    request = job.args[0]
    if type(request) is not InferenceRequest or not request.inputs:
        return None
    if request.parameters is not None or request.outputs is not None:
        return None
    request_state = _state(request)
    if request_state is None:
        return None
    spans: list[tuple[int, int]] = []
    inputs = []
    for part in request.inputs:
        parameters = part.parameters
        if type(part) is not RequestInput or type(parameters) not in (Parameters, type(None)):
            return None
        array = part.data.root
        if type(array) is not np.ndarray or array.dtype.kind not in "biufc" or not array.nbytes:
            return None
        data = array.tobytes()
        # the array's ext body as the wire packs it (``arrays.array_body``), its bytes last
        body = msgpack.packb([array.dtype.str, list(array.shape), data], use_bin_type=True)
        found = envelope.find(body)
        if found < 0 or envelope.find(body, found + 1) >= 0:
            return None  # packed otherwise, or not in one place only
        end = found + len(body)
        spans.append((end - len(data), end))
        state = _state(part)
        parameters_state = None if parameters is None else _state(parameters)
        if state is None or (parameters is not None and parameters_state is None):
            return None
        inputs.append((end - len(data), end, array.dtype, array.shape, state, parameters_state))
    found_id = id_span(envelope, request.id, spans)
    if found_id == NO_LAYOUT:
        return None
    if sorted(spans) != spans or not proven(fields, envelope, spans, job, found_id):
        return None
    # its inputs' bytes are what merging takes as they are (``batching._array_of``)
    laid = all(
        array.ndim and array.dtype == _DTYPES.get(part.datatype) and list(array.shape) == part.shape
        for part, array in ((part, part.data.root) for part in request.inputs)
    )
    return _Layout(envelope, spans, request_state, inputs, job.inline_reply, laid, found_id)


class _Laid(LaidRequest):
    """A request of a proven layout, kept as its envelope's bytes (see ``LaidRequest``)."""

    __slots__ = ("_built", "_envelope", "_layout", "_own_id", "_shift")

    def __init__(
        self, layout: _Layout, envelope: bytes, shift: int, request_id: str | None
    ) -> None:
        super().__init__(request_id, layout.rows)
        self._layout = layout
        self._envelope = envelope
        self._shift = shift  # its spans' distance from the layout's (see _Layout.match)
        self._own_id = request_id  # its envelope's (``id`` may be given the job's)
        self._built: InferenceRequest | None = None

    def data(self, index: int) -> bytes:
        start, end = self._layout.spans[index]
        return self._envelope[start + self._shift : end + self._shift]

    def build(self) -> InferenceRequest:
        built = self._built
        if built is None:
            built = self._layout.request_of(self._envelope, self._shift, self._own_id)
            self._built = built
        if built.id is None and self.id is not None:  # as ``give_id`` sets it
            built.__dict__["id"] = self.id
            built.__pydantic_fields_set__.add("id")
        return built


class JobDecoder:
    """Decodes the job entries of one read, as :func:`decode_job` does each (the same jobs, the
    same ``WireError`` for a bad one), parsing the common layout once (see the module head).
    One per read: it keeps the layout of its first common job."""

    __slots__ = ("_decoded", "_layout", "_reads", "_served", "_tries", "key", "laid_out", "lazy")

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
            envelope = fields.get(b"envelope")
            head = common_head(fields) if type(envelope) is bytes else None
            matched = None if head is None else layout.match(envelope)  # type: ignore[arg-type]
            if head is not None and matched is not None:
                shift, request_id = matched
                request: InferenceRequest | LaidRequest
                if self.lazy and layout.laid:
                    request = _Laid(layout, envelope, shift, request_id)  # type: ignore[arg-type]
                else:
                    request = layout.request_of(envelope, shift, request_id)  # type: ignore[arg-type]
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
                first = _Laid(layout, fields[b"envelope"], 0, first_request.id)
                first._built = first_request  # as _layout_of found it
                job = dataclasses.replace(job, args=(cast("Payload", first),))
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
