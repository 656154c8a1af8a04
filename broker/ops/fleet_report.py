"""What ``conveyor inspect`` shows: a read-only picture of the fleet at one moment, and the
delivery rates between two such pictures.

Every figure is what a plain ``redis-cli`` command returns (README.md, "Keys, and looking at
them with redis-cli"); :func:`conveyor.broker.ops.fleet_snapshot.snapshot` gathers them. Ages
are measured against the Redis server's clock (``TIME``), the one clock every worker and client
shares. A worker id left in ``<prefix>:workers`` whose heartbeat hash has expired is reported
apart, as gone: it stopped without unregistering (killed, or its host died).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from conveyor.broker.ops.heartbeat_fields import (
    LoadSettings,
    RecentError,
    parse_recent_errors,
    parse_settings,
)
from conveyor.errors import ConveyorError

__all__ = (
    "ConsumerInfo",
    "GoneWorker",
    "GroupInfo",
    "InspectError",
    "LastMinute",
    "LoadSettings",
    "ModelInfo",
    "ModelLoad",
    "ModelMinute",
    "RecentError",
    "Snapshot",
    "StreamInfo",
    "WorkerInfo",
    "delivery_rates",
    "model_load",
    "parse_last_minute",
    "parse_recent_errors",
    "parse_settings",
)


class InspectError(ConveyorError):
    """Redis refused a command of the snapshot (say, ``<prefix>:workers`` is not a zset)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer of a job stream's group (``XINFO CONSUMERS``); its name is a worker id."""

    name: str
    pending: int  # jobs delivered to it and not yet acked
    idle_ms: int  # ms since its last read or claim: XINFO CONSUMERS' own figure and unit


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The ``workers`` group of a job stream (``XINFO GROUPS`` and the ``XPENDING`` summary)."""

    lag: int | None  # entries not yet delivered; None when Redis cannot tell (after an XDEL)
    pending: int  # delivered, not yet acked: jobs running (or lost with their worker)
    entries_read: int | None  # delivered to the group since it was made; None: unknown yet
    last_delivered_id: str
    consumers: tuple[ConsumerInfo, ...]
    oldest_pending_id: str | None
    oldest_pending_age_s: float | None  # Redis's clock minus that entry id's time


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One job stream of a model: the main one (``version`` None) or a version's."""

    key: str
    version: str | None
    backlog: int  # XLEN: queued plus running jobs (workers XDEL a job once answered)
    group: GroupInfo | None  # None: no worker ever read this stream


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model with a job stream or a dead-letter stream under the prefix."""

    name: str
    streams: tuple[StreamInfo, ...]  # the main stream first, then versions by name
    dead_key: str
    dead_letters: int  # XLEN of dead_key

    @property
    def backlog(self) -> int:
        return sum(stream.backlog for stream in self.streams)

    @property
    def pending(self) -> int:
        return sum(stream.group.pending for stream in self.streams if stream.group)


@dataclass(frozen=True, slots=True)
class ModelMinute:
    """One model's jobs on one worker over its heartbeat's window: finished, failed, and the
    count per bucket (not cumulative; the last one is +Inf) of the job time, the queue wait
    and the model calls' run time (empty from older workers), and of adaptive batches' sizes
    with their rows summed (empty when the model ran no batch)."""

    calls: int
    errors: int
    counts: tuple[int, ...]
    wait: tuple[int, ...] = ()
    run: tuple[int, ...] = ()
    batches: tuple[int, ...] = ()
    batch_rows: float = 0.0


@dataclass(frozen=True, slots=True)
class LastMinute:
    """A worker's heartbeat field ``last_minute`` (see ``conveyor.broker.fleet``)."""

    window_s: float  # about a minute (less for a worker started since)
    bounds: tuple[float, ...]  # the histograms' bucket bounds (``le``), +Inf left out
    models: dict[str, ModelMinute]
    batch_bounds: tuple[float, ...] = ()  # the batch sizes' bucket bounds (``batch_le``)


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """One model over the last minute, the live workers' ``last_minute`` summed: what
    ``conveyor inspect`` shows beside the backlog (and the dashboard's model panel)."""

    calls_per_s: float
    errors: int  # failed jobs (model errors, refusals, deadlines, ...) in the last minute
    p50_s: float | None  # job time (taken -> answer stored), from the merged histograms
    p99_s: float | None
    wait_p50_s: float | None = None  # queue wait (sent -> taken); None: no worker says
    wait_p99_s: float | None = None
    run_p50_s: float | None = None  # one model call (a batch counts once)
    run_p99_s: float | None = None
    batches_per_s: float | None = None  # adaptive batches run; None: none ran
    batch_mean: float | None = None  # requests per batch
    batch_p99: float | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker: its heartbeat hash ``<prefix>:worker:<id>`` (None: field missing or
    unreadable)."""

    id: str
    host: str
    pid: int | None
    models: tuple[str, ...]  # every model of its folders
    # the models it serves now (its heartbeat's `ready`; a worker of an older version, which
    # does not say, is taken to serve all of its models)
    ready: tuple[str, ...]
    in_flight: int | None
    done: int | None
    started: float | None  # unix seconds
    heartbeat: float | None  # unix seconds of its last heartbeat
    uptime_s: float | None
    heartbeat_age_s: float | None  # seconds since its last heartbeat
    ttl_s: float | None  # how long its hash outlives a heartbeat
    last_minute: LastMinute | None = field(default=None)  # None: an older worker's
    settings: tuple[LoadSettings, ...] = ()  # () from an older worker
    recent_errors: dict[str, tuple[RecentError, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GoneWorker:
    """An id still in ``<prefix>:workers`` whose heartbeat hash has expired."""

    id: str
    heartbeat: float  # its score: the unix seconds of its last heartbeat
    heartbeat_age_s: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet at one moment of the Redis server's clock."""

    prefix: str
    time: float  # Redis's TIME, unix seconds
    models: tuple[ModelInfo, ...]
    workers: tuple[WorkerInfo, ...]
    gone: tuple[GoneWorker, ...]


def _read_so_far(group: GroupInfo) -> int | None:
    # A group made at id 0 reports entries-read as nil until its first read: it read 0.
    if group.entries_read is None and group.last_delivered_id == "0-0":
        return 0
    return group.entries_read


def delivery_rates(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """Jobs per second delivered to each stream's group between two snapshots.

    The ``entries-read`` delta over the Redis clock's delta (a group that has delivered
    nothing yet counts 0). A stream missing from either snapshot, whose entries read are
    unknown, or whose count went down (the stream was deleted and made again) is left out.
    """
    elapsed = after.time - before.time
    if elapsed <= 0:
        return {}
    earlier = {
        stream.key: _read_so_far(stream.group)
        for model in before.models
        for stream in model.streams
        if stream.group is not None
    }
    rates: dict[str, float] = {}
    for model in after.models:
        for stream in model.streams:
            if stream.group is None or stream.group.entries_read is None:
                continue
            previous = earlier.get(stream.key)
            if previous is None:
                continue
            delta = stream.group.entries_read - previous
            if delta >= 0:
                rates[stream.key] = delta / elapsed
    return rates


def _quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """As Prometheus's ``histogram_quantile``: linear within the bucket that holds the rank;
    in the +Inf bucket, the highest bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank, seen = q * total, 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(bounds):
                return bounds[-1] if bounds else None
            low = bounds[index - 1] if index else 0.0
            return low + (bounds[index] - low) * (rank - seen) / count
        seen += count
    return bounds[-1] if bounds else None


class _Merged:
    """One histogram summed over workers, bucket by bucket where their bounds agree."""

    def __init__(self) -> None:
        self.bounds: tuple[float, ...] | None = None
        self.counts: list[int] = []

    def add(self, bounds: tuple[float, ...], counts: tuple[int, ...]) -> None:
        if len(counts) != len(bounds) + 1 or self.bounds not in (None, bounds):
            return
        if self.bounds is None:
            self.bounds, self.counts = bounds, [0] * len(counts)
        for index, count in enumerate(counts):
            self.counts[index] += count

    def quantile(self, q: float) -> float | None:
        return None if self.bounds is None else _quantile(q, self.bounds, self.counts)


def model_load(shot: Snapshot) -> dict[str, ModelLoad]:
    """Each model's calls/s, errors and p50/p99 job time over the last minute, from the live
    workers' heartbeats (histograms merged only where their buckets agree); and, where the
    workers say, queue wait and run time p50/p99, and adaptive batches' rate and sizes."""
    rates: dict[str, float] = {}
    errors: dict[str, int] = {}
    batch_rates: dict[str, float] = {}
    rows: dict[str, float] = {}
    merged: dict[tuple[str, str], _Merged] = {}
    for worker in shot.workers:
        minute = worker.last_minute
        if minute is None:
            continue
        for name, one in minute.models.items():
            rates[name] = rates.get(name, 0.0) + one.calls / minute.window_s
            errors[name] = errors.get(name, 0) + one.errors
            for kind, counts in (("job", one.counts), ("wait", one.wait), ("run", one.run)):
                merged.setdefault((name, kind), _Merged()).add(minute.bounds, counts)
            if any(one.batches):
                merged.setdefault((name, "batch"), _Merged()).add(minute.batch_bounds, one.batches)
                batch_rates[name] = batch_rates.get(name, 0.0) + sum(one.batches) / minute.window_s
                rows[name] = rows.get(name, 0.0) + one.batch_rows
    load = {}
    for name, rate in sorted(rates.items()):

        def quantile(kind: str, q: float, name: str = name) -> float | None:
            found = merged.get((name, kind))
            return None if found is None else found.quantile(q)

        batches = batch_rates.get(name)
        load[name] = ModelLoad(
            rate,
            errors[name],
            quantile("job", 0.5),
            quantile("job", 0.99),
            quantile("wait", 0.5),
            quantile("wait", 0.99),
            quantile("run", 0.5),
            quantile("run", 0.99),
            batches,
            rows[name] / sum(merged[(name, "batch")].counts) if batches else None,
            quantile("batch", 0.99),
        )
    return load


def _ints(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(type(c) is int for c in value):
        return tuple(value)
    return None


def _bounds(value: object) -> tuple[float, ...] | None:
    if isinstance(value, list) and all(
        isinstance(b, int | float) and not isinstance(b, bool) for b in value
    ):
        return tuple(float(b) for b in value)
    return None


def parse_last_minute(data: object) -> LastMinute | None:
    """The ``last_minute`` field's JSON (already loaded), or None if it is not one (a
    crafted or newer heartbeat). An older worker's lacks queue wait, run time and batches."""
    if not isinstance(data, dict):
        return None
    window, bounds, models = data.get("s"), _bounds(data.get("le")), data.get("models")
    if not (
        isinstance(window, int | float)
        and math.isfinite(window)
        and window > 0
        and bounds is not None
        and isinstance(models, dict)
    ):
        return None
    parsed: dict[str, ModelMinute] = {}
    for name, one in models.items():
        if not isinstance(one, dict):
            continue
        calls, failed, counts = one.get("calls"), one.get("errors"), _ints(one.get("counts"))
        if counts is None or not (isinstance(calls, int) and isinstance(failed, int)):
            continue
        rows = one.get("batch_rows", 0.0)
        parsed[str(name)] = ModelMinute(
            calls,
            failed,
            counts,
            _ints(one.get("wait")) or (),
            _ints(one.get("run")) or (),
            _ints(one.get("batches")) or (),
            float(rows) if isinstance(rows, int | float) and math.isfinite(rows) else 0.0,
        )
    batch_bounds = _bounds(data.get("batch_le")) or ()
    return LastMinute(float(window), bounds, parsed, batch_bounds)
