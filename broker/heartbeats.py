"""The heartbeat thread's Redis: one worker's registry entry, its claims, Redis's clock.

A worker's heartbeat runs in a thread of its own (``worker/heartbeat.py``), so it talks to
Redis through redis-py's blocking client, made by :meth:`WorkerBroker.heartbeat_link`. Each
beat writes ``<prefix>:worker:<id>`` (a hash with a TTL), scores the worker in
``<prefix>:workers`` by Redis's time, resets the idle time of every job it still runs (reclaim
goes by idle time, so a job is only ever taken from a worker whose heartbeat stopped), and
lists the workers silent for long.

Errors leave as Conveyor's (translated as :class:`WorkerBroker` does): a failed
connection as ``BrokerConnectionError``. A command an ACL refuses inside a beat is no failure
of the beat: it comes back as text in :attr:`Beat.refused`, for the worker to report.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass

import redis

from conveyor.broker.keys import GROUP, Keys

__all__ = ("Beat", "HeartbeatLink")


@dataclass(frozen=True, slots=True)
class Beat:
    """What one beat found: the workers silent for long, and the commands Redis refused."""

    silent: list[str]
    refused: list[str]


class HeartbeatLink:
    """One worker's heartbeat connection (thread side). Close it with :meth:`close`."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        worker_id: str,
        translated: AbstractContextManager[None],
    ) -> None:
        self._client = client
        self._keys = keys
        self._worker_id = worker_id
        self._translated = translated  # Redis's errors as Conveyor's (see WorkerBroker)

    def close(self) -> None:
        with self._translated:
            self._client.close()

    def time(self) -> tuple[int, int] | str:
        """Redis's ``TIME`` (seconds, microseconds), or the refusal's text when an ACL
        refuses the command."""
        with self._translated:
            try:
                seconds, micros = self._client.time()
            except redis.exceptions.NoPermissionError as error:
                return str(error)
        return int(seconds), int(micros)

    def beat(
        self,
        fields: Mapping[str, str | int],
        ttl_s: float,
        redis_now: float,
        silent_for: float,
        in_flight: Mapping[bytes, str],
    ) -> Beat:
        """Writes the worker's entry (``fields``, expiring in ``ttl_s``), its score
        ``redis_now``, and refreshes the claim on each job ``in_flight`` (entry id -> job
        stream); returns the workers silent ``silent_for`` seconds or more."""
        key = self._keys.worker(self._worker_id)
        with self._translated, self._client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]  # invariant key type
            pipe.pexpire(key, int(ttl_s * 1000))
            pipe.zadd(self._keys.workers(), {self._worker_id: redis_now})
            # workers silent for long: killed ones never unregister (see forget_dead)
            pipe.zrangebyscore(self._keys.workers(), "-inf", redis_now - silent_for)
            for entry_id, stream in in_flight.items():
                pipe.xclaim(stream, GROUP, self._worker_id, 0, [entry_id], justid=True)
            results = pipe.execute(raise_on_error=False)
        silent = results[3]  # after HSET, PEXPIRE, ZADD; before the claims
        # (A NOGROUP on a claim refresh only means the stream was deleted: the loop sees it.)
        refused = [str(r) for r in results if isinstance(r, redis.exceptions.NoPermissionError)]
        listed = [_text(worker_id) for worker_id in silent] if isinstance(silent, list) else []
        return Beat(listed, refused)

    def forget_dead(self, silent: list[str]) -> list[str]:
        """Removes from the registry the ``silent`` workers whose heartbeat key has expired
        (by Redis's clock); returns them. One alive after all (its beats failed a while)
        keeps its key, and its place."""
        with self._translated:
            with self._client.pipeline(transaction=False) as pipe:
                for worker_id in silent:
                    pipe.execute_command("EXISTS", self._keys.worker(worker_id))  # type: ignore[no-untyped-call]
                alive = pipe.execute()
            dead = [w for w, exists in zip(silent, alive, strict=True) if not exists]
            if dead:
                self._client.zrem(self._keys.workers(), *dead)
        return dead

    def unregister(self) -> None:
        """Removes the worker's entry from the registry."""
        with self._translated, self._client.pipeline(transaction=False) as pipe:
            pipe.execute_command("DEL", self._keys.worker(self._worker_id))  # type: ignore[no-untyped-call]
            pipe.zrem(self._keys.workers(), self._worker_id)
            pipe.execute()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value
