"""The worker's heartbeat, in a thread of its own.

A model that holds the GIL or blocks in C can starve the event loop, never this thread for
long: the heartbeat (registry entry with a TTL) and the claims on in-flight jobs stay fresh,
so a live worker's long job is never taken for a dead one's (dramatiq#692, taskiq-redis#101).

Each beat also reads Redis's clock (``TIME``, for job deadlines: see ``worker.clock``) and
keeps ``<prefix>:workers`` to the living and the recently gone: scores are Redis's time, so
workers' own clocks never matter, and an id whose heartbeat key has expired is removed a minute
after its last beat (until then ``conveyor inspect`` lists it as gone: a crash just now).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from conveyor.broker.keys import GROUP, Keys
from conveyor.worker.clock import RedisClock

__all__ = ("Heartbeat", "WorkerStats")

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
    started: float = field(default_factory=time.time)


class Heartbeat:
    """Writes ``<prefix>:worker:<id>`` every ``ttl_s / 3`` seconds until stopped."""

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        keys: Keys,
        worker_id: str,
        stats: WorkerStats,
        ttl_s: float,
        clock: RedisClock | None = None,
    ) -> None:
        self._connect = connect
        self._clock = clock or RedisClock()
        self._keys = keys
        self._worker_id = worker_id
        self._stats = stats
        self._ttl_s = ttl_s
        self._stop = threading.Event()
        self._wake = threading.Event()  # beat now: the worker's models changed state
        self._last_errors: set[str] = set()
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
                client = self._connect()
                with client.pipeline(transaction=False) as pipe:
                    pipe.execute_command("DEL", self._keys.worker(self._worker_id))  # type: ignore[no-untyped-call]
                    pipe.zrem(self._keys.workers(), self._worker_id)
                    pipe.execute()
                client.close()
            except redis.RedisError as error:
                logger.warning(
                    "worker.unregister_failed worker=%s error=%s", self._worker_id, error
                )

    def beat_once(self, client: redis.Redis) -> None:
        stats = self._stats
        # Its own round trip: Redis Cluster refuses a keyless command in a pipeline.
        refused = self._read_clock(client)
        now = time.time()
        redis_now = now + self._clock.offset  # the registry's scores are Redis's time
        key = self._keys.worker(self._worker_id)
        in_flight = dict(stats.in_flight)
        with client.pipeline(transaction=False) as pipe:
            pipe.hset(
                key,
                mapping={
                    "id": self._worker_id,
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "models": ",".join(stats.models),
                    "loading": ",".join(stats.loading),
                    "ready": ",".join(stats.ready),
                    "failed": ",".join(stats.failed),
                    # on Redis's clock, as `conveyor inspect` reads them (its "now" is TIME)
                    "started": f"{stats.started + self._clock.offset:.3f}",
                    "heartbeat": f"{redis_now:.3f}",
                    "in_flight": len(in_flight),
                    "done": stats.done,
                    "ttl": f"{self._ttl_s:g}",
                },
            )
            pipe.pexpire(key, int(self._ttl_s * 1000))
            pipe.zadd(self._keys.workers(), {self._worker_id: redis_now})
            # workers silent for long: killed ones never unregister (see _forget_dead)
            silent_for = max(GONE_LISTED_S, 3 * self._ttl_s)
            pipe.zrangebyscore(self._keys.workers(), "-inf", redis_now - silent_for)
            # Reset the idle time of every job this worker still runs: reclaim goes by idle
            # time, so a job is only ever taken from a worker whose heartbeat stopped.
            for entry_id, stream in in_flight.items():
                pipe.xclaim(stream, GROUP, self._worker_id, 0, [entry_id], justid=True)
            results = pipe.execute(raise_on_error=False)
        silent = results[3]  # after HSET, PEXPIRE, ZADD; before the claims
        if isinstance(silent, list) and silent:
            self._forget_dead(client, [_text(worker_id) for worker_id in silent])
        # A refused command (an ACL without HSET or XCLAIM, say) must not go unnoticed: this
        # worker would drop out of the registry, or lose its jobs to a reclaim.
        # (A NOGROUP on a claim refresh only means the stream was deleted: the loop sees it.)
        errors = {
            str(r) for r in [*results, refused] if isinstance(r, redis.exceptions.NoPermissionError)
        }
        if errors != self._last_errors:
            for error in sorted(errors):
                logger.error("worker.heartbeat_refused worker=%s error=%s", self._worker_id, error)
            self._last_errors = errors

    def _read_clock(self, client: redis.Redis) -> redis.exceptions.NoPermissionError | None:
        """Reads Redis's clock (``TIME``); an ACL that refuses it is reported, and the last
        offset kept (deadlines then lean on this host's clock being right)."""
        before = time.time()
        try:
            seconds, micros = client.time()
        except redis.exceptions.NoPermissionError as error:
            return error
        self._clock.observe((int(seconds), int(micros)), before, time.time())
        return None

    def _forget_dead(self, client: redis.Redis, silent: list[str]) -> None:
        """Removes from the registry the silent workers whose heartbeat key has expired (by
        Redis's clock); one that is alive after all (its beats failed a while) keeps its key."""
        silent = [worker_id for worker_id in silent if worker_id != self._worker_id]
        with client.pipeline(transaction=False) as pipe:
            for worker_id in silent:
                pipe.execute_command("EXISTS", self._keys.worker(worker_id))  # type: ignore[no-untyped-call]
            alive = pipe.execute()
        dead = [worker_id for worker_id, exists in zip(silent, alive, strict=True) if not exists]
        if dead:
            client.zrem(self._keys.workers(), *dead)
            logger.info("worker.forgot_dead workers=%s", ",".join(dead))

    def _run(self) -> None:
        client: redis.Redis | None = None
        interval = self._ttl_s / 3
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._connect()
                self.beat_once(client)
            except (redis.RedisError, OSError) as error:
                logger.warning("worker.heartbeat_failed worker=%s error=%s", self._worker_id, error)
                if client is not None:
                    client.close()
                client = None
            self._wake.wait(interval)
            self._wake.clear()
        if client is not None:
            client.close()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
