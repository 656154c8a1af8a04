"""A call's answer: the payload of its final message, or the error it carries as Conveyor's.

A worker (or the client itself, see ``waiter.py`` and ``pump.py``) ends a call that failed
with an error entry: a code (``wire.ErrorCode``), the exception's type name and a message
(``wire.ErrorInfo``). The code picks the :class:`~conveyor.errors.ConveyorError` the caller
gets; a failure of the model's own code arrives as :class:`~conveyor.errors.RemoteError`
with its type's name.
"""

from __future__ import annotations

from conveyor.broker.wire import ErrorCode, Job, Message, MessageType, Payload
from conveyor.errors import (
    DeadLettered,
    DeadlineExceeded,
    InferenceError,
    MethodNotAllowed,
    ModelNotFound,
    PayloadTooLarge,
    RemoteError,
    StreamInterrupted,
)

__all__ = ("result",)


def result(job: Job, message: Message) -> Payload:
    """The payload of a final message, or the error it carries, raised."""
    if message.type is MessageType.RESULT:
        return message.payload
    if message.type is MessageType.ERROR and message.error is not None:
        error = message.error
        if error.code == ErrorCode.MODEL_NOT_FOUND:
            raise ModelNotFound(job.model, job.version)
        if error.code == ErrorCode.METHOD_NOT_ALLOWED:
            exc = MethodNotAllowed(job.model, job.method, [])
            exc.args = (error.message,)
            raise exc
        if error.code == ErrorCode.DEADLINE:
            timeout = job.deadline - job.sent_at
            raise DeadlineExceeded(job.id, timeout, error.message, by_worker=True)
        if error.code == ErrorCode.PAYLOAD_TOO_LARGE:
            raise PayloadTooLarge(0, 0, error.message)
        if error.code == ErrorCode.STREAM_INTERRUPTED:
            raise StreamInterrupted(job.id, error.message)
        if error.code == ErrorCode.DEAD_LETTER:
            raise DeadLettered(job.id, job.model, error.message)
        if error.code == ErrorCode.BAD_ENTRY:
            raise InferenceError(f"request {job.id}: {error.message}")
        raise RemoteError(error.type, error.message, request_id=job.id)
    raise InferenceError(f"request {job.id}: unexpected {message.type.value!r} message")
