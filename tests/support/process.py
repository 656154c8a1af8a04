"""A subprocess's output, read by a thread, so that a test can wait for what it printed.

One :class:`Watcher` per output: it collects the items its source yields (lines of a pipe,
chunks of a terminal, parsed messages) and wakes every waiter on each. ``wait`` returns as soon
as the output holds what is awaited, fails at once when the output ends without it, and times
out with the output's tail in the message.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class OutputEnded(RuntimeError):
    """The watched output ended (the process exited) before what was awaited appeared."""


class Watcher(Generic[T]):
    """Collects ``source``'s items on a daemon thread; ``items`` is what arrived so far."""

    def __init__(self, source: Iterable[T], describe: Callable[[], str] | None = None) -> None:
        self.items: list[T] = []
        self.ended = False
        self._describe = describe or self._tail
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(source,), daemon=True)
        self._thread.start()

    def _read(self, source: Iterable[T]) -> None:
        try:
            for item in source:
                with self._cond:
                    self.items.append(item)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def _tail(self) -> str:
        return "\n".join(map(str, self.items[-40:]))

    def snapshot(self) -> list[T]:
        with self._cond:
            return list(self.items)

    def wait(self, found: Callable[[list[T]], R | None], what: str, timeout: float) -> R:
        """Waits until ``found(items)`` returns something other than None, and returns it.

        Raises :class:`TimeoutError` after ``timeout`` seconds, and :class:`OutputEnded` as soon
        as the output ends without it; both messages carry the output's tail.
        """
        result: list[R] = []

        def ready() -> bool:
            value = found(self.items)
            if value is not None:
                result.append(value)
                return True
            return self.ended

        with self._cond:
            if not self._cond.wait_for(ready, timeout=timeout):
                raise TimeoutError(f"{what}: not within {timeout}s:\n{self._describe()}")
            if not result:
                raise OutputEnded(f"ended before {what}:\n{self._describe()}")
            return result[0]

    def wait_ended(self, timeout: float) -> None:
        """Waits until the output ends (the process closed it: it exited)."""
        self.wait(lambda _: True if self.ended else None, "the end of the output", timeout)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout=timeout)


def lines_of(stream: IO[str]) -> Iterator[str]:
    """The lines of a text pipe, without their line ends."""
    for line in stream:
        yield line.rstrip("\n")


def chunks_of(fd: int) -> Iterator[str]:
    """What a file descriptor delivers, as it comes (a terminal's output has no lines)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # a pty's reader gets EIO once the child closed it
            return
        if not chunk:
            return
        yield chunk.decode(errors="replace")


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after "pid (comm) ": state, ppid, ... (None: no such process)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()
