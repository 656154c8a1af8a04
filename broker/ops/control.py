"""Load or unload a model on the live workers that have it: what ``Client.control`` sends
(``conveyor.client``), for operator tools that are no client (the dashboard).

The request is a job on ``<prefix>:{<model>}:control`` (method ``load`` or ``unload``, encoded
by the wire as a client's); every worker with the model in its folders acts on it and writes
its outcome to the request's reply stream (``{"worker", "model", "ready"}``, or an error when
its ``load()`` raised), then rings the doorbell. :func:`send_control` reads that reply stream
itself (no doorbell reader: one request at a time), until every worker that had the model when
it was sent has answered or the timeout ends, then deletes the reply stream and the bell.

It checks the heartbeats first, as the client does: a model no live worker has is refused at
once (:class:`~conveyor.errors.ModelNotServed`), so a typo leaves no control stream behind.
Errors are Conveyor's: :class:`~conveyor.errors.BrokerConnectionError` when Redis cannot be
reached, :class:`~conveyor.errors.BrokerCommandError` when it refuses a command, and
:class:`~conveyor.errors.DeadlineExceeded` when no worker answered in time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TypeAlias, cast

import anyio
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from conveyor.broker.clients import server_url
from conveyor.broker.errors import translate_errors
from conveyor.broker.fleet import read_fleet
from conveyor.broker.keys import Keys
from conveyor.broker.wire import ControlVerb, Job, MessageType, decode_message, encode_job
from conveyor.errors import BrokerCommandError, DeadlineExceeded, ModelNotServed, WireError

__all__ = ("ControlOutcome", "send_control")

_READ_BLOCK_S: Final = 1.0  # each XREAD's wait: well below any socket timeout
_CONTROL_MAXLEN: Final = 1000  # as the client's XADD: the control stream stays short
_Read: TypeAlias = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]  # XREAD's reply


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """What the workers answered to one load/unload request."""

    model: str
    verb: ControlVerb
    asked: tuple[str, ...]  # the live workers with the model in their folders when sent
    done: tuple[str, ...]  # answered: loaded (load) or unloaded (unload) now
    not_done: tuple[str, ...]  # answered: still not loaded (its load() returned False)
    errors: tuple[str, ...]  # answered with an error ("<type>: <message>")

    @property
    def missing(self) -> int:
        """How many of the workers asked had not answered when the wait ended."""
        return max(len(self.asked) - len(self.done) - len(self.not_done) - len(self.errors), 0)


@contextmanager
def _errors(redis: Redis) -> Iterator[None]:
    try:
        with translate_errors(server_url(redis)):
            yield
    except redis_errors.RedisError as exc:
        raise BrokerCommandError(server_url(redis), str(exc)) from exc


def _unknown(model: str, having: list[str]) -> str:
    if not having:
        return f"no live worker has model {model!r}: no worker is running on this prefix"
    return f"no live worker has model {model!r} in its folders; the models they have: " + ", ".join(
        having
    )


async def send_control(
    redis: Redis, keys: Keys, model: str, verb: ControlVerb, timeout: float
) -> ControlOutcome:
    """Sends ``verb`` (load or unload) for ``model`` and waits up to ``timeout`` seconds for
    the answers of the workers that have it. Returns them once all have answered, or at the
    timeout if at least one has; raises :class:`DeadlineExceeded` if none has."""
    if verb not in (ControlVerb.LOAD, ControlVerb.UNLOAD):
        raise ValueError(f"not a load or unload: {verb!r}")
    with _errors(redis):
        view = await read_fleet(redis, keys)
    asked: tuple[str, ...] = ()
    if view is not None:  # None: the ACL hides the heartbeats; send, and see who answers
        asked = tuple(view.having(model))
        if not asked:
            having = sorted({name for w in view.workers for name in w.models})
            raise ModelNotServed(model, None, _unknown(model, having))
    operator = f"ops-{uuid.uuid4().hex[:12]}"  # a client id of its own: its bell and replies
    request_id = f"{operator}-{verb.value}"
    now = time.time()
    job = Job(
        id=request_id,
        method=verb.value,
        model=model,
        version=None,
        reply=keys.reply(operator, request_id),
        bell=keys.bell(operator),
        deadline=now + timeout,
        sent_at=now,
    )
    done: list[str] = []
    not_done: list[str] = []
    errors: list[str] = []

    def outcome() -> ControlOutcome:
        return ControlOutcome(model, verb, asked, tuple(done), tuple(not_done), tuple(errors))

    try:
        with _errors(redis):
            await redis.xadd(
                keys.control(model),
                encode_job(job),  # type: ignore[arg-type]
                maxlen=_CONTROL_MAXLEN,
                approximate=True,
            )
        cursor = b"0"
        with anyio.move_on_after(timeout):
            while not asked or outcome().missing:
                with _errors(redis):
                    found = await redis.xread({job.reply: cursor}, block=int(_READ_BLOCK_S * 1000))
                for _, entries in cast(_Read, found or []):
                    for entry_id, fields in entries:
                        cursor = entry_id
                        _take(fields, verb, done, not_done, errors)
                if not asked and (done or not_done or errors):
                    break  # who has the model is unknown: the first answer will do
    finally:
        with anyio.CancelScope(shield=True), _errors(redis):
            await redis.delete(job.reply, job.bell)
    if not (done or not_done or errors):
        raise DeadlineExceeded(
            request_id, timeout, f"no live worker answered {verb.value} of model {model!r}"
        )
    return outcome()


def _take(
    fields: dict[bytes, bytes],
    verb: ControlVerb,
    done: list[str],
    not_done: list[str],
    errors: list[str],
) -> None:
    """Files one worker's answer under done, not done or errors."""
    try:
        message = decode_message(fields)
    except WireError as error:
        errors.append(f"an answer that is not a message: {error.reason}")
        return
    if message.type is MessageType.ERROR and message.error is not None:
        errors.append(f"{message.error.type}: {message.error.message}")
        return
    payload = message.payload if isinstance(message.payload, dict) else {}
    worker = str(payload.get("worker", "?"))
    ready = bool(payload.get("ready"))
    (done if ready == (verb is ControlVerb.LOAD) else not_done).append(worker)
