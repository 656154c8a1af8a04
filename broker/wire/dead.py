"""Dead letters: a job entry a worker gave up on, kept in ``<p>:{<model>}:dead``.

A dead letter is the job entry as the worker received it (binary fields included, so
``conveyor dlq retry`` can send it again), after the readable fields of :class:`DeadField`
saying why and where from. Nothing trims the stream: dead letters leave only by
``conveyor dlq retry`` or ``purge``.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from conveyor.broker.wire.schema import FieldValue

__all__ = ("DEAD_FIELDS", "DeadField", "dead_letter", "job_fields")


class DeadField(StrEnum):
    """The readable fields a worker puts in front of a job's own fields when it moves the
    entry to ``<p>:{<model>}:dead``; everything else in a dead letter is the job as sent."""

    REASON = "dead_reason"  # why a worker gave up on it
    AT = "dead_at"  # unix seconds, three decimals
    FROM = "dead_from"  # the job stream it was taken from (where a retry sends it)
    ENTRY = "dead_entry"  # its entry id in that stream
    DELIVERIES = "dead_deliveries"  # how many times it had been delivered
    CONSUMER = "dead_consumer"  # the worker (consumer name) that dead-lettered it


# The dead-letter fields as plain text, in the order a dead letter holds them.
DEAD_FIELDS: tuple[str, ...] = tuple(name.value for name in DeadField)

_DEAD_RAW = frozenset(name.encode() for name in DEAD_FIELDS)


def dead_letter(
    job: Mapping[bytes, bytes],
    *,
    reason: str,
    at: float,
    stream: str,
    entry: bytes,
    deliveries: int,
    consumer: str,
) -> dict[str | bytes, FieldValue]:
    """The fields to XADD for the job entry ``job``, read as ``entry`` from ``stream`` and
    delivered ``deliveries`` times, that ``consumer`` gives up on at unix time ``at``.

    A field of the job named like one of :class:`DeadField` never overwrites it.
    """
    dead: dict[str | bytes, FieldValue] = {
        DeadField.REASON.value: reason,
        DeadField.AT.value: f"{at:.3f}",
        DeadField.FROM.value: stream,
        DeadField.ENTRY.value: entry,
        DeadField.DELIVERIES.value: str(deliveries),
        DeadField.CONSUMER.value: consumer,
    }
    for name, value in job.items():
        text = name.decode(errors="replace") if isinstance(name, bytes) else name
        if text not in dead:  # a job's own field never overwrites the bookkeeping
            dead[name] = value
    return dead


def job_fields(dead: Mapping[bytes, bytes]) -> dict[bytes, bytes]:
    """The job entry a dead letter holds: every field but those of :class:`DeadField`."""
    return {name: value for name, value in dead.items() if name not in _DEAD_RAW}
