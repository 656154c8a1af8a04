"""Running one model method: async methods on the loop, plain ``def`` ones in threads."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

__all__ = ("call", "iterate", "sync_inputs")


async def call(
    method: Callable[..., Any], limiter: anyio.CapacityLimiter, *args: Any, **kwargs: Any
) -> Any:
    """Calls ``method``: awaited when async, else in a worker thread under ``limiter``.

    A plain ``def`` method never blocks the event loop, so the heartbeat, the reads of
    other jobs and the replies go on while it runs.
    """
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await anyio.to_thread.run_sync(partial(method, *args, **kwargs), limiter=limiter)
    if inspect.isawaitable(result):
        return await result
    return result


async def _next(inputs: AsyncIterator[Any]) -> Any:
    return await inputs.__anext__()


def sync_inputs(inputs: AsyncIterator[Any]) -> Iterator[Any]:
    """An async iterator seen from a worker thread as a plain iterator."""
    while True:
        try:
            yield anyio.from_thread.run(_next, inputs)
        except StopAsyncIteration:
            return


async def iterate(
    method: Callable[..., Any], inputs: AsyncIterator[Any], limiter: anyio.CapacityLimiter
) -> AsyncIterator[Any]:
    """Runs a ``predict_stream``: an async generator directly, a sync generator in threads."""
    if inspect.isasyncgenfunction(method) or not inspect.isgeneratorfunction(method):
        produced = method(inputs)
        if inspect.isawaitable(produced):
            produced = await produced
        async for item in produced:
            yield item
        return
    generator = method(sync_inputs(inputs))
    done = object()
    while True:
        item = await anyio.to_thread.run_sync(next, generator, done, limiter=limiter)
        if item is done:
            return
        yield item
