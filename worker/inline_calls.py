"""Whether a plain ``def`` model's calls run on the worker's event loop instead of a thread.

A model instance takes one call at a time (``worker.call_limit``), in a thread, so that the
loop goes on reading, answering and beating while it runs. For a model that holds the GIL for
the whole of a short call (Python code, tokenizers, kernel launches), the thread buys nothing:
the loop cannot run while the model holds the GIL, and every call pays a hand-over each way
(the loop wakes the thread, the thread wakes the loop, each waits for the GIL) and leaves the
model idle while the loop catches up. Measured (``bench.device``: ~2 ms of GIL-holding Python
a call, 16 single-item calls in flight, one process, 2 cores; bench/README.md): 233-250 calls/s
from a thread, 310-343 from the loop; batched (32), 2,000-2,198 and 1,996-2,527.

So an instance whose recent calls were all short and held the GIL runs its next ones on the
loop (:class:`InlineCalls`), and goes back to threads at the first call that was long, that
mostly released it (sleeps, I/O, a device's kernels), or that raised: the loop then waits at
most about one short call (``INLINE_MAX_S``), far below any Redis timeout. A call's CPU time
in its thread against its wall time stands for its GIL share: a call that holds the GIL spends
its time on the CPU of its own thread. Less the time its thread waited for a CPU (Linux's
``/proc/thread-self/schedstat``, :func:`thread_clock`): on a busy host the scheduler stretches
a 1 ms call to 5 and more (measured: shares of 0.2 with two busy loops on 2 cores), which is
no sign that it released the GIL.
"""

from __future__ import annotations

import logging
import os
import threading
import time

__all__ = ("CALLS_TO_GO_INLINE", "GIL_SHARE", "INLINE_MAX_S", "InlineCalls", "thread_clock")

logger = logging.getLogger(__name__)

# The longest call that may run on the loop: the loop serves nothing else meanwhile (other
# models' jobs, timers, a caller's cancel), so a call must be short to be run there.
INLINE_MAX_S = 0.02
# The least share of a call's wall time spent on its thread's CPU for it to count as holding
# the GIL (a call that waits, sleeps or runs a device's kernels is better in a thread: the loop
# works meanwhile).
GIL_SHARE = 0.6
# On the loop, a call stays there down to this share: what the thread clock cannot see (a
# virtual machine's stolen time) also stretches a GIL-holding call's wall time; a call that
# waits on a device or on I/O shows far less.
_GIL_SHARE_TO_STAY = 0.3
# Calls in a row that qualify before an instance's calls go to the loop; doubled each time
# they come back (up to ``_MOST_CALLS_TO_GO_INLINE``), so a model that changes its mind often
# stays in threads.
CALLS_TO_GO_INLINE = 8
_MOST_CALLS_TO_GO_INLINE = 1024


_SCHEDSTAT = "/proc/thread-self/schedstat"  # ns on a CPU, ns runnable but waiting, slices


class _SchedStat:
    """One thread's schedstat file, open for its life (read again with ``pread``, ~1 us)."""

    def __init__(self) -> None:
        self.fd = os.open(_SCHEDSTAT, os.O_RDONLY)

    def __del__(self) -> None:  # its thread ended: its thread-local data goes
        os.close(self.fd)


class _Local(threading.local):
    stat: _SchedStat | None = None


_local = _Local()
_schedstat = os.path.exists(_SCHEDSTAT)


def thread_clock() -> tuple[float, float]:
    """This thread's CPU time and its time spent runnable but waiting for a CPU, in seconds
    (the second 0 where Linux does not keep it). The CPU time is the thread clock's: schedstat's
    own is only brought up to date at the scheduler's ticks; its wait, at each switch to the
    thread, is current whenever the thread itself reads it."""
    global _schedstat
    waited = 0.0
    if _schedstat:
        try:
            stat = _local.stat
            if stat is None:
                stat = _local.stat = _SchedStat()
            waited = int(os.pread(stat.fd, 64, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):  # not readable here after all
            _schedstat = False
    return time.thread_time(), waited


class InlineCalls:
    """Where one model instance's plain ``def`` calls run: observes each call's wall and CPU
    time and says whether the next one runs on the loop (:attr:`inline`)."""

    def __init__(self, label: str) -> None:
        self.label = label  # the model, for log lines
        self.inline = False
        self._streak = 0  # qualifying calls in a row, in threads
        self._needed = CALLS_TO_GO_INLINE

    def observe(
        self, wall: float, cpu: float, waited: float = 0.0, *, raised: bool = False
    ) -> None:
        """One call ran ``wall`` seconds, ``cpu`` of them on its thread's CPU and ``waited``
        runnable but waiting for one; ``raised``: it raised. A call that raised counts against
        the loop: a model may fail there only (one that calls ``anyio.from_thread``, which
        needs a worker thread, say), so one such call is enough to go back to threads."""
        short = wall <= INLINE_MAX_S
        share = _GIL_SHARE_TO_STAY if self.inline else GIL_SHARE
        holds_gil = cpu >= share * max(wall - waited, 0.0)
        if self.inline:
            if short and holds_gil and not raised:
                return
            self.inline = False
            self._streak = 0
            self._needed = min(self._needed * 2, _MOST_CALLS_TO_GO_INLINE)
            reason = "raised" if raised else "long_call" if not short else "gil_released"
            logger.info(
                "model.calls_threaded model=%s reason=%s call_ms=%.1f cpu_share=%.2f",
                self.label,
                reason,
                wall * 1e3,
                _share(wall, cpu, waited),
            )
            return
        if raised or not (short and holds_gil):
            self._streak = 0
            return
        self._streak += 1
        if self._streak >= self._needed:
            self.inline = True
            logger.info(
                "model.calls_inline model=%s calls=%d call_ms=%.1f cpu_share=%.2f",
                self.label,
                self._streak,
                wall * 1e3,
                _share(wall, cpu, waited),
            )


def _share(wall: float, cpu: float, waited: float) -> float:
    """A call's CPU time against its wall time less its wait for a CPU (for log lines)."""
    ran = wall - waited
    return cpu / ran if ran > 0 else 0.0
