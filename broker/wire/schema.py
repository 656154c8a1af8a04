"""What travels: the entry types, the error codes and the control verbs.

The layout of each entry's fields is specified in the package's head (``conveyor.broker.wire``);
this module names the parts. Encoding and decoding live in ``jobs`` and ``messages``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import NamedTuple, TypeAlias

import numpy as np

from conveyor.types import InferenceRequest, InferenceResponse, MetadataModelResponse

__all__ = (
    "INLINE_MAX_BYTES",
    "WIRE_VERSION",
    "ControlVerb",
    "ErrorCode",
    "ErrorInfo",
    "FieldValue",
    "Fields",
    "Job",
    "Message",
    "MessageType",
    "Payload",
    "Plain",
    "RawFields",
)

WIRE_VERSION = 1

# Arrays smaller than this ride inside the envelope as msgpack bin; larger ones get a field of
# their own. Measured with `python -m bench.wire --threshold` (bench/README.md, "Wire format":
# encode + redis-py's packing of the XADD + decode, one-tensor request): a field of its own costs
# two more XADD arguments for redis-py's Python packer (~1 us each) and a lookup, inlining copies
# the bytes ~4 times (tobytes, into the envelope, out as ext data, out as bin). Inline won by
# 1-11 us at 1-2 KiB, the two were within noise at 4-8 KiB, a field of its own won from 16 KiB.
INLINE_MAX_BYTES = 8192

# What a payload may be: a V2 type, or a plain msgpack-able value (which may hold numpy arrays).
Plain: TypeAlias = (
    bool | int | float | str | bytes | np.ndarray | list["Plain"] | dict[str, "Plain"] | None
)
Payload: TypeAlias = InferenceRequest | InferenceResponse | MetadataModelResponse | Plain
_NO_KWARGS: Mapping[str, Payload] = MappingProxyType({})

# What we hand to XADD (str keys, values redis-py accepts) and what XREAD returns.
FieldValue: TypeAlias = bytes | str | int | float | memoryview
Fields: TypeAlias = dict[str, FieldValue]
RawFields: TypeAlias = Mapping[bytes, bytes]
# The same fields before a decoder checked them: each value as an object. Decoders read them so
# (``cast``): compiled by mypyc (setup.py), a value read as bytes is checked there, and a
# malformed entry would raise TypeError instead of the decoder's WireError with its reason.
AsRead: TypeAlias = Mapping[bytes, object]


class Job(NamedTuple):
    """One call of a model method, as it sits in ``<prefix>:{<model>}:jobs``.

    A ``NamedTuple`` rather than a frozen dataclass: as immutable, and built ~6x faster
    (0.3 against 2.0 us: a frozen dataclass sets each of its 17 fields through
    ``object.__setattr__``), once a job on each side. ``job._replace(...)`` makes a changed
    copy.
    """

    id: str  # request id, chosen by the client, unique
    method: str  # "predict", "predict_stream", "metadata" or a custom method's name
    model: str
    version: str | None
    reply: str  # key of the reply stream the worker writes to
    bell: str  # key of the client's doorbell list the worker LPUSHes the request id to
    deadline: float  # unix time (seconds) after which the answer is of no use
    sent_at: float  # unix time (seconds)
    attempt: int = 1  # the client's send attempt; a resend under the same id gets the next one
    args: tuple[Payload, ...] = ()
    kwargs: Mapping[str, Payload] = _NO_KWARGS  # read-only: one shared empty mapping
    inputs: str | None = None  # key of the input stream of a predict_stream
    # Flow control of a predict_stream: the worker writes at most `window` chunks the caller
    # has not taken; the caller LPUSHes how many it took to the `credit` list.
    credit: str | None = None
    window: int = 0
    # The client reads small final answers straight from its doorbell list (one round trip
    # less); workers that predate it ignore the flag and write the reply stream as always.
    inline_reply: bool = False
    # The caller's trace context (W3C ``traceparent``, ``tracestate``); "" when none was active.
    traceparent: str = ""
    tracestate: str = ""


# Kept (str, Enum) rather than StrEnum: str()/format() of a member stay as the stub defined them.
class MessageType(str, Enum):  # noqa: UP042
    RESULT = "result"  # the one answer of a unary call
    CHUNK = "chunk"  # one response of a predict_stream, numbered by seq from 0
    END = "end"  # a predict_stream is complete; seq is the number of chunks sent
    ERROR = "error"  # the call failed; error says why
    INPUT = "input"  # one request of a predict_stream's input stream, numbered by seq


class ErrorCode(StrEnum):
    """Why a call failed: the ``code`` of an error message, stable and machine-readable.

    A ``StrEnum``: a member is equal to its text (``ErrorCode.DEADLINE == "deadline"``), so a
    code read from the wire (plain text: a newer worker may send one this list lacks) compares
    to a member as it is.
    """

    MODEL_ERROR = "model_error"  # the model's method raised; type and message are its exception's
    MODEL_NOT_FOUND = "model_not_found"  # the job names a model (or version) no worker serves
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the model does not expose the method
    BAD_ENTRY = "bad_entry"  # the job entry could not be decoded (or its reply was not)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the entry is over the model's payload limit
    DEADLINE = "deadline"  # the job ran past its deadline, or was read after it
    CANCELLED = "cancelled"  # its caller cancelled it (a control ``cancel``)
    STREAM_INTERRUPTED = "stream_interrupted"  # a predict_stream's input stream broke off
    DEAD_LETTER = "dead_letter"  # the job went to the dead-letter stream (too many deliveries)
    INPUT_ERROR = "input_error"  # the client's own: a predict_stream's input iterator raised


class ControlVerb(StrEnum):
    """The ``method`` of a job on a model's control stream (``<p>:{<model>}:control``)."""

    CANCEL = "cancel"  # stop the running job with this request id (the control job's ``id``)
    LOAD = "load"  # load the model; the answer's ``ready`` says whether it is loaded
    UNLOAD = "unload"  # unload the model


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str  # stable, machine-readable: an ErrorCode (or one a newer Conveyor added)
    type: str  # the exception class name, e.g. "ValueError"
    message: str


class Message(NamedTuple):
    """One entry of a reply stream (worker → client) or of an input stream (client → worker).

    A ``NamedTuple``, as :class:`Job` is: a client builds one for every answer it reads."""

    type: MessageType
    id: str  # the request id
    attempt: int = 0  # the delivery that wrote it (fencing); 0 for client-written inputs
    seq: int = 0
    payload: Payload = None
    error: ErrorInfo | None = None
    # The stream id of the job entry whose delivery wrote it: two copies of one job (an XADD
    # sent twice) have entries of their own, so (entry, attempt) names one run. "" if unknown.
    entry: str = ""
