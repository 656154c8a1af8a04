"""Which models the fleet serves, as the workers' heartbeats say: read before a call is sent.

Each worker's heartbeat hash ``<prefix>:worker:<id>`` (written by ``worker/heartbeat.py``,
with a TTL) lists, as comma-separated model names:

- ``models``: every model of its folders;
- ``loading``: the models it is loading now (set from before the first load, so a client
  sees a starting worker);
- ``ready``: the models it serves (their job streams' groups exist by then);
- ``failed``: the models whose ``load()`` returned False (a ``load()`` that raises stops the
  worker instead);
- ``rest``: its served models' custom handlers with a REST path, one per line:
  ``<model> <HTTP method> <path> <handler>`` (what gateways route; absent from older workers).

It also holds ``id``, ``host``, ``pid``, ``started`` and ``heartbeat`` (unix seconds on Redis's
clock), ``in_flight``, ``done`` (jobs since it started), ``ttl``, and three JSON fields that
older workers lack (readers take a missing or malformed one as empty):

- ``last_minute``: what it did over about the last minute, read once a beat from its metrics
  (no work per job): ``{"s": <window seconds>, "le": [<bucket bounds, s>], "batch_le":
  [<batch-size bucket bounds>], "models": {<model>: {"calls": <finished jobs>, "errors":
  <failed ones: model errors, refusals, deadlines, ...>, "counts": [...], "wait": [...],
  "run": [...], "batches": [...], "batch_rows": <requests in those batches>}}}``, only the
  models with jobs in the window. Each list is a histogram's count per bucket (not
  cumulative; the last one +Inf): ``counts`` the job time (taken -> answer stored), ``wait``
  the queue wait (sent -> taken), ``run`` the model calls' run time (a batch's call counts
  once), each over ``le``; ``batches`` the adaptive batches' sizes over ``batch_le``.
  ``wait`` and ``run`` are left out when empty, ``batches`` and ``batch_rows`` when the model
  ran no batch. Summed over workers (rates as calls / s, histograms bucket by bucket), it gives
  ``conveyor inspect``'s calls/s, errors and p50/p99 and the dashboard's model panel
  (``conveyor.broker.ops.fleet_report.model_load``).
- ``settings``: the served model instances as they were loaded, serialised once per load or
  unload: ``[{"name", "version", "implementation", "platform", "max_batch_size",
  "max_batch_time", "max_concurrent_calls", "calls_at_once" (the calls it takes at once;
  null: unbounded), "parallel_workers", "timeout", "max_deliveries", "max_queue_length",
  "max_payload_bytes", "inputs", "outputs" (tensor names), "parameters": {"uri", "format",
  "content_type", <its other keys>, "extra": {...}}}]``. In ``parameters`` every value whose
  key :func:`looks_secret` is ``"<redacted>"`` (at any depth), a URI's password too, and long
  texts are cut: it never holds a secret.
- ``recent_errors``: each model's last 10 error answers, oldest first, serialised only when
  one was added: ``{<model>: [{"t": <unix seconds, Redis's clock>, "id": <request id>,
  "kind": <error code: model_error, deadline, cancelled, bad_entry, ...>, "type": <exception
  type name>, "message": <its message, cut to 300 characters>}]}``.

:func:`read_fleet` reads them with ``ZRANGE <prefix>:workers`` and one pipeline of ``HGET``s
(a worker id whose hash has expired is a dead worker: skipped). :func:`has_group` tells
whether a job stream has the workers' consumer group, i.e. whether a worker ever served it.
Both return None when an ACL refuses their commands, and raise redis-py's other errors
(callers translate them).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import redis as sync_redis
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from conveyor.broker.keys import GROUP, Keys

__all__ = (
    "FIELDS",
    "REDACTED",
    "FleetView",
    "RestRoute",
    "WorkerState",
    "has_group",
    "looks_secret",
    "read_fleet",
    "read_fleet_sync",
)

# the heartbeat fields read here, in this order
FIELDS = ("models", "loading", "ready", "failed", "rest")
# setting names whose values are secrets: password, api_token, secret_key, auth, ...
_SECRET = re.compile(r"pass|secret|token|key|auth|credential|cookie|private", re.IGNORECASE)


def looks_secret(name: str) -> bool:
    """Whether a setting named ``name`` may hold a secret (its value is never published)."""
    return _SECRET.search(name) is not None


REDACTED: Final = "<redacted>"  # what a secret-looking setting's value is published (and shown) as


@dataclass(frozen=True, slots=True)
class RestRoute:
    """A custom handler that a model serves at a REST path (``custom_handler(rest_path=…)``)."""

    model: str
    method: str  # HTTP's: GET, POST, ...
    path: str
    handler: str  # the model's method, called by name


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One live worker's models, from its heartbeat."""

    worker: str
    models: frozenset[str]
    loading: frozenset[str]
    ready: frozenset[str]
    failed: frozenset[str]
    rest: tuple[RestRoute, ...] = ()


@dataclass(frozen=True, slots=True)
class FleetView:
    """The live workers, and what they say of their models."""

    workers: tuple[WorkerState, ...] = field(default_factory=tuple)

    def ready(self) -> list[str]:
        """Every model some live worker serves, sorted."""
        return sorted({name for w in self.workers for name in w.ready})

    def serving(self, model: str) -> list[str]:
        return [w.worker for w in self.workers if model in w.ready]

    def loading(self, model: str) -> list[str]:
        return [w.worker for w in self.workers if model in w.loading]

    def failed(self, model: str) -> list[str]:
        return [w.worker for w in self.workers if model in w.failed]

    def routes(self) -> dict[tuple[str, str], RestRoute]:
        """The custom REST routes of the served models, by (HTTP method, path)."""
        return {(r.method, r.path): r for w in self.workers for r in w.rest}

    def having(self, model: str) -> list[str]:
        """The live workers with ``model`` in their folders, loaded or not."""
        return [w.worker for w in self.workers if model in w.models]


def _names(value: object) -> frozenset[str]:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str) or not value:
        return frozenset()
    return frozenset(name for name in value.split(",") if name)


def _routes(value: object) -> tuple[RestRoute, ...]:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if not isinstance(value, str):
        return ()
    parts = (line.split(" ") for line in value.splitlines())
    return tuple(RestRoute(*part) for part in parts if len(part) == 4)


def _view(ids: Iterable[object], values: list[Any]) -> FleetView:
    workers = []
    width = len(FIELDS)
    for i, worker_id in enumerate(ids):
        row = values[i * width : (i + 1) * width]
        if all(value is None for value in row):
            continue  # its heartbeat expired: a dead worker not yet forgotten
        name = (
            worker_id.decode(errors="replace") if isinstance(worker_id, bytes) else str(worker_id)
        )
        models, loading, ready, failed = (_names(value) for value in row[:4])
        workers.append(WorkerState(name, models, loading, ready, failed, _routes(row[4])))
    return FleetView(tuple(workers))


def _worker_ids(members: object) -> list[object]:
    return list(members) if isinstance(members, list | tuple) else []


async def read_fleet(redis: Redis, keys: Keys) -> FleetView | None:
    """The live workers' model lists, in two round trips; None when the ACL refuses a read
    (the caller cannot tell, and goes on as if the model were served)."""
    try:
        ids = _worker_ids(await redis.zrange(keys.workers(), 0, -1))
        if not ids:
            return FleetView()
        pipe = redis.pipeline(transaction=False)
        for worker_id in ids:
            key = keys.worker(
                worker_id.decode() if isinstance(worker_id, bytes) else str(worker_id)
            )
            for name in FIELDS:
                pipe.hget(key, name)
        return _view(ids, await pipe.execute())
    except redis_errors.NoPermissionError:
        return None


def read_fleet_sync(redis: sync_redis.Redis, keys: Keys) -> FleetView:
    """:func:`read_fleet` with redis-py's blocking client (for threads)."""
    ids = _worker_ids(redis.zrange(keys.workers(), 0, -1))
    if not ids:
        return FleetView()
    with redis.pipeline(transaction=False) as pipe:
        for worker_id in ids:
            key = keys.worker(
                worker_id.decode() if isinstance(worker_id, bytes) else str(worker_id)
            )
            for name in FIELDS:
                pipe.hget(key, name)
        values = pipe.execute()
    return _view(ids, values)


async def has_group(redis: Redis, stream: str) -> bool | None:
    """Whether ``stream`` has the workers' consumer group (a worker served it once); None
    when the ACL refuses ``XINFO GROUPS``."""
    try:
        groups = await redis.xinfo_groups(stream)
    except redis_errors.NoPermissionError:
        return None
    except redis_errors.ResponseError:
        return False  # no such stream
    return any(group.get("name") in (GROUP, GROUP.encode()) for group in groups)
