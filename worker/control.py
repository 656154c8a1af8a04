"""Control requests sent to every worker of a model: cancel a running job, load, unload.

Clients write them to ``<prefix>:{<model>}:control``; every worker reads that stream from
the entry that was last when it started (never as a consumer group: each worker acts on
each request). A cancel stops the job through its scope (``worker.cancellation``); a load
or unload answers the caller with this worker's outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from conveyor.broker import WorkerBroker
from conveyor.broker.keys import Keys
from conveyor.broker.wire import (
    ControlVerb,
    ErrorCode,
    ErrorInfo,
    Job,
    Message,
    MessageType,
    decode_job,
)
from conveyor.errors import BrokerConnectionError, ModelLoadFailed, WireError
from conveyor.worker.admission import Admission
from conveyor.worker.answers import describe
from conveyor.worker.cancellation import RunningJobs
from conveyor.worker.clock import RedisClock
from conveyor.worker.registry import ModelRegistry
from conveyor.worker.slots import Slots

__all__ = ("Control",)

logger = logging.getLogger(__name__)


class Control:
    """Answers load/unload/cancel requests sent to every worker of a model."""

    def __init__(
        self,
        broker: WorkerBroker,
        registry: ModelRegistry,
        keys: Keys,
        admission: Admission,
        jobs: RunningJobs,
        slots: Slots,
        clock: RedisClock,
        *,
        worker: str,
        read_block: float,
        models_changed: Callable[[], None],
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._keys = keys
        self._jobs = jobs
        self._slots = slots
        self._clock = clock
        self._worker = worker  # its name, in answers
        self._read_block = read_block
        self._models_changed = models_changed  # tells the fleet (the heartbeat)
        self._admission = admission

    async def run(self, cursors: dict[str, bytes]) -> None:
        """Reads the control streams after their ``cursors``, until cancelled."""
        if not cursors:
            return
        if not self._broker.cluster:
            await self._read(cursors)
            return
        # On Redis Cluster one read names one slot's keys: a reader per model.
        async with anyio.create_task_group() as tg:
            for stream, cursor in cursors.items():
                tg.start_soon(self._read, {stream: cursor})

    async def _read(self, cursors: dict[str, bytes]) -> None:
        while True:
            try:
                entries = await self._broker.read_control(cursors, self._read_block)
            except BrokerConnectionError as error:  # Redis unavailable: the job loop says so too
                logger.debug("control.read_failed error=%s", describe(error))
                await anyio.sleep(1.0)
                continue
            for stream, entry_id, fields in entries:
                cursors[stream] = entry_id
                # before decoding: the control streams are writable by every client too
                refusal = self._admission.check_control(fields)
                if refusal is not None:
                    logger.warning(
                        "control.refused stream=%s entry=%s reason=%s",
                        stream,
                        entry_id.decode(),
                        refusal.reason,
                    )
                    continue
                try:
                    job = decode_job(fields)
                except WireError as error:
                    logger.warning("control.bad_entry stream=%s reason=%s", stream, error.reason)
                    continue
                if stream != self._keys.control(job.model):  # the stream decides the model
                    logger.warning(
                        "control.refused stream=%s entry=%s reason=it names model %r",
                        stream,
                        entry_id.decode(),
                        job.model,
                    )
                    continue
                deadline = self._clock.deadline(entry_id, job.deadline, job.sent_at)
                if not self._registry.has(job.model) or time.time() > deadline:
                    continue
                await self._control(job)

    async def _control(self, job: Job) -> None:
        if job.method == ControlVerb.CANCEL:  # stop the running job with this request id
            self._jobs.cancel_request(job.id)
            return
        registry = self._registry
        try:
            if job.method == ControlVerb.LOAD:
                try:
                    ready = await registry.load(job.model)
                finally:
                    await self._broker.ensure_groups(registry.job_streams())
                    self._models_changed()
            elif job.method == ControlVerb.UNLOAD:
                ready = not await registry.unload(job.model)
                self._models_changed()
            else:
                raise ValueError(f"unknown control method {job.method!r}")
        except Exception as error:
            if isinstance(error, ModelLoadFailed):
                logger.error("model.load_failed %s", error, exc_info=error.__cause__)
            message = Message(
                MessageType.ERROR,
                job.id,
                error=ErrorInfo(ErrorCode.MODEL_ERROR, type(error).__name__, str(error)),
            )
        else:
            self._slots.wake()  # the streams to read changed
            message = Message(
                MessageType.RESULT,
                job.id,
                payload={"worker": self._worker, "model": job.model, "ready": ready},
            )
        await self._broker.reply(job, [message])
