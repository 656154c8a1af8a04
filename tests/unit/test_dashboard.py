"""The dashboard's pure parts: who may act (token, same-site checks) and the late flag."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from conveyor.broker.ops.fleet_report import Snapshot, WorkerInfo
from conveyor.dashboard.guard import check_action, host_name
from conveyor.dashboard.view import LATE_WITHOUT_TTL_S, fleet_doc

TOKEN = "s3cret-token"


def request(**headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}
    return Request(scope)


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {TOKEN}"},
        {"authorization": f"bearer  {TOKEN} "},
        {"x_conveyor_token": TOKEN},
        {"x_conveyor_token": TOKEN, "host": "127.0.0.1:8088", "origin": "http://127.0.0.1:8088"},
        {"x_conveyor_token": TOKEN, "sec_fetch_site": "same-origin"},
        {"x_conveyor_token": TOKEN, "sec_fetch_site": "none"},
    ],
)
def test_allowed(headers: dict[str, str]) -> None:
    assert check_action(request(**headers), TOKEN) is None


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ({}, 401, "needs the dashboard's token"),
        ({"authorization": "Bearer nope"}, 401, "wrong token"),
        ({"authorization": f"Basic {TOKEN}"}, 401, "needs"),
        ({"x_conveyor_token": TOKEN, "sec_fetch_site": "cross-site"}, 403, "cross-site"),
        ({"x_conveyor_token": TOKEN, "sec_fetch_site": "same-site"}, 403, "cross-site"),
        (
            {"x_conveyor_token": TOKEN, "host": "127.0.0.1:8088", "origin": "http://evil:8088"},
            403,
            "Origin: http://evil:8088",
        ),
        ({"x_conveyor_token": TOKEN, "host": "127.0.0.1:8088", "origin": "null"}, 403, "null"),
    ],
)
def test_refused(headers: dict[str, str], status: int, says: str) -> None:
    refusal = check_action(request(**headers), TOKEN)
    assert refusal is not None
    assert refusal.status == status
    assert says in refusal.message
    assert TOKEN not in refusal.message


@pytest.mark.parametrize("configured", [None, ""])
def test_no_token_configured_turns_actions_off(configured: str | None) -> None:
    refusal = check_action(request(x_conveyor_token="anything"), configured)
    assert refusal is not None
    assert refusal.status == 403
    assert "--token" in refusal.message
    assert "CONVEYOR_DASHBOARD_TOKEN" in refusal.message


def worker(age: float | None, ttl: float | None) -> WorkerInfo:
    return WorkerInfo(
        id="w", host="h", pid=1, models=("m",), ready=("m",), in_flight=0, done=0,
        started=0.0, heartbeat=0.0, uptime_s=1.0, heartbeat_age_s=age, ttl_s=ttl,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("age", "ttl", "late"),
    [
        (1.0, 10.0, False),  # beats every ttl/3
        (5.1, 10.0, True),  # two beats missed
        (LATE_WITHOUT_TTL_S - 0.1, None, False),
        (LATE_WITHOUT_TTL_S + 0.1, None, True),
        (None, 10.0, True),  # no heartbeat time at all
    ],
)
def test_late_flag(age: float | None, ttl: float | None, late: bool) -> None:
    document = fleet_doc(Snapshot("p", 100.0, (), (worker(age, ttl),), ()))
    workers = document["workers"]
    assert isinstance(workers, list)
    assert [shown["late"] for shown in workers] == [late]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8088", "127.0.0.1"),
        ("localhost", "localhost"),
        ("[::1]:8088", "::1"),
        ("[::1]", "::1"),
        ("evil.example:8088", "evil.example"),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name
