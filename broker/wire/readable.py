"""The readable fields of an entry: plain text a person reads with ``redis-cli XRANGE``.

Written as decimal text (times with ``repr(float)``, which round-trips exactly) and read back
with one reason for each refusal. Also what an encoded entry's size is, for the payload limit.
"""

from __future__ import annotations

import math
from typing import cast

from conveyor.broker.wire.arrays import tensor_key
from conveyor.broker.wire.schema import AsRead, Fields, RawFields
from conveyor.compiled import caused_by
from conveyor.errors import WireError

__all__ = (
    "add_tensors",
    "count_text",
    "fields_size",
    "missing",
    "read_int",
    "read_text",
    "read_time",
    "time_text",
)


def time_text(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"time must be a finite number of seconds, not {value!r}")
    return repr(number)


def count_text(name: str, value: int, minimum: int) -> str:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return str(value)


def add_tensors(fields: Fields, tensors: list[memoryview]) -> Fields:
    for index, view in enumerate(tensors):
        fields[tensor_key(index)] = view
    return fields


def fields_size(fields: Fields) -> int:
    """Bytes the entry's values take on the wire (for the payload size limit).

    Counts values only (memoryview ``nbytes``, ``len`` of bytes, UTF-8 length of str, decimal
    length of numbers), as the payload size limit does; field names add a few bytes each.
    """
    size = 0
    for value in fields.values():
        if isinstance(value, bytes):
            size += len(value)
        elif isinstance(value, memoryview):
            size += value.nbytes
        elif isinstance(value, str):
            size += len(value) if value.isascii() else len(value.encode())
        else:  # int or float: redis-py sends repr()
            size += len(repr(value))
    return size


def missing(fields: RawFields, name: str) -> WireError:
    if name in fields:  # type: ignore[comparison-overlap]
        return WireError(f"field {name!r} has a str key: read entries with decode_responses=False")
    return WireError(f"missing field {name!r}")


def read_text(fields: RawFields, name: bytes) -> str:
    value = cast(AsRead, fields).get(name)
    if value is None:
        raise missing(fields, name.decode())
    if not isinstance(value, bytes):
        raise WireError(f"field {name.decode()!r} must be bytes, not {type(value).__name__}")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise caused_by(WireError(f"field {name.decode()!r} is not UTF-8 text"), exc) from exc


def read_int(fields: RawFields, name: bytes, minimum: int) -> int:
    text = read_text(fields, name)
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < minimum:
        raise WireError(f"field {name.decode()!r} must be an integer >= {minimum}, not {text!r}")
    return int(text)


def read_time(fields: RawFields, name: bytes) -> float:
    text = read_text(fields, name)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise WireError(f"field {name.decode()!r} must be a time in unix seconds, not {text!r}")
    return value
