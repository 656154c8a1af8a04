"""Running broker steps from any anyio backend.

redis-py's asyncio client only runs on asyncio. On asyncio the client awaits broker steps
directly; on trio it hands each whole step (one pipelined round trip, not one command) to a
private asyncio loop in a helper thread and is woken through its trio token. Measured in
DESIGN.md: 0.70x the asyncio throughput, the best of the trio options.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import anyio

__all__ = ("LoopThread", "Transport", "on_asyncio", "open_transport")

T = TypeVar("T")
Background = Callable[[], Coroutine[Any, Any, None]]


class Transport(Protocol):
    async def step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...


class _Direct:
    async def step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await fn(*args)


class _Outcome:
    __slots__ = ("error", "task", "value")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.value: Any = None
        self.error: BaseException | None = None


class LoopThread:
    """A private asyncio loop in a daemon thread, with background tasks of its own."""

    def __init__(self, name: str = "conveyor-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._name = name
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None

    def start(self, background: Sequence[Background] = ()) -> None:
        self._thread = threading.Thread(
            target=self._main, args=(list(background),), name=self._name, daemon=True
        )
        self._thread.start()
        self._started.wait(timeout=10)

    def _main(self, background: list[Background]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve(background))
        except BaseException as error:  # pragma: no cover - reported to callers
            self._failure = error
        finally:
            self._started.set()
            # Orderly shutdown, or threads and pending tasks leak (DESIGN.md).
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    async def _serve(self, background: list[Background]) -> None:
        self._stop = asyncio.Event()
        async with anyio.create_task_group() as tg:
            for fn in background:
                tg.start_soon(fn)
            self._started.set()
            await self._stop.wait()
            tg.cancel_scope.cancel()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs ``fn(*args)`` on the loop and waits for it from trio.

        A cancelled caller cancels the loop's task, again and again until it ends: redis-py
        can swallow a single early cancel and run on to its BLOCK timeout.
        """
        import trio

        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        outcome = _Outcome()

        def wake() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        async def wrapped() -> None:
            outcome.task = asyncio.current_task()
            try:
                outcome.value = await fn(*args)
            except BaseException as error:
                outcome.error = error
            finally:
                wake()

        def submit() -> None:
            # A fresh context: the trio caller's context variables (its backend marker among
            # them) must not leak into the asyncio task.
            self._loop.create_task(wrapped(), context=contextvars.Context())

        self._loop.call_soon_threadsafe(submit, context=contextvars.Context())
        try:
            await done.wait()
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                while not done.is_set():
                    if outcome.task is not None:
                        self._loop.call_soon_threadsafe(outcome.task.cancel)
                    with trio.move_on_after(0.05):
                        await done.wait()
            raise
        if outcome.error is not None:
            if isinstance(outcome.error, asyncio.CancelledError):
                raise RuntimeError("the broker step was cancelled on its loop")
            raise outcome.error
        result: T = outcome.value
        return result

    def close(self) -> None:
        """Stops the background tasks and the loop, and joins the thread (bounded)."""
        if self._thread is None or not self._thread.is_alive():
            return
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)


@contextlib.asynccontextmanager
async def open_transport(
    background: Sequence[Background], cleanup: Callable[[], Awaitable[None]]
) -> AsyncIterator[Transport]:
    """Yields a transport for the running backend, with ``background`` tasks running.

    ``cleanup`` (closing connections) runs on the loop that used them, before it stops.
    """
    if on_asyncio():
        async with anyio.create_task_group() as tg:
            for fn in background:
                tg.start_soon(fn)
            try:
                yield _Direct()
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await cleanup()
        return
    thread = LoopThread()
    thread.start(background)
    bridge = _Bridge(thread)
    try:
        yield bridge
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await thread.run(cleanup)
        await anyio.to_thread.run_sync(thread.close)


def on_asyncio() -> bool:
    """Whether the running backend is asyncio (anything else goes through the bridge)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _Bridge:
    def __init__(self, thread: LoopThread) -> None:
        self._thread = thread

    async def step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._thread.run(fn, *args)
