"""The input pump of a ``predict_stream``: the caller's requests, written as they come.

Each request becomes an ``input`` entry of the call's input stream (``<prefix>:in:{client}:
<request id>``), numbered from 0, and an ``end`` entry closes it. The pump runs in the
client's task group, not in the caller's async generator: a ``yield`` inside a task group or
cancel scope of an async generator breaks cancellation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio

from conveyor.broker import ClientBroker
from conveyor.broker.wire import (
    ErrorCode,
    ErrorInfo,
    Job,
    Message,
    MessageType,
    Payload,
    encode_message,
)
from conveyor.client.backoff import retry_until
from conveyor.client.waiter import Waiter

__all__ = ("INPUTS_TTL_GRACE_S", "pump_inputs")

# An input (and credit) stream outlives its call's deadline by this much, then expires.
INPUTS_TTL_GRACE_S = 60.0


async def pump_inputs(
    broker: ClientBroker,
    job: Job,
    waiter: Waiter,
    requests: AsyncIterator[Payload],
    scope: anyio.CancelScope,
) -> None:
    """Writes ``requests`` to the job's input stream, then its end marker; runs within
    ``scope`` (the call cancels it when it ends). A failure of the caller's iterator ends the
    call with that error; an outage of a Redis that answered before is waited out until the
    job's deadline."""
    assert job.inputs is not None
    ttl = job.deadline - time.time() + INPUTS_TTL_GRACE_S
    deadline = anyio.current_time() + job.deadline - time.time()
    seq = 0
    with scope:
        try:
            async for request in requests:
                entry = encode_message(Message(MessageType.INPUT, job.id, 0, seq, request))
                # an input sent twice (its first XADD's reply lost) is skipped by its seq
                await retry_until(broker, deadline, broker.send_inputs, job.inputs, [entry], ttl)
                seq += 1
            end = encode_message(Message(MessageType.END, job.id, 0, seq))
            await retry_until(broker, deadline, broker.send_inputs, job.inputs, [end], ttl)
        except Exception as error:  # the caller's iterator failed: end the call with it
            waiter.fail(ErrorInfo(ErrorCode.INPUT_ERROR, type(error).__name__, str(error)))
        finally:
            # A stream that ended (or broke) before its inputs did: close the caller's
            # generator now, as `async with aclosing(...)` would, rather than leave it to
            # the garbage collector (which trio reports as a ResourceWarning).
            aclose = getattr(requests, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await aclose()
