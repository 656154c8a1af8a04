"""The worker process: consume jobs of its models, run them, answer, ack."""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import cast

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from conveyor.broker.connection import (
    RedisSettings,
    create_client,
    create_sync_client,
    ping,
    translate_errors,
)
from conveyor.broker.entries import Delivery
from conveyor.broker.keys import DEFAULT_PREFIX, Keys, hash_tag
from conveyor.broker.wire import (
    ErrorInfo,
    Job,
    Message,
    MessageType,
    Payload,
    decode_job,
    decode_message,
)
from conveyor.broker.worker_streams import WorkerStreams
from conveyor.errors import BrokerConnectionError, BrokerOutOfMemory, ConveyorError, WireError
from conveyor.methods import ModelMethods
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse
from conveyor.worker import admission, execution
from conveyor.worker.batcher import AdaptiveBatcher
from conveyor.worker.bookkeeper import Bookkeeper
from conveyor.worker.call_limit import CallLimit, streams_with_room
from conveyor.worker.clock import RedisClock, remaining_fields
from conveyor.worker.heartbeat import Heartbeat, WorkerStats
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.registry import ModelLoadFailed, ModelRegistry, ServedModel

__all__ = ("Worker", "WorkerSettings")

logger = logging.getLogger(__name__)


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _give_id(payload: Payload, job: Job) -> Payload:
    """As MLServer's data plane: a request reaches the model with an id (the job's, which its
    response carries back, when the caller sent none)."""
    if isinstance(payload, InferenceRequest) and payload.id is None:
        payload.id = job.id
    return payload


@dataclass
class WorkerSettings:
    """How one worker process runs. Durations are seconds."""

    redis_url: str
    prefix: str = DEFAULT_PREFIX
    concurrency: int = 16  # jobs run at once; the worker never fetches more than its free slots
    name: str = field(default_factory=_default_name)  # the consumer name, unique in the fleet
    heartbeat_ttl: float = 10.0  # a worker silent this long is taken for dead
    grace_period: float = 30.0  # on SIGTERM, how long in-flight jobs may take to finish
    read_block: float = 1.0  # longest wait of one read; bounds how fast a stop is noticed
    metrics_port: int | None = None  # serve Prometheus metrics on this port
    # gc.freeze() what is alive once the models are loaded, for the worker's life (gc.unfreeze()
    # when run returns): full collections then skip it. Off when the worker shares a process.
    freeze_gc: bool = True


class Worker:
    """Serves the models of its folders until stopped.

    ``run`` loads every model, registers the worker, consumes the job streams of its ready
    models, and on :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``) stops taking
    jobs, lets in-flight ones finish within the grace period, unregisters and returns.
    """

    def __init__(self, settings: WorkerSettings, models: Sequence[ModelSettings]) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.registry = ModelRegistry(list(models), self.keys)
        self.stats = WorkerStats(models=self.registry.names())
        self.metrics = WorkerMetrics()
        self._acking = 0  # answered jobs that keep their slots until their acks are done
        self.metrics.track_in_flight(lambda: len(self.stats.in_flight) - self._acking)
        needed = max(
            (
                CallLimit(m.max_concurrent_calls, m.max_batch_size).jobs_to_hold(0)
                for m in models
                if m.max_batch_size > 1
            ),
            default=0,
        )
        if needed > settings.concurrency:
            # batches fill only if the worker holds enough jobs: every batch the model runs
            # at once, and a full one forming behind them
            logger.info(
                "worker.concurrency_raised from=%d to=%d reason=max_batch_size",
                settings.concurrency,
                needed,
            )
            settings.concurrency = needed
        self._redis_settings = RedisSettings.from_url(settings.redis_url)
        self._stopping = False
        self._slot_freed = asyncio.Event()
        self._next_reclaim = 0.0
        self._clock = RedisClock()  # job deadlines are measured on Redis's clock
        self._admission = admission.Admission(
            self.keys, self._payload_limit, self._smallest_payload_limit
        )
        # Each job runs in a plain asyncio task (the worker always runs on asyncio): an anyio
        # task group's start_soon and a cancel scope per job cost ~25 us of CPU per job.
        self._jobs: set[_JobScope] = set()
        self._aborting = False  # the running jobs are being cancelled: they stay pending
        self._infra: anyio.abc.TaskGroup | None = None
        self._batchers: dict[int, AdaptiveBatcher] = {}  # by id() of the ServedModel
        self._running: dict[str, _JobScope] = {}  # request id -> its running job
        self._deadlines = _Deadlines()
        self._heartbeat: Heartbeat | None = None
        self._held: Counter[str] = Counter()  # jobs held, by model (worker.call_limit)
        self._model_of = _ModelOf()
        # job streams not yet checked for dead workers' jobs this half TTL (see _next_jobs)
        self._unchecked: set[str] = set()

    def _publish_models(self) -> None:
        """Tells the fleet (the heartbeat) which models this worker serves now."""
        self.stats.ready = self.registry.ready_names()
        self.stats.failed = self.registry.failed_names()
        self.stats.loading = []
        if self._heartbeat is not None:
            self._heartbeat.beat_soon()

    def stop(self) -> None:
        """Stops taking new jobs; ``run`` returns once in-flight jobs are done."""
        self._stopping = True
        self._slot_freed.set()

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        redis = create_client(
            self._redis_settings, blocking=True, max_block=self.settings.read_block
        )
        streams = WorkerStreams(
            redis,
            self.keys,
            self.settings.name,
            self._redis_settings.redacted_url,
            cluster=self._redis_settings.cluster,
        )
        self._streams = streams
        self._bookkeeper = Bookkeeper(streams, self._clock, self.settings.heartbeat_ttl)
        heartbeat = Heartbeat(
            lambda: create_sync_client(self._redis_settings),
            self.keys,
            self.settings.name,
            self.stats,
            self.settings.heartbeat_ttl,
            self._clock,
        )
        self._heartbeat = heartbeat
        frozen = False
        try:
            # Redis first: a wrong URL fails in seconds, not after minutes of loading models.
            await ping(self._redis_settings)
            # Redis's clock, before the first beat (its registry score) and the first job
            await self._bookkeeper.read_clock()
            # Beating while it loads: a client calling a model this worker is loading waits
            # for it instead of failing as "not served" (see broker/fleet.py).
            self.stats.loading = self.registry.names()
            heartbeat.start()
            await self.registry.load_all()
            with translate_errors(self._redis_settings):
                await streams.ensure_groups(self.registry.job_streams())
                # cursors first: a load/unload sent once we report started is never missed
                cursors = await streams.control_cursors(self.registry.control_streams())
            for served in self.registry.all():
                await streams.publish_limits(served.name, served.settings.max_queue_length)
            self._publish_models()  # ready only now: its groups exist
            if self.settings.freeze_gc:
                # What is alive now (imports, the models) lives as long as the worker: out of
                # the collector's way. Else each full collection walks it all: ~15 us per job
                # at 64 in flight (objects of jobs in flight reach the oldest generation).
                gc.collect()
                gc.freeze()
                frozen = True
            if self.settings.metrics_port is not None:
                self.metrics.serve(self.settings.metrics_port)
            async with anyio.create_task_group() as infra:
                self._infra = infra
                infra.start_soon(streams.batcher.run_flusher)
                infra.start_soon(streams.writer.run_acker)
                infra.start_soon(self._control_loop, streams, cursors)
                if handle_signals:
                    # started once it handles them: a signal sent on "worker.started" is seen
                    await infra.start(self._signal_loop)
                logger.info(
                    "worker.started worker=%s models=%s not_served=%s concurrency=%d",
                    self.settings.name,
                    ",".join(self.stats.ready) or "-",
                    ",".join(self.stats.failed) or "-",
                    self.settings.concurrency,
                )
                task_status.started()
                try:
                    await self._consume(streams)
                    with anyio.move_on_after(self.settings.grace_period):
                        while self.stats.in_flight:
                            await self._wait_slot()
                    if self.stats.in_flight:
                        logger.warning(
                            "worker.grace_expired worker=%s unfinished=%d",
                            self.settings.name,
                            len(self.stats.in_flight),
                        )
                finally:
                    await self._abort_jobs()
                    # Its jobs answered, or pending for another worker: it leaves the groups
                    # where it owns nothing (never before it consumed: nothing to leave).
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await streams.writer.flush_acks()  # answered jobs: not left pending
                        await self._bookkeeper.leave(self._all_job_streams())
                infra.cancel_scope.cancel()
        finally:
            if frozen:
                gc.unfreeze()
            with anyio.CancelScope(shield=True):
                heartbeat.stop(unregister=True)
                with anyio.move_on_after(5):
                    await self.registry.unload_all()
                await redis.aclose()
            logger.info("worker.stopped worker=%s done=%d", self.settings.name, self.stats.done)

    def _all_job_streams(self) -> list[str]:
        """The job streams of every model folder of this worker, loaded or not."""
        names = [
            self.keys.jobs(served.name, version)
            for served in self.registry.all()
            for version in (served.version, None)
        ]
        return list(dict.fromkeys(names))

    async def _wait_slot(self) -> None:
        await self._slot_freed.wait()
        self._slot_freed = asyncio.Event()

    def _cancel_jobs(self) -> None:
        """Cancels every running job; each stays pending, for another worker to reclaim."""
        self._aborting = True
        for scope in self._jobs:
            # A task cancelled before its first step would never run its cleanup: one not
            # started yet sees _aborting when it starts, and ends at once.
            if scope.started and scope.task is not None:
                scope.task.cancel()

    async def _abort_jobs(self) -> None:
        """Cancels the jobs still running and waits until they have ended."""
        self._cancel_jobs()
        with anyio.CancelScope(shield=True):
            while self._jobs:
                await asyncio.wait([scope.task for scope in self._jobs if scope.task is not None])
        self._deadlines.clear()

    async def _signal_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """First SIGTERM/SIGINT: drain (warm stop). A second one: stop at once; unfinished
        jobs stay pending and another worker reclaims them."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if not self._stopping:
                    logger.info("worker.stopping worker=%s signal=%s", self.settings.name, signum)
                    self.stop()
                    continue
                logger.warning(
                    "worker.stopping_now worker=%s signal=%s unfinished=%d",
                    self.settings.name,
                    signum,
                    len(self.stats.in_flight),
                )
                self._cancel_jobs()
                return

    async def _consume(self, streams: WorkerStreams) -> None:
        loop = asyncio.get_running_loop()
        jobs = self._jobs
        held = self._held
        turn = 0
        backoff = 0.1
        while not self._stopping:
            free = self.settings.concurrency - len(self.stats.in_flight)
            if free <= 0:
                await self._await_room(streams)
                continue
            job_streams = self.registry.job_streams()
            if not job_streams:  # every model unloaded: wait for a load
                with anyio.move_on_after(self.settings.read_block):
                    await self._wait_slot()
                continue
            turn = (turn + 1) % len(job_streams)  # rotate, so no model starves another
            order = job_streams[turn:] + job_streams[:turn]
            # Only the jobs each model can run soon: the rest is left to other processes.
            readable, free = streams_with_room(
                order, self._model_of, self.registry.holds(self.settings.concurrency), held, free
            )
            if not readable:  # every model holds its fill
                await self._await_room(streams)
                continue
            block = self.settings.read_block
            if len(readable) < len(order):
                # A full model's freed slot cannot wake a read blocked on the others' streams:
                # block briefly (no event to await in Redis), so its next job is fetched soon.
                block = min(block, _FULL_MODEL_BLOCK_S)
            try:
                deliveries = await self._next_jobs(streams, readable, free, block)
            except ConveyorError as error:
                # Redis restarting or unreachable: back off and try again, never give up
                logger.warning(
                    "worker.redis_unavailable worker=%s retry_in=%.1fs error=%s",
                    self.settings.name,
                    backoff,
                    _describe(error),
                )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for delivery in deliveries:
                self.stats.in_flight[delivery.entry_id] = delivery.stream
                held[hash_tag(delivery.stream)] += 1
                scope = _JobScope()
                scope.task = loop.create_task(self._handle(streams, delivery, scope))
                jobs.add(scope)
            if deliveries:
                # Let the new jobs run up to their first wait before the next read goes out:
                # a quick job's answer then leaves ahead of it (one send less before the
                # answer, at one call in flight).
                await asyncio.sleep(0)

    async def _next_jobs(
        self, streams: WorkerStreams, order: list[str], free: int, block: float
    ) -> list[Delivery]:
        """Jobs of dead workers first (checked every half TTL), else new ones.

        ``order`` holds the streams of models with room only (worker.call_limit): a stream
        left out stays due for its check until its model has room, so a model that is always
        busy still reclaims a dead worker's jobs.
        """
        if time.monotonic() >= self._next_reclaim:
            # Recovery time is bounded by the heartbeat TTL, not by the longest job.
            if not self._unchecked:
                self._unchecked = set(self.registry.job_streams())
            due = [stream for stream in order if stream in self._unchecked]
            if due:
                reclaimed = await streams.reclaim(
                    due, self.settings.heartbeat_ttl, free, self.keys.workers()
                )
                for delivery in reclaimed:
                    self.metrics.reclaimed.labels(hash_tag(delivery.stream)).inc()
                    logger.warning(
                        "job.reclaimed stream=%s entry=%s deliveries=%d",
                        delivery.stream,
                        delivery.entry_id.decode(),
                        delivery.deliveries,
                    )
                if reclaimed:
                    return reclaimed  # there may be more: they stay due, looked at next round
                # dead workers' jobs reclaimed: their consumers go
                await self._bookkeeper.sweep(due)
                self._unchecked.difference_update(due)
            self._unchecked.intersection_update(self.registry.job_streams())
            if not self._unchecked:
                self._next_reclaim = time.monotonic() + self.settings.heartbeat_ttl / 2
        return await streams.read_jobs(order, free, block)

    async def _handle(self, streams: WorkerStreams, delivery: Delivery, scope: _JobScope) -> None:
        scope.started = True
        try:
            if not self._aborting:  # else stopping now: the job stays pending
                await self._run_job(streams, delivery, scope)
        except Exception as error:  # e.g. Redis went away mid-answer: the job stays pending
            # and is delivered again once reclaimed; the worker itself keeps serving.
            logger.warning(
                "job.unfinished stream=%s entry=%s error=%s",
                delivery.stream,
                delivery.entry_id.decode(),
                _describe(error),
            )
        finally:
            if not scope.ack_pending:  # else once its ack is done (_release)
                self._release(delivery)
            self.stats.done += 1
            self._jobs.discard(scope)
            scope.task = None  # the scope may wait in _deadlines until its deadline: not the task

    def _acked(self, delivery: Delivery) -> None:
        self._acking -= 1
        self._release(delivery)

    def _release(self, delivery: Delivery) -> None:
        """A job's slot is free: it ended unanswered (pending), or its ack is done."""
        self.stats.in_flight.pop(delivery.entry_id, None)
        self._held[hash_tag(delivery.stream)] -= 1
        self._slot_freed.set()

    async def _await_room(self, streams: WorkerStreams) -> None:
        """Waits for a slot to free. A job holds its slot until its ack is done: the acks
        that wait for the next answer go now instead (a worker of one slot, say)."""
        if streams.writer.acks_waiting and await streams.writer.flush_acks():
            return
        with anyio.move_on_after(self.settings.read_block):
            await self._wait_slot()

    async def _run_job(self, streams: WorkerStreams, delivery: Delivery, scope: _JobScope) -> None:
        # Its keys, model and size, before anything is decoded or written (worker.admission)
        refusal = self._admission.check_entry(delivery.stream, delivery.fields)
        if refusal is not None:
            await self._refuse_entry(streams, delivery, refusal, "job.refused")
            return
        try:
            job = decode_job(delivery.fields)
        except WireError as error:
            reason = f"bad entry: {error.reason}"
            refusal = admission.Refusal("bad_entry", "WireError", reason, answer=True)
            # The caller hears it if the entry names its reply stream (a newer format, say).
            await self._refuse_entry(streams, delivery, refusal, "job.bad_entry")
            return
        served = self.registry.find(job.model, job.version)
        limit = served.settings.max_deliveries if served is not None else 3
        if delivery.deliveries > limit:
            reason = (
                f"delivered {delivery.deliveries} times (max_deliveries={limit}); "
                "each worker that took it stopped before answering"
            )
            logger.warning("job.dead_lettered %s reason=%s", self._log(job, delivery), reason)
            self.metrics.dead_lettered.labels(job.model).inc()
            self.metrics.jobs.labels(job.model, job.method, "dead_letter").inc()
            await streams.dead_letter(
                delivery,
                self.keys.dead(hash_tag(delivery.stream)),
                reason,
                job=job,
                error_message=_error(job, delivery, "dead_letter", "DeadLettered", reason),
            )
            return
        now = time.time()
        # On our clock, from when Redis stored the job (worker.clock): clients' clocks differ.
        stored = self._clock.stored_at(delivery.entry_id)
        deadline = stored + (job.deadline - job.sent_at)
        if deadline <= now:
            logger.info("job.expired %s", self._log(job, delivery))
            text = (
                f"the job waited {max(now - stored, 0.0):.1f}s in its queue, past its "
                f"{max(job.deadline - job.sent_at, 0.0):.1f}s timeout, before a worker took "
                "it; it was skipped (add workers, or give calls a longer timeout)"
            )
            await streams.finish(
                delivery, job, [_error(job, delivery, "deadline", "DeadlineExceeded", text)]
            )
            return
        if (served is None or served.model is None) and self.registry.has_unloaded(
            job.model, job.version
        ):
            # read just before this worker unloaded the model: leave it to the others
            logger.info("job.requeued %s", self._log(job, delivery))
            # as a new entry: with the time it has left, not its whole timeout again
            fields = remaining_fields(delivery.fields, deadline)
            await streams.requeue(Delivery(delivery.stream, delivery.entry_id, fields))
            return
        if served is None or served.model is None:
            version = f" version {job.version!r}" if job.version else ""
            await self._refuse(
                streams,
                delivery,
                job,
                "model_not_found",
                "ModelNotFound",
                f"worker {self.settings.name} does not serve model {job.model!r}{version}",
            )
            return
        if job.method not in served.exposed:
            allowed = ", ".join(sorted(served.exposed))
            await self._refuse(
                streams,
                delivery,
                job,
                "method_not_allowed",
                "MethodNotAllowed",
                f"model {job.model!r} does not expose method {job.method!r}; "
                f"callable methods are: {allowed}",
            )
            return
        loop = asyncio.get_running_loop()
        # One run per request when its job entry exists twice (see broker.claims). A stream
        # claims before its first chunk: its chunks must all come from one run. A unary job
        # claims while it runs, no round trip before the model: a copy found to be another's
        # duplicate is stopped; a quick one may answer first, and the caller keeps one run's
        # answer either way (measured: a claim before every run cost ~0.4 ms of p50).
        if job.method == _PREDICT_STREAM:
            held = await streams.claim(delivery, job, deadline)
            if held is not None:
                await self._drop_duplicate(streams, delivery, job, held)
                return
        else:
            streams.claim_soon(delivery, job, deadline, scope.claimed)
        started = loop.time()
        metrics = self.metrics.children(job.model, job.method)
        self.metrics.job_taken(metrics, max(now - stored, 0.0))
        # Bounded by the job's deadline; a caller that gives up cancels it (see _control).
        task = scope.task
        assert task is not None
        scope.armed = True
        self._deadlines.add(loop, started + (deadline - now), scope, len(self._running))
        self._running[job.id] = scope
        try:
            if job.method == _PREDICT_STREAM:
                messages = await self._run_stream(streams, delivery, job, served, deadline)
            else:
                messages = await self._run_unary(delivery, job, served)
        except asyncio.CancelledError:
            if scope.reason is None or self._aborting:
                raise  # the worker stops now: the job stays pending, for another worker
            task.uncancel()
            if scope.reason == _DUPLICATE:
                assert scope.held is not None
                await self._drop_duplicate(streams, delivery, job, scope.held)
                return
            if scope.reason == _CANCELLED:
                logger.info("job.stopped %s reason=cancelled", self._log(job, delivery))
                text = "cancelled: the caller gave up waiting"
                messages = [_error(job, delivery, "cancelled", "Cancelled", text)]
            else:
                logger.info("job.stopped %s reason=deadline", self._log(job, delivery))
                text = (
                    f"the job ran past its {max(job.deadline - job.sent_at, 0.0):.1f}s timeout "
                    f"on worker {self.settings.name} and was stopped"
                )
                messages = [_error(job, delivery, "deadline", "DeadlineExceeded", text)]
        else:
            if task.cancelling():  # the job swallowed its cancellation: its answer stands
                if self._aborting:
                    raise asyncio.CancelledError
                task.uncancel()
        finally:
            self._running.pop(job.id, None)
            scope.armed = False
        await streams.finish(delivery, job, messages, deadline, lambda: self._acked(delivery))
        scope.ack_pending = True  # the job keeps its slot, and its claim fresh, until acked
        self._acking += 1
        self.metrics.job_done(
            metrics, job.model, job.method, _outcome(messages[-1]), loop.time() - started
        )
        if scope.held is not None:
            # answered before the claim said another copy runs it: the caller keeps one
            logger.info(
                "job.duplicate %s running_copy=%s ran=yes", self._log(job, delivery), scope.held
            )

    async def _drop_duplicate(
        self, streams: WorkerStreams, delivery: Delivery, job: Job, held: str
    ) -> None:
        """A copy of a job entry (an XADD sent twice) whose other copy runs or ran: acked
        without an answer, the other copy's is the caller's."""
        logger.info("job.duplicate %s running_copy=%s", self._log(job, delivery), held)
        self.metrics.jobs.labels(job.model, job.method, "duplicate").inc()
        await streams.drop_duplicate(delivery)

    def _log(self, job: Job, delivery: Delivery) -> str:
        """A job's fields for a log line (built only when a line is logged)."""
        return (
            f"request={job.id} model={job.model} method={job.method} "
            f"worker={self.settings.name} entry={delivery.entry_id.decode()} "
            f"deliveries={delivery.deliveries}"
        )

    async def _run_unary(self, delivery: Delivery, job: Job, served: ServedModel) -> list[Message]:
        if job.args:
            _give_id(job.args[0], job)
        try:
            batcher = self._batcher_for(served, job)
            if batcher is not None:
                assert isinstance(job.args[0], InferenceRequest)
                result: Payload = await batcher.predict(job.args[0])
            else:
                result = await self._call(served, job)
            if isinstance(result, InferenceResponse) and job.args:
                # As MLServer's data plane: a response carries its request's id (or the job's).
                request = job.args[0]
                if isinstance(request, InferenceRequest):
                    result.id = request.id or job.id
        except Exception as error:  # the model's own failure goes back to the caller
            self._log_failure(job, delivery, error)
            return [_error(job, delivery, "model_error", type(error).__name__, str(error))]
        return [
            Message(
                MessageType.RESULT,
                job.id,
                delivery.deliveries,
                payload=result,
                entry=delivery.entry_id.decode(),
            )
        ]

    def _payload_limit(self, model: str, version: str | None) -> int:
        """The ``max_payload_bytes`` of the folder that would run a job of ``model``."""
        served = self.registry.find(model, version)
        if served is not None:
            return served.settings.max_payload_bytes
        limits = [s.settings.max_payload_bytes for s in self.registry.all() if s.name == model]
        return max(limits, default=_DEFAULT_PAYLOAD_LIMIT)

    def _smallest_payload_limit(self, model: str) -> int:
        limits = [s.settings.max_payload_bytes for s in self.registry.all() if s.name == model]
        return min(limits, default=_DEFAULT_PAYLOAD_LIMIT)

    async def _refuse_entry(
        self, streams: WorkerStreams, delivery: Delivery, refusal: admission.Refusal, event: str
    ) -> None:
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
        self.metrics.dead_lettered.labels(model).inc()
        self.metrics.jobs.labels(model, "", "refused").inc()
        caller = _readable_job(delivery, model, self._clock) if refusal.answer else None
        error = ErrorInfo(refusal.code, refusal.type, refusal.reason)
        await streams.dead_letter(
            delivery,
            self.keys.dead(model),
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

    def _log_failure(self, job: Job, delivery: Delivery, error: Exception) -> None:
        """The model raised: its message and traceback, once per job, as MLServer logs them
        (the caller gets the type and message only)."""
        logger.error(
            "job.failed %s error=%s",
            self._log(job, delivery),
            _describe(error),
            exc_info=error,
        )

    async def _refuse(
        self,
        streams: WorkerStreams,
        delivery: Delivery,
        job: Job,
        code: str,
        type_name: str,
        reason: str,
    ) -> None:
        """A job that can never run: one log line, a dead letter, the reason to the caller."""
        self.metrics.dead_lettered.labels(job.model).inc()
        self.metrics.jobs.labels(job.model, job.method, "refused").inc()
        logger.warning(
            "job.refused request=%s model=%s method=%s worker=%s reason=%s",
            job.id,
            job.model,
            job.method,
            self.settings.name,
            reason,
        )
        await streams.dead_letter(
            delivery,
            self.keys.dead(hash_tag(delivery.stream)),  # beside the stream it came from
            reason,
            job=job,
            error_message=_error(job, delivery, code, type_name, reason),
        )

    def _batcher_for(self, served: ServedModel, job: Job) -> AdaptiveBatcher | None:
        """The model's adaptive batcher, for a ``predict`` of one request (made on first use)."""
        settings = served.settings
        if (
            settings.max_batch_size <= 1
            or job.method != ModelMethods.Predict.value
            or len(job.args) != 1
            or job.kwargs
            or not isinstance(job.args[0], InferenceRequest)
        ):
            return None
        batcher = self._batchers.get(id(served))
        if batcher is None:

            async def predict(request: InferenceRequest) -> InferenceResponse:
                model = served.model
                if model is None:
                    raise RuntimeError(f"model {served.name!r} was unloaded")
                calls = served.calls
                if "predict" in served.coroutines:
                    async with calls.for_coroutine():  # the batcher's own bound is the same
                        response = await model.predict(request)
                else:
                    response = await execution.call(model.predict, calls.threads, request)
                if not isinstance(response, InferenceResponse):
                    raise TypeError(f"predict returned {type(response).__name__}")
                return response

            sizes = self.metrics.batch_size.labels(served.name)
            batcher = AdaptiveBatcher(
                predict,
                settings.max_batch_size,
                settings.max_batch_time,
                on_batch=sizes.observe,
                concurrent_batches=served.calls.batches,
            )
            self._batchers[id(served)] = batcher
            assert self._infra is not None
            self._infra.start_soon(batcher.run)
        return batcher

    def _call(self, served: ServedModel, job: Job) -> Awaitable[Payload]:
        """The call of the job's method, to await: an ``async def`` method's own coroutine
        (one coroutine less per job), else :func:`execution.call`'s."""
        assert served.model is not None
        method = getattr(served.model, job.method)
        calls = served.calls
        if job.method in served.coroutines:
            if calls.coroutines_unbounded:
                return cast("Awaitable[Payload]", method(*job.args, **job.kwargs))
            return execution.limited(calls.for_coroutine(), method, *job.args, **job.kwargs)
        call = execution.call(method, calls.threads, *job.args, **job.kwargs)
        return cast("Awaitable[Payload]", call)

    async def _run_stream(
        self,
        streams: WorkerStreams,
        delivery: Delivery,
        job: Job,
        served: ServedModel,
        deadline: float,
    ) -> list[Message]:
        """Streams each response as a chunk; returns the closing message (end or error)."""
        assert served.model is not None
        inputs = self._inputs(streams, job, deadline)
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
                    reported = await streams.wait_credit(job.credit, self.settings.read_block)
                    if reported is not None:
                        taken = max(taken, reported)
                chunk = Message(
                    MessageType.CHUNK, job.id, delivery.deliveries, seq, response, entry=entry
                )
                await streams.reply(job, [chunk], deadline)
                seq += 1
        except _InputsLost as error:  # a stream with holes is not the model's failure
            return [_error(job, delivery, "stream_interrupted", "StreamInterrupted", str(error))]
        except Exception as error:
            if isinstance(error, BrokerConnectionError | BrokerOutOfMemory):
                # A chunk, credit or input step lost Redis, or Redis had no room for it (or the
                # model's own client failed so): not the model's failure. The job stays pending and
                # runs again (dead-lettered if it keeps failing); the caller sees StreamInterrupted.
                raise
            self._log_failure(job, delivery, error)
            return [_error(job, delivery, "model_error", type(error).__name__, str(error))]
        finally:
            with anyio.CancelScope(shield=True):
                await inputs.aclose()
        return [Message(MessageType.END, job.id, delivery.deliveries, seq, entry=entry)]

    async def _inputs(
        self, streams: WorkerStreams, job: Job, deadline: float
    ) -> AsyncGenerator[Payload, None]:
        """The requests a client streams to a predict_stream, until its end marker (or the
        job's ``deadline``, on our clock)."""
        if job.inputs is None:
            for arg in job.args:
                yield _give_id(arg, job)
            return
        cursor = b"0-0"
        expected = 0  # inputs are numbered from 0; the end marker counts them
        while True:
            entries = await streams.read_inputs(job.inputs, cursor, self.settings.read_block)
            for entry_id, fields in entries:
                cursor = entry_id
                message = decode_message(fields)
                if message.seq < expected and message.type is MessageType.INPUT:
                    continue  # a write the client's redis-py re-sent
                if message.seq != expected:
                    raise _InputsLost(expected, message.seq)
                if message.type is MessageType.END:
                    return
                expected += 1
                yield _give_id(message.payload, job)
            if time.time() > deadline:
                return

    async def _control_loop(self, streams: WorkerStreams, cursors: dict[str, bytes]) -> None:
        """Answers load/unload/cancel requests sent to every worker of a model."""
        if not cursors:
            return
        if not streams.cluster:
            await self._read_control(streams, cursors)
            return
        # On Redis Cluster one read names one slot's keys: a reader per model.
        async with anyio.create_task_group() as tg:
            for stream, cursor in cursors.items():
                tg.start_soon(self._read_control, streams, {stream: cursor})

    async def _read_control(self, streams: WorkerStreams, cursors: dict[str, bytes]) -> None:
        while True:
            try:
                entries = await streams.read_control(cursors, self.settings.read_block)
            except ConveyorError as error:  # Redis unavailable: the job loop says so too
                logger.debug("control.read_failed error=%s", _describe(error))
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
                if stream != self.keys.control(job.model):  # the stream decides the model
                    logger.warning(
                        "control.refused stream=%s entry=%s reason=it names model %r",
                        stream,
                        entry_id.decode(),
                        job.model,
                    )
                    continue
                deadline = self._clock.deadline(entry_id, job.deadline, job.sent_at)
                if not self.registry.has(job.model) or time.time() > deadline:
                    continue
                await self._control(streams, job)

    async def _control(self, streams: WorkerStreams, job: Job) -> None:
        if job.method == _CANCEL:
            scope = self._running.get(job.id)
            if scope is not None and scope.armed:
                scope.cancel(_CANCELLED)
            return
        try:
            if job.method == ModelMethods.Load.value:
                try:
                    ready = await self.registry.load(job.model)
                finally:
                    await streams.ensure_groups(self.registry.job_streams())
                    self._publish_models()
            elif job.method == ModelMethods.Unload.value:
                ready = not await self.registry.unload(job.model)
                self._publish_models()
            else:
                raise ValueError(f"unknown control method {job.method!r}")
        except Exception as error:
            if isinstance(error, ModelLoadFailed):
                logger.error("model.load_failed %s", error, exc_info=error.__cause__)
            message = Message(
                MessageType.ERROR,
                job.id,
                error=ErrorInfo("model_error", type(error).__name__, str(error)),
            )
        else:
            self._slot_freed.set()  # the streams to read changed
            message = Message(
                MessageType.RESULT,
                job.id,
                payload={"worker": self.settings.name, "model": job.model, "ready": ready},
            )
        await streams.reply(job, [message])


_DEFAULT_PAYLOAD_LIMIT = ModelSettings.model_fields["max_payload_bytes"].default

_CANCEL = "cancel"  # a control request: stop the running job with this request id
_CANCELLED = "cancelled"  # why a job was stopped: its caller cancelled it
_DUPLICATE = "duplicate"  # ... or another copy of its job entry runs it
_DEADLINE = "deadline"  # ... or it ran past its deadline


_PREDICT_STREAM = ModelMethods.PredictStream.value

# How long a read may block while a model that holds its fill waits for a slot (see _consume).
_FULL_MODEL_BLOCK_S = 0.005


class _ModelOf(dict[str, str]):
    """A job stream's model (its hash tag), found on first use."""

    def __missing__(self, stream: str) -> str:
        model = self[stream] = hash_tag(stream)
        return model


class _InputsLost(ConveyorError):
    """A predict_stream's input stream misses inputs (Redis deleted or evicted them)."""

    def __init__(self, expected: int, seq: int) -> None:
        super().__init__(
            f"input {expected} of the stream never reached the worker (the next it found was "
            f"{seq}): Redis lost it (the input stream was deleted, or evicted: Conveyor needs "
            "maxmemory-policy noeviction); send the request again"
        )


class _JobScope:
    """A running job's task, and why it was stopped: its deadline (see :class:`_Deadlines`)
    and a caller's cancel request both end in one ``task.cancel()``, ~10x cheaper than an
    anyio cancel scope per job."""

    __slots__ = ("ack_pending", "armed", "held", "reason", "started", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.started = False  # its task has taken its first step
        self.armed = False  # the job runs its method: its deadline and a cancel may stop it
        self.reason: str | None = None
        self.held: str | None = None  # the copy of the job entry that holds its claim
        self.ack_pending = False  # answered: its slot is freed once its ack is done

    def claimed(self, held: str | None) -> None:
        """The claim's outcome (see broker.claims): another copy holds it, stop this one."""
        self.held = held
        if held is not None and self.armed:
            self.cancel(_DUPLICATE)

    def cancel(self, reason: str) -> None:
        """Stops the job (once); a caller's cancel names the reason even after the deadline."""
        first = self.reason is None
        if first or reason == _CANCELLED:
            self.reason = reason
        if first and self.task is not None:
            self.task.cancel()


class _Deadlines:
    """Stops jobs that run past their deadline, with one loop timer for the earliest.

    A ``loop.call_at`` per job would put a TimerHandle per job in the loop's heap, whose
    ``__lt__`` is Python (~7 comparisons a push), and cancelled handles stay there until their
    time. Here entries are (time, seq, scope) tuples, compared in C; a job that ended (disarmed)
    stays until it reaches the top or the heap is compacted.
    """

    __slots__ = ("_at", "_heap", "_seq", "_timer")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _JobScope]] = []
        self._seq = itertools.count()  # ties never compare scopes
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def add(
        self, loop: asyncio.AbstractEventLoop, when: float, scope: _JobScope, running: int
    ) -> None:
        """Stops ``scope``'s job at loop time ``when`` unless it has ended (disarmed) by then;
        ``running`` is how many jobs are armed, to know when to drop the ended ones."""
        heap = self._heap
        if len(heap) > 64 + 2 * running:  # ended ones would reach the oldest GC generation
            heap[:] = [entry for entry in heap if entry[2].armed]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, next(self._seq), scope))
        if when < self._at:
            self._schedule(loop, when)

    def clear(self) -> None:
        """Forgets every deadline (no job runs any more)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._at = math.inf
        self._heap.clear()

    def __len__(self) -> int:
        return len(self._heap)

    def _schedule(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = loop.call_at(when, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._at = math.inf
        heap = self._heap
        now = loop.time()
        while heap and (heap[0][0] <= now or not heap[0][2].armed):
            scope = heapq.heappop(heap)[2]
            if scope.armed:
                scope.cancel(_DEADLINE)
        if heap:
            self._schedule(loop, heap[0][0])


def _error(job: Job, delivery: Delivery, code: str, type_name: str, text: str) -> Message:
    return Message(
        MessageType.ERROR,
        job.id,
        delivery.deliveries,
        error=ErrorInfo(code, type_name, text),
        entry=delivery.entry_id.decode(),
    )


def _readable_job(delivery: Delivery, model: str, clock: RedisClock) -> Job | None:
    """The readable fields of an entry that was not decoded, when they say where to reply
    (keys that passed admission), with its deadline on our clock."""
    fields = delivery.fields
    try:
        request_id, reply, bell = (fields[k].decode() for k in (b"id", b"reply", b"bell"))
        deadline, sent_at = float(fields[b"deadline"]), float(fields[b"sent_at"])
    except (KeyError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    if not (request_id and reply and bell) or not math.isfinite(deadline - sent_at):
        return None
    deadline = clock.deadline(delivery.entry_id, deadline, sent_at)
    return Job(request_id, "", model, None, reply, bell, deadline, time.time())


def _outcome(message: Message) -> str:
    """A job's outcome for metrics: ok, or the error code of its last message."""
    if message.type is not MessageType.ERROR or message.error is None:
        return "ok"
    return "error" if message.error.code == "model_error" else message.error.code


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
