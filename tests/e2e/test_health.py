"""Health for orchestrators: ``/live`` and ``/ready`` through a real HTTP client, for one
worker process and for a supervisor of two."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.embedded import RedisServer
from tests.support.fleet import Fleet, WorkerProcess
from tests.support.waiting import wait_until

GATED = Path(__file__).parents[1] / "models" / "health" / "gated"

Answer = tuple[int, dict[str, Any]]


def probe(port: int, path: str) -> Answer | None:
    """The status and JSON body of ``path``; None while nothing listens."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None
    return response.status_code, response.json()


def probe_until(port: int, path: str, wanted: Callable[[Answer], bool], what: str) -> Answer:
    """Probes until an answer is ``wanted``; returns it. Readiness follows heartbeats and
    loads in other processes: polled, bounded."""
    seen: list[Answer] = []

    def check() -> bool:
        answer = probe(port, path)
        if answer is not None:
            seen[:] = [answer]
        return answer is not None and wanted(answer)

    try:
        wait_until(check, what, timeout=20)
    except TimeoutError as error:
        raise TimeoutError(f"{error}; last answer: {seen}") from None
    return seen[0]


def gated_model(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the gated model whose load() waits for the returned gate file."""
    folder = tmp_path / "models" / "gated"
    folder.mkdir(parents=True)
    shutil.copy(GATED / "gated_model.py", folder)
    gate = tmp_path / "gate"
    settings = {
        "name": "gated",
        "implementation": "gated_model.GatedModel",
        "parameters": {"extra": {"gate": str(gate)}},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))
    return folder, gate


def started(worker: WorkerProcess, count: int) -> None:
    worker.output.wait(
        lambda lines: sum("worker.started" in line for line in lines) >= count or None,
        f"{count} worker.started lines",
        30,
    )


@pytest.mark.timeout(60)
def test_one_worker_is_live_then_ready_once_loaded_and_not_ready_without_redis(
    redis_server_factory: Callable[..., RedisServer], prefix: str, tmp_path: Path
) -> None:
    server = redis_server_factory()
    folder, gate = gated_model(tmp_path)
    with Fleet(server.url, prefix) as fleet:
        worker = fleet.start(folder, extra=["--health-port", "0"], wait=False)
        port = worker.health_port()
        assert probe_until(port, "/live", lambda a: a[0] == 200, "live") == (200, {"live": True})
        status, body = probe_until(port, "/ready", lambda a: True, "an answer")
        assert status == 503
        assert body["ready"] is False
        assert "loading models" in body["reasons"]
        assert body["models"]["loading"] == ["gated"]

        gate.touch()
        started(worker, 1)
        status, body = probe_until(port, "/ready", lambda a: a[0] == 200, "ready")
        assert body["models"]["ready"] == ["gated"]
        assert body["reasons"] == []

        server.stop()  # Redis is gone: the next heartbeat fails
        status, body = probe_until(port, "/ready", lambda a: a[0] == 503, "not ready")
        assert any(reason.startswith("Redis: ") for reason in body["reasons"]), body
        assert probe(port, "/live") == (200, {"live": True})
        assert probe(port, "/nowhere") == (
            404,
            {"error": "no such path /nowhere; try /live or /ready"},
        )


@pytest.mark.timeout(60)
def test_a_supervisor_is_ready_when_every_child_is(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    folder, gate = gated_model(tmp_path)
    with Fleet(redis_url, prefix) as fleet:
        extra = ["--processes", "2", "--health-port", "0"]
        supervisor = fleet.start(folder, extra=extra, wait=False)
        port = supervisor.health_port()
        assert probe_until(port, "/live", lambda a: a[0] == 200, "live") == (200, {"live": True})
        status, body = probe_until(port, "/ready", lambda a: True, "an answer")
        assert status == 503
        assert [child["ready"] for child in body["children"]] == [False, False]

        gate.touch()
        started(supervisor, 2)
        status, body = probe_until(port, "/ready", lambda a: a[0] == 200, "ready")
        children = body["children"]
        assert [child["ready"] for child in children] == [True, True]
        assert len({child["pid"] for child in children}) == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "extra",
    [["--health-port"], ["--metrics-port"], ["--processes", "2", "--metrics-port"]],
    ids=["health-port", "metrics-port", "supervisor-metrics-port"],
)
def test_a_taken_port_is_one_clear_line(
    redis_url: str, prefix: str, tmp_path: Path, extra: list[str]
) -> None:
    folder, gate = gated_model(tmp_path)
    gate.touch()
    with socket.socket() as taken, Fleet(redis_url, prefix) as fleet:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = fleet.start(folder, extra=[*extra, str(port)], wait=False)
        assert worker.wait(20) == 1
        worker.wait_for_log("<eof>")
        option = extra[-1]
        # "port N" (the worker's own port) or "0.0.0.0:N" (the supervisor's, which names the
        # address it binds, as the gateway does)
        where = "0.0.0.0:" if "--processes" in extra else "port "
        assert worker.lines[-1] == (
            f"error: cannot listen on {where}{port} ({option}): Address already in use; is "
            f"another process using it? Choose another {option}"
        )
        assert worker.count("Traceback") == 0
