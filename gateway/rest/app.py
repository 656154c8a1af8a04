"""The REST app: MLServer's V2 paths (and JSON), answered through the fleet.

``GET /v2/health/live``, ``/v2/health/ready``, ``/v2``; ``GET /v2/models/{name}[/versions/{v}]``
and ``…/ready``; ``POST …/infer``, ``…/generate`` (the infer body and answer) and
``…/generate_stream`` (server-sent events: one ``data: <response JSON>`` event per chunk as the
worker yields it; a failure after the first chunk is one last ``data: {"error": …}`` event);
``POST /v2/repository/index``, ``/v2/repository/models/{name}/load`` and ``…/unload``; and
the models' custom handlers at their own paths (``gateway/rest/custom.py``); with
``--dashboard``, ``conveyor.dashboard``'s page and API under ``/dashboard/``.

Bodies and answers are read and written by ``gateway/rest/codec.py`` (JSON, and Triton's
binary tensor extension); failures answer ``{"error": message}`` with the status of
``gateway/errors.py``; a client that disconnects cancels its job (``gateway/rest/calls.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from conveyor.gateway.errors import BadRequest, failure_of
from conveyor.gateway.rest.calls import (
    Disconnected,
    error_response,
    json_response,
    read_body,
    watched,
)
from conveyor.gateway.rest.codec import (
    HEADER_LENGTH,
    Outputs,
    dump_json,
    encode_response,
    parse_request,
    read_json,
)
from conveyor.gateway.rest.custom import custom_route
from conveyor.gateway.service import FleetService
from conveyor.gateway.settings import GatewaySettings
from conveyor.types import InferenceRequest, InferenceResponse

__all__ = ("build_app",)

_CLIENT_CLOSED = 499  # nginx's: the client went away (nobody reads this answer)
_JSON = "application/json"


def _model(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return params["name"], params.get("version")


async def _read(request: Request, limit: int) -> tuple[InferenceRequest, Outputs, float | None]:
    body = await read_body(request, limit)
    return parse_request(body, request.headers.get(HEADER_LENGTH))


def _sse(response: InferenceResponse | dict[str, str]) -> bytes:
    document = response if isinstance(response, dict) else response.model_dump()
    return b"data: " + dump_json(document) + b"\n\n"


DASHBOARD_PATH = "/dashboard"


def build_app(
    service: FleetService, settings: GatewaySettings, dashboard: ASGIApp | None = None
) -> Starlette:
    """The ASGI app of one gateway process; ``dashboard`` (``conveyor.dashboard``'s app) is
    served under ``/dashboard/`` when given."""
    limit = settings.max_request_bytes

    async def live(request: Request) -> Response:
        return Response(status_code=200 if await service.live() else 400)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if await service.ready() else 400)

    async def server_metadata(request: Request) -> Response:
        return json_response(service.server_metadata().model_dump())

    async def model_metadata(request: Request) -> Response:
        name, version = _model(request)
        try:
            metadata = await watched(request, lambda: service.model_metadata(name, version))
        except Disconnected:
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as exc:
            return error_response(exc)
        return json_response(metadata.model_dump())

    async def model_ready(request: Request) -> Response:
        name, version = _model(request)
        try:
            served = await service.model_ready(name, version)
        except Exception as exc:
            return error_response(exc)
        return Response(status_code=200 if served else 400)

    async def infer(request: Request) -> Response:
        name, version = _model(request)
        try:
            inference, outputs, timeout = await _read(request, limit)
            answer = await watched(
                request, lambda: service.infer(name, inference, version, timeout=timeout)
            )
            body, header_length = encode_response(answer, outputs)
        except Disconnected:
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as exc:
            return error_response(exc)
        if header_length is None:
            return Response(body, media_type=_JSON)
        headers = {"Inference-Header-Content-Length": str(header_length)}
        return Response(body, headers=headers, media_type="application/octet-stream")

    async def generate_stream(request: Request) -> Response:
        name, version = _model(request)
        try:
            inference, _, timeout = await _read(request, limit)
        except Exception as exc:
            return error_response(exc)

        async def one() -> AsyncIterator[InferenceRequest]:
            yield inference

        chunks = service.infer_stream(name, one(), version, timeout=timeout)
        try:
            # the first chunk (or failure) before the status line: a call that fails at
            # once answers its status, as infer does
            first = await watched(request, lambda: anext(chunks, None))
        except Disconnected:
            await chunks.aclose()
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as exc:
            await chunks.aclose()
            return error_response(exc)

        async def events() -> AsyncIterator[bytes]:
            try:
                if first is None:
                    return
                yield _sse(first)
                async for chunk in chunks:
                    yield _sse(chunk)
            except Exception as exc:
                yield _sse({"error": failure_of(exc).message})
            finally:
                await chunks.aclose()

        # Starlette stops iterating (and closes `events`) when the client disconnects
        return StreamingResponse(events(), media_type="text/event-stream")

    async def repository_index(request: Request) -> Response:
        try:
            body = await read_body(request, limit)
            ready_only = None
            if body.strip():
                document = read_json(body)
                ready_only = document.get("ready") if isinstance(document, dict) else None
                if ready_only is not None and not isinstance(ready_only, bool):
                    raise BadRequest(f"'ready' must be true, false or null, not {ready_only!r}")
            index = await service.index(ready_only)
        except Exception as exc:
            return error_response(exc)
        return json_response([item.model_dump() for item in index.root])

    async def load(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            await watched(request, lambda: service.load(name))
        except Disconnected:
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as exc:
            return error_response(exc)
        return Response(status_code=200)

    async def unload(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            await watched(request, lambda: service.unload(name))
        except Disconnected:
            return Response(status_code=_CLIENT_CLOSED)
        except Exception as exc:
            return error_response(exc)
        return Response(status_code=200)

    model_paths = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")
    routes: list[BaseRoute] = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", unload, methods=["POST"]),
    ]
    for path in model_paths:
        routes += [
            Route(path, model_metadata, methods=["GET"]),
            Route(f"{path}/ready", model_ready, methods=["GET"]),
            Route(f"{path}/infer", infer, methods=["POST"]),
            Route(f"{path}/generate", infer, methods=["POST"]),
            Route(f"{path}/generate_stream", generate_stream, methods=["POST"]),
        ]
    if dashboard is not None:

        async def to_dashboard(request: Request) -> Response:
            # the page's links are relative: they resolve under /dashboard/ only
            return RedirectResponse(f"{DASHBOARD_PATH}/", status_code=308)

        routes += [
            Route(DASHBOARD_PATH, to_dashboard, methods=["GET", "HEAD"]),
            Mount(DASHBOARD_PATH, dashboard),  # before the catch-all below
        ]
    routes.append(custom_route(service, limit))
    return Starlette(routes=routes)
