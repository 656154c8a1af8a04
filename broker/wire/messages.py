"""Message entries: what a worker writes to a reply stream (a result, a stream's chunks and
end, an error) and what a client writes to a ``predict_stream``'s input stream."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, cast

from conveyor.batching import Rows
from conveyor.broker.wire.envelope import pack_envelope, unpack_envelope
from conveyor.broker.wire.payloads import (
    TAG_PLAIN,
    decode_payload,
    encode_payload,
    encode_rows_payload,
)
from conveyor.broker.wire.readable import add_tensors, count_text, missing, read_int, read_text
from conveyor.broker.wire.schema import (
    WIRE_VERSION,
    AsRead,
    ErrorInfo,
    Fields,
    Message,
    MessageType,
    RawFields,
)
from conveyor.compiled import caused_by
from conveyor.errors import WireError

__all__ = ("decode_message", "encode_message", "encode_result", "encode_rows")

_ENTRY_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_MESSAGE_TYPES = {t.value.encode(): t for t in MessageType}
_TYPE_TEXT = {t: t.value for t in MessageType}  # an Enum's .value is a Python property


def encode_message(message: Message) -> Fields:
    """The fields to XADD for ``message``; see :func:`encode_job` for what it raises.

    ``error`` must be set exactly when ``type`` is ``MessageType.ERROR``.
    """
    kind = message.type
    if type(kind) is not MessageType:
        kind = MessageType(kind)
    if not message.id:
        raise ValueError("message field 'id' must be a non-empty string")
    if (kind is MessageType.ERROR) != (message.error is not None):
        raise ValueError(
            f"a {kind.value!r} message must {'' if kind is MessageType.ERROR else 'not '}"
            "carry an error"
        )
    return _encoded(
        kind,
        message.id,
        message.attempt,
        message.seq,
        message.entry,
        message.error,
        encode_payload,
        message.payload,
    )


def encode_result(message_id: str, attempt: int, entry: str, payload: Any) -> Fields:
    """``encode_message`` of ``Message(MessageType.RESULT, message_id, attempt, payload=payload,
    entry=entry)`` without building the frozen ``Message``: a unary job's answer, one a job.
    The same fields and errors (``tests/unit/test_wire_result.py``)."""
    if not message_id:
        raise ValueError("message field 'id' must be a non-empty string")
    return _encoded(
        MessageType.RESULT, message_id, attempt, 0, entry, None, encode_payload, payload
    )


def encode_rows(
    message_id: str, attempt: int, entry: str, rows: Rows, response_id: str | None
) -> Fields:
    """``encode_message`` of a result whose payload is ``rows.build(response_id)`` (a batch's
    answer), without building the response: the split arrays go to the envelope as they are.
    The same fields (``tests/unit/test_wire_rows.py``)."""
    if not message_id:
        raise ValueError("message field 'id' must be a non-empty string")
    return _encoded(
        MessageType.RESULT, message_id, attempt, 0, entry, None, _rows_payload, (rows, response_id)
    )


def _rows_payload(value: tuple[Rows, str | None]) -> list[object]:
    return encode_rows_payload(*value)


def _encoded(
    kind: MessageType,
    message_id: str,
    attempt: int,
    seq: int,
    entry: str,
    error: ErrorInfo | None,
    payload_of: Callable[[Any], list[object]],
    value: Any,
) -> Fields:
    """The message's fields; its payload ``payload_of(value)``, encoded after the readable
    fields (their errors first, as they always came)."""
    fields: Fields = {
        "type": _TYPE_TEXT[kind],
        "id": message_id,
        # count_text(), inlined for the common case
        "attempt": str(attempt)
        if type(attempt) is int and attempt >= 0
        else count_text("attempt", attempt, 0),
        "seq": str(seq) if type(seq) is int and seq >= 0 else count_text("seq", seq, 0),
    }
    if entry:
        fields["entry"] = entry
    wire_error: dict[str, str] | None = None
    if error is not None:
        fields["code"] = error.code
        fields["error_type"] = error.type
        fields["error"] = error.message
        wire_error = {"code": error.code, "type": error.type, "message": error.message}
    envelope = {"v": WIRE_VERSION, "payload": payload_of(value), "error": wire_error}
    fields["envelope"], tensors = pack_envelope(envelope)
    return add_tensors(fields, tensors)


def decode_message(fields: RawFields) -> Message:
    """Raises ``conveyor.errors.WireError`` with a reason for anything that is not a message.

    Large arrays come back as read-only views over the bytes in ``fields``.
    """
    try:
        return _decode_message(fields)
    except WireError:
        raise
    except Exception as exc:  # the contract: nothing but WireError leaves a decoder
        raise caused_by(
            WireError(f"malformed message entry: {type(exc).__name__}: {exc}"), exc
        ) from exc


def _decode_message(fields: RawFields) -> Message:
    if type(fields) is not dict and not isinstance(fields, Mapping):
        raise WireError(f"an entry's fields must be a mapping, not {type(fields).__name__}")
    raw_type = cast(AsRead, fields).get(b"type")
    if raw_type is None:
        raise missing(fields, "type")
    kind = _MESSAGE_TYPES.get(raw_type) if isinstance(raw_type, bytes) else None
    if kind is None:
        raise WireError(
            f"field 'type' is {raw_type!r}, not one of {', '.join(t.value for t in MessageType)}"
        )
    message_id = read_text(fields, b"id")
    if not message_id:
        raise WireError("field 'id' is empty")
    attempt = read_int(fields, b"attempt", 0)
    seq = read_int(fields, b"seq", 0)
    entry = ""
    if b"entry" in fields:
        entry = read_text(fields, b"entry")
        if not _ENTRY_ID_RE.fullmatch(entry):
            raise WireError(f"field 'entry' must be a stream id such as '1-0', not {entry!r}")
    if kind is MessageType.ERROR:
        for name in (b"code", b"error_type", b"error"):
            read_text(fields, name)  # the readable copy must be there too
    reader = "worker" if kind is MessageType.INPUT else "client"
    envelope = unpack_envelope(fields, reader)
    payload = decode_payload(envelope.get("payload", [TAG_PLAIN, None]), "payload")
    raw_error = envelope.get("error")
    error: ErrorInfo | None = None
    if raw_error is not None:
        if type(raw_error) is not dict:
            raise WireError("envelope 'error' must be a map")
        parts = [raw_error.get(key) for key in ("code", "type", "message")]
        if not all(type(part) is str for part in parts):
            raise WireError("envelope 'error' must have str 'code', 'type' and 'message'")
        error = ErrorInfo(*cast("list[str]", parts))
    if (kind is MessageType.ERROR) != (error is not None):
        raise WireError(
            "an error entry without an error in its envelope"
            if kind is MessageType.ERROR
            else f"a {kind.value!r} entry carries an error"
        )
    return Message(kind, message_id, attempt, seq, payload, error, entry)
