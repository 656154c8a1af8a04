"""Jobs the worker never runs: each gets one log line, a dead letter beside its stream, and
(when its entry says where) the reason sent to its caller."""

from __future__ import annotations

import logging

from conveyor.broker import Delivery, WorkerBroker
from conveyor.broker.keys import Keys, hash_tag
from conveyor.broker.wire import ErrorCode, ErrorInfo, Job, Message, MessageType
from conveyor.worker.admission import Refusal
from conveyor.worker.answers import error_message, job_log, readable_job
from conveyor.worker.clock import RedisClock
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.recent_errors import RECENT_ERRORS

__all__ = ("Refusals",)

logger = logging.getLogger(__name__)


class Refusals:
    """Dead-letters the jobs that can never run, and tells their callers why."""

    def __init__(
        self,
        broker: WorkerBroker,
        keys: Keys,
        metrics: WorkerMetrics,
        clock: RedisClock,
        worker: str,
    ) -> None:
        self._broker = broker
        self._keys = keys
        self._metrics = metrics
        self._clock = clock
        self._worker = worker  # its name, for log lines and messages

    async def entry(self, delivery: Delivery, refusal: Refusal, event: str) -> None:
        """An entry refused before it was decoded: one log line, a dead letter beside its
        stream, and the reason to its caller when its own keys passed admission."""
        logger.warning(
            "%s stream=%s entry=%s reason=%s",
            event,
            delivery.stream,
            delivery.entry_id.decode(),
            refusal.reason,
        )
        model = hash_tag(delivery.stream)
        self._metrics.dead_lettered.labels(model).inc()
        self._metrics.jobs.labels(model, "", "refused").inc()
        caller = readable_job(delivery, model, self._clock) if refusal.answer else None
        RECENT_ERRORS.record(
            model, caller.id if caller else "", refusal.code, refusal.type, refusal.reason
        )
        error = ErrorInfo(refusal.code, refusal.type, refusal.reason)
        await self._broker.dead_letter(
            delivery,
            self._keys.dead(model),
            refusal.reason,
            job=caller,
            error_message=None
            if caller is None
            else Message(
                MessageType.ERROR,
                caller.id,
                delivery.deliveries,
                error=error,
                entry=delivery.entry_id.decode(),
            ),
        )

    async def job(
        self, delivery: Delivery, job: Job, code: str, type_name: str, reason: str
    ) -> None:
        """A job that can never run: one log line, a dead letter, the reason to the caller."""
        self._metrics.dead_lettered.labels(job.model).inc()
        self._metrics.jobs.labels(job.model, job.method, "refused").inc()
        logger.warning(
            "job.refused request=%s model=%s method=%s worker=%s reason=%s",
            job.id,
            job.model,
            job.method,
            self._worker,
            reason,
        )
        await self._broker.dead_letter(
            delivery,
            self._keys.dead(hash_tag(delivery.stream)),  # beside the stream it came from
            reason,
            job=job,
            error_message=error_message(job, delivery, code, type_name, reason),
        )

    async def over_delivered(self, delivery: Delivery, job: Job, limit: int) -> None:
        """A job delivered more than ``limit`` times: every worker that took it stopped
        before answering (it crashes them, say)."""
        reason = (
            f"delivered {delivery.deliveries} times (max_deliveries={limit}); "
            "each worker that took it stopped before answering"
        )
        logger.warning(
            "job.dead_lettered %s reason=%s", job_log(job, delivery, self._worker), reason
        )
        self._metrics.dead_lettered.labels(job.model).inc()
        self._metrics.jobs.labels(job.model, job.method, "dead_letter").inc()
        await self._broker.dead_letter(
            delivery,
            self._keys.dead(hash_tag(delivery.stream)),
            reason,
            job=job,
            error_message=error_message(
                job, delivery, ErrorCode.DEAD_LETTER, "DeadLettered", reason
            ),
        )
