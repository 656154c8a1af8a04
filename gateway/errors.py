"""What a failed call becomes at the gateway's edge: an HTTP status, a gRPC code, words.

One table for both transports, so REST and gRPC clients read the same failure the same way
(MLServer's REST body is ``{"error": message}``; gRPC carries the message as the status'
details). The order matters: the first class an exception is an instance of wins, and some
are subclasses of others (``ModelNotServed`` is a ``NoWorkerError``, which is a
``DeadlineExceeded``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pydantic

from conveyor.errors import (
    BrokerConnectionError,
    BrokerOutOfMemory,
    ConveyorError,
    DeadlineExceeded,
    MLServerError,
    ModelNotFound,
    NoWorkerError,
    PayloadTooLarge,
    QueueFull,
    RemoteError,
)

__all__ = ("CLIENT_ERROR_TYPES", "BadRequest", "Failure", "failure_of")

# A model that raises one of MLServer's own errors about its input (a codec could not decode
# it, an input is missing) blames the request: 400, as MLServer answers, not 500.
CLIENT_ERROR_TYPES = frozenset(
    {
        "CodecError",
        "CodecNotFound",
        "InferenceError",
        "InputsNotFound",
        "OutputNotFound",
        "MethodNotAllowed",
        "ModelParametersMissing",
        "ValidationError",
    }
)


class BadRequest(ValueError):
    """The request itself cannot be read (not JSON, tensor bytes that do not fit, ...): 400 /
    INVALID_ARGUMENT, with this message. Raised by the gateway, never by the fleet."""


@dataclass(frozen=True, slots=True)
class Failure:
    """How the gateway answers a call that failed."""

    http_status: int
    grpc_code: str  # a ``grpc.StatusCode`` member's name; this module imports no grpc
    message: str


_BY_TYPE: tuple[tuple[type[BaseException], int, str], ...] = (
    (ModelNotFound, 404, "NOT_FOUND"),  # ModelNotServed too: no live worker serves it
    (QueueFull, 429, "RESOURCE_EXHAUSTED"),
    (PayloadTooLarge, 413, "RESOURCE_EXHAUSTED"),
    (NoWorkerError, 503, "UNAVAILABLE"),  # nobody took the job within its deadline
    (DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
    (BrokerConnectionError, 503, "UNAVAILABLE"),
    (BrokerOutOfMemory, 503, "UNAVAILABLE"),
    (BadRequest, 400, "INVALID_ARGUMENT"),
)


def failure_of(exc: BaseException) -> Failure:
    """The status and message for ``exc``, raised while the gateway served a call."""
    for kind, status, code in _BY_TYPE:
        if isinstance(exc, kind):
            return Failure(status, code, str(exc))
    if isinstance(exc, RemoteError):
        if exc.type_name in CLIENT_ERROR_TYPES:
            return Failure(400, "INVALID_ARGUMENT", str(exc))
        return Failure(500, "INTERNAL", str(exc))  # the model's own failure, with its words
    if isinstance(exc, pydantic.ValidationError):
        return Failure(400, "INVALID_ARGUMENT", _validation_message(exc))
    if isinstance(exc, MLServerError):
        return Failure(exc.status_code, _grpc_code(exc.status_code), str(exc))
    if isinstance(exc, ConveyorError):
        return Failure(500, "INTERNAL", str(exc))
    return Failure(500, "INTERNAL", f"{type(exc).__name__}: {exc}")


def _grpc_code(http_status: int) -> str:
    if http_status == 404:
        return "NOT_FOUND"
    if 400 <= http_status < 500:
        return "INVALID_ARGUMENT"
    return "INTERNAL"


def _validation_message(exc: pydantic.ValidationError) -> str:
    """pydantic's errors in one line a client can act on: where, and what is wrong."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "request"
        parts.append(f"{where}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)
