"""The dashboard's load and unload of a model: ``POST /api/models/{model}/load`` and
``.../unload``.

Behind the same checks as the dead-letter actions (:func:`conveyor.dashboard.guard.refused`:
same site, token), each logged. The request is :func:`conveyor.broker.ops.control.send_control`
(what ``Client.control`` sends); the answer says what the fleet did:

- 200 ``{"action", "model", "acknowledged": true, "ok", "asked", "done", "not_done",
  "errors", "missing", "message"}``: at least one worker answered. ``ok``: every worker
  asked answered, and did it. ``message`` is a sentence for the page;
- 404: no live worker has the model in its folders (the message names those it has);
- 504: no worker answered within the timeout; 503: Redis could not be reached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final

import anyio
import orjson
from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from conveyor.broker.keys import Keys
from conveyor.broker.ops.control import ControlOutcome, send_control
from conveyor.broker.wire import ControlVerb
from conveyor.dashboard.guard import refused
from conveyor.errors import ConveyorError, DeadlineExceeded, ModelNotServed

__all__ = ("CONTROL_TIMEOUT_S", "control_routes")

logger = logging.getLogger(__name__)

CONTROL_TIMEOUT_S: Final = 60.0  # a load may take a while: the workers' answers, at most this


def _json(document: object, status: int = 200) -> Response:
    return Response(orjson.dumps(document), status, media_type="application/json")


def _message(outcome: ControlOutcome) -> str:
    """One sentence for the page: who did it, who did not, who did not answer."""
    verb, model = outcome.verb.value, outcome.model
    parts = []
    if outcome.done:
        parts.append(f"{verb}ed on {', '.join(outcome.done)}")
    if outcome.not_done:
        parts.append(f"not loaded on {', '.join(outcome.not_done)} (its load() returned False)")
    if outcome.errors:
        parts.append(f"failed: {'; '.join(outcome.errors)}")
    if outcome.missing:
        parts.append(f"{outcome.missing} of {len(outcome.asked)} workers did not answer")
    return f"{verb} of {model}: " + ", ".join(parts)


def _document(outcome: ControlOutcome) -> dict[str, object]:
    ok = not (outcome.not_done or outcome.errors or outcome.missing)
    return {
        "action": outcome.verb.value,
        "model": outcome.model,
        "acknowledged": True,
        "ok": ok,
        "asked": list(outcome.asked),
        "done": list(outcome.done),
        "not_done": list(outcome.not_done),
        "errors": list(outcome.errors),
        "missing": outcome.missing,
        "message": _message(outcome),
    }


def control_routes(
    token: str | None,
    trusted: Sequence[str],
    keys: Keys,
    redis: Callable[[], Redis],
    timeout: float = CONTROL_TIMEOUT_S,
) -> list[Route]:
    """The two routes, sending through the client ``redis()`` returns (the app's)."""

    async def control(request: Request) -> Response:
        name = request.path_params["model"]
        verb = ControlVerb.LOAD if request.url.path.endswith("/load") else ControlVerb.UNLOAD
        refusal = refused(request, verb.value, name, token, trusted)
        if refusal is not None:
            return _json({"error": refusal.message}, refusal.status)
        client = request.client.host if request.client else "?"
        try:
            with anyio.fail_after(timeout + 10):  # the op's own wait, plus its round trips
                outcome = await send_control(redis(), keys, name, verb, timeout)
        except ModelNotServed as error:
            status, reason = 404, str(error)
        except DeadlineExceeded as error:
            # the request stays in the stream: a slow load goes on, and the page shows its end
            later = " (still loading? the workers table shows when it is ready)"
            status, reason = 504, str(error) + (later if verb is ControlVerb.LOAD else "")
        except (ConveyorError, TimeoutError) as error:
            status, reason = 503, str(error) or "Redis did not answer in time"
        else:
            document = _document(outcome)
            logger.info(
                "dashboard.action action=%s model=%s ok=%s done=%s not_done=%s errors=%d "
                "missing=%d client=%s",
                verb.value, name, document["ok"], ",".join(outcome.done),
                ",".join(outcome.not_done), len(outcome.errors), outcome.missing, client,
            )  # fmt: skip
            return _json(document)
        logger.warning(
            "dashboard.action_failed action=%s model=%s status=%d reason=%s client=%s",
            verb.value, name, status, reason, client,
        )  # fmt: skip
        return _json({"error": reason, "action": verb.value, "model": name}, status)

    return [
        Route("/api/models/{model}/load", control, methods=["POST"]),
        Route("/api/models/{model}/unload", control, methods=["POST"]),
    ]
