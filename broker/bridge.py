"""Running broker steps from any anyio backend.

redis-py's asyncio client only runs on asyncio. On asyncio the client awaits broker steps
directly; on trio it hands each whole step (one pipelined round trip, not one command) to a
private asyncio loop in a helper thread and is woken through its trio token. Measured in
DESIGN.md: 0.70x the asyncio throughput, the best of the trio options.

Used by :class:`~conveyor.broker.ClientBroker` (``client_broker.py``): each of its operations
is one step, so its callers never see which thread ran it. A call's job is the exception: its
XADD crosses without a step (:meth:`LoopThread.fire`: no task on the loop, no wake of its
caller), and its outcome comes back on trio (:meth:`LoopThread.back`), as the caller waits
for its answer only. Both ride the crossings the steps make: measured (``bench/README.md``,
2026-12-06), the trio client's CPU a call fell by a fifth.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import anyio

__all__ = ("LoopThread", "Transport", "on_asyncio", "open_transport")

logger = logging.getLogger(__name__)

T = TypeVar("T")
Background = Callable[[], Coroutine[Any, Any, None]]


class Transport(Protocol):
    async def step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T: ...

    def fire(self, fn: Callable[..., object], *args: Any) -> None:
        """Calls the plain function ``fn(*args)`` on Redis's loop, without waiting."""

    def back(self, fn: Callable[..., object], *args: Any) -> None:
        """From Redis's loop: calls ``fn(*args)`` on the caller's side (trio, or the same
        asyncio loop), without waiting."""


class _Direct:
    async def step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await fn(*args)

    def fire(self, fn: Callable[..., object], *args: Any) -> None:
        fn(*args)

    def back(self, fn: Callable[..., object], *args: Any) -> None:
        fn(*args)


class _Outcome:
    __slots__ = ("args", "done", "error", "fn", "task", "value")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], done: Any) -> None:
        self.fn = fn
        self.args = args
        self.done = done  # a trio.Event, set on trio once the step has ended
        self.task: asyncio.Task[Any] | None = None
        self.value: Any = None
        self.error: BaseException | None = None


class LoopThread:
    """A private asyncio loop in a daemon thread, with background tasks of its own.

    Steps cross between the threads in batches: steps submitted while the loop thread has not
    yet picked up the previous ones ride along with them, and steps that end together wake
    trio once. Each crossing costs a system call and a hand-over of the GIL; 64 callers
    submitting at once pay for one, not 64.
    """

    def __init__(self, name: str = "conveyor-loop") -> None:
        self._loop = asyncio.new_event_loop()
        self._name = name
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        # One producer and one consumer each: a flag is cleared before its queue is drained,
        # and set after an append, so a step is never left behind.
        self._submitted: deque[_Outcome] = deque()  # trio -> loop thread
        self._fired: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()  # ... too
        self._submit_scheduled = False
        # loop thread -> trio: calls to make there (a step's end sets its caller's event)
        self._ended: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        self._wake_scheduled = False
        self._token: Any = None  # the trio run's token, taken by the first step

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

        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        outcome = _Outcome(fn, args, trio.Event())
        self._submitted.append(outcome)
        self._schedule_submitted()
        done = outcome.done
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

    def fire(self, fn: Callable[..., object], *args: Any) -> None:
        """From trio: calls the plain function ``fn(*args)`` on the loop, without waiting (it
        crosses with the steps submitted meanwhile). ``fn`` hears nothing back by itself:
        see :meth:`back`."""
        if self._token is None:
            import trio

            self._token = trio.lowlevel.current_trio_token()
        self._fired.append((fn, args))
        self._schedule_submitted()

    def back(self, fn: Callable[..., object], *args: Any) -> None:
        """From the loop thread: calls ``fn(*args)`` on trio soon (with the steps that end
        meanwhile: one wake of trio for all)."""
        self._ended.append((fn, args))
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._wake_trio()

    def _schedule_submitted(self) -> None:
        if not self._submit_scheduled:
            self._submit_scheduled = True
            # A fresh context: the trio caller's context variables (its backend marker among
            # them) must not leak into the asyncio tasks.
            self._loop.call_soon_threadsafe(self._start_submitted, context=contextvars.Context())

    def _start_submitted(self) -> None:
        """On the loop thread: the calls fired so far, then a task for every step."""
        self._submit_scheduled = False
        while self._fired:
            fn, args = self._fired.popleft()
            try:
                fn(*args)
            except Exception:  # a fired call says its own failures; none may stop the others
                logger.exception("bridge.fired_call_failed call=%r", fn)
        while self._submitted:
            outcome = self._submitted.popleft()
            self._loop.create_task(self._step(outcome), context=contextvars.Context())

    async def _step(self, outcome: _Outcome) -> None:
        outcome.task = asyncio.current_task()
        try:
            outcome.value = await outcome.fn(*outcome.args)
        except BaseException as error:
            outcome.error = error
        finally:
            self.back(outcome.done.set)

    def _wake_trio(self) -> None:
        import trio

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._set_ended)

    def _set_ended(self) -> None:
        """On trio: wakes the callers of every step that has ended, and makes the calls sent
        back (:meth:`back`)."""
        self._wake_scheduled = False
        while self._ended:
            fn, args = self._ended.popleft()
            try:
                fn(*args)
            except Exception:  # raised into trio's run it would end it: said here instead
                logger.exception("bridge.call_back_failed call=%r", fn)

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
        self.fire = thread.fire
        self.back = thread.back

    async def step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await self._thread.run(fn, *args)
