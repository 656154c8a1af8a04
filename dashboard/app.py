"""The dashboard's ASGI app (Starlette): the page, its JSON API and its event stream.

- ``GET /``: the page (``static/index.html``, ``dashboard.js``, ``dashboard.css`` and the
  vendored uPlot under ``/static``);
- ``GET /api/fleet``: models and workers (:func:`conveyor.dashboard.view.fleet_doc`);
- ``GET /api/models/{model}``: one model's streams, groups and workers;
- ``GET /api/models/{model}/dead?count=N``: its oldest dead letters;
- ``GET /events``: server-sent events, the fleet document at most once per interval;
- ``POST /api/models/{model}/dead/retry`` and ``.../dead/delete`` with ``{"ids": [...]}`` or
  ``{"all": true}``: :mod:`conveyor.broker.ops.dead_letters`' retry and purge, behind
  :func:`conveyor.dashboard.guard.check_action`, each logged;
- ``POST /api/models/{model}/load`` and ``.../unload``: :mod:`conveyor.dashboard.control`,
  behind the same checks, logged.

No response carries the Redis URL: errors name the server as ``server_url`` does (no
password).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.broker import RedisSettings, create_client
from conveyor.broker.keys import Keys
from conveyor.broker.ops import dead_letters as admin
from conveyor.dashboard.control import control_routes
from conveyor.dashboard.guard import LOOPBACK_NAMES, LoopbackHosts, refused, trusted_origin
from conveyor.dashboard.view import dead_doc, model_doc
from conveyor.dashboard.watch import FleetWatch
from conveyor.errors import ConveyorError

__all__ = ("DashboardSettings", "build_app")

logger = logging.getLogger(__name__)

STATIC: Final = Path(__file__).parent / "static"
# The page loads only its own files and talks only to its own server; no other site may
# frame it (clickjacking the retry buttons).
_HEADERS: Final = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_MAX_DEAD_SHOWN: Final = 500


@dataclass(frozen=True)
class DashboardSettings:
    """What ``conveyor dashboard`` serves; neither secret shows in its repr."""

    redis_url: str = field(repr=False)
    prefix: str = "conveyor"
    host: str = "127.0.0.1"
    port: int = 8088
    token: str | None = field(default=None, repr=False)
    interval: float = 0.5  # seconds between two snapshots pushed to a page: at most 2/s
    # a reverse proxy's public address(es): their Origin and Host name pass the checks
    trusted_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Raises ValueError for a trusted origin that is not scheme://host[:port]."""
        origins = tuple(trusted_origin(origin) for origin in self.trusted_origins)
        object.__setattr__(self, "trusted_origins", origins)


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _redis_error(error: BaseException) -> Response:
    reason = str(error) or "Redis did not answer in time"
    return _error(503, reason)


def build_app(settings: DashboardSettings, *, stopping: anyio.Event | None = None) -> Starlette:
    """The dashboard for ``settings``. Its Redis client is made and closed by the app's
    lifespan (uvicorn's ``lifespan="on"``). Once ``stopping`` is set, open event streams end
    (a server stopping waits for its responses, and these never end by themselves).

    Raises:
        ValueError: the Redis URL is not valid.
    """
    redis_settings = RedisSettings.from_url(settings.redis_url)
    keys = Keys(settings.prefix)
    state: dict[str, FleetWatch] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        redis = create_client(redis_settings, max_connections=4)
        state["watch"] = FleetWatch(redis, keys, settings.interval)
        try:
            yield
        finally:
            with anyio.move_on_after(2, shield=True):
                await redis.aclose()

    def watch() -> FleetWatch:
        return state["watch"]

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    async def fleet(_: Request) -> Response:
        return Response(await watch().latest(), media_type="application/json")

    async def model(request: Request) -> Response:
        name = request.path_params["model"]
        try:
            document = model_doc(await watch().snapshot(), name)
        except (ConveyorError, TimeoutError) as error:
            return _redis_error(error)
        if document is None:
            return _error(404, f"no model {name!r} under prefix {settings.prefix!r}")
        return _json(document)

    async def dead(request: Request) -> Response:
        name = request.path_params["model"]
        raw = request.query_params.get("count", "100")
        if not raw.isdigit() or not 1 <= int(raw) <= _MAX_DEAD_SHOWN:
            return _error(400, f"count must be a whole number from 1 to {_MAX_DEAD_SHOWN}")
        redis = watch().redis
        try:
            with anyio.fail_after(5):
                total = await admin.count_dead(redis, keys, name)
                letters = await admin.list_dead(redis, keys, name, int(raw)) if total else []
        except (ConveyorError, TimeoutError) as error:
            return _redis_error(error)
        return _json(dead_doc(name, total, letters, time.time()))

    async def pause() -> bool:
        """One interval (the pace: at most one snapshot per interval); True if ``stopping``
        is set."""
        if stopping is None:
            await anyio.sleep(settings.interval)
            return False
        with anyio.move_on_after(settings.interval):
            await stopping.wait()
        return stopping.is_set()

    async def events(_: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"  # a page that lost the stream reconnects after 2 s
            while True:
                yield b"data: " + await watch().latest() + b"\n\n"
                if await pause():
                    return

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def action(request: Request) -> Response:
        name, verb = request.path_params["model"], request.path_params["verb"]
        if verb not in ("retry", "delete"):
            return _error(404, f"no action {verb!r}: retry or delete")
        client = request.client.host if request.client else "?"
        refusal = refused(request, verb, name, settings.token, settings.trusted_origins)
        if refusal is not None:
            return _error(refusal.status, refusal.message)
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        ids = body.get("ids") if isinstance(body, dict) else None
        everything = isinstance(body, dict) and body.get("all") is True
        valid_ids = isinstance(ids, list) and all(isinstance(i, str) for i in ids)
        if everything == valid_ids:  # neither, or both
            return _error(400, 'send JSON {"ids": ["<entry id>", ...]} or {"all": true}')
        selection: list[str] | admin.AllEntries = admin.ALL if everything else list(ids or [])
        redis = watch().redis
        try:
            with anyio.fail_after(30):
                if verb == "retry":
                    done = await admin.retry_dead(redis, keys, name, selection)
                else:
                    done = await admin.purge_dead(redis, keys, name, selection)
        except ValueError as error:
            return _error(400, str(error))
        except (ConveyorError, TimeoutError) as error:
            return _redis_error(error)
        logger.info(
            "dashboard.action action=%s model=%s all=%s ids=%s done=%d client=%s",
            verb, name, everything, ",".join(ids or []), done, client,
        )  # fmt: skip
        return _json({"action": verb, "model": name, "done": done})

    middleware = [Middleware(_SecurityHeaders)]
    if settings.host in LOOPBACK_NAMES:
        # bound to loopback: refuse other Host names, so a DNS-rebinding page cannot read it
        middleware.append(Middleware(LoopbackHosts, trusted=settings.trusted_origins))
    routes = [
        Route("/", index),
        Route("/api/fleet", fleet),
        Route("/api/models/{model}", model),
        Route("/api/models/{model}/dead", dead),
        Route("/api/models/{model}/dead/{verb:str}", action, methods=["POST"]),
        *control_routes(settings.token, settings.trusted_origins, keys, lambda: watch().redis),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
