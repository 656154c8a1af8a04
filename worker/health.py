"""Health for orchestrators: ``/live`` and ``/ready`` over HTTP (``conveyor worker --health-port``).

- ``/live``: 200 while the process runs (its HTTP thread answers). A worker restarts nothing
  itself on a failed probe: Redis going away is not a reason to kill it (it reconnects).
- ``/ready``: 200 when the worker consumes (its models are loaded: at least one is served, and
  it is not draining), Redis answered its last heartbeat, and that heartbeat is fresh (within
  the heartbeat TTL); else 503. Either way a JSON body says why.

Under ``--processes N`` the supervisor answers for its children: ``/live`` while it runs,
``/ready`` when every child is (each child writes its state to a file of the supervisor's
after every heartbeat; a state older than the TTL is stale: not ready).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from conveyor.broker import HeartbeatLink
from conveyor.errors import PortUnavailable
from conveyor.worker.heartbeat import Heartbeat, WorkerStats

__all__ = ("Health", "ObservedHeartbeat", "children_ready", "serving_health")

logger = logging.getLogger(__name__)

Report = tuple[bool, dict[str, Any]]


@contextlib.contextmanager
def listening(option: str, port: int) -> Iterator[None]:
    """Turns a failed bind into :class:`PortUnavailable`, which the CLI prints in one line."""
    try:
        yield
    except OSError as error:
        raise PortUnavailable(option, port, error) from error


class Health:
    """One worker process's readiness. The loop says when it consumes or drains; the heartbeat
    thread says how each beat went. With ``file``, every change is written there (for the
    supervisor), atomically."""

    def __init__(self, stats: WorkerStats, ttl_s: float, file: Path | None = None) -> None:
        self._stats = stats
        self._ttl_s = ttl_s
        self._file = file
        self._lock = threading.Lock()  # the loop and the heartbeat thread both write the file
        self.consuming = False
        self.draining = False
        self.last_beat: float | None = None  # time.monotonic() of the last beat Redis took
        self.redis_error: str | None = None  # why the last beat failed, if it did

    def changed(self) -> None:
        if self._file is None:
            return
        ready, body = self.report()
        document = json.dumps({**body, "ready": ready, "pid": os.getpid(), "written": time.time()})
        with self._lock:
            temporary = self._file.with_suffix(".tmp")
            temporary.write_text(document)
            os.replace(temporary, self._file)

    def beat(self, error: str | None) -> None:
        """A heartbeat went through (``None``) or failed (why)."""
        if error is None:
            self.last_beat = time.monotonic()
        self.redis_error = error
        self.changed()

    def report(self) -> Report:
        """Whether the worker is ready, and the facts behind it."""
        stats = self._stats
        since = None if self.last_beat is None else time.monotonic() - self.last_beat
        reasons = []
        if not self.consuming:
            reasons.append("loading models" if stats.loading else "not consuming")
        elif not stats.ready:
            reasons.append("no model is served")
        if self.draining:
            reasons.append("draining (stopping)")
        if self.redis_error is not None:
            reasons.append(f"Redis: {self.redis_error}")
        elif since is None or since > self._ttl_s:
            reasons.append("no heartbeat within the TTL")
        body: dict[str, Any] = {
            "models": {"ready": stats.ready, "loading": stats.loading, "failed": stats.failed},
            "heartbeat_age_s": None if since is None else round(since, 3),
            "reasons": reasons,
        }
        return not reasons, body


class ObservedHeartbeat(Heartbeat):
    """The heartbeat, telling :class:`Health` how each beat went."""

    def __init__(
        self,
        connect: Callable[[], HeartbeatLink],
        health: Health,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        def connecting() -> HeartbeatLink:
            try:
                return connect()
            except Exception as error:
                health.beat(str(error) or type(error).__name__)
                raise

        super().__init__(connecting, *args, **kwargs)
        self._health = health

    def beat_once(self, link: HeartbeatLink) -> None:
        try:
            super().beat_once(link)
        except Exception as error:
            self._health.beat(str(error) or type(error).__name__)
            raise
        self._health.beat(None)


def children_ready(
    children: Callable[[], Sequence[tuple[Path, int | None]]], ttl_s: float
) -> Callable[[], Report]:
    """The supervisor's ``/ready``: every child (its state file, and its pid while it runs)
    runs, and its state (written after each of its heartbeats) is fresh and says ready."""

    def report() -> Report:
        states = []
        for index, (file, pid) in enumerate(children()):
            state: dict[str, Any] = {"child": index, "pid": pid}
            try:
                written = json.loads(file.read_text())
            except (OSError, ValueError):
                written = None
            if pid is None:
                state.update(ready=False, reasons=["not running (restarting)"])
            elif written is None or written.get("pid") != pid:
                state.update(ready=False, reasons=["starting"])
            elif time.time() - float(written.get("written", 0)) > ttl_s:
                state.update(ready=False, reasons=["its state is older than the TTL"])
            else:
                state.update(ready=bool(written.get("ready")), reasons=written.get("reasons"))
            states.append(state)
        return all(c["ready"] for c in states), {"children": states}

    return report


@contextlib.contextmanager
def serving_health(port: int | None, ready: Callable[[], Report]) -> Iterator[None]:
    """Serves ``/live`` and ``/ready`` on ``port`` (all interfaces) from a daemon thread, for
    the block's duration; nothing when ``port`` is None. The port bound is logged
    (``health.serving port=N``): with port 0 the kernel picks a free one, and the log line is
    how a caller (a test, a script) learns it."""
    if port is None:
        yield
        return
    with listening("--health-port", port):
        server = ThreadingHTTPServer(("0.0.0.0", port), _handler(ready))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="conveyor-health", daemon=True)
    thread.start()
    logger.info("health.serving port=%d", server.server_address[1])
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _handler(ready: Callable[[], Report]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/live":
                self._answer(200, {"live": True})
            elif path == "/ready":
                ok, body = ready()
                self._answer(200 if ok else 503, {"ready": ok, **body})
            else:
                self._answer(404, {"error": f"no such path {path}; try /live or /ready"})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds is not news

    return Handler
