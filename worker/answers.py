"""What the worker says about a job: its error messages, its outcome, its log fields."""

from __future__ import annotations

import logging
import math
import time

from conveyor.broker import Delivery
from conveyor.broker.wire import (
    ErrorCode,
    ErrorInfo,
    Fields,
    Job,
    Message,
    MessageType,
    Payload,
    encode_result,
)
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker.clock import RedisClock
from conveyor.worker.recent_errors import RECENT_ERRORS

__all__ = (
    "describe",
    "error_message",
    "failure_message",
    "give_id",
    "job_log",
    "log_answered_duplicate",
    "log_failure",
    "log_unfinished",
    "outcome",
    "readable_job",
    "result_message",
)

logger = logging.getLogger(__name__)


def give_id(payload: Payload, job: Job) -> Payload:
    """As MLServer's data plane: a request reaches the model with an id (the job's, which its
    response carries back, when the caller sent none)."""
    if type(payload) is InferenceRequest and payload.id is None:
        # what pydantic's __setattr__ does for a plain field, without its ~1 us of dispatch
        payload.__dict__["id"] = job.id
        payload.__pydantic_fields_set__.add("id")
    elif isinstance(payload, InferenceRequest) and payload.id is None:
        payload.id = job.id
    return payload


def error_message(job: Job, delivery: Delivery, code: str, type_name: str, text: str) -> Message:
    """The error answer of one delivery of ``job`` (kept among its model's recent errors)."""
    RECENT_ERRORS.record(job.model, job.id, code, type_name, text)
    return Message(
        MessageType.ERROR,
        job.id,
        delivery.deliveries,
        error=ErrorInfo(code, type_name, text),
        entry=delivery.entry_id.decode(),
    )


def readable_job(delivery: Delivery, model: str, clock: RedisClock) -> Job | None:
    """The readable fields of an entry that was not decoded, when they say where to reply
    (keys that passed admission), with its deadline on our clock."""
    fields = delivery.fields
    try:
        request_id, reply, bell = (fields[k].decode() for k in (b"id", b"reply", b"bell"))
        deadline, sent_at = float(fields[b"deadline"]), float(fields[b"sent_at"])
    except (KeyError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    if not (request_id and reply and bell) or not math.isfinite(deadline - sent_at):
        return None
    deadline = clock.deadline(delivery.entry_id, deadline, sent_at)
    return Job(request_id, "", model, None, reply, bell, deadline, time.time())


def outcome(message: Message | Fields) -> str:
    """A job's outcome for metrics: ok, or the error code of its last message (fields encoded
    already are a result's: :func:`result_fields`)."""
    if isinstance(message, dict) or message.type is not MessageType.ERROR or message.error is None:
        return "ok"
    return "error" if message.error.code == ErrorCode.MODEL_ERROR else message.error.code


def job_log(job: Job, delivery: Delivery, worker: str) -> str:
    """A job's fields for a log line (built only when a line is logged)."""
    return (
        f"request={job.id} model={job.model} method={job.method} "
        f"worker={worker} entry={delivery.entry_id.decode()} "
        f"deliveries={delivery.deliveries}"
    )


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def log_failure(job: Job, delivery: Delivery, worker: str, error: Exception) -> None:
    """The model raised: its message and traceback, once per job, as MLServer logs them
    (the caller gets the type and message only)."""
    logger.error(
        "job.failed %s error=%s", job_log(job, delivery, worker), describe(error), exc_info=error
    )


def failure_message(job: Job, delivery: Delivery, worker: str, error: Exception) -> Message:
    """The model raised: logged (:func:`log_failure`), and its type and message as the answer."""
    log_failure(job, delivery, worker, error)
    return error_message(job, delivery, ErrorCode.MODEL_ERROR, type(error).__name__, str(error))


def result_message(job: Job, delivery: Delivery, result: Payload) -> Message:
    """The result answer of one delivery of ``job``. As MLServer's data plane: a response
    carries its request's id (or the job's, see :func:`give_id`)."""
    _response_id(job, result)
    return Message(
        MessageType.RESULT,
        job.id,
        delivery.deliveries,
        payload=result,
        entry=delivery.entry_id.decode(),
    )


def result_fields(job: Job, delivery: Delivery, result: Payload) -> Fields:
    """:func:`result_message`'s entry fields, without building the ``Message``."""
    _response_id(job, result)
    return encode_result(job.id, delivery.deliveries, delivery.entry_id.decode(), result)


def _response_id(job: Job, result: Payload) -> None:
    if isinstance(result, InferenceResponse) and job.args:
        request = job.args[0]
        if isinstance(request, InferenceRequest):
            if type(result) is InferenceResponse:  # as in give_id: pydantic's setattr, inlined
                result.__dict__["id"] = request.id or job.id
                result.__pydantic_fields_set__.add("id")
            else:
                result.id = request.id or job.id


def log_unfinished(delivery: Delivery, error: BaseException) -> None:
    """A job that ends unanswered, pending (Redis went away, its answer was not stored): it is
    delivered again once reclaimed."""
    logger.warning(
        "job.unfinished stream=%s entry=%s error=%s",
        delivery.stream,
        delivery.entry_id.decode(),
        describe(error),
    )


def log_answered_duplicate(job: Job, delivery: Delivery, worker: str, held: str) -> None:
    """Answered before its claim said another copy runs it: the caller keeps one answer."""
    logger.info("job.duplicate %s running_copy=%s ran=yes", job_log(job, delivery, worker), held)
