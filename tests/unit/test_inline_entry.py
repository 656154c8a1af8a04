"""Which final answers ride in the doorbell (``writes.inline_entry``): those whose values, as
``fields_size`` counts them, are at most ``INLINE_REPLY_MAX_BYTES``, with no tensor field of
their own; the entry is the fields packed (``pack_inline``), whatever shortcut decides it."""

from __future__ import annotations

import time

import pytest

from conveyor.broker.wire import Fields, Job, fields_size, pack_inline
from conveyor.broker.writes import INLINE_REPLY_MAX_BYTES, Write, inline_entry

_NOW = time.time()
_JOB = Job("r", "predict", "m", None, "reply", "bell", _NOW + 30, _NOW, inline_reply=True)


def _fields(envelope_size: int, **extra: object) -> Fields:
    fields: Fields = {"type": "result", "id": "r", "attempt": "1", "seq": "0", "entry": "1-0"}
    fields["envelope"] = b"x" * envelope_size
    fields.update(extra)  # type: ignore[arg-type]
    return fields


def _expected(fields: Fields) -> bytes | None:
    """The rule as it reads: no memoryview, values at most the limit."""
    if memoryview in map(type, fields.values()) or fields_size(fields) > INLINE_REPLY_MAX_BYTES:
        return None
    return pack_inline(fields)


_LIMIT = INLINE_REPLY_MAX_BYTES
_TEXT = 1 + 1 + 1 + 1 + 3 + 6  # the other fields' values: "r" "1" "0" "1-0" "result"


@pytest.mark.parametrize(
    "fields",
    [
        _fields(100),
        _fields(_LIMIT - _TEXT),  # exactly at the limit: inline, though packed it is longer
        _fields(_LIMIT - _TEXT + 1),
        _fields(_LIMIT + 10),
        _fields(_LIMIT - _TEXT - 25, big=12345678901234567890),  # an int counts its digits
        _fields(_LIMIT - _TEXT - 20, big=12345678901234567890),
        _fields(_LIMIT - _TEXT - 30, name="é" * 5),  # str counts UTF-8 bytes
        _fields(_LIMIT - _TEXT - 20, name="é" * 5),
        _fields(10, t0=memoryview(b"abc")),
    ],
)
def test_the_bell_carries_what_the_rule_says(fields: Fields) -> None:
    assert inline_entry(Write(_JOB, [fields], True)) == _expected(fields)


def test_only_a_final_answer_of_a_job_that_asked_rides_in_the_bell() -> None:
    fields = _fields(10)
    assert inline_entry(Write(_JOB, [fields], False)) is None
    assert inline_entry(Write(_JOB, [fields, fields], True)) is None
    plain = Job("r", "predict", "m", None, "reply", "bell", _NOW + 30, _NOW)
    assert inline_entry(Write(plain, [fields], True)) is None
    assert inline_entry(Write(_JOB, [{**fields, "type": "chunk"}], True)) is None
