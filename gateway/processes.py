"""``conveyor gateway --workers N``: N gateway processes, each started again when it dies.

Gateway processes share nothing (each has its own Redis client; the kernel spreads
connections over their ``SO_REUSEPORT`` sockets), so supervising them is only starting,
restarting and stopping. The worker's supervisor is not reused: its children take options
(failure reports, health and metrics files) that a gateway has no use for.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType

__all__ = ("run_processes",)

logger = logging.getLogger("conveyor.gateway")

_MAX_BACKOFF_S = 30.0
_STABLE_S = 10.0  # a child that lived this long restarts without waiting


def run_processes(
    argv: Sequence[str],
    count: int,
    env: Mapping[str, str],
    grace_period: float = 10.0,
    on_exit: Callable[[int], None] | None = None,
) -> int:
    """Runs ``count`` copies of ``argv`` until SIGTERM/SIGINT/SIGHUP, then stops them (SIGTERM,
    then SIGKILL after ``grace_period``); returns 0. ``on_exit(pid)`` hears of each child that
    exited (its metrics drop out)."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def start() -> subprocess.Popen[bytes]:
        # own session: a terminal's Ctrl-C reaches only us, and we stop each with SIGTERM
        return subprocess.Popen(list(argv), env=dict(env), start_new_session=True)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    children: list[subprocess.Popen[bytes] | None] = []
    started = [time.monotonic()] * count
    restart_at = [0.0] * count
    backoff = [0.5] * count
    try:
        children = [start() for _ in range(count)]
        while not stopping:
            now = time.monotonic()
            for i, child in enumerate(children):
                if child is not None and child.poll() is not None:
                    if on_exit is not None:
                        on_exit(child.pid)
                    if now - started[i] > _STABLE_S:
                        backoff[i] = 0.5
                    logger.warning(
                        "gateway.process_exited pid=%d code=%s restart_in=%.1fs",
                        child.pid,
                        child.returncode,
                        backoff[i],
                    )
                    children[i] = None
                    restart_at[i] = now + backoff[i]
                    backoff[i] = min(backoff[i] * 2, _MAX_BACKOFF_S)
                if children[i] is None and now >= restart_at[i]:
                    children[i] = start()
                    started[i] = now
            time.sleep(0.1)  # polling: a child's exit rings no bell we can wait on with signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        running = [c for c in children if c is not None and c.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_period
        for child in running:
            try:
                child.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    return 0
