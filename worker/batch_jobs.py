"""The batch path: a read's ``predict`` jobs for a model that batches, without a task per job.

The consumer (``worker.consumer``) hands each read's deliveries to :meth:`BatchJobs.take`
first. A delivery it can take — a ``predict`` of one ``InferenceRequest`` for a ready model
with ``max_batch_size`` above 1, that admission lets through, that decodes (its request kept
as the wire's bytes, ``LaidRequest``), is not over-delivered nor expired — goes to the model's
batcher with :meth:`AdaptiveBatcher.submit`: no task, coroutine or event of its own. The
batch's answers come in one call (:meth:`BatchJobs._answers`), are encoded together
(``RowsEncoder``) and leave in one write (``WorkerBroker.answer_soon``). Everything else —
refusals, bad entries, unknown models or methods, over-delivered and expired jobs, other
methods — takes the per-job path (``worker.runner``), as before, decoded again there (rare).

What a job's task did for it, the batch path does per job without one: its slot
(``worker.slots``), its claim (``broker.claims``, sent together), its deadline and a caller's
cancel (its :class:`_BatchedJob` is the job's scope in ``RunningJobs``: stopping it takes
its request back from the batcher if its batch has not started, and answers at once either
way; the answer its batch brings later is dropped), its metrics, its answer stored before its
ack. A worker that stops now (``RunningJobs.aborting``) answers none of them: they stay
pending, for another worker, as a cancelled job task's do.
Measured with ``python -m bench.batchpath`` (bench/README.md, "The batch path").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

from conveyor.batching import Rows
from conveyor.broker import Delivery, WorkerBroker
from conveyor.broker.keys import hash_tag
from conveyor.broker.wire import Fields, Job, JobDecoder, Message, RowsEncoder
from conveyor.errors import WireError
from conveyor.laid_requests import LaidRequest
from conveyor.logging import job_context
from conveyor.tracing import JobTrace, batch_ran
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker.admission import Admission
from conveyor.worker.answers import (
    failure_message,
    give_id,
    job_log,
    log_answered_duplicate,
    log_unfinished,
    outcome,
    result_message,
)
from conveyor.worker.batcher import AdaptiveBatcher, Answered, Submitted
from conveyor.worker.cancellation import CANCELLED, DUPLICATE, JobScope, RunningJobs
from conveyor.worker.clock import RedisClock
from conveyor.worker.heartbeat import WorkerStats
from conveyor.worker.metrics import JobMetrics, WorkerMetrics
from conveyor.worker.registry import ModelRegistry, ServedModel
from conveyor.worker.runner import JobRunner
from conveyor.worker.slots import Slots

__all__ = ("BatchJobs",)

logger = logging.getLogger(__name__)

_ABORTED = "aborted"  # why a batched job was let go: the worker stops now

_Model = tuple[ServedModel, AdaptiveBatcher]  # a batched model and its batcher


class _BatchedJob(JobScope):
    """One job on the batch path, and its scope: :meth:`cancel` (its deadline, its caller's
    cancel, another copy's claim) stops it through :meth:`BatchJobs.stop`, not a task."""

    def __init__(
        self,
        owner: BatchJobs,
        delivery: Delivery,
        job: Job,
        deadline: float,
        batcher: AdaptiveBatcher,
        metrics: JobMetrics,
        since: float,
    ) -> None:
        super().__init__()
        self.started = True
        self.owner = owner
        self.delivery = delivery
        self.job = job
        self.deadline = deadline  # on this host's clock
        self.batcher = batcher
        self.metrics = metrics
        self.since = since  # loop time when it was taken, for its latency
        self.submitted: Submitted | None = None
        self.outcome = "ok"  # of its answer, for metrics
        self.trace: JobTrace | None = None  # its spans, when the app configured tracing

    def cancel(self, reason: str) -> None:
        """Stops the job (once; see JobScope.cancel), now: no task to wake."""
        first = self.reason is None
        if first or reason == CANCELLED:
            self.reason = reason
        if first:
            self.owner.stop(self, reason)

    def acked(self) -> None:
        self.owner.slots.acked(self.delivery.entry_id, self.delivery.stream)

    def ended(self, error: BaseException | None) -> None:
        """Its answer's fate (see ``WorkerBroker.answer``)."""
        self.owner.answer_ended(self, error)


class BatchJobs:
    """Runs the batched ``predict`` jobs of one worker's reads (see the module's docstring)."""

    def __init__(
        self,
        runner: JobRunner,
        broker: WorkerBroker,
        registry: ModelRegistry,
        admission: Admission,
        jobs: RunningJobs,
        slots: Slots,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        clock: RedisClock,
        *,
        worker: str,
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
    ) -> None:
        self._runner = runner
        self._broker = broker
        self._registry = registry
        self._admission = admission
        self._jobs = jobs
        self.slots = slots
        self._stats = stats
        self._metrics = metrics
        self._clock = clock
        self._worker = worker
        self._start_soon = start_soon  # for a duplicate's ack (rare)
        self._batches: dict[str, bool] = {}  # job stream -> whether its model batches
        self._armed: set[_BatchedJob] = set()  # taken, not yet answered nor stopped
        self._decoder = JobDecoder(lazy=True)
        jobs.on_abort(self._abort)

    def take(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Starts the deliveries it can take on the batch path (each takes its slot);
        returns the others, in order, for a task each (``JobRunner.handle``)."""
        if self._jobs.aborting:
            return deliveries
        rest: list[Delivery] = []
        loop = asyncio.get_running_loop()
        now, loop_now = time.time(), loop.time()
        batches = self._batches
        # the read's jobs decoded together, requests unbuilt; the layout kept from the last
        # read while it serves (JobDecoder.next_read: proven once, not once a read)
        decoder = self._decoder = self._decoder.next_read()
        # (model, version, method) -> its served model and batcher, looked up once a read
        # (nothing of them changes within it: no await)
        models: dict[tuple[str, str | None, str], _Model | None] = {}
        for delivery in deliveries:
            stream = delivery.stream
            batched = batches.get(stream)
            if batched is None:
                batched = batches[stream] = self._model_batches(stream)
            if not (batched and self._start(delivery, decoder, models, loop, now, loop_now)):
                rest.append(delivery)
        return rest

    def _model(self, job: Job) -> _Model | None:
        """The ready model that runs ``job`` on the batch path, and its batcher; None if it
        takes the per-job path (a job of the same model, version and method whose arguments
        are one request: the same for every such job of a read)."""
        served = self._registry.find(job.model, job.version)
        if served is None or served.model is None or job.method not in served.exposed:
            return None
        batcher = self._runner.batcher_for(served, job)
        return None if batcher is None else (served, batcher)

    def _model_batches(self, stream: str) -> bool:
        model = hash_tag(stream)
        return any(
            served.name == model and served.settings.max_batch_size > 1
            for served in self._registry.all()
        )

    def _start(
        self,
        delivery: Delivery,
        decoder: JobDecoder,
        models: dict[tuple[str, str | None, str], _Model | None],
        loop: asyncio.AbstractEventLoop,
        now: float,
        loop_now: float,
    ) -> bool:
        """Starts one job on the batch path; False when it needs the per-job path."""
        fields = delivery.fields
        if self._admission.check_entry(delivery.stream, fields) is not None:
            return False
        decoding = 0 if self._runner.tracer is None else time.time_ns()
        try:
            job = decoder.decode(fields)
        except WireError:
            return False
        laid_out = decoder.laid_out  # its request is the read's layout's: so is its batch key
        args = job.args  # what batcher_for asks of a job's arguments, for each job
        if len(args) != 1 or job.kwargs or not isinstance(args[0], (InferenceRequest, LaidRequest)):
            return False
        which = (job.model, job.version, job.method)
        try:
            found = models[which]
        except KeyError:
            found = models[which] = self._model(job)
        if found is None or delivery.deliveries > found[0].settings.max_deliveries:
            return False
        batcher = found[1]
        stored = self._clock.stored_at(delivery.entry_id)
        deadline = stored + (job.deadline - job.sent_at)
        if deadline <= now:
            return False
        metrics = self._metrics.children(job.model, job.method)
        record = _BatchedJob(self, delivery, job, deadline, batcher, metrics, loop_now)
        request = cast("InferenceRequest | LaidRequest", job.args[0])
        if isinstance(request, LaidRequest):
            if request.id is None:  # as give_id: its response carries the job's id
                request.id = job.id
        else:
            give_id(request, job)
        if batcher.on_answers is None:
            batcher.on_answers = self._answers
        key = decoder.key if laid_out else None
        if key is None:
            key = batcher.key_of(request.build() if isinstance(request, LaidRequest) else request)
            if laid_out:
                decoder.key = key
        try:
            record.submitted = batcher.submit(request, record, key)
        except RuntimeError:  # its batcher stopped: the worker stops
            return False
        self.slots.take(delivery.entry_id, delivery.stream)
        # its wait in the queue (WorkerMetrics.job_taken, less the task's current job: there
        # is no task, and the batch's model call marks no job's end)
        metrics.children.wait.observe(max(now - stored, 0.0))
        # the job's scope from now: its deadline, a caller's cancel, another copy's claim
        self._jobs.arm(loop, record, job.id, loop_now + (deadline - now))
        self._armed.add(record)
        self._broker.claim_soon(delivery, job, deadline, record.claimed)
        if decoding:
            record.trace = trace = self._runner.job_trace(delivery, job.model, decoding)
            trace.decoded(job.id, job.method, decoding)
        return True

    def _answers(self, answered: list[Answered]) -> None:
        """A batch's answers (from its batcher): they go in one write."""
        jobs = self._jobs
        answers: list[Any] = []
        encoder = RowsEncoder()  # the batch's answers share one envelope but for ids and rows
        batch = job_context.get()  # the batch's, set as it started (JobRunner.batcher_for)
        if batch is not None and batch.logged and batch.batch_id:  # which requests its lines had
            ids = ",".join(cast("_BatchedJob", one.token).job.id for one in answered)
            logger.info("batch.requests batch_id=%s requests=%s", batch.batch_id, ids)
        tracer = self._runner.tracer
        if tracer is not None:
            traces = [
                r.trace for r in (cast("_BatchedJob", one.token) for one in answered) if r.trace
            ]
            if traces:
                batch_ran(tracer, cast("_BatchedJob", answered[0].token).job.model, traces)
        for one in answered:
            record = cast("_BatchedJob", one.token)
            if not record.armed:  # stopped meanwhile, and answered then
                continue
            job, delivery = record.job, record.delivery
            jobs.disarm(record, job.id)
            self._armed.discard(record)
            if jobs.aborting:  # the worker stops now: the job stays pending
                self._let_go(record)
                continue
            response, error, rows = one.response, one.error, one.rows
            message: Message | Fields
            if error is None and rows is not None:
                message = self._rows_answer(job, delivery, rows, encoder)
            elif error is None and isinstance(response, InferenceResponse):
                request = job.args[0]
                if isinstance(request, LaidRequest):  # built to run alone: its id as the job's
                    job = job._replace(args=(request.build(),))
                message = result_message(job, delivery, response)
            else:
                if not isinstance(error, Exception):
                    error = TypeError(f"predict returned {type(response).__name__}")
                message = failure_message(job, delivery, self._worker, error)
                record.outcome = outcome(message)
            record.submitted = None
            if record.trace is not None:
                record.trace.reply_started()
            answers.append((job, [message], delivery, record.deadline, record.acked, record.ended))
        self._broker.answer_soon(answers)

    @staticmethod
    def _rows_answer(
        job: Job, delivery: Delivery, rows: Rows, encoder: RowsEncoder
    ) -> Message | Fields:
        """A job's result from its rows of its batch's response, encoded as they are
        (``encode_rows``: what ``result_message`` of its built response gives, without
        building it); if they cannot be, the built response's message, which fails (or not)
        as every answer's does."""
        request = job.args[0]
        response_id = (
            request.id if isinstance(request, (InferenceRequest, LaidRequest)) else None
        ) or job.id
        try:
            return encoder.encode(
                job.id, delivery.deliveries, delivery.entry_id.decode(), rows, response_id
            )
        except Exception:
            return result_message(job, delivery, rows.build(response_id))

    def stop(self, record: _BatchedJob, reason: str) -> None:
        """Stops a job: its request taken back if its batch has not started, and answered
        now (Cancelled, DeadlineExceeded), or, another copy holding its claim, acked unanswered."""
        job, delivery = record.job, record.delivery
        self._jobs.disarm(record, job.id)
        self._armed.discard(record)
        if record.submitted is not None:
            record.batcher.withdraw(record.submitted)
            record.submitted = None
        if self._jobs.aborting:
            self._let_go(record)
            return
        if reason == DUPLICATE:
            assert record.held is not None
            logger.info(
                "job.duplicate %s running_copy=%s",
                job_log(job, delivery, self._worker),
                record.held,
            )
            self._metrics.jobs.labels(job.model, job.method, "duplicate").inc()
            self._start_soon(lambda: self._drop_duplicate(record))
            return
        message = self._runner.stopped(job, delivery, reason)
        record.outcome = outcome(message)
        self._broker.answer_soon(
            [(job, [message], delivery, record.deadline, record.acked, record.ended)]
        )

    def _abort(self) -> None:
        """The worker stops now (``RunningJobs.cancel_all``): every job not yet answered is let
        go unanswered, pending for another worker (its batch, if running, is not waited for)."""
        for record in list(self._armed):
            record.cancel(_ABORTED)

    async def _drop_duplicate(self, record: _BatchedJob) -> None:
        delivery = record.delivery
        try:
            await self._broker.drop_duplicate(delivery)
        except Exception as error:  # stays pending: delivered again, its claim says whose
            log_unfinished(delivery, error)
        finally:
            self._let_go(record)

    def answer_ended(self, record: _BatchedJob, error: BaseException | None) -> None:
        """A job's answer was stored (None: its ack follows) or will not be (the error: the
        job stays pending, delivered again)."""
        job, delivery = record.job, record.delivery
        self._stats.done += 1
        if record.trace is not None:
            record.trace.close(error, record.outcome)
        if error is not None:
            log_unfinished(delivery, error)
            self.slots.release(delivery.entry_id, delivery.stream)
            return
        loop_now = asyncio.get_running_loop().time()
        self._metrics.job_done(
            record.metrics, job.model, job.method, record.outcome, loop_now - record.since
        )
        self.slots.awaiting_ack += 1  # counted done: out of the in-flight gauge
        if record.held is not None and record.reason is None:
            log_answered_duplicate(job, delivery, self._worker, record.held)

    def _let_go(self, record: _BatchedJob) -> None:
        """A job that ends unanswered (pending): its slot is free."""
        if record.trace is not None:
            record.trace.close()
        self._stats.done += 1
        self.slots.release(record.delivery.entry_id, record.delivery.stream)
