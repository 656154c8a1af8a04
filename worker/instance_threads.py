"""The threads a model instance's plain ``def`` calls run in, ``size`` at once.

Calls wait in the threads' own queue, not on the event loop: when a call returns, its thread
takes the next waiting call at once. Waiting on the loop instead (a limiter the next job's task
acquires once the loop has run the last call's callbacks) left a model that holds the GIL idle
between two calls for as long as the loop took to get the GIL back, run its other work, and
hand the next call over: a stand-in model of 2 ms a call ran at about half its in-process speed
on one worker (bench/README.md, "Blocking models").

Async sections that share the instance's slots (an ``async def`` method when
``max_concurrent_calls`` is set, a default ``predict_stream``) hold a thread while they run
(:meth:`InstanceThreads.slot`), so one queue orders every kind of call.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import anyio

__all__ = ("InstanceThreads",)

T = TypeVar("T")


class InstanceThreads:
    """At most ``size`` calls of one model instance at once, each in a thread of its own.

    Its threads end when it is dropped (the executor's own weak reference wakes them), so an
    instance unloaded and loaded again leaves no thread behind.
    """

    __slots__ = ("_executor", "_lock", "running", "size")

    def __init__(self, size: int = 1, name: str = "conveyor-model") -> None:
        self.size = size
        self.running = 0  # calls started and not yet returned (a slot held counts)
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)

    async def run(self, func: Callable[[], T]) -> T:
        """``func()`` in one of the threads, once one is free, in the caller's context.

        A call cancelled while it waits never runs. One cancelled while it runs cannot be
        stopped: the cancellation waits for it to return (its slot stays taken until then),
        as anyio's shielded worker threads do.
        """
        work = self._executor.submit(self._counted, contextvars.copy_context().run, func)
        done = asyncio.wrap_future(work)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            if work.cancel():
                raise
            # shielded: anyio, cancelling a task group, would otherwise re-deliver its
            # cancellation at every turn of the loop until the thread returns
            with anyio.CancelScope(shield=True):
                while not done.done():
                    try:
                        await asyncio.wait((done,))
                    except asyncio.CancelledError:
                        continue
            if not done.cancelled():
                done.exception()  # retrieved: its result or error is of no use now
            raise

    def slot(self) -> AbstractAsyncContextManager[None]:
        """Holds one of the threads while an async section of the instance runs."""
        return self._held()

    @asynccontextmanager
    async def _held(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()
        release = threading.Event()

        def hold() -> None:
            loop.call_soon_threadsafe(_settle, started)
            release.wait()

        work: Future[None] = self._executor.submit(self._counted, hold)
        try:
            await started
        except BaseException:
            if not work.cancel():
                release.set()
            raise
        try:
            yield
        finally:
            release.set()

    def _counted(self, run: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self.running += 1
        try:
            return run(*args)
        finally:
            with self._lock:
                self.running -= 1


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
