"""Custom REST handlers: a model method marked ``custom_handler(rest_path="/x",
rest_method="POST")`` is served at ``POST /x``, as MLServer serves it.

MLServer hands such a method Starlette's ``Request``; across hosts the gateway cannot, so the
method receives the request's content as plain values:

- a JSON object body: its members as keyword arguments (``{"a": 1, "b": 2}`` calls
  ``handler(a=1, b=2)``);
- any other JSON body (a list, a number, a string): that value as its one argument;
- a body that does not parse as JSON (and whose Content-Type does not say JSON): the raw
  ``bytes`` as its one argument;
- no body (a GET, say): the query parameters as keyword arguments (strings).

What it returns is answered as JSON (a V2 type as MLServer's JSON), or as
``application/octet-stream`` when it returns ``bytes``.

The gateway learns the routes from the workers' heartbeats (the ``rest`` field of
``broker/fleet.py``), read again once a second at most (``FleetService.route``). A path that
no served model claims answers 404.
"""

from __future__ import annotations

from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conveyor.gateway.errors import BadRequest
from conveyor.gateway.rest.calls import (
    Disconnected,
    error_response,
    json_response,
    read_body,
    watched,
)
from conveyor.gateway.rest.codec import read_json
from conveyor.gateway.service import FleetService

__all__ = ("arguments", "custom_route")

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def arguments(
    body: bytes, content_type: str | None, query: dict[str, str]
) -> tuple[list[Any], dict[str, Any]]:
    """The handler's positional and keyword arguments for this request (see the module)."""
    if not body.strip():
        return [], dict(query)
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        value = read_json(body)  # it says JSON: bytes that are not are a client's mistake
    else:
        # `curl -d` says form data, tritonclient says nothing: a body that reads as JSON is
        # JSON, any other is bytes
        try:
            value = read_json(body)
        except BadRequest:
            return [body], {}
    if isinstance(value, dict):
        return [], value
    return [value], {}


def _answer(result: object) -> Response:
    if isinstance(result, bytes):
        return Response(result, media_type="application/octet-stream")
    if isinstance(result, pydantic.BaseModel):
        result = result.model_dump()
    return json_response(result)


def custom_route(service: FleetService, max_body_bytes: int) -> Route:
    """The catch-all route (mounted last): the custom handler that some served model has at
    the request's method and path, or 404."""

    async def endpoint(request: Request) -> Response:
        path, method = request.url.path, request.method
        try:
            route = await service.route("GET" if method == "HEAD" else method, path)
            if route is None:
                message = f"no model serves {method} {path} (not a V2 path, nor a custom handler)"
                return json_response({"error": message}, 404)
            body = await read_body(request, max_body_bytes)
            content_type = request.headers.get("content-type")
            args, kwargs = arguments(body, content_type, dict(request.query_params))
            result = await watched(
                request, lambda: service.call_handler(route.model, route.handler, args, kwargs)
            )
            return _answer(result)  # here: an answer JSON cannot hold is a 500 with words
        except Disconnected:
            return Response(status_code=499)
        except Exception as exc:
            return error_response(exc)

    return Route("/{path:path}", endpoint, methods=_METHODS)
