"""The fleet snapshot shared by every open page: read from Redis only when a page (or an API
call) asks, at most once per interval however many pages are open.

Nothing runs in the background: with no page open the dashboard sends Redis nothing, and an
open page costs one snapshot (two round trips, :mod:`conveyor.broker.ops.fleet_snapshot`) per
interval, whatever the traffic. When Redis cannot be reached or refuses a command, the document
keeps the last figures read, marked ``stale``, with the reason in ``error``; the next read
after Redis is back clears it.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import anyio
import orjson
from redis.asyncio import Redis

from conveyor.broker.keys import Keys
from conveyor.broker.ops.fleet_report import Snapshot
from conveyor.broker.ops.fleet_snapshot import snapshot
from conveyor.dashboard.view import Doc, fleet_doc
from conveyor.errors import ConveyorError

__all__ = ("READ_TIMEOUT_S", "FleetWatch")

logger = logging.getLogger(__name__)

READ_TIMEOUT_S: Final = 5.0  # a snapshot that takes longer is reported as an error


class FleetWatch:
    """The latest fleet document (JSON bytes), read again when older than ``interval`` s."""

    def __init__(self, redis: Redis, keys: Keys, interval: float) -> None:
        self._redis = redis
        self._keys = keys
        self._interval = interval
        self._lock = anyio.Lock()  # one read at a time: concurrent pages share it
        self._read_at = -float("inf")
        self._document = b""
        self._last: Doc | None = None
        self._shot: Snapshot | None = None
        self._failing = False

    @property
    def redis(self) -> Redis:
        """The dashboard's one Redis client (for the dead-letter operations)."""
        return self._redis

    async def snapshot(self) -> Snapshot:
        """A fresh :class:`Snapshot` (for one model's page); raises Conveyor's errors."""
        with anyio.fail_after(READ_TIMEOUT_S):
            return await snapshot(self._redis, self._keys)

    async def latest(self) -> bytes:
        """The fleet document as JSON, at most ``interval`` s old; never raises for Redis
        being away (the document says so in its ``error`` field)."""
        async with self._lock:
            if time.monotonic() - self._read_at >= self._interval:
                self._document = orjson.dumps(await self._read())
                self._read_at = time.monotonic()
            return self._document

    async def _read(self) -> Doc:
        try:
            shot = await self.snapshot()
        except (ConveyorError, TimeoutError) as error:
            reason = str(error) or f"Redis did not answer within {READ_TIMEOUT_S:g}s"
            if not self._failing:
                logger.warning("dashboard.redis_failed error=%s", reason)
            self._failing = True
            last = self._last or fleet_doc(Snapshot(self._keys.prefix, 0.0, (), (), ()))
            return {**last, "error": reason, "stale": True}
        if self._failing:
            logger.info("dashboard.redis_back")
        self._failing = False
        self._last = fleet_doc(shot)
        return {**self._last, "stale": False}
