"""``conveyor dashboard`` as a real process, over HTTP (httpx), with real worker subprocesses
and a real Redis: the fleet document and its event stream, dead letters sent again with the
token (and refused without it, or from another site), Redis stopped and started under it, and
no response that carries the Redis password. Waits read the event stream (one snapshot per
half second), never a sleep.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.broker.wire import MessageType, decode_message
from conveyor.embedded import RedisServer
from conveyor.types import InferenceResponse
from tests.e2e.test_dlq import MODEL, TENSOR, bury, job_fields, wait_entries
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.waiting import wait_until

TOKEN = "t0ken-for-tests"
PASSWORD = "pa55-never-shown"
Doc = dict[str, Any]


class Dashboard(WorkerProcess):
    """One ``conveyor dashboard`` on a free port; its port read off ``dashboard.started``."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        token: str | None = TOKEN,
        extra: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        environ.update(env or {})
        if token is not None:
            environ["CONVEYOR_DASHBOARD_TOKEN"] = token
        argv = [sys.executable, "-m", "conveyor.cli", "dashboard", "--redis", redis_url]
        super().__init__([*argv, "--prefix", prefix, "--port", "0", *extra], environ)
        self.prefix = prefix
        line = self.wait_for_log("dashboard.started", timeout=20)
        found = re.search(r"http=\S+:(\d+)", line)
        assert found, line
        self.url = f"http://127.0.0.1:{found[1]}"
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self.bodies: list[bytes] = []  # every response body, for the no-secret check

    def get(self, path: str) -> httpx.Response:
        response = self.http.get(path)
        self.bodies.append(response.content)
        return response

    def post(self, path: str, body: object, headers: dict[str, str]) -> httpx.Response:
        response = self.http.post(path, json=body, headers=headers)
        self.bodies.append(response.content)
        return response

    def events(self) -> Generator[Doc, None, None]:
        """The fleet documents of ``/events``, as they come (one per half second)."""
        with self.http.stream("GET", "/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                self.bodies.append(line.encode())
                if line.startswith("data: "):
                    yield orjson.loads(line[6:])

    def wait_for(self, check: Callable[[Doc], object], what: str, timeout: float = 15) -> Doc:
        """The first pushed document for which ``check`` is true."""
        deadline = time.monotonic() + timeout
        last: Doc | None = None
        for document in self.events():
            if check(document):
                return document
            last = document
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"{what}: not seen in {timeout}s; last snapshot: {last}")

    def stop(self) -> None:
        self.http.close()
        super().stop()


def _model(document: Doc, name: str) -> Doc | None:
    return next((m for m in document["models"] if m["name"] == name), None)


def _worker_pids(document: Doc) -> set[int]:
    return {w["pid"] for w in document["workers"]}


@pytest.fixture
def dashboard(redis_url: str, prefix: str, fleet: Fleet) -> Dashboard:
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)  # stopped with the fleet
    return board


@pytest.mark.timeout(45)
def test_fleet_lists_models_and_workers_and_sees_one_stop(
    fleet: Fleet, dashboard: Dashboard
) -> None:
    first, second = fleet.start(MODELS), fleet.start(MODELS)
    both = {first.pid, second.pid}
    seen = dashboard.wait_for(
        lambda d: _worker_pids(d) == both and _model(d, MODEL), "both workers and the echo model"
    )
    assert seen["error"] is None
    echo = _model(seen, MODEL)
    assert echo is not None
    assert echo["workers"] == 2
    assert {k: echo[k] for k in ("queued", "running", "dead_letters")} == {
        "queued": 0, "running": 0, "dead_letters": 0
    }  # fmt: skip
    for worker in seen["workers"]:
        assert worker["host"]
        assert MODEL in worker["models"]
        assert worker["late"] is False
        assert 0 <= worker["heartbeat_age_s"] < 3
        assert worker["started_ago_s"] >= 0

    detail = dashboard.get(f"/api/models/{MODEL}").json()
    assert {w["pid"] for w in detail["serving"]} == both
    assert detail["streams"][0]["key"] == Keys(fleet.prefix).jobs(MODEL)
    assert dashboard.get("/api/models/nonesuch").status_code == 404
    assert set(dashboard.get("/api/fleet").json()) >= {"models", "workers", "error"}

    second.signal(signal.SIGTERM)  # it unregisters on the way out
    dashboard.wait_for(lambda d: _worker_pids(d) == {first.pid}, "the stopped worker gone")

    page = dashboard.get("/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)  # relative: a prefix works
    assert assets
    for asset in assets:
        assert dashboard.get(f"/{asset}").status_code == 200, asset  # all offline: no CDN
    assert dashboard.http.get("/", headers={"host": "evil.example"}).status_code == 400


@pytest.mark.timeout(45)
def test_dead_letter_retried_with_the_token_is_answered(
    fleet: Fleet, dashboard: Dashboard, probe: redis.Redis
) -> None:
    keys = Keys(fleet.prefix)
    job, fields = job_fields(keys, "req-dash", span=10.0, age=300.0)  # its deadline passed
    entry_id = bury(probe, keys, fields)
    dashboard.wait_for(
        lambda d: (_model(d, MODEL) or {}).get("dead_letters") == 1, "the dead letter"
    )
    listed = dashboard.get(f"/api/models/{MODEL}/dead").json()
    assert listed["total"] == 1
    [entry] = listed["entries"]
    assert (entry["entry_id"], entry["request_id"]) == (entry_id, "req-dash")
    assert entry["reason"].startswith("delivered 4 times")

    path = f"/api/models/{MODEL}/dead/retry"
    body = {"ids": [entry_id]}
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert dashboard.post(path, body, {}).status_code == 401
    assert dashboard.post(path, body, {"authorization": "Bearer wrong"}).status_code == 401
    cross = {**bearer, "origin": "https://evil.example"}
    assert dashboard.post(path, body, cross).status_code == 403
    fetched = {**bearer, "sec-fetch-site": "cross-site"}
    assert dashboard.post(path, body, fetched).status_code == 403
    assert dashboard.post(path, {"ids": "nope"}, bearer).status_code == 400
    assert probe.xlen(keys.dead(MODEL)) == 1  # nothing refused did anything
    dashboard.wait_for_log("dashboard.action_refused action=retry")  # refusals are logged

    fleet.start(MODELS)
    same_site = {**bearer, "origin": dashboard.url, "sec-fetch-site": "same-origin"}
    answer = dashboard.post(path, body, same_site)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] == 1
    [(_, raw)] = wait_entries(probe, job.reply, 1)
    message = decode_message(raw)
    assert message.type is MessageType.RESULT, message.error
    assert isinstance(message.payload, InferenceResponse)
    np.testing.assert_array_equal(np.asarray(message.payload.outputs[0].data.root).ravel(), TENSOR)
    dashboard.wait_for_log("dashboard.action action=retry")
    # its worker's next heartbeat says so: the last minute's calls, and a job time
    served = dashboard.wait_for(
        lambda d: ((_model(d, MODEL) or {}).get("calls_per_s") or 0) > 0, "the call counted"
    )
    echo = _model(served, MODEL)
    assert echo is not None
    assert echo["errors_last_minute"] == 0
    assert 0 < echo["p50_s"] <= echo["p99_s"] < 10

    # delete: one by id (the other header), then all
    ids = [bury(probe, keys, {"id": f"r{i}"}) for i in range(3)]
    other = {"x-conveyor-token": TOKEN}
    gone = dashboard.post(f"/api/models/{MODEL}/dead/delete", {"ids": ids[:1]}, other)
    assert gone.json()["done"] == 1
    gone = dashboard.post(f"/api/models/{MODEL}/dead/delete", {"all": True}, other)
    assert gone.json()["done"] == 2
    assert probe.xlen(keys.dead(MODEL)) == 0


@pytest.mark.timeout(30)
def test_actions_are_off_without_a_token(
    redis_url: str, prefix: str, fleet: Fleet, probe: redis.Redis
) -> None:
    board = Dashboard(redis_url, prefix, token=None)
    fleet.workers.append(board)
    keys = Keys(prefix)
    entry_id = bury(probe, keys, {"id": "r1"})
    refused = board.post(f"/api/models/{MODEL}/dead/retry", {"ids": [entry_id]}, {})
    assert refused.status_code == 403
    assert "--token" in refused.json()["error"]
    assert probe.xlen(keys.dead(MODEL)) == 1


@pytest.mark.timeout(45)
def test_redis_down_then_back_and_the_password_never_shown(
    redis_server_factory: Callable[..., RedisServer], prefix: str, fleet: Fleet
) -> None:
    server = redis_server_factory(password=PASSWORD)
    assert PASSWORD in server.url
    board = Dashboard(server.url, prefix)
    fleet.workers.append(board)
    keys = Keys(prefix)
    direct = redis.Redis.from_url(server.url)
    try:
        bury(direct, keys, {"id": "r1"})
    finally:
        direct.close()
    board.wait_for(lambda d: d["error"] is None and _model(d, MODEL), "the model, Redis up")

    server.stop()
    down = board.wait_for(lambda d: d["error"], "an error while Redis is down")
    assert "cannot reach Redis" in down["error"], down
    assert down["stale"] is True
    assert _model(down, MODEL) is not None  # the last figures read stay on the page
    assert board.get(f"/api/models/{MODEL}").status_code == 503
    assert board.get(f"/api/models/{MODEL}/dead").status_code == 503
    retried = board.post(
        f"/api/models/{MODEL}/dead/retry", {"all": True}, {"x-conveyor-token": TOKEN}
    )
    assert retried.status_code == 503
    unloaded = board.post(f"/api/models/{MODEL}/unload", None, {"x-conveyor-token": TOKEN})
    assert unloaded.status_code == 503, unloaded.text

    server.start()  # same port, data gone (no persistence): back, with no model
    back = board.wait_for(lambda d: d["error"] is None, "Redis back")
    assert back["stale"] is False
    board.get("/api/fleet")
    board.get("/")
    assert board.bodies
    assert not [body for body in board.bodies if PASSWORD.encode() in body]
    assert not [line for line in board.lines if PASSWORD in line]


@pytest.mark.timeout(30)
def test_redis_is_read_only_while_a_page_is_open(
    redis_server_factory: Callable[..., RedisServer], prefix: str, fleet: Fleet
) -> None:
    server = redis_server_factory()
    board = Dashboard(f"{server.url}?client_name=dashboard-under-test", prefix)
    fleet.workers.append(board)
    probe = redis.Redis.from_url(server.url)

    def connections() -> list[dict[str, Any]]:
        return [c for c in probe.client_list() if c["name"] == "dashboard-under-test"]

    try:
        assert board.get("/").status_code == 200
        assert board.get("/static/dashboard.js").status_code == 200
        assert connections() == []  # the page itself reads nothing; Redis is not even dialed
        events = board.events()
        next(events), next(events), next(events)
        assert connections()
        events.close()  # the page goes away: the dashboard stops reading
        wait_until(
            lambda: all(int(c["idle"]) >= 2 for c in connections()),
            "the dashboard's connection idle once no page is open",
            timeout=10,
        )
    finally:
        probe.close()
