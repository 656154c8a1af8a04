"""Job entries: one call of a model method, as a client XADDs it to a job stream.

:func:`decode_job` reads the common job through :func:`_decode_common_job`, a fast path with
fewer calls that answers None for anything it does not take, and everything else through
:func:`_decode_any_job`, which decodes any job or refuses it with its reason. Both return the
same ``Job`` for an entry the fast path takes (``tests/unit/test_wire_fast.py`` checks it on
mutated entries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import cast

from conveyor.broker.wire.envelope import pack_envelope, unpack_envelope
from conveyor.broker.wire.payloads import decode_payload, encode_payload
from conveyor.broker.wire.readable import (
    add_tensors,
    count_text,
    read_int,
    read_text,
    read_time,
    time_text,
)
from conveyor.broker.wire.schema import WIRE_VERSION, AsRead, Fields, Job, Payload, RawFields
from conveyor.compiled import caused_by
from conveyor.errors import WireError

__all__ = ("Head", "common_head", "decode_job", "encode_job", "trace_fields")

_JOB_TEXT = (b"id", b"method", b"model", b"version", b"reply", b"bell")


def encode_job(job: Job) -> Fields:
    """The fields to XADD for ``job``, in the order ``redis-cli XRANGE`` shows them.

    Big arrays are not copied: their fields are memoryviews over the arrays, which must not
    change until the XADD is sent. Raises ``TypeError`` for a payload that cannot travel (an
    unknown object, an unsupported dtype) and ``ValueError`` for a bad field value.
    """
    for name in ("id", "method", "model", "reply", "bell"):
        if not getattr(job, name):
            raise ValueError(f"job field {name!r} must be a non-empty string")
    if job.inputs is not None and not job.inputs:
        raise ValueError("job field 'inputs' must be None or a non-empty string")
    fields: Fields = {
        "id": job.id,
        "method": job.method,
        "model": job.model,
        "version": job.version or "",
        "reply": job.reply,
        "bell": job.bell,
        "deadline": time_text(job.deadline),
        "sent_at": time_text(job.sent_at),
        "attempt": count_text("attempt", job.attempt, 1),
    }
    if job.inputs is not None:
        fields["inputs"] = job.inputs
    if job.credit:
        fields["credit"] = job.credit
        fields["window"] = count_text("window", job.window, 1)
    if job.traceparent:  # only when a trace is active: the wire is unchanged otherwise
        fields["traceparent"] = job.traceparent
        if job.tracestate:
            fields["tracestate"] = job.tracestate
    for name in job.kwargs:
        if type(name) is not str:
            raise TypeError(f"keyword argument names must be str, not {name!r}")
    envelope = {
        "v": WIRE_VERSION,
        "args": [encode_payload(arg) for arg in job.args],
        "kwargs": {name: encode_payload(value) for name, value in job.kwargs.items()},
    }
    if job.inline_reply:
        envelope["inline"] = True
    fields["envelope"], tensors = pack_envelope(envelope)
    return add_tensors(fields, tensors)


def decode_job(fields: RawFields) -> Job:
    """Raises ``conveyor.errors.WireError`` with a reason for anything that is not a job.

    Large arrays come back as read-only views over the bytes in ``fields``.
    """
    try:
        return _decode_job(fields)
    except WireError:
        raise
    except Exception as exc:  # the contract: nothing but WireError leaves a decoder
        raise caused_by(
            WireError(f"malformed job entry: {type(exc).__name__}: {exc}"), exc
        ) from exc


def _decode_job(fields: RawFields) -> Job:
    if type(fields) is dict:
        job = _decode_common_job(fields)
        if job is not None:
            return job
    return _decode_any_job(fields)


def _decode_common_job(fields: dict[bytes, bytes]) -> Job | None:
    """The common job (every readable field plain and valid, no ``inputs``/``credit``), with
    fewer calls; None for anything else, which :func:`_decode_any_job` decodes or refuses
    with its reason. What this returns is what ``_decode_any_job`` returns for the entry
    (``tests/unit/test_wire_fast.py`` checks it on mutated entries)."""
    head = common_head(fields)
    if head is None:
        return None
    job_id, method, model, version, reply, bell, deadline, sent_at, attempt = head
    envelope = unpack_envelope(fields, "worker")
    raw_args = envelope.get("args", [])
    raw_kwargs = envelope.get("kwargs", {})
    if type(raw_args) is not list or type(raw_kwargs) is not dict:
        return None
    args = tuple([decode_payload(arg, f"argument {i}") for i, arg in enumerate(raw_args)])
    kwargs: dict[str, Payload] = {}
    for name, value in raw_kwargs.items():
        if type(name) is not str:
            return None
        kwargs[name] = decode_payload(value, f"keyword argument {name!r}")
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
        args,
        kwargs,
        None,
        None,
        0,
        envelope.get("inline") is True,
    )


Head = tuple[str, str, str, str, str, str, float, float, int]


def common_head(fields: dict[bytes, bytes]) -> Head | None:
    """The readable fields of the common job (id, method, model, version, reply, bell,
    deadline, sent_at, attempt) as :func:`_decode_any_job` reads them, or None if they need a
    closer look (there, with their reasons)."""
    get = cast(AsRead, fields).get
    texts: list[str] = []
    for name in _JOB_TEXT:
        value = get(name)
        if type(value) is not bytes:
            return None
        try:
            texts.append(value.decode())
        except UnicodeDecodeError:
            return None
    job_id, method, model, version, reply, bell = texts
    if not (job_id and method and model and reply and bell):
        return None
    if b"inputs" in fields or b"credit" in fields or b"traceparent" in fields:
        return None
    deadline = _common_time(get(b"deadline"))
    sent_at = _common_time(get(b"sent_at"))
    attempt = get(b"attempt")
    if (
        deadline is None
        or sent_at is None
        or type(attempt) is not bytes
        or not (attempt.isdigit() and len(attempt) <= 18)
        or int(attempt) < 1
    ):
        return None
    return job_id, method, model, version, reply, bell, deadline, sent_at, int(attempt)


def _common_time(value: object) -> float | None:
    """A time field as :func:`~conveyor.broker.wire.readable.read_time` reads it, or None if
    that needs a closer look."""
    if type(value) is not bytes:
        return None
    try:
        number = float(value)  # ASCII only: what parses here parses the same from str
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _decode_any_job(fields: RawFields) -> Job:
    """Any entry: a job, or a WireError with the reason it is not one."""
    if type(fields) is not dict and not isinstance(fields, Mapping):
        raise WireError(f"an entry's fields must be a mapping, not {type(fields).__name__}")
    job_id, method, model, version, reply, bell = (read_text(fields, name) for name in _JOB_TEXT)
    for name, text in (
        ("id", job_id),
        ("method", method),
        ("model", model),
        ("reply", reply),
        ("bell", bell),
    ):
        if not text:
            raise WireError(f"field {name!r} is empty")
    inputs: str | None = None
    if b"inputs" in fields:
        inputs = read_text(fields, b"inputs")
        if not inputs:
            raise WireError("field 'inputs' is empty")
    credit: str | None = None
    window = 0
    if b"credit" in fields:
        credit = read_text(fields, b"credit")
        if not credit:
            raise WireError("field 'credit' is empty")
        window = read_int(fields, b"window", 1)
    deadline = read_time(fields, b"deadline")
    sent_at = read_time(fields, b"sent_at")
    attempt = read_int(fields, b"attempt", 1)
    traceparent, tracestate = trace_fields(fields)
    envelope = unpack_envelope(fields, "worker")
    raw_args = envelope.get("args", [])
    raw_kwargs = envelope.get("kwargs", {})
    if type(raw_args) is not list:
        raise WireError("envelope 'args' must be a list")
    if type(raw_kwargs) is not dict:
        raise WireError("envelope 'kwargs' must be a map")
    args = tuple(decode_payload(arg, f"argument {i}") for i, arg in enumerate(raw_args))
    kwargs: dict[str, Payload] = {}
    for name, value in raw_kwargs.items():
        if type(name) is not str:
            raise WireError(f"keyword argument name {name!r} is not a string")
        kwargs[name] = decode_payload(value, f"keyword argument {name!r}")
    return Job(
        id=job_id,
        method=method,
        model=model,
        version=version or None,
        reply=reply,
        bell=bell,
        deadline=deadline,
        sent_at=sent_at,
        attempt=attempt,
        args=args,
        kwargs=kwargs,
        inputs=inputs,
        credit=credit,
        window=window,
        inline_reply=envelope.get("inline") is True,
        traceparent=traceparent,
        tracestate=tracestate,
    )


def trace_fields(fields: RawFields) -> tuple[str, str]:
    """The job's ``traceparent`` and ``tracestate`` as text ("" when absent or not text: a
    trace context that cannot be read is ignored, never a reason to refuse the job)."""
    texts = []
    for name in (b"traceparent", b"tracestate"):
        value = cast(AsRead, fields).get(name)
        try:
            texts.append(value.decode() if isinstance(value, bytes) else "")
        except UnicodeDecodeError:
            texts.append("")
    return texts[0], texts[1]
