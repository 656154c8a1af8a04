"""A ``predict_stream`` job: the caller's inputs in, each response out as a chunk."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import anyio

from conveyor.broker import Delivery, WorkerBroker
from conveyor.broker.wire import ErrorCode, Job, Message, MessageType, Payload, decode_message
from conveyor.errors import BrokerConnectionError, BrokerOutOfMemory, InputsLost
from conveyor.tracing import JobTrace
from conveyor.worker import execution
from conveyor.worker.answers import error_message, failure_message, give_id
from conveyor.worker.registry import ServedModel

__all__ = ("run_stream",)


async def run_stream(
    broker: WorkerBroker,
    delivery: Delivery,
    job: Job,
    served: ServedModel,
    deadline: float,
    *,
    read_block: float,
    worker: str,
    trace: JobTrace | None = None,
) -> list[Message]:
    """Streams each response as a chunk; returns the closing message (end or error)."""
    assert served.model is not None
    inputs = _inputs(broker, job, deadline, read_block)
    entry = delivery.entry_id.decode()
    seq = 0
    taken = 0  # chunks the caller has taken, as it last told us
    try:
        async for response in execution.iterate(
            served.model.predict_stream,
            inputs,
            served.calls.threads,
            served.calls.stream_slots,
        ):
            while job.credit and seq - taken >= job.window:
                # A slow reader: pause the model instead of filling Redis.
                reported = await broker.wait_credit(job.credit, read_block)
                if reported is not None:
                    taken = max(taken, reported)
            chunk = Message(
                MessageType.CHUNK, job.id, delivery.deliveries, seq, response, entry=entry
            )
            await broker.reply(job, [chunk], deadline)
            if trace is not None:
                trace.chunk(seq)
            seq += 1
    except InputsLost as error:  # a stream with holes is not the model's failure
        return [
            error_message(
                job, delivery, ErrorCode.STREAM_INTERRUPTED, "StreamInterrupted", str(error)
            )
        ]
    except Exception as error:
        if isinstance(error, BrokerConnectionError | BrokerOutOfMemory):
            # A chunk, credit or input step lost Redis, or Redis had no room for it (or the
            # model's own client failed so): not the model's failure. The job stays pending and
            # runs again (dead-lettered if it keeps failing); the caller sees StreamInterrupted.
            raise
        return [failure_message(job, delivery, worker, error)]
    finally:
        with anyio.CancelScope(shield=True):
            await inputs.aclose()
    return [Message(MessageType.END, job.id, delivery.deliveries, seq, entry=entry)]


async def _inputs(
    broker: WorkerBroker, job: Job, deadline: float, read_block: float
) -> AsyncGenerator[Payload, None]:
    """The requests a client streams to a predict_stream, until its end marker (or the
    job's ``deadline``, on our clock)."""
    if job.inputs is None:
        for arg in job.args:
            yield give_id(arg, job)
        return
    cursor = b"0-0"
    expected = 0  # inputs are numbered from 0; the end marker counts them
    while True:
        entries = await broker.read_inputs(job.inputs, cursor, read_block)
        for entry_id, fields in entries:
            cursor = entry_id
            message = decode_message(fields)
            if message.seq < expected and message.type is MessageType.INPUT:
                continue  # a write the client's redis-py re-sent
            if message.seq != expected:
                raise InputsLost(expected, message.seq)
            if message.type is MessageType.END:
                return
            expected += 1
            yield give_id(message.payload, job)
        if time.time() > deadline:
            return
