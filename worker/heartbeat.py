"""The worker's heartbeat, in a thread of its own.

A model that holds the GIL or blocks in C can starve the event loop, never this thread for
long: the heartbeat (registry entry with a TTL) and the claims on in-flight jobs stay fresh,
so a live worker's long job is never taken for a dead one's (dramatiq#692, taskiq-redis#101).

Each beat also reads Redis's clock (``TIME``, for job deadlines: see ``worker.clock``) and
keeps ``<prefix>:workers`` to the living and the recently gone: scores are Redis's time, so
workers' own clocks never matter, and an id whose heartbeat key has expired is removed a minute
after its last beat (until then ``conveyor inspect`` lists it as gone: a crash just now).

Each beat also says what the worker did over the last minute, per model (the ``last_minute``
field, documented in ``broker/fleet.py``): read once a beat from the metrics the jobs update
anyway (no work nor Redis command per job), as the difference between now and the beat a
minute ago, which the thread keeps (worker.minute_stats). And, for the dashboard's model
panel, the settings each model was loaded with (``settings``, serialised once per load:
worker.load_settings) and each model's last errors (``recent_errors``, serialised only when
one was added: worker.recent_errors).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from conveyor.broker import HeartbeatLink
from conveyor.errors import ConveyorError
from conveyor.methods import get_custom_handlers
from conveyor.multiprocess_metrics import LATENCY_BUCKETS
from conveyor.worker.clock import RedisClock
from conveyor.worker.minute_stats import BATCH_BUCKETS, LastMinute, ModelTotals, model_totals
from conveyor.worker.recent_errors import RECENT_ERRORS

__all__ = ("Heartbeat", "ModelTotals", "WorkerStats", "model_totals", "rest_routes")

GONE_LISTED_S = 60.0  # how long a worker gone without unregistering stays in the registry


logger = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    """Counters the loop updates and the heartbeat thread reads (plain ints: GIL-atomic)."""

    in_flight: dict[bytes, str] = field(default_factory=dict)  # entry id -> job stream
    done: int = 0
    models: list[str] = field(default_factory=list)  # every model of its folders
    # What clients read before sending (broker/fleet.py): the models being loaded, the ones
    # served, and the ones whose load() returned False. Replaced whole, never mutated.
    loading: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # the served models' custom handlers with a REST path, for gateways (see rest_routes)
    rest: str = ""
    started: float = field(default_factory=time.time)
    # the served models' load settings, JSON (worker.load_settings; set at each load/unload)
    settings: str = "[]"
    # each model's totals so far (set by the job runner; read once a beat: `last_minute`)
    totals: Callable[[], dict[str, ModelTotals]] | None = None


def rest_routes(models: Iterable[tuple[str, object]]) -> str:
    """The heartbeat's ``rest`` field: each custom handler marked with a ``rest_path``
    (``custom_handler(rest_path=..., rest_method=...)``) of the ``(name, instance)`` served,
    as lines ``<model> <HTTP method> <path> <handler>``. Gateways route those paths to it."""
    lines = []
    for name, model in models:
        for handler, method in get_custom_handlers(model).items():
            marks = getattr(method, "__custom_handler__", None) or {}
            path, verb = marks.get("rest_path"), marks.get("rest_method") or "POST"
            if isinstance(path, str) and path.startswith("/") and " " not in path:
                lines.append(f"{name} {str(verb).upper()} {path} {handler}")
    return "\n".join(sorted(set(lines)))


class Heartbeat:
    """Writes ``<prefix>:worker:<id>`` every ``ttl_s / 3`` seconds until stopped, through
    the links ``connect`` makes (``WorkerBroker.heartbeat_link``, called in the thread)."""

    def __init__(
        self,
        connect: Callable[[], HeartbeatLink],
        worker_id: str,
        stats: WorkerStats,
        ttl_s: float,
        clock: RedisClock | None = None,
    ) -> None:
        self._connect = connect
        self._clock = clock or RedisClock()
        self._worker_id = worker_id
        self._stats = stats
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._wake = threading.Event()  # beat now: the worker's models changed state
        self._last_errors: set[str] = set()
        self._last_minute = LastMinute(LATENCY_BUCKETS, time.time(), BATCH_BUCKETS)
        self._errors = (-1, "{}")  # RECENT_ERRORS.changes when serialised, and its field
        self._thread = threading.Thread(target=self._run, name="conveyor-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def beat_soon(self) -> None:
        """Beats at once rather than at the next period: clients waiting on a model's state
        (loading, ready, failed) see the change within a round trip."""
        self._wake.set()

    def stop(self, unregister: bool = True) -> None:
        """Stops the thread; with ``unregister``, removes the registry entry (bounded)."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is None:
            return  # never started: nothing was registered
        self._thread.join(timeout=5)
        if unregister:
            try:
                link = self._connect()
                try:
                    link.unregister()
                finally:
                    link.close()
            except ConveyorError as error:
                logger.warning(
                    "worker.unregister_failed worker=%s error=%s", self._worker_id, error
                )

    def beat_once(self, link: HeartbeatLink) -> None:
        stats = self._stats
        # Its own round trip: Redis Cluster refuses a keyless command in a pipeline.
        refused = self._read_clock(link)
        now = time.time()
        redis_now = now + self._clock.offset  # the registry's scores are Redis's time
        in_flight = dict(stats.in_flight)
        fields: dict[str, str | int] = {
            "id": self._worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": ",".join(stats.models),
            "loading": ",".join(stats.loading),
            "ready": ",".join(stats.ready),
            "failed": ",".join(stats.failed),
            "rest": stats.rest,
            # on Redis's clock, as `conveyor inspect` reads them (its "now" is TIME)
            "started": f"{stats.started + self._clock.offset:.3f}",
            "heartbeat": f"{redis_now:.3f}",
            "in_flight": len(in_flight),
            "done": stats.done,
            "ttl": f"{self._ttl_s:g}",
        }
        if stats.totals is not None:
            fields["last_minute"] = self._last_minute.field(now, stats.totals())
        fields["settings"] = stats.settings
        fields["recent_errors"] = self._recent_errors()
        # workers silent for long: killed ones never unregister (see _forget_dead)
        silent_for = max(GONE_LISTED_S, 3 * self._ttl_s)
        # Reset the idle time of every job this worker still runs: reclaim goes by idle
        # time, so a job is only ever taken from a worker whose heartbeat stopped.
        beat = link.beat(fields, self._ttl_s, redis_now, silent_for, in_flight)
        if beat.silent:
            self._forget_dead(link, beat.silent)
        # A refused command (an ACL without HSET or XCLAIM, say) must not go unnoticed: this
        # worker would drop out of the registry, or lose its jobs to a reclaim.
        errors = set(beat.refused) | ({refused} if refused is not None else set())
        if errors != self._last_errors:
            for error in sorted(errors):
                logger.error("worker.heartbeat_refused worker=%s error=%s", self._worker_id, error)
            self._last_errors = errors

    def _recent_errors(self) -> str:
        """The ``recent_errors`` field, serialised again only when an error was recorded."""
        changes = RECENT_ERRORS.changes
        if changes != self._errors[0]:
            self._errors = (changes, RECENT_ERRORS.field(self._clock.offset))
        return self._errors[1]

    def _read_clock(self, link: HeartbeatLink) -> str | None:
        """Reads Redis's clock (``TIME``); an ACL that refuses it is reported (its text
        returned), and the last offset kept (deadlines then lean on this host's clock)."""
        before = time.time()
        redis_time = link.time()
        if isinstance(redis_time, str):
            return redis_time
        self._clock.observe(redis_time, before, time.time())
        return None

    def _forget_dead(self, link: HeartbeatLink, silent: list[str]) -> None:
        """Removes from the registry the silent workers whose heartbeat key has expired (by
        Redis's clock); one that is alive after all (its beats failed a while) keeps its key."""
        dead = link.forget_dead([worker_id for worker_id in silent if worker_id != self._worker_id])
        if dead:
            logger.info("worker.forgot_dead workers=%s", ",".join(dead))

    def _run(self) -> None:
        link: HeartbeatLink | None = None
        interval = self._ttl_s / 3
        while not self._stop.is_set():
            try:
                if link is None:
                    link = self._connect()
                self.beat_once(link)
            except (ConveyorError, OSError) as error:
                logger.warning("worker.heartbeat_failed worker=%s error=%s", self._worker_id, error)
                if link is not None:
                    _close(link)
                link = None
            self._wake.wait(interval)
            self._wake.clear()
        if link is not None:
            _close(link)


def _close(link: HeartbeatLink) -> None:
    # closing a client whose connection failed: nothing left to release
    with contextlib.suppress(ConveyorError):
        link.close()
