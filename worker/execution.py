"""Running one model method: async methods on the loop, plain ``def`` ones in threads."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

__all__ = ("call", "iterate", "limited", "sync_inputs")


async def call(
    method: Callable[..., Any], limiter: anyio.CapacityLimiter, *args: Any, **kwargs: Any
) -> Any:
    """Calls ``method``: awaited when async, else in a worker thread under ``limiter``.

    A plain ``def`` method never blocks the event loop, so the heartbeat, the reads of
    other jobs and the replies go on while it runs.
    """
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await _in_thread(partial(method, *args, **kwargs), limiter)
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


async def _in_thread(func: Callable[[], Any], limiter: anyio.CapacityLimiter) -> Any:
    """``func()`` in a worker thread under ``limiter``, which a cancellation cannot abandon.

    A thread cannot be stopped. The worker cancels a job with ``task.cancel()`` (its deadline,
    its caller's cancel), which would otherwise leave the thread running with its limiter token
    given back: wait for the thread to return (the token stays taken, as anyio's own cancel
    scopes do), then let the cancellation go on.
    """
    inner = asyncio.ensure_future(anyio.to_thread.run_sync(func, limiter=limiter))
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        # shielded: anyio, cancelling a task group, would otherwise re-deliver its cancellation
        # at every turn of the loop until the thread returns
        with anyio.CancelScope(shield=True):
            while not inner.done():
                try:
                    await asyncio.wait((inner,))
                except asyncio.CancelledError:
                    continue
        if not inner.cancelled():
            inner.exception()  # retrieved: its result or error is of no use now
        raise


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
    method: Callable[..., Any],
    inputs: AsyncIterator[Any],
    limiter: anyio.CapacityLimiter,
    gate: AbstractAsyncContextManager[object] | None = None,
) -> AsyncIterator[Any]:
    """Runs a ``predict_stream``: an async generator directly (under ``gate``, held for the
    whole stream, when given), a sync generator in threads (each step under ``limiter``)."""
    if inspect.isasyncgenfunction(method) or not inspect.isgeneratorfunction(method):
        async with gate if gate is not None else nullcontext():
            produced = method(inputs)
            if inspect.isawaitable(produced):
                produced = await produced
            async for item in produced:
                yield item
        return
    generator = method(sync_inputs(inputs))
    done = object()
    while True:
        item = await _in_thread(partial(next, generator, done), limiter)
        if item is done:
            return
        yield item
