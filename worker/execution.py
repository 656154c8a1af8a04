"""Running one model method: async methods on the loop, plain ``def`` ones in threads (or on
the loop, when their calls are short and hold the GIL: ``worker.inline_calls``)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import partial
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from conveyor.worker.call_limit import CallLimit
from conveyor.worker.inline_calls import thread_clock

__all__ = ("call", "call_plain", "iterate", "limited", "sync_inputs")


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


async def call_plain(
    method: Callable[..., Any], calls: CallLimit, *args: Any, **kwargs: Any
) -> Any:
    """Calls a loaded instance's plain ``def`` method under its call slots: in a worker thread,
    or on the loop when its recent calls were short and held the GIL (``worker.inline_calls``).
    Each call's wall and CPU time tell where the next one runs."""
    inline = calls.inline
    if inline is None:
        result = await _in_thread(partial(method, *args, **kwargs), calls.threads)
    elif inline.inline and calls.threads.borrowed_tokens == 0:
        # Its slot is free (no thread call nor stream holds it), and stays so: the call ends
        # before the loop runs anything else. Without taking the limiter: it would cost a
        # turn of the loop before each call, and one to wake the next waiter after it.
        timed = _Timed(partial(method, *args, **kwargs))
        # It sees no running loop, as in a thread: a sync model may run a coroutine of its own
        # with asyncio.run() (sync wrappers over async libraries do), which a running loop
        # refuses.
        loop = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            result = timed()
        finally:
            asyncio.events._set_running_loop(loop)
            inline.observe(timed.wall, timed.cpu, timed.waited, raised=timed.raised)
    else:
        timed = _Timed(partial(method, *args, **kwargs))
        try:
            result = await _in_thread(timed, calls.threads)
        finally:
            if timed.wall >= 0:
                inline.observe(timed.wall, timed.cpu, timed.waited, raised=timed.raised)
    if inspect.isawaitable(result):
        return await result
    return result


class _Timed:
    """A call that notes, in the thread that runs it, its wall time, its CPU time and its time
    waiting for a CPU (``inline_calls.thread_clock``), and whether it raised."""

    __slots__ = ("cpu", "func", "raised", "waited", "wall")

    def __init__(self, func: Callable[[], Any]) -> None:
        self.func = func
        self.wall = self.cpu = self.waited = -1.0  # not run (yet)
        self.raised = False

    def __call__(self) -> Any:
        wall, (cpu, waited) = time.perf_counter(), thread_clock()
        try:
            return self.func()
        except BaseException:
            self.raised = True
            raise
        finally:
            now_cpu, now_waited = thread_clock()
            self.wall = time.perf_counter() - wall
            self.cpu, self.waited = now_cpu - cpu, now_waited - waited


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
