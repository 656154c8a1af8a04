"""Dead letters: list, show, send again and delete the entries of ``<prefix>:{<model>}:dead``.

A dead letter is the job entry as a worker received it, plus the readable fields
``dead_reason dead_at dead_from dead_entry dead_deliveries dead_consumer`` in front of them
(the wire's :class:`~conveyor.broker.wire.DeadField`, written by
:func:`conveyor.broker.wire.dead_letter` for
:meth:`conveyor.broker.worker_streams.WorkerStreams.dead_letter`).
These are the operator's tools behind ``conveyor dlq``; workers and clients never call them.

Every function takes a ``redis.asyncio.Redis`` client (so it needs asyncio) and raises only
Conveyor's errors: :class:`~conveyor.errors.BrokerConnectionError` when Redis cannot be reached,
:class:`DeadLetterError` when Redis refuses a command (say, the dead key is not a stream), and
``ValueError`` for an argument that is not valid (a malformed entry id). Each call is a few
round trips, bounded by the client's socket timeouts; none blocks.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Final, Literal, TypeAlias, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from conveyor.broker.clients import server_url
from conveyor.broker.errors import translate_errors
from conveyor.broker.keys import Keys
from conveyor.broker.wire import DEAD_FIELDS, DeadField, job_fields
from conveyor.errors import ConveyorError

__all__ = (
    "ALL",
    "DEAD_FIELDS",
    "AllEntries",
    "DeadLetter",
    "DeadLetterDetail",
    "DeadLetterError",
    "count_dead",
    "list_dead",
    "purge_dead",
    "retry_dead",
    "show_dead",
)

logger = logging.getLogger(__name__)

# Fields the wire format fills with msgpack or raw tensor bytes (broker/wire/): shown by size.
_BINARY_NAME = re.compile(r"envelope|t[0-9]+")
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # whole ids only: "123" would be a range

# A retried job whose own deadline and sent_at cannot give its timeout gets this many seconds
# (the client's default call timeout).
DEFAULT_RETRY_TIMEOUT_S: Final = 30.0
_BATCH = 100  # entries read per XRANGE by `retry_dead(..., ALL)`


class DeadLetterError(ConveyorError):
    """Redis refused a dead-letter command (e.g. ``WRONGTYPE``: the dead key is not a stream)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class AllEntries(Enum):
    """The type of :data:`ALL`: every entry of a dead-letter stream, instead of a list of ids."""

    ALL = "all"


ALL: Final = AllEntries.ALL


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, summarized (what ``conveyor dlq list`` shows)."""

    entry_id: str  # its id in the dead-letter stream
    request_id: str | None  # the job's ``id`` field (None: the entry had none)
    method: str | None
    reason: str  # dead_reason: why a worker gave up on it
    deliveries: int  # how many times the job had been delivered when it died
    dead_at: float | None  # unix seconds
    from_stream: str  # the job stream it was taken from (where a retry sends it)
    consumer: str  # the worker that dead-lettered it


@dataclass(frozen=True, slots=True)
class DeadLetterDetail:
    """Every field of one dead letter, in entry order (what ``conveyor dlq show`` shows).

    ``fields`` holds the readable ones as text; ``binary`` the size in bytes of the others:
    ``envelope`` and ``t0``, ``t1``, ... (msgpack and raw tensor bytes), and any value that
    is not UTF-8.
    """

    entry_id: str
    fields: dict[str, str]
    binary: dict[str, int]


@contextmanager
def _errors(redis: Redis, key: str) -> Iterator[None]:
    """Connection failures as BrokerConnectionError, any other Redis error as DeadLetterError."""
    try:
        with translate_errors(server_url(redis)):
            yield
    except redis_errors.RedisError as exc:
        raise DeadLetterError(key, f"Redis refused the command: {exc}") from exc


_Entry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


def _entries(response: object) -> list[_Entry]:
    """An XRANGE/XREVRANGE reply as (entry id, fields) pairs: bytes throughout, since clients
    are made with decode_responses=False."""
    if not response:
        return []
    pairs = cast(list[tuple[bytes, dict[bytes, bytes] | None]], response)
    return [(entry_id, fields or {}) for entry_id, fields in pairs]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


def _float(value: bytes | None) -> float | None:
    try:
        number = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _summary(entry_id: bytes, fields: Mapping[bytes, bytes]) -> DeadLetter:
    deliveries = fields.get(DeadField.DELIVERIES.encode(), b"")
    return DeadLetter(
        entry_id=entry_id.decode(),
        request_id=_text(fields.get(b"id")),
        method=_text(fields.get(b"method")),
        reason=_text(fields.get(DeadField.REASON.encode())) or "",
        deliveries=int(deliveries) if deliveries.isdigit() else 0,
        dead_at=_float(fields.get(DeadField.AT.encode())),
        from_stream=_text(fields.get(DeadField.FROM.encode())) or "",
        consumer=_text(fields.get(DeadField.CONSUMER.encode())) or "",
    )


def _check_ids(entry_ids: Sequence[str]) -> list[str]:
    """The ids, validated and without repeats (in the given order)."""
    if isinstance(entry_ids, str):  # a str is a Sequence[str] too: one id, not its characters
        raise TypeError("entry_ids must be a sequence of entry ids or ALL, not a str")
    bad = [entry_id for entry_id in entry_ids if not _ENTRY_ID.fullmatch(entry_id)]
    if bad:
        raise ValueError(
            f"not a stream entry id: {', '.join(map(repr, bad))}; ids look like 1718000000000-0"
        )
    return list(dict.fromkeys(entry_ids))


async def count_dead(redis: Redis, keys: Keys, model: str) -> int:
    """How many dead letters ``model`` has (XLEN of its dead-letter stream; 0 if none)."""
    key = keys.dead(model)
    with _errors(redis, key):
        return int(await redis.xlen(key))


async def list_dead(redis: Redis, keys: Keys, model: str, count: int = 20) -> list[DeadLetter]:
    """The oldest ``count`` dead letters of ``model``, oldest first (one XRANGE).

    An unknown model, or one without dead letters, gives an empty list.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    key = keys.dead(model)
    with _errors(redis, key):
        entries = _entries(await redis.xrange(key, count=count))
    return [_summary(entry_id, fields) for entry_id, fields in entries]


async def show_dead(redis: Redis, keys: Keys, model: str, entry_id: str) -> DeadLetterDetail | None:
    """Every field of the dead letter ``entry_id`` of ``model``; None if there is no such entry.

    Raises:
        ValueError: ``entry_id`` is not a stream entry id.
    """
    (checked,) = _check_ids([entry_id])
    key = keys.dead(model)
    with _errors(redis, key):
        entries = _entries(await redis.xrange(key, min=checked, max=checked, count=1))
    if not entries:
        return None
    found_id, raw = entries[0]
    fields: dict[str, str] = {}
    binary: dict[str, int] = {}
    for raw_name, value in raw.items():
        name = raw_name.decode("utf-8", "backslashreplace")
        if _BINARY_NAME.fullmatch(name):
            binary[name] = len(value)
            continue
        try:
            fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            binary[name] = len(value)
    return DeadLetterDetail(found_id.decode(), fields, binary)


def _target_stream(keys: Keys, model: str, dead_from: bytes | None) -> str:
    """Where a retried job goes: the job stream it died in, if that is one of ``model``'s job
    streams; otherwise (missing, or naming some other key) the model's main job stream, so a
    crafted entry cannot make a retry write to an arbitrary key."""
    main = keys.jobs(model)
    source = _text(dead_from)
    if source is None:
        return main
    owner = keys.job_stream_of(source)
    if source == main or (owner is not None and owner[0] == model):
        return source
    logger.warning("dlq.retry_reroute model=%s dead_from=%s target=%s", model, source, main)
    return main


def _fresh_times(fields: dict[bytes, bytes], timeout: float | None, now: float) -> None:
    """Gives the job a new deadline: ``now`` + ``timeout``, or + its original deadline - sent_at
    span (a job whose times do not parse keeps them, unless ``timeout`` is given). ``sent_at``
    becomes ``now`` too, so the span stays the same however often the job is retried."""
    if timeout is None:
        deadline, sent_at = _float(fields.get(b"deadline")), _float(fields.get(b"sent_at"))
        if deadline is None or sent_at is None:
            return  # not a job (the worker dead-letters it again, as a bad entry)
        timeout = deadline - sent_at if deadline > sent_at else DEFAULT_RETRY_TIMEOUT_S
    # repr(float): the wire format's way of writing times (it round-trips exactly)
    fields[b"deadline"] = repr(now + timeout).encode()
    fields[b"sent_at"] = repr(now).encode()


async def _retry_one(
    redis: Redis,
    keys: Keys,
    model: str,
    entry_id: bytes,
    fields: Mapping[bytes, bytes],
    timeout: float | None,
) -> bool:
    """Sends one dead letter again; False (and nothing done) if it holds no job fields."""
    job = job_fields(fields)
    if not job:  # XADD needs a field; there is nothing to send
        logger.warning("dlq.retry_skipped model=%s entry=%s reason=empty", model, entry_id.decode())
        return False
    target = _target_stream(keys, model, fields.get(DeadField.FROM.encode()))
    _fresh_times(job, timeout, time.time())
    # MULTI/EXEC, XADD first: the job is either sent again and gone from the dead letters, or
    # neither (a connection lost before EXEC runs nothing); never deleted without being sent.
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(target, job)  # type: ignore[arg-type]  # redis-py's dict type is invariant
    pipe.xdel(keys.dead(model), entry_id)
    new_id, deleted = await pipe.execute()
    logger.info(
        "dlq.retried model=%s entry=%s request=%s target=%s new_entry=%s",
        model,
        entry_id.decode(),
        _text(fields.get(b"id")),
        target,
        _text(new_id),
    )
    if not deleted:  # another operator retried or purged it at the same moment
        logger.warning("dlq.retry_raced model=%s entry=%s", model, entry_id.decode())
    return True


async def retry_dead(
    redis: Redis,
    keys: Keys,
    model: str,
    entry_ids: Sequence[str] | Literal[AllEntries.ALL],
    *,
    timeout: float | None = None,
) -> int:
    """Sends dead letters of ``model`` again; returns how many were sent.

    Each job goes back to the stream it died in (``dead_from``) with its original fields,
    the ``dead_*`` ones removed, and a fresh deadline: now + ``timeout`` seconds, or + the
    job's own deadline - sent_at span. The XADD and the XDEL from the dead-letter stream run
    in one MULTI/EXEC per entry. With :data:`ALL`, only the entries present when the call
    starts are sent (one that dies again meanwhile is not sent twice). Ids that are not in
    the stream, and entries with no field besides the ``dead_*`` ones, are skipped.

    Raises:
        ValueError: an entry id is malformed, or ``timeout`` is not a positive number.
    """
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    key = keys.dead(model)
    sent = 0
    if entry_ids is ALL:
        with _errors(redis, key):
            last = _entries(await redis.xrevrange(key, count=1))
            if not last:
                return 0
            start: bytes = b"-"
            end: bytes = last[0][0]
            while True:
                batch = _entries(await redis.xrange(key, min=start, max=end, count=_BATCH))
                for entry_id, fields in batch:
                    sent += await _retry_one(redis, keys, model, entry_id, fields, timeout)
                if len(batch) < _BATCH:
                    return sent
                start = b"(" + batch[-1][0]
    for wanted in _check_ids(entry_ids):
        with _errors(redis, key):
            found = _entries(await redis.xrange(key, min=wanted, max=wanted, count=1))
            if found:
                sent += await _retry_one(redis, keys, model, found[0][0], found[0][1], timeout)
    return sent


async def purge_dead(
    redis: Redis,
    keys: Keys,
    model: str,
    entry_ids: Sequence[str] | Literal[AllEntries.ALL],
) -> int:
    """Deletes dead letters of ``model`` for good; returns how many were deleted.

    With :data:`ALL` the whole dead-letter stream is deleted (XLEN and DEL in one MULTI/EXEC,
    so the count is exact); otherwise one XDEL of the given ids (missing ones are skipped).

    Raises:
        ValueError: an entry id is malformed.
    """
    key = keys.dead(model)
    if entry_ids is ALL:
        with _errors(redis, key):
            pipe = redis.pipeline(transaction=True)
            pipe.xlen(key)
            pipe.delete(key)
            length, _ = await pipe.execute()
        logger.info("dlq.purged model=%s entries=%d all=true", model, length)
        return int(length)
    ids = _check_ids(entry_ids)
    if not ids:
        return 0
    with _errors(redis, key):
        deleted = int(await redis.xdel(key, *ids))
    logger.info("dlq.purged model=%s entries=%d ids=%s", model, deleted, ",".join(ids))
    return deleted
