"""A worker run on the test's own event loop (asyncio, the worker's loop), for tests that
look at its state between turns."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio

from conveyor.settings import ModelSettings
from conveyor.worker import Worker, WorkerSettings


@asynccontextmanager
async def in_process_worker(
    redis_url: str, prefix: str, models: Sequence[ModelSettings], **settings: Any
) -> AsyncIterator[Worker]:
    """A started worker serving ``models``, stopped on the way out."""
    worker = Worker(WorkerSettings(redis_url, prefix=prefix, freeze_gc=False, **settings), models)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        yield worker
        worker.stop()
