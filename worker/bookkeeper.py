"""The worker's share of the fleet's bookkeeping (see ``broker/bookkeeping.py``): it reads
Redis's clock at start, sweeps away consumers of dead workers now and then, and leaves the
consumer groups when it stops. Each step is best effort: a failure (an ACL user without
the commands, say) is logged with what to do, and the worker serves on."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from conveyor.broker import WorkerBroker
from conveyor.errors import ConveyorError
from conveyor.worker.answers import describe
from conveyor.worker.clock import RedisClock

__all__ = ("Bookkeeper",)

logger = logging.getLogger(__name__)


class Bookkeeper:
    """One worker's bookkeeping, as consumer ``broker.consumer``."""

    def __init__(self, broker: WorkerBroker, clock: RedisClock, heartbeat_ttl: float) -> None:
        self._broker = broker
        self._clock = clock
        self._ttl = heartbeat_ttl
        self._next_sweep = 0.0  # monotonic time of the next look for dead workers' consumers

    async def read_clock(self) -> None:
        """Reads Redis's clock (the heartbeat reads it again on every beat)."""
        broker = self._broker
        try:
            self._clock.observe(*await broker.redis_time())
        except ConveyorError as error:  # an ACL without TIME, say: the worker serves on
            logger.error(
                "worker.clock_unknown worker=%s error=%s: deadlines are measured as if this "
                "host's clock were Redis's (an ACL user needs +time: README, Security)",
                broker.consumer,
                describe(error),
            )

    async def sweep(self, job_streams: Sequence[str]) -> None:
        """Once a heartbeat TTL: deletes the consumers of dead workers that own nothing (so
        call it after reclaiming their jobs)."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self._ttl
        broker = self._broker
        try:
            deleted = await broker.delete_dead_consumers(job_streams, self._ttl)
        except ConveyorError as error:  # the jobs go on; their next read says if Redis is gone
            logger.warning(
                "worker.consumers_kept worker=%s error=%s (an ACL user needs "
                "+xinfo|consumers and +xgroup|delconsumer: README, Security)",
                broker.consumer,
                describe(error),
            )
            return
        for stream, consumer in deleted:
            logger.info(
                "consumer.deleted stream=%s consumer=%s reason=worker_gone", stream, consumer
            )

    async def leave(self, job_streams: Sequence[str]) -> None:
        """Leaves the consumer group of each stream where this worker owns nothing (for a
        worker that has stopped reading; jobs it was stopped in the middle of stay pending,
        for another worker to reclaim)."""
        broker = self._broker
        try:
            kept = await broker.leave(job_streams)
        except ConveyorError as error:
            logger.warning(
                "worker.consumer_kept worker=%s error=%s", broker.consumer, describe(error)
            )
            return
        if kept:
            logger.info(
                "worker.consumer_kept worker=%s streams=%s reason=pending_jobs",
                broker.consumer,
                ",".join(kept),
            )
