"""Running one model method: async methods on the loop, plain ``def`` ones in threads."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import partial
from typing import Any

from conveyor.worker.instance_threads import InstanceThreads

__all__ = ("call", "iterate", "limited", "sync_inputs")


async def call(
    method: Callable[..., Any], threads: InstanceThreads, *args: Any, **kwargs: Any
) -> Any:
    """Calls ``method``: awaited when async, else in one of its instance's ``threads``.

    A plain ``def`` method never blocks the event loop, so the heartbeat, the reads of
    other jobs and the replies go on while it runs.
    """
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await threads.run(partial(method, *args, **kwargs))
    if inspect.isawaitable(result):
        return await result
    return result


async def limited(
    slots: AbstractAsyncContextManager[object],
    method: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Awaits the ``async def`` ``method`` once a call slot of its instance is free."""
    async with slots:
        return await method(*args, **kwargs)


_END = object()


async def _next(inputs: AsyncIterator[Any]) -> Any:
    try:
        return await inputs.__anext__()
    except StopAsyncIteration:
        return _END


def sync_inputs(inputs: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """An async iterator of ``loop`` seen from a model's thread as a plain iterator."""
    while True:
        item = asyncio.run_coroutine_threadsafe(_next(inputs), loop).result()
        if item is _END:
            return
        yield item


async def iterate(
    method: Callable[..., Any],
    inputs: AsyncIterator[Any],
    threads: InstanceThreads,
    gate: AbstractAsyncContextManager[object] | None = None,
) -> AsyncIterator[Any]:
    """Runs a ``predict_stream``: an async generator directly (under ``gate``, held for the
    whole stream, when given), a sync generator in ``threads`` (each step a call)."""
    if inspect.isasyncgenfunction(method) or not inspect.isgeneratorfunction(method):
        async with gate if gate is not None else nullcontext():
            produced = method(inputs)
            if inspect.isawaitable(produced):
                produced = await produced
            async for item in produced:
                yield item
        return
    generator = method(sync_inputs(inputs, asyncio.get_running_loop()))
    done = object()
    while True:
        item = await threads.run(partial(next, generator, done))
        if item is done:
            return
        yield item
