"""The dashboard's guard with trusted origins (a reverse proxy's address), the Host check in
front of the whole app, and the sentence the page shows for a load or unload."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conveyor.broker.ops.control import ControlOutcome
from conveyor.broker.wire import ControlVerb
from conveyor.dashboard import DashboardSettings
from conveyor.dashboard.control import _document
from conveyor.dashboard.guard import LoopbackHosts, check_action, trusted_origin

TOKEN = "s3cret-token"
PROXY = "https://ops.example.com"


def request(**headers: str) -> Request:
    raw = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": raw, "query_string": b""}
    return Request(scope)


@pytest.mark.parametrize(
    ("given", "origin"),
    [
        ("https://ops.example.com", PROXY),
        ("https://OPS.example.com/", PROXY),
        ("https://ops.example.com:443", PROXY),  # browsers leave the default port out
        (" http://ops.example.com:80 ", "http://ops.example.com"),
        ("http://ops.example.com:8443", "http://ops.example.com:8443"),
        ("http://[::1]:8088", "http://[::1]:8088"),
    ],
)
def test_trusted_origin_is_written_as_browsers_send_it(given: str, origin: str) -> None:
    assert trusted_origin(given) == origin


@pytest.mark.parametrize(
    "given",
    [
        "ops.example.com",  # no scheme
        "ftp://ops.example.com",
        "https://",
        "https://ops.example.com/dashboard",  # a path: an Origin has none
        "https://ops.example.com?x=1",
        "https://user@ops.example.com",
        "https://ops.example.com:99999",
        "null",
    ],
)
def test_trusted_origin_refuses_what_is_no_origin(given: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        trusted_origin(given)


def test_settings_check_and_normalize_their_origins() -> None:
    settings = DashboardSettings("redis://x", trusted_origins=("https://OPS.example.com:443",))
    assert settings.trusted_origins == (PROXY,)
    with pytest.raises(ValueError, match="not an origin"):
        DashboardSettings("redis://x", trusted_origins=("ops.example.com",))


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "127.0.0.1:8088", "origin": PROXY},  # a proxy that rewrote Host
        {"host": "127.0.0.1:8088", "origin": "https://OPS.example.com:443"},
        {"host": "ops.example.com", "origin": PROXY},  # one that passed it on
        {"host": "127.0.0.1:8088", "origin": PROXY, "sec_fetch_site": "same-origin"},
    ],
)
def test_a_trusted_origin_passes_the_same_site_check(headers: dict[str, str]) -> None:
    with_token = request(**headers, x_conveyor_token=TOKEN)
    assert check_action(with_token, TOKEN, (PROXY,)) is None
    refusal = check_action(request(**headers), TOKEN, (PROXY,))  # the token is still needed
    assert refusal is not None
    assert refusal.status == 401


@pytest.mark.parametrize(
    ("headers", "trusted"),
    [
        ({"host": "127.0.0.1:8088", "origin": PROXY}, ()),  # the default: refused
        ({"host": "127.0.0.1:8088", "origin": "https://evil.example"}, (PROXY,)),
        ({"host": "127.0.0.1:8088", "origin": "http://ops.example.com"}, (PROXY,)),  # scheme
        ({"host": "127.0.0.1:8088", "origin": "https://ops.example.com:8443"}, (PROXY,)),
        ({"host": "127.0.0.1:8088", "origin": "null"}, (PROXY,)),
        ({"host": "127.0.0.1:8088", "origin": PROXY, "sec_fetch_site": "cross-site"}, (PROXY,)),
    ],
)
def test_other_origins_stay_cross_site(headers: dict[str, str], trusted: tuple[str, ...]) -> None:
    refusal = check_action(request(**headers, x_conveyor_token=TOKEN), TOKEN, trusted)
    assert refusal is not None
    assert (refusal.status, "cross-site" in refusal.message) == (403, True)


async def _status(trusted: tuple[str, ...], host: str) -> int:
    async def hello(_: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = LoopbackHosts(Starlette(routes=[Route("/", hello)]), trusted)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        return (await http.get("/", headers={"host": host})).status_code


@pytest.mark.parametrize(
    ("trusted", "host", "status"),
    [
        ((), "127.0.0.1:8088", 200),
        ((), "localhost", 200),
        ((), "[::1]:8088", 200),
        ((), "ops.example.com", 400),  # the default: loopback names only
        ((PROXY,), "ops.example.com", 200),
        ((PROXY,), "OPS.example.com:443", 200),
        ((PROXY,), "evil.example", 400),
        ((PROXY,), "ops.example.com.evil.example", 400),
    ],
)
@pytest.mark.anyio
async def test_the_host_check_answers_trusted_names(
    trusted: tuple[str, ...], host: str, status: int
) -> None:
    assert await _status(trusted, host) == status


@pytest.mark.parametrize(
    ("outcome", "ok", "message"),
    [
        (
            ControlOutcome("m", ControlVerb.UNLOAD, ("w1", "w2"), ("w1", "w2"), (), ()),
            True,
            "unload of m: unloaded on w1, w2",
        ),
        (
            ControlOutcome("m", ControlVerb.LOAD, ("w1", "w2", "w3"), ("w1",), ("w2",), ()),
            False,
            "load of m: loaded on w1, not loaded on w2 (its load() returned False), "
            "1 of 3 workers did not answer",
        ),
        (
            ControlOutcome("m", ControlVerb.LOAD, ("w1",), (), (), ("OSError: disk full",)),
            False,
            "load of m: failed: OSError: disk full",
        ),
    ],
)
def test_the_page_is_told_what_the_fleet_did(
    outcome: ControlOutcome, ok: bool, message: str
) -> None:
    document = _document(outcome)
    assert (document["ok"], document["message"], document["acknowledged"]) == (ok, message, True)
