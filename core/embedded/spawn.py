"""Spawning a server that dies with this process, even on ``kill -9`` (Linux).

The child gets ``PR_SET_PDEATHSIG`` = ``SIGKILL``. That signal fires when the *thread* that
forked the child ends, so a fork asked for from a short-lived thread is done by one long-lived
thread (:class:`_Spawner`). Elsewhere the server's own finalizer is what stops an orphan.

util-linux's ``setpriv --pdeathsig`` sets it when it is there, so that Python starts the child
with ``vfork``, which runs no ``pthread_atfork`` handlers. A ``preexec_fn`` (the fallback)
makes it a real ``fork``, whose handlers may break the child before its ``exec``: gRPC's,
in a process with a channel in use, aborted about one redis-server start in 40 (exit code -6,
"epoll_wait error: Bad file descriptor" in its log), which a test run that calls the gateway
over gRPC and then starts a private Redis met. (Unlike the fallback, ``setpriv`` cannot
notice a parent killed in the millisecond before it sets the signal.)
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO

__all__ = ("spawn",)

_PR_SET_PDEATHSIG = 1


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, resolved before any fork (a forked child must not load libraries)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # a libc without prctl: fall back to the finalizer
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    func.restype = ctypes.c_int
    prctl: Callable[..., int] = func
    return prctl


@functools.cache
def _setpriv() -> str | None:
    """util-linux's ``setpriv``, if it is here and knows ``--pdeathsig`` (2.33 and later)."""
    if not sys.platform.startswith("linux"):
        return None
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        checked = subprocess.run(
            [found, "--pdeathsig", "KILL", "--", "true"], capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found if checked.returncode == 0 else None


def _die_with_parent(prctl: Callable[..., int], parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec: no imports, no locks
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


_PopenFn = Callable[[], "subprocess.Popen[bytes]"]


class _Spawner:
    """One daemon thread that forks children for threads that may end before the child.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child ends, not the process
    (prctl(2)). A server started from a short-lived thread (``anyio.to_thread``, a thread pool)
    would be killed when that thread retires, so such threads hand the fork to this thread,
    which lives as long as the process. The main thread lives as long as the process too, so
    it forks directly.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[_PopenFn, Future[subprocess.Popen[bytes]]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._run, name="conveyor-redis-spawner", daemon=True).start()

    def _run(self) -> None:
        while True:
            spawn, future = self._jobs.get()
            try:
                future.set_result(spawn())
            except BaseException as exc:
                future.set_exception(exc)

    def spawn(self, spawn: _PopenFn) -> subprocess.Popen[bytes]:
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((spawn, future))
        try:
            return future.result(timeout=30)  # a fork + exec: only a wedged machine is slower
        except TimeoutError:
            future.add_done_callback(_kill_late_child)  # nobody will own it: don't let it run
            raise


def _kill_late_child(future: Future[subprocess.Popen[bytes]]) -> None:
    if future.exception() is None:
        proc = future.result()
        proc.kill()
        proc.wait()


_spawner_lock = threading.Lock()
_spawner: _Spawner | None = None


def spawn(argv: Sequence[str], *, cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``argv`` so that it dies with this process (Linux) even on ``kill -9``.

    Alternatives rejected: a watchdog process per server costs a Python start-up and can itself
    be killed; ``atexit`` alone misses ``SIGKILL`` and crashes.
    """
    global _spawner
    setpriv = _setpriv()
    prctl = None if setpriv is not None else _prctl()
    preexec = None if prctl is None else _die_with_parent(prctl, os.getpid())
    command = [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else list(argv)

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a terminal's Ctrl-C reaches us, and we stop the server in order.
            start_new_session=True,
            # Not thread-safe in general (a lock held at fork time); ours only calls a prctl
            # resolved before the fork, and getppid.
            preexec_fn=preexec,
        )

    if (
        setpriv is None and preexec is None
    ) or threading.current_thread() is threading.main_thread():
        return popen()
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.spawn(popen)
