"""How a REST handler runs a call to the fleet: cancelled when its client goes away, failures
answered as MLServer answers them (``{"error": message}`` with the status of
``gateway/errors.py``).

uvicorn does not cancel a handler whose client disconnected: it only makes the request's
``receive()`` return ``http.disconnect``. :func:`watched` waits for that beside the call and
cancels the call when it comes; the client's cancellation then cancels the job on its worker.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response

from conveyor.gateway.errors import failure_of
from conveyor.gateway.rest.codec import dump_json

__all__ = ("Disconnected", "error_response", "json_response", "watched")

logger = logging.getLogger("conveyor.gateway")

_T = TypeVar("_T")


class Disconnected(Exception):
    """The client went away before its answer: nobody to answer."""


def json_response(value: object, status: int = 200) -> Response:
    return Response(dump_json(value), status_code=status, media_type="application/json")


def error_response(exc: Exception) -> Response:
    failure = failure_of(exc)
    logger.debug("gateway.call_failed status=%d error=%s", failure.http_status, failure.message)
    return json_response({"error": failure.message}, failure.http_status)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def watched(request: Request, call: Callable[[], Awaitable[_T]]) -> _T:
    """``await call()``, cancelled if the client disconnects first (then raises
    :class:`Disconnected`). Call it once the request's body has been read."""
    results: list[_T] = []
    failures: list[Exception] = []
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                results.append(await call())
            except Exception as exc:  # raised below, not as a task group's ExceptionGroup
                failures.append(exc)
            tg.cancel_scope.cancel()

        tg.start_soon(run)
        await _wait_disconnect(request)
        tg.cancel_scope.cancel()  # the client is gone: stop the call (and its job)
    if failures:
        raise failures[0]
    if not results:
        raise Disconnected
    return results[0]
