"""The wire format: jobs and messages as Redis stream entries.

INTERFACE STUB — the signatures and dataclasses below are the contract the worker and the
client are written against. Implement the bodies; do not change names or field meanings
without telling the lead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeAlias

import numpy as np

from conveyor.types import InferenceRequest, InferenceResponse, MetadataModelResponse

WIRE_VERSION = 1

# What a payload may be: a V2 type, or a plain msgpack-able value (which may hold numpy arrays).
Plain: TypeAlias = (
    None | bool | int | float | str | bytes | np.ndarray | list["Plain"] | dict[str, "Plain"]
)
Payload: TypeAlias = InferenceRequest | InferenceResponse | MetadataModelResponse | Plain

# What we hand to XADD (str keys, values redis-py accepts) and what XREAD returns.
FieldValue: TypeAlias = bytes | str | int | float | memoryview
Fields: TypeAlias = dict[str, FieldValue]
RawFields: TypeAlias = Mapping[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Job:
    """One call of a model method, as it sits in ``<prefix>:{<model>}:jobs``."""

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
    kwargs: Mapping[str, Payload] = field(default_factory=dict)
    inputs: str | None = None  # key of the input stream of a predict_stream


class MessageType(str, Enum):
    RESULT = "result"  # the one answer of a unary call
    CHUNK = "chunk"  # one response of a predict_stream, numbered by seq from 0
    END = "end"  # a predict_stream is complete; seq is the number of chunks sent
    ERROR = "error"  # the call failed; error says why
    INPUT = "input"  # one request of a predict_stream's input stream, numbered by seq


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str  # stable, machine-readable: "model_error", "method_not_allowed", "bad_entry", ...
    type: str  # the exception class name, e.g. "ValueError"
    message: str


@dataclass(frozen=True, slots=True)
class Message:
    """One entry of a reply stream (worker → client) or of an input stream (client → worker)."""

    type: MessageType
    id: str  # the request id
    attempt: int = 0  # the delivery that wrote it (fencing); 0 for client-written inputs
    seq: int = 0
    payload: Payload = None
    error: ErrorInfo | None = None


def encode_job(job: Job) -> Fields:
    raise NotImplementedError


def decode_job(fields: RawFields) -> Job:
    """Raises ``conveyor.errors.WireError`` with a reason for anything that is not a job."""
    raise NotImplementedError


def encode_message(message: Message) -> Fields:
    raise NotImplementedError


def decode_message(fields: RawFields) -> Message:
    """Raises ``conveyor.errors.WireError`` with a reason for anything that is not a message."""
    raise NotImplementedError


def fields_size(fields: Fields) -> int:
    """Bytes the entry's values take on the wire (for the payload size limit)."""
    raise NotImplementedError
