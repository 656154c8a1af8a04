"""The dashboard's load and unload of a model, and its trusted origins, against a real
``conveyor dashboard`` process, real worker subprocesses and a real Redis.

- unload with the token: both workers unload the model and answer (``/events`` shows it no
  longer ready), load brings it back and a call is answered; without the token, or from
  another site, nothing is sent;
- a model no worker has: a clear 404, and no control stream left behind;
- ``--trusted-origin`` (and ``CONVEYOR_DASHBOARD_TRUSTED_ORIGINS``, and ``conveyor gateway
  --dashboard-trusted-origin``): a reverse proxy's rewritten Host or Origin is refused without
  it and accepted with it, the token still required.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.client import Client
from tests.e2e.test_dashboard import TOKEN, Dashboard, Doc
from tests.e2e.test_dlq import MODEL, bury
from tests.support.calls import output, request
from tests.support.fleet import MODELS, Fleet

PROXY = "https://ops.example.com"  # the proxy's public address, as the browser's Origin
BEARER = {"authorization": f"Bearer {TOKEN}"}


def _serving(document: Doc) -> set[str]:
    """The ids of the workers that serve the echo model, as the page sees them."""
    return {w["id"] for w in document["workers"] if MODEL in w["ready"]}


def echo_answers(redis_url: str, prefix: str) -> float:
    """What the echo model answers to 3.0, through a client."""

    async def call() -> float:
        async with Client(redis_url, prefix=prefix, timeout=10) as client:
            return output(await client.model(MODEL).predict(request([3.0])))

    return anyio.run(call)


@pytest.mark.timeout(60)
def test_unload_then_load_with_the_token(
    redis_url: str, prefix: str, fleet: Fleet, probe: redis.Redis
) -> None:
    workers = [fleet.start(MODELS, wait=False) for _ in range(2)]
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)
    seen = board.wait_for(lambda d: len(_serving(d)) == 2, "two workers serving echo")
    ids = sorted(_serving(seen))
    keys = Keys(prefix)
    unload = f"/api/models/{MODEL}/unload"

    assert board.post(unload, None, {}).status_code == 401
    assert board.post(unload, None, {"authorization": "Bearer wrong"}).status_code == 401
    cross = {**BEARER, "origin": "https://evil.example"}
    assert board.post(unload, None, cross).status_code == 403
    fetched = {**BEARER, "sec-fetch-site": "cross-site"}
    assert board.post(unload, None, fetched).status_code == 403
    board.wait_for_log("dashboard.action_refused action=unload")  # refusals are logged
    assert probe.xlen(keys.control(MODEL)) == 0  # nothing refused was sent

    same_site = {**BEARER, "origin": board.url, "sec-fetch-site": "same-origin"}
    answer = board.post(unload, None, same_site)
    assert answer.status_code == 200, answer.text
    done = answer.json()
    assert done["acknowledged"] is True
    assert done["ok"] is True, done
    # every worker that has the model answered, not just the first
    assert (sorted(done["asked"]), sorted(done["done"]), done["missing"]) == (ids, ids, 0)
    assert done["message"].startswith(f"unload of {MODEL}: unloaded on ")
    board.wait_for_log(f"dashboard.action action=unload model={MODEL} ok=True")
    for worker in workers:
        worker.wait_for_log(f"model.unloaded model={MODEL}")
    board.wait_for(lambda d: not _serving(d), "echo unloaded everywhere")

    loaded = board.post(f"/api/models/{MODEL}/load", None, {"x-conveyor-token": TOKEN})
    assert loaded.status_code == 200, loaded.text
    assert (loaded.json()["ok"], sorted(loaded.json()["done"])) == (True, ids)
    board.wait_for(lambda d: sorted(_serving(d)) == ids, "echo loaded again")
    assert echo_answers(redis_url, prefix) == 3.0
    for kind in ("reply", "bell"):  # the dashboard's requests left nothing behind
        assert not list(probe.scan_iter(f"{prefix}:{kind}:{{ops-*"))


@pytest.mark.timeout(45)
def test_a_model_no_worker_has_is_a_clear_error(
    redis_url: str, prefix: str, fleet: Fleet, probe: redis.Redis
) -> None:
    fleet.start(MODELS)
    board = Dashboard(redis_url, prefix)
    fleet.workers.append(board)
    board.wait_for(_serving, "echo")
    answer = board.post("/api/models/nonesuch/load", None, BEARER)
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    assert "no live worker has model 'nonesuch'" in error
    assert MODEL in error  # the models the workers have
    assert probe.exists(Keys(prefix).control("nonesuch")) == 0  # a typo leaves no stream
    board.wait_for_log("dashboard.action_failed action=load model=nonesuch status=404")

    tokenless = Dashboard(redis_url, prefix, token=None)
    fleet.workers.append(tokenless)
    refused = tokenless.post(f"/api/models/{MODEL}/unload", None, BEARER)
    assert refused.status_code == 403
    assert "--token" in refused.json()["error"]
    assert probe.xlen(Keys(prefix).control(MODEL)) == 0


def _proxied(board: Dashboard, probe: redis.Redis, **headers: str) -> httpx.Response:
    """A dead letter deleted through a proxy that sent these headers (200: the checks let it
    through)."""
    entry_id = bury(probe, Keys(board.prefix), {"id": "r1"})
    path = f"/api/models/{MODEL}/dead/delete"
    return board.http.post(path, json={"ids": [entry_id]}, headers=headers)


@pytest.mark.timeout(45)
@pytest.mark.parametrize("given", ["option", "variable"])
def test_a_trusted_origin_lets_a_proxy_through(
    redis_url: str, prefix: str, fleet: Fleet, probe: redis.Redis, given: str
) -> None:
    plain = Dashboard(redis_url, prefix)
    fleet.workers.append(plain)
    if given == "option":
        trusting = Dashboard(redis_url, prefix, extra=["--trusted-origin", PROXY])
    else:
        env = {"CONVEYOR_DASHBOARD_TRUSTED_ORIGINS": f"https://other.example,{PROXY}"}
        trusting = Dashboard(redis_url, prefix, env=env)
    fleet.workers.append(trusting)
    public = {"host": "ops.example.com"}  # a proxy that passes the public Host on
    rewritten = {"origin": PROXY}  # a proxy that rewrote Host to the dashboard's address

    assert plain.http.get("/", headers=public).status_code == 400
    assert _proxied(plain, probe, **public, **BEARER).status_code == 400
    refused = _proxied(plain, probe, **rewritten, **BEARER)
    assert refused.status_code == 403
    assert "cross-site" in refused.json()["error"]

    assert trusting.http.get("/", headers=public).status_code == 200
    assert trusting.http.get("/api/fleet", headers=public).status_code == 200
    for headers in (public, rewritten, {**public, **rewritten}):
        answer = _proxied(trusting, probe, **headers, **BEARER)
        assert answer.status_code == 200, answer.text
        assert answer.json()["done"] == 1
        assert _proxied(trusting, probe, **headers).status_code == 401  # the token is still needed
    assert _proxied(trusting, probe, origin="https://evil.example", **BEARER).status_code == 403
    assert trusting.http.get("/", headers={"host": "evil.example"}).status_code == 400


@pytest.mark.timeout(45)
def test_the_gateway_takes_the_trusted_origin(fleet: Fleet, probe: redis.Redis) -> None:
    argv = ["--dashboard", "--dashboard-token", TOKEN, "--dashboard-trusted-origin", PROXY]
    gateway = fleet.start_gateway(argv)
    keys = Keys(fleet.prefix)
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.get("/dashboard/", headers={"host": "ops.example.com"}).status_code == 200
        assert http.get("/dashboard/", headers={"host": "evil.example"}).status_code == 400
        entry_id = bury(probe, keys, {"id": "r1"})
        path = f"/dashboard/api/models/{MODEL}/dead/delete"
        body = {"ids": [entry_id]}
        evil = {**BEARER, "origin": "https://evil.example"}
        assert http.post(path, json=body, headers=evil).status_code == 403
        done = http.post(path, json=body, headers={**BEARER, "origin": PROXY})
        assert done.status_code == 200, done.text
        assert probe.xlen(keys.dead(MODEL)) == 0
        # load and unload are there too: with no worker at all, a clear 404 at once
        unload = http.post(f"/dashboard/api/models/{MODEL}/unload", headers=BEARER)
        assert unload.status_code == 404, unload.text
        assert "no worker is running" in unload.json()["error"]
