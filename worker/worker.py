"""The worker process: load its models, consume their jobs, run them, answer, ack; stop.

:class:`Worker` owns the process's life (start, signals, drain, stop); the parts it wires
together each do one job:

- ``worker.consumer``: the consume loop (reads within the free slots, reclaims);
- ``worker.runner``: one job from delivery to answer (``worker.streaming``,
  ``worker.refusals``, the adaptive ``worker.batcher``);
- ``worker.control``: cancel / load / unload requests;
- ``worker.cancellation``: how work is stopped (the one cancellation model) and deadlines;
- ``worker.slots``, ``worker.heartbeat``, ``worker.bookkeeper``, ``worker.registry``.
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from conveyor.broker import WorkerBroker
from conveyor.broker.keys import Keys
from conveyor.collector import freeze_survivors
from conveyor.compiled import compiled_modules
from conveyor.settings import ModelSettings
from conveyor.worker.admission import Admission
from conveyor.worker.batch_jobs import BatchJobs
from conveyor.worker.bookkeeper import Bookkeeper
from conveyor.worker.call_limit import CallLimit
from conveyor.worker.cancellation import RunningJobs
from conveyor.worker.clock import RedisClock
from conveyor.worker.consumer import Consumer
from conveyor.worker.control import Control
from conveyor.worker.health import Health, ObservedHeartbeat, serving_health
from conveyor.worker.heartbeat import WorkerStats, rest_routes
from conveyor.worker.load_settings import settings_of
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.registry import ModelRegistry
from conveyor.worker.runner import JobRunner
from conveyor.worker.settings import WorkerSettings
from conveyor.worker.slots import Slots

__all__ = ("Worker", "WorkerSettings")

logger = logging.getLogger(__name__)


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
        self.metrics = WorkerMetrics(multiprocess=settings.metrics_dir is not None)
        self.slots = Slots(self.stats.in_flight)
        file = Path(settings.health_file) if settings.health_file else None
        self.health = Health(self.stats, settings.heartbeat_ttl, file)
        self.jobs = RunningJobs()  # every job task, and how each is stopped
        self.metrics.track_in_flight(lambda: len(self.stats.in_flight) - self.slots.awaiting_ack)
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
        self._clock = RedisClock()  # job deadlines are measured on Redis's clock
        self._admission = Admission(
            self.keys, self.registry.payload_limit, self.registry.smallest_payload_limit
        )
        self._heartbeat: ObservedHeartbeat | None = None

    def _publish_models(self) -> None:
        """Tells the fleet (the heartbeat) which models this worker serves now."""
        self.stats.ready = self.registry.ready_names()
        self.stats.failed = self.registry.failed_names()
        self.stats.rest = rest_routes((s.name, s.model) for s in self.registry.all() if s.ready)
        self.stats.settings = settings_of(self.registry.all())
        self.stats.loading = []
        if self._heartbeat is not None:
            self._heartbeat.beat_soon()
        self.health.changed()

    def stop(self) -> None:
        """Stops taking new jobs; ``run`` returns once in-flight jobs are done."""
        self.health.draining = True  # not ready from now: an orchestrator stops routing here
        self.health.changed()
        self.slots.close()

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # from the start: /live answers while the models load, /ready says they do
        with serving_health(self.settings.health_port, self.health.report):
            try:
                await self._run(handle_signals, task_status)
            finally:
                self.health.consuming = False
                self.health.changed()

    async def _run(self, handle_signals: bool, task_status: TaskStatus[None]) -> None:
        settings = self.settings
        async with WorkerBroker(
            settings.redis_url, self.keys, settings.name, max_block=settings.read_block
        ) as broker:
            bookkeeper = Bookkeeper(broker, self._clock, settings.heartbeat_ttl)
            heartbeat = ObservedHeartbeat(
                broker.heartbeat_link,
                self.health,
                settings.name,
                self.stats,
                settings.heartbeat_ttl,
                self._clock,
            )
            self._heartbeat = heartbeat
            frozen = False
            try:
                # Redis first: a wrong URL fails in seconds, not after minutes of loading models.
                await broker.ping()
                server = await broker.server_version()  # older than Redis 7.0: stops here
                logger.info("redis.server server=%s url=%s", server or "unknown", broker.where)
                # Redis's clock, before the first beat (its registry score) and the first job
                await bookkeeper.read_clock()
                # Beating while it loads: a client calling a model this worker is loading waits
                # for it instead of failing as "not served" (see broker/fleet.py).
                self.stats.loading = self.registry.names()
                heartbeat.start()
                await self.registry.load_all()
                await broker.ensure_groups(self.registry.job_streams())
                # cursors first: a load/unload sent once we report started is never missed
                cursors = await broker.control_cursors(self.registry.control_streams())
                for served in self.registry.all():
                    await broker.publish_limits(served.name, served.settings.max_queue_length)
                self.health.consuming = True  # with the models' publication below
                self._publish_models()  # ready only now: its groups exist
                if settings.freeze_gc:
                    # What is alive now (imports, the models) lives as long as the worker: out of
                    # the collector's way. Else each full collection walks it all: ~15 us per job
                    # at 64 in flight (objects of jobs in flight reach the oldest generation).
                    freeze_survivors()
                    frozen = True
                if settings.metrics_port is not None:
                    self.metrics.serve(settings.metrics_port)
                async with anyio.create_task_group() as infra:
                    runner = JobRunner(
                        broker,
                        self.registry,
                        self.keys,
                        self._admission,
                        self.jobs,
                        self.slots,
                        self.stats,
                        self.metrics,
                        self._clock,
                        worker=settings.name,
                        read_block=settings.read_block,
                        start_soon=lambda run: infra.start_soon(run),
                    )
                    control = Control(
                        broker,
                        self.registry,
                        self.keys,
                        self._admission,
                        self.jobs,
                        self.slots,
                        self._clock,
                        worker=settings.name,
                        read_block=settings.read_block,
                        models_changed=self._publish_models,
                    )
                    batch_jobs = BatchJobs(
                        runner,
                        broker,
                        self.registry,
                        self._admission,
                        self.jobs,
                        self.slots,
                        self.stats,
                        self.metrics,
                        self._clock,
                        worker=settings.name,
                        start_soon=lambda run: infra.start_soon(run),
                    )
                    consumer = Consumer(
                        broker,
                        self.registry,
                        self.keys,
                        self.jobs,
                        self.slots,
                        self.metrics,
                        bookkeeper,
                        settings,
                        runner.handle,
                        batch_jobs.take,
                        new_read=runner.new_read,
                    )
                    infra.start_soon(broker.run_writers)
                    infra.start_soon(self.metrics.flush_every)
                    infra.start_soon(control.run, cursors)
                    if handle_signals:
                        # started once it handles them: a signal sent on "worker.started" is seen
                        await infra.start(self._signal_loop)
                    logger.info(
                        "worker.started worker=%s models=%s not_served=%s concurrency=%d "
                        "compiled_modules=%d",
                        settings.name,
                        ",".join(self.stats.ready) or "-",
                        ",".join(self.stats.failed) or "-",
                        settings.concurrency,
                        len(compiled_modules()),
                    )
                    task_status.started()
                    try:
                        await consumer.consume()
                        with anyio.move_on_after(settings.grace_period):
                            while self.stats.in_flight:
                                await self.slots.wait()
                        if self.stats.in_flight:
                            logger.warning(
                                "worker.grace_expired worker=%s unfinished=%d",
                                settings.name,
                                len(self.stats.in_flight),
                            )
                    finally:
                        await self.jobs.abort()
                        # Its jobs answered, or pending for another worker: it leaves the groups
                        # where it owns nothing (never before it consumed: nothing to leave).
                        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                            await broker.flush_acks()  # answered jobs: not left pending
                            await bookkeeper.leave(self.registry.all_job_streams())
                    infra.cancel_scope.cancel()
            finally:
                self.metrics.flush()  # its last jobs: seen by the supervisor's scrapes
                if frozen:
                    gc.unfreeze()
                with anyio.CancelScope(shield=True):
                    heartbeat.stop(unregister=True)
                    with anyio.move_on_after(5):
                        await self.registry.unload_all()
                logger.info("worker.stopped worker=%s done=%d", settings.name, self.stats.done)

    async def _signal_loop(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """First SIGTERM/SIGINT: drain (warm stop). A second one: stop at once; unfinished
        jobs stay pending and another worker reclaims them."""
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                if not self.slots.closed:
                    logger.info("worker.stopping worker=%s signal=%s", self.settings.name, signum)
                    self.stop()
                    continue
                logger.warning(
                    "worker.stopping_now worker=%s signal=%s unfinished=%d",
                    self.settings.name,
                    signum,
                    len(self.stats.in_flight),
                )
                self.jobs.cancel_all()
                return
