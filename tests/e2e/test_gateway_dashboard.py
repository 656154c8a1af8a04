"""The dashboard under the gateway's HTTP port (``conveyor gateway --dashboard``): the page, its
files, its API and its safety checks at ``/dashboard/``; off (404) without the option."""

from __future__ import annotations

import re
import signal
import time

import httpx
import pytest
import redis

from conveyor.broker.keys import Keys
from tests.e2e.test_dlq import MODEL, bury
from tests.support.fleet import MODELS, Fleet
from tests.support.waiting import wait_until

TOKEN = "gateway-t0ken-for-tests"


def _names(http: httpx.Client) -> set[str]:
    return {model["name"] for model in http.get("/dashboard/api/fleet").json()["models"]}


@pytest.mark.timeout(60)
def test_the_gateway_serves_the_dashboard_at_dashboard(redis_url: str, fleet: Fleet) -> None:
    fleet.start(MODELS)
    gateway = fleet.start_gateway(["--dashboard", "--dashboard-token", TOKEN])
    keys = Keys(fleet.prefix)
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        page = http.get("/dashboard/")
        assert page.status_code == 200, page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
        assert assets  # relative: they resolve under /dashboard/
        for asset in assets:
            assert http.get(f"/dashboard/{asset}").status_code == 200, asset
        moved = http.get("/dashboard")
        assert (moved.status_code, moved.headers["location"]) == (308, "/dashboard/")
        wait_until(lambda: MODEL in _names(http), "the echo model on /dashboard/api/fleet")
        assert http.get("/v2/health/live").status_code == 200  # V2 beside it, as before
        assert http.get("/dashboard/", headers={"host": "evil.example"}).status_code == 400
        with http.stream("GET", "/dashboard/events") as events:
            assert events.headers["content-type"].startswith("text/event-stream")
            data = next(line for line in events.iter_lines() if line.startswith("data: "))
            assert MODEL in data

        probe = redis.Redis.from_url(redis_url)
        try:
            entry_id = bury(probe, keys, {"id": "r1"})
            retry = f"/dashboard/api/models/{MODEL}/dead/retry"
            refused = http.post(retry, json={"ids": [entry_id]})
            assert refused.status_code == 401, refused.text
            cross = {"authorization": f"Bearer {TOKEN}", "origin": "https://evil.example"}
            assert http.post(retry, json={"ids": [entry_id]}, headers=cross).status_code == 403
            assert probe.xlen(keys.dead(MODEL)) == 1  # nothing refused did anything
            delete = f"/dashboard/api/models/{MODEL}/dead/delete"
            bearer = {"authorization": f"Bearer {TOKEN}"}
            done = http.post(delete, json={"ids": [entry_id]}, headers=bearer)
            assert done.json() == {"action": "delete", "model": MODEL, "done": 1}, done.text
            assert probe.xlen(keys.dead(MODEL)) == 0
        finally:
            probe.close()


@pytest.mark.timeout(30)
def test_without_the_option_dashboard_is_not_found(fleet: Fleet) -> None:
    gateway = fleet.start_gateway()
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.get("/dashboard/").status_code == 404
        assert http.get("/dashboard/api/fleet").status_code == 404


@pytest.mark.timeout(30)
def test_an_open_page_does_not_hold_up_the_gateway_stopping(fleet: Fleet) -> None:
    """Its event stream never ends by itself: SIGTERM ends it, not uvicorn's 5 s grace."""
    gateway = fleet.start_gateway(["--dashboard"])
    with (
        httpx.Client(base_url=gateway.http_url, timeout=10) as http,
        http.stream("GET", "/dashboard/events") as events,
    ):
        lines = events.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        started = time.monotonic()
        gateway.signal(signal.SIGTERM)
        for _ in lines:  # until the gateway ends the stream
            pass
    assert gateway.wait(timeout=10) == 0
    assert time.monotonic() - started < 3, "the gateway waited for the page's stream"
    assert not gateway.problems(), gateway.problems()
