"""Gathers a :class:`~conveyor.broker.ops.fleet_report.Snapshot`: every model's job streams and
every worker's heartbeat, in few round trips:

1. ``SCAN`` (``TYPE stream``) for ``<prefix>:{*}:*`` plus ``ZRANGE <prefix>:workers`` in one
   pipeline (more SCAN calls only for a large key space);
2. one pipeline with ``TIME``, and per job stream ``XLEN`` (backlog), ``XINFO GROUPS`` (lag,
   pending, entries read), ``XINFO CONSUMERS`` (each consumer's pending and idle) and the
   ``XPENDING`` summary (its oldest entry id gives the oldest pending job's age); per model
   ``XLEN`` of its dead-letter stream; per worker ``HGETALL <prefix>:worker:<id>``.

:func:`snapshot` needs a ``redis.asyncio.Redis`` client (so asyncio) and raises only Conveyor's
errors: :class:`~conveyor.errors.BrokerConnectionError` when Redis cannot be reached and
:class:`~conveyor.broker.ops.fleet_report.InspectError` when Redis refuses a command. It never
writes and never blocks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from conveyor.broker.clients import server_url
from conveyor.broker.errors import translate_errors
from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.ops.fleet_report import (
    ConsumerInfo,
    GoneWorker,
    GroupInfo,
    InspectError,
    LastMinute,
    ModelInfo,
    Snapshot,
    StreamInfo,
    WorkerInfo,
    parse_last_minute,
    parse_recent_errors,
    parse_settings,
)

__all__ = ("snapshot",)

logger = logging.getLogger(__name__)

_SCAN_COUNT: Final = 1000  # keys looked at per SCAN call: few calls, none of them long
_GLOB_SPECIAL: Final = "\\*?[]"


# -- Redis replies ------------------------------------------------------------------------


@contextmanager
def _errors(redis: Redis, key: str) -> Iterator[None]:
    """Connection failures as BrokerConnectionError, any other Redis error as InspectError."""
    try:
        with translate_errors(server_url(redis)):
            yield
    except redis_errors.RedisError as exc:
        raise InspectError(key, f"Redis refused the command: {exc}") from exc


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _GLOB_SPECIAL else c for c in text)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: object) -> int | None:
    try:
        return int(cast(bytes | int, value))
    except (TypeError, ValueError):
        return None


def _float(value: object) -> float | None:
    try:
        number = float(cast(bytes | float, value))
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _id_seconds(entry_id: str) -> float | None:
    """The unix seconds an entry id was made at (its ms part)."""
    millis, _, _ = entry_id.partition("-")
    return int(millis) / 1000 if millis.isdigit() else None


def _missing(error: object) -> bool:
    """Whether a per-command error means "not there": the stream vanished after SCAN, or it
    has no ``workers`` group (nobody read it yet)."""
    text = str(error)
    return "NOGROUP" in text or "no such key" in text


@dataclass(frozen=True, slots=True)
class _Found:
    model: str
    version: str | None
    key: str


async def _scan(redis: Redis, keys: Keys) -> tuple[list[_Found], set[str], list[tuple[str, float]]]:
    """Job streams, models with a dead-letter stream, and ``<prefix>:workers`` entries."""
    pattern = f"{_glob_escape(keys.prefix)}:{{*}}:*"
    with _errors(redis, keys.workers()):
        pipe = redis.pipeline(transaction=False)
        pipe.zrange(keys.workers(), 0, -1, withscores=True)
        pipe.scan(0, match=pattern, count=_SCAN_COUNT, _type="STREAM")
        members, (cursor, found) = await pipe.execute()
        names = list(found)
        while cursor:
            cursor, found = await redis.scan(
                cursor, match=pattern, count=_SCAN_COUNT, _type="STREAM"
            )
            names += found
    streams: list[_Found] = []
    dead: set[str] = set()
    for raw in dict.fromkeys(names):  # SCAN may return a key twice
        try:
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            continue  # not a key Conveyor made: model names are text
        # a model's job streams and dead-letter stream; any other key (control streams,
        # foreign keys) is left out
        owner = keys.job_stream_of(key)
        if owner is not None:
            streams.append(_Found(*owner, key))
        elif (model := keys.dead_stream_of(key)) is not None:
            dead.add(model)
    workers = [(_text(member), float(score)) for member, score in members]
    return streams, dead, workers


def _group(
    groups: object, consumers: object, summary: object, now: float
) -> tuple[GroupInfo | None, bool]:
    """The ``workers`` group from XINFO GROUPS / CONSUMERS and XPENDING replies (each one
    a value or a "not there" error, see :func:`_check`); the flag says the stream vanished
    after SCAN found it."""
    if isinstance(groups, Exception):
        return None, True
    found = [g for g in cast(list[dict[str, object]], groups) if _text(g.get("name")) == GROUP]
    if not found:
        return None, False
    info = found[0]
    members: list[ConsumerInfo] = []
    if not isinstance(consumers, Exception):
        for consumer in cast(list[dict[str, object]], consumers):
            members.append(
                ConsumerInfo(
                    name=_text(consumer.get("name")),
                    pending=_int(consumer.get("pending")) or 0,
                    idle_ms=_int(consumer.get("idle")) or 0,
                )
            )
    oldest: str | None = None
    if not isinstance(summary, Exception):
        low = cast(Mapping[str, object], summary).get("min")
        oldest = _text(low) if low else None
    sent = _id_seconds(oldest) if oldest else None
    group = GroupInfo(
        lag=_int(info.get("lag")),
        pending=_int(info.get("pending")) or 0,
        entries_read=_int(info.get("entries-read")),
        last_delivered_id=_text(info.get("last-delivered-id")),
        consumers=tuple(sorted(members, key=lambda c: c.name)),
        oldest_pending_id=oldest,
        oldest_pending_age_s=None if sent is None else max(now - sent, 0.0),
    )
    return group, False


def _worker(worker_id: str, fields: Mapping[bytes, bytes], now: float) -> WorkerInfo:
    def get(name: str) -> bytes | None:
        return fields.get(name.encode())

    started, heartbeat = _float(get("started")), _float(get("heartbeat"))
    models = tuple(name for name in _text(get("models") or b"").split(",") if name)
    ready = get("ready")
    return WorkerInfo(
        id=worker_id,
        host=_text(get("host") or b""),
        pid=_int(get("pid")),
        models=models,
        ready=models if ready is None else tuple(n for n in _text(ready).split(",") if n),
        in_flight=_int(get("in_flight")),
        done=_int(get("done")),
        started=started,
        heartbeat=heartbeat,
        uptime_s=None if started is None else max(now - started, 0.0),
        heartbeat_age_s=None if heartbeat is None else max(now - heartbeat, 0.0),
        ttl_s=_float(get("ttl")),
        last_minute=_last_minute(get("last_minute")),
        settings=parse_settings(_json(get("settings"))),
        recent_errors=parse_recent_errors(_json(get("recent_errors"))),
    )


def _json(value: bytes | None) -> object:
    """A JSON heartbeat field, loaded; None when missing or not JSON (a crafted field)."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _last_minute(value: bytes | None) -> LastMinute | None:
    if value is None:
        return None
    try:
        return parse_last_minute(json.loads(value))
    except (ValueError, RecursionError):  # not JSON: a crafted field
        return None


def _check(reply: object, key: str, *, missing_ok: bool = False) -> object:
    """One reply of a ``raise_on_error=False`` pipeline: an error becomes InspectError,
    except (with ``missing_ok``) a "not there" one, returned for the caller to handle."""
    if isinstance(reply, redis_errors.RedisError) and not (missing_ok and _missing(reply)):
        raise InspectError(key, f"Redis refused the command: {reply}") from reply
    return reply


async def snapshot(redis: Redis, keys: Keys) -> Snapshot:
    """The models and workers under ``keys.prefix``, read in two round trips (plus one per
    further SCAN page, for key spaces of more than ~1,000 keys). Read-only.

    Raises:
        BrokerConnectionError: Redis cannot be reached.
        InspectError: Redis refused a command (a key of ours holds another type).
    """
    found, dead_models, registered = await _scan(redis, keys)
    found.sort(key=lambda f: (f.model, f.version is not None, f.version or ""))
    models = sorted({f.model for f in found} | dead_models)
    with _errors(redis, keys.prefix):
        pipe = redis.pipeline(transaction=False)
        pipe.time()
        for stream in found:
            pipe.xlen(stream.key)
            pipe.xinfo_groups(stream.key)
            pipe.xinfo_consumers(stream.key, GROUP)
            pipe.xpending(stream.key, GROUP)
        for model in models:
            pipe.xlen(keys.dead(model))
        for worker_id, _ in registered:
            pipe.hgetall(keys.worker(worker_id))
        replies: Sequence[object] = await pipe.execute(raise_on_error=False)
    seconds, micros = cast(tuple[int, int], _check(replies[0], "TIME"))
    now = seconds + micros / 1e6
    at = 1
    streams: dict[str, list[StreamInfo]] = {model: [] for model in models}
    for stream in found:
        backlog, groups, consumers, summary = replies[at : at + 4]
        at += 4
        group, vanished = _group(
            _check(groups, stream.key, missing_ok=True),
            _check(consumers, stream.key, missing_ok=True),
            _check(summary, stream.key, missing_ok=True),
            now,
        )
        if vanished:
            logger.debug("inspect.stream_vanished stream=%s", stream.key)
            continue
        length = _int(_check(backlog, stream.key)) or 0
        streams[stream.model].append(StreamInfo(stream.key, stream.version, length, group))
    infos: list[ModelInfo] = []
    for model in models:
        dead = _int(_check(replies[at], keys.dead(model))) or 0
        at += 1
        if streams[model] or dead:
            infos.append(ModelInfo(model, tuple(streams[model]), keys.dead(model), dead))
    workers: list[WorkerInfo] = []
    gone: list[GoneWorker] = []
    for worker_id, score in registered:
        fields = cast(Mapping[bytes, bytes], _check(replies[at], keys.worker(worker_id)))
        at += 1
        if fields:
            workers.append(_worker(worker_id, fields, now))
        else:
            gone.append(GoneWorker(worker_id, score, max(now - score, 0.0)))
    workers.sort(key=lambda w: (w.host, w.id))
    return Snapshot(keys.prefix, now, tuple(infos), tuple(workers), tuple(gone))
