"""The job runner: one job from its delivery to its answer.

:meth:`JobRunner.handle` is the body of each job's task (see ``worker.cancellation`` for how a
job is stopped): admission, decoding, the refusals (``worker.refusals``), the claim of its request
(``broker.claims``), then the model's method (unary, through the adaptive batcher when the model
batches, or a stream: ``worker.streaming``), and the answer, whose ack frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

from conveyor.broker import Delivery, WorkerBroker
from conveyor.broker.keys import GROUP, Keys, hash_tag
from conveyor.broker.wire import (
    ErrorCode,
    Fields,
    Job,
    JobDecoder,
    Message,
    Payload,
    trace_fields,
)
from conveyor.errors import WireError
from conveyor.logging import JobContext, job_context
from conveyor.methods import ModelMethods
from conveyor.tracing import JobTrace, current_failed, tracer
from conveyor.types import InferenceRequest
from conveyor.worker import execution
from conveyor.worker.admission import Admission, Refusal
from conveyor.worker.answers import (
    error_message,
    failure_message,
    give_id,
    job_log,
    log_answered_duplicate,
    log_unfinished,
    outcome,
    result_fields,
    result_message,
)
from conveyor.worker.batcher import AdaptiveBatcher
from conveyor.worker.cancellation import CANCELLED, DUPLICATE, JobScope, RunningJobs
from conveyor.worker.clock import RedisClock, remaining_fields
from conveyor.worker.heartbeat import WorkerStats, model_totals
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.model_batchers import ModelBatchers
from conveyor.worker.refusals import Refusals
from conveyor.worker.registry import ModelRegistry, ServedModel
from conveyor.worker.slots import Slots
from conveyor.worker.streaming import run_stream

__all__ = ("JobRunner",)

logger = logging.getLogger(__name__)

_PREDICT_STREAM = ModelMethods.PredictStream.value


def trace_id(trace: JobTrace) -> int:
    """The trace id of a job's span if it records (sampled), else 0."""
    context = trace.span.get_span_context()
    return context.trace_id if context.trace_flags.sampled else 0


class JobRunner:
    """Runs the jobs one worker reads, each in its own task."""

    def __init__(
        self,
        broker: WorkerBroker,
        registry: ModelRegistry,
        keys: Keys,
        admission: Admission,
        jobs: RunningJobs,
        slots: Slots,
        stats: WorkerStats,
        metrics: WorkerMetrics,
        clock: RedisClock,
        *,
        worker: str,
        read_block: float,
        start_soon: Callable[[Callable[[], Coroutine[Any, Any, None]]], object],
    ) -> None:
        self._broker = broker
        self._registry = registry
        self._jobs = jobs
        self._slots = slots
        self._stats = stats
        self._metrics = metrics
        self._clock = clock
        self._worker = worker  # its name, for log lines and messages
        self._read_block = read_block
        self._start_soon = start_soon  # runs a batcher for the worker's life
        self._admission = admission
        self._refusals = Refusals(broker, keys, metrics, clock, worker)
        # read by the heartbeat thread, once a beat (its `last_minute`)
        stats.totals = lambda: model_totals(metrics)
        self.tracer = tracer()  # None unless the app configured tracing: then no span work
        self._batchers = ModelBatchers(metrics, start_soon, timed=self.tracer is not None)
        self._decoder = JobDecoder()  # a read's jobs' common layout, proven once (wire.layout)

    def new_read(self) -> None:
        """The jobs started next (each decodes in its task's first step) are another read's."""
        self._decoder = self._decoder.next_read()

    def job_trace(self, delivery: Delivery, model: str, start_ns: int) -> JobTrace:
        """The spans of a job, continued from the trace context its entry carries."""
        assert self.tracer is not None
        parent, state = trace_fields(delivery.fields)
        entry = delivery.entry_id.decode()
        return JobTrace(self.tracer, delivery.stream, GROUP, entry, model, parent, state, start_ns)

    async def handle(self, delivery: Delivery, scope: JobScope) -> None:
        """The body of a job's task: runs it, and frees its slot unless its ack will."""
        scope.started = True
        trace = None
        if self.tracer is not None:
            trace = self.job_trace(delivery, hash_tag(delivery.stream), time.time_ns())
        try:
            if self._jobs.aborting:  # stopping now: the job stays pending
                pass
            elif trace is None:
                await self._run_job(delivery, scope, None)
            else:
                with trace.current():  # the job's spans (and the model's own) are its children
                    await self._run_job(delivery, scope, trace)
        except Exception as error:  # e.g. Redis went away mid-answer: the job stays pending
            # and is delivered again once reclaimed; the worker itself keeps serving.
            log_unfinished(delivery, error)
        finally:
            if not scope.ack_pending:  # else once its ack is done (Slots.acked)
                self._slots.release(delivery.entry_id, delivery.stream)
            self._stats.done += 1
            self._jobs.ended(scope)
            if trace is not None and not scope.ack_pending:  # else once its answer is stored
                trace.close()

    async def _run_job(self, delivery: Delivery, scope: JobScope, trace: JobTrace | None) -> None:
        broker = self._broker
        # Its keys, model and size, before anything is decoded or written (worker.admission)
        refusal = self._admission.check_entry(delivery.stream, delivery.fields)
        if refusal is not None:
            await self._refusals.entry(delivery, refusal, "job.refused")
            return
        decoding = 0 if trace is None else time.time_ns()
        try:
            job = self._decoder.decode(delivery.fields)
            if trace is not None:
                trace.decoded(job.id, job.method, decoding)
            # From here on its lines (and the model's) carry its request id: this task's own.
            job_context.set(JobContext(job.id, 0 if trace is None else trace_id(trace)))
        except WireError as error:
            reason = f"bad entry: {error.reason}"
            refusal = Refusal(ErrorCode.BAD_ENTRY, "WireError", reason, answer=True)
            # The caller hears it if the entry names its reply stream (a newer format, say).
            await self._refusals.entry(delivery, refusal, "job.bad_entry")
            return
        served = self._registry.find(job.model, job.version)
        limit = served.settings.max_deliveries if served is not None else 3
        if delivery.deliveries > limit:
            await self._refusals.over_delivered(delivery, job, limit)
            return
        now = time.time()
        # On our clock, from when Redis stored the job (worker.clock): clients' clocks differ.
        stored = self._clock.stored_at(delivery.entry_id)
        deadline = stored + (job.deadline - job.sent_at)
        if deadline <= now:
            logger.info("job.expired %s", job_log(job, delivery, self._worker))
            text = (
                f"the job waited {max(now - stored, 0.0):.1f}s in its queue, past its "
                f"{max(job.deadline - job.sent_at, 0.0):.1f}s timeout, before a worker took "
                "it; it was skipped (add workers, or give calls a longer timeout)"
            )
            await broker.finish(
                delivery,
                job,
                [error_message(job, delivery, ErrorCode.DEADLINE, "DeadlineExceeded", text)],
            )
            return
        if (served is None or served.model is None) and self._registry.has_unloaded(
            job.model, job.version
        ):
            # read just before this worker unloaded the model: leave it to the others
            logger.info("job.requeued %s", job_log(job, delivery, self._worker))
            # as a new entry: with the time it has left, not its whole timeout again
            fields = remaining_fields(delivery.fields, deadline)
            await broker.requeue(Delivery(delivery.stream, delivery.entry_id, fields))
            return
        if served is None or served.model is None:
            version = f" version {job.version!r}" if job.version else ""
            await self._refusals.job(
                delivery,
                job,
                ErrorCode.MODEL_NOT_FOUND,
                "ModelNotFound",
                f"worker {self._worker} does not serve model {job.model!r}{version}",
            )
            return
        if job.method not in served.exposed:
            allowed = ", ".join(sorted(served.exposed))
            await self._refusals.job(
                delivery,
                job,
                ErrorCode.METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                f"model {job.model!r} does not expose method {job.method!r}; "
                f"callable methods are: {allowed}",
            )
            return
        task = scope.task
        assert task is not None
        loop = task.get_loop()  # asyncio.get_running_loop() showed as 2-4% of the worker
        # One run per request when its job entry exists twice (see broker.claims). A stream
        # claims before its first chunk: its chunks must all come from one run. A unary job
        # claims while it runs, no round trip before the model: a copy found to be another's
        # duplicate is stopped; a quick one may answer first, and the caller keeps one run's
        # answer either way (measured: a claim before every run cost ~0.4 ms of p50).
        if job.method == _PREDICT_STREAM:
            held = await broker.claim(delivery, job, deadline)
            if held is not None:
                await self._drop_duplicate(delivery, job, held)
                return
        else:
            broker.claim_soon(delivery, job, deadline, scope.claimed)
        started = loop.time()
        metrics = self._metrics.children(job.model, job.method)
        self._metrics.job_taken(metrics, max(now - stored, 0.0))
        # Bounded by the job's deadline; a caller that gives up cancels it (worker.control).
        jobs = self._jobs
        jobs.arm(loop, scope, job.id, started + (deadline - now))
        messages: Sequence[Message | Fields]
        try:
            if trace is not None:
                with trace.step(job.method):  # a predict_stream's chunks: events of it
                    messages = await self._run_method(delivery, job, served, deadline, trace)
            elif job.method == _PREDICT_STREAM:
                messages = await self._run_method(delivery, job, served, deadline, None)
            else:  # the common path, inline: awaits the model's own coroutine, no wrappers
                if job.args:
                    give_id(job.args[0], job)
                try:
                    result = await self._unary_call(served, job)
                except Exception as error:  # the model's own failure goes back to the caller
                    messages = [failure_message(job, delivery, self._worker, error)]
                else:  # its fields, encoded without a Message (wire.messages.encode_result)
                    messages = [result_fields(job, delivery, result)]
        except asyncio.CancelledError:
            stopped_by = jobs.taken_back(scope, task)
            if stopped_by is None:
                raise  # the worker stops now: the job stays pending, for another worker
            if stopped_by == DUPLICATE:
                assert scope.held is not None
                await self._drop_duplicate(delivery, job, scope.held)
                return
            messages = [self.stopped(job, delivery, stopped_by)]
        else:
            jobs.swallowed(task)
        finally:
            jobs.disarm(scope, job.id)
        slots = self._slots
        entry_id, stream = delivery.entry_id, delivery.stream

        def ended(error: BaseException | None) -> None:
            if trace is not None:
                trace.close(error, outcome(messages[-1]))
            if error is not None:  # not stored: the job stays pending, delivered again
                log_unfinished(delivery, error)
                slots.release(entry_id, stream)
                return
            slots.answered(stream)  # the model's room is free; the slot waits for the ack
            self._metrics.job_done(
                metrics, job.model, job.method, outcome(messages[-1]), loop.time() - started
            )
            slots.awaiting_ack += 1  # counted done: out of the in-flight gauge
            if scope.held is not None:
                log_answered_duplicate(job, delivery, self._worker, scope.held)

        # The answer holds the job's slot (and keeps its claim fresh) until its ack is done,
        # or until it cannot be stored (`ended`); the task does not wait for Redis.
        scope.ack_pending = True
        if trace is not None:
            trace.reply_started()
        try:
            await broker.answer(
                delivery,
                job,
                messages,
                deadline,
                lambda: slots.ack_done(entry_id),
                ended,
                jobs.read_follows,
            )
        except Exception:  # nothing was sent (the answer cannot be encoded): the task's again
            scope.ack_pending = False
            raise

    def stopped(self, job: Job, delivery: Delivery, reason: str) -> Message:
        """The answer of a job stopped by its caller's cancel, or by its deadline."""
        if reason == CANCELLED:
            logger.info("job.stopped %s reason=cancelled", job_log(job, delivery, self._worker))
            text = "cancelled: the caller gave up waiting"
            return error_message(job, delivery, ErrorCode.CANCELLED, "Cancelled", text)
        logger.info("job.stopped %s reason=deadline", job_log(job, delivery, self._worker))
        text = (
            f"the job ran past its {max(job.deadline - job.sent_at, 0.0):.1f}s timeout "
            f"on worker {self._worker} and was stopped"
        )
        return error_message(job, delivery, ErrorCode.DEADLINE, "DeadlineExceeded", text)

    async def _drop_duplicate(self, delivery: Delivery, job: Job, held: str) -> None:
        """A copy of a job entry (an XADD sent twice) whose other copy runs or ran: acked
        without an answer, the other copy's is the caller's."""
        logger.info("job.duplicate %s running_copy=%s", job_log(job, delivery, self._worker), held)
        self._metrics.jobs.labels(job.model, job.method, "duplicate").inc()
        await self._broker.drop_duplicate(delivery)

    async def _run_method(
        self,
        delivery: Delivery,
        job: Job,
        served: ServedModel,
        deadline: float,
        trace: JobTrace | None,
    ) -> list[Message]:
        if job.method != _PREDICT_STREAM:
            return await self._run_unary(delivery, job, served)
        return await run_stream(
            broker=self._broker,
            delivery=delivery,
            job=job,
            served=served,
            deadline=deadline,
            read_block=self._read_block,
            worker=self._worker,
            trace=trace,
        )

    async def _run_unary(self, delivery: Delivery, job: Job, served: ServedModel) -> list[Message]:
        if job.args:
            give_id(job.args[0], job)
        try:
            result = await self._unary_call(served, job)
        except Exception as error:  # the model's own failure goes back to the caller
            if self.tracer is not None:
                current_failed(error)  # on the method's span (JobTrace.step)
            return [failure_message(job, delivery, self._worker, error)]
        return [result_message(job, delivery, result)]

    def _unary_call(self, served: ServedModel, job: Job) -> Awaitable[Payload]:
        """The job's call, to await: through the model's adaptive batcher, else its method's
        own coroutine when ``async def`` (one coroutine less per job), else
        :func:`execution.call_plain`'s. Raises what a call would (inside the caller's ``try``)."""
        batcher = self.batcher_for(served, job)
        if batcher is not None:
            assert isinstance(job.args[0], InferenceRequest)
            return batcher.predict(job.args[0])
        assert served.model is not None
        method = getattr(served.model, job.method)
        calls = served.calls
        if job.method in served.coroutines:
            if calls.coroutines_unbounded:
                return cast("Awaitable[Payload]", method(*job.args, **job.kwargs))
            return execution.limited(calls.for_coroutine(), method, *job.args, **job.kwargs)
        call = execution.call_plain(method, calls, *job.args, **job.kwargs)
        return cast("Awaitable[Payload]", call)

    def batcher_for(self, served: ServedModel, job: Job) -> AdaptiveBatcher | None:
        """The model's adaptive batcher, for a ``predict`` of one request (made on first use)."""
        return self._batchers.for_job(served, job)
