"""The client: sends jobs to the fleet and hands each caller its own answer.

A call goes through four parts, each a module:

- :class:`Client` (here): the API, ``call``, ``stream`` (``predict_stream``) and ``control``
  (load/unload): makes the job, waits for its answer within the timeout, cleans up;
- ``sender.py``: XADDs the job within the model's queue limit; after a call given up on,
  withdraws its job and cancels it on its worker;
- ``reader.py``: the one task that waits on the client's doorbell and delivers every reply
  to its call's waiter (``waiter.py``: which run's answer a call takes);
- the broker's face, :class:`~conveyor.broker.ClientBroker`: the Redis operations, their
  connections (two per client, whatever the number of calls in flight: one for sending,
  every waiting caller's commands pipelined together, one for the reader), the trio hop and
  the translation of Redis errors.

``results.py`` turns a final message into the caller's payload or error; ``pump.py`` writes a
``predict_stream``'s inputs; ``served.py`` fails a call fast when no worker serves its model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from types import TracebackType

import anyio
import anyio.abc

from conveyor.broker import ClientBroker, FleetView, RedisSettings, default_redis_url
from conveyor.broker.keys import DEFAULT_PREFIX, Keys, is_client_id
from conveyor.broker.wire import (
    ControlVerb,
    ErrorCode,
    Fields,
    Job,
    MessageType,
    Payload,
    encode_job,
    fields_size,
)
from conveyor.client.backoff import retry_until
from conveyor.client.metrics import ClientMetrics, Measured
from conveyor.client.model import ParallelModel
from conveyor.client.pump import INPUTS_TTL_GRACE_S, pump_inputs
from conveyor.client.reader import Reader
from conveyor.client.results import result
from conveyor.client.sender import Sender
from conveyor.client.served import ServedCheck
from conveyor.client.waiter import Event, Sent, Waiter
from conveyor.errors import (
    BrokerConnectionError,
    BrokerOutOfMemory,
    ConveyorError,
    DeadlineExceeded,
    PayloadTooLarge,
)
from conveyor.methods import ModelMethods
from conveyor.tracing import Span, Tracer, carried, publish_span, traced, tracer

__all__ = ("Client",)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
# A predict_stream's worker runs at most this many chunks ahead of the caller.
DEFAULT_STREAM_WINDOW = 64


class Client:
    """A connection to the fleet. Use as ``async with Client(url) as client:``.

    Works on asyncio and trio. ``timeout`` is the default of every call, in seconds.
    ``client_id`` names the client in its keys and connections (``CLIENT LIST``): the id is
    that text and a random suffix (``api`` gives ``api-3f0c...``), unique to this instance.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        client_id: str | None = None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        self.settings = RedisSettings.from_url(url or default_redis_url())
        self.keys = Keys(prefix)
        self.timeout = timeout
        self.max_payload_bytes = max_payload_bytes
        self.stream_window = stream_window
        self.metrics = metrics or ClientMetrics()
        if client_id is not None and not is_client_id(client_id):
            raise ValueError(
                f"client_id {client_id!r} cannot name keys: give non-empty printable text "
                "without spaces or braces"
            )
        # A given id is a prefix, made unique: two processes given one id (replicas of one
        # service) would otherwise share a doorbell and take each other's answers.
        suffix = uuid.uuid4().hex[:12]
        self.client_id = f"{client_id}-{suffix}" if client_id else suffix
        self._broker = ClientBroker(self.settings, self.keys, self.client_id)  # opened later
        self._reader = Reader(self._broker)
        self._waiters = self._reader.waiters  # the calls in flight, by request id
        self._sender = Sender(self._broker, self.keys)
        self._served = ServedCheck(self._broker, self.keys)
        self._exit: contextlib.AsyncExitStack | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._request_numbers = itertools.count(1)
        self._asyncio = True  # whether the client runs on asyncio (set when opened)
        self._new_event: Callable[[], Event] = asyncio.Event
        self._tracer: Tracer | None = None  # set when opened, if the app configured tracing

    async def __aenter__(self) -> Client:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._broker)
            self._asyncio = self._broker.on_asyncio
            if self._asyncio:
                self._new_event = asyncio.Event
            else:
                import trio  # anyio's only other backend (the "trio" extra)

                # anyio.Event on trio wraps trio's: ~7x the cost to make, and a frame per wait
                self._new_event = trio.Event
            self._tracer = tracer()
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(self._reader.run)
            self._tg = tg
            self._exit = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the reader and closes the connections; idempotent."""
        exit_stack, self._exit = self._exit, None
        self._tg = None
        if exit_stack is not None:
            await exit_stack.aclose()

    def model(self, name: str, version: str | None = None) -> ParallelModel:
        """A :class:`~conveyor.client.ParallelModel` for ``name`` served by the fleet."""
        return ParallelModel(self, name, version)

    @property
    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ConveyorError("the client is not open: use `async with Client(...)`")
        return self._tg

    def _job(
        self,
        model: str,
        version: str | None,
        method: str,
        args: Sequence[Payload],
        kwargs: Mapping[str, Payload],
        timeout: float,
        streamed: bool = False,
        inline_reply: bool = False,
        span: Span | None = None,
    ) -> tuple[Job, Waiter]:
        # unique: the client id is random, the counter is this client's
        request_id = f"{self.client_id}-{next(self._request_numbers)}"
        now = time.time()
        traceparent, tracestate = ("", "") if span is None else carried(span, request_id)
        job = Job(
            id=request_id,
            method=method,
            model=model,
            version=version,
            reply=self.keys.reply(self.client_id, request_id),
            bell=self._broker.bell,
            deadline=now + timeout,
            sent_at=now,
            args=tuple(args),
            kwargs=dict(kwargs),
            inputs=self.keys.inputs(self.client_id, request_id) if streamed else None,
            credit=self.keys.credit(self.client_id, request_id) if streamed else None,
            window=self.stream_window if streamed else 0,
            inline_reply=inline_reply,
            traceparent=traceparent,
            tracestate=tracestate,
        )
        return job, Waiter(request_id, job.reply, self._new_event)

    def _encode(self, job: Job) -> Fields:
        fields = encode_job(job)
        size = fields_size(fields)
        if size > self.max_payload_bytes:
            raise PayloadTooLarge(size, self.max_payload_bytes)
        return fields

    async def call(
        self,
        model: str,
        method: str,
        args: Sequence[Payload] = (),
        kwargs: Mapping[str, Payload] | None = None,
        *,
        version: str | None = None,
        timeout: float | None = None,
        wait_when_full: bool = False,
    ) -> Payload:
        """Runs ``method`` of ``model`` on some worker and returns its result.

        Waits at most ``timeout`` seconds (the client's default when None), then raises
        :class:`NoWorkerError` if no worker took the job, else :class:`DeadlineExceeded`.
        A failure in the model raises :class:`RemoteError` with the exception's type. When
        the model's queue is at its ``max_queue_length``, raises :class:`QueueFull` at once,
        or with ``wait_when_full`` waits (within the timeout) for room.
        """
        timeout = self.timeout if timeout is None else timeout
        stream = self.keys.jobs(model, version)
        tracer = self._tracer
        span = None if tracer is None else publish_span(tracer, model, method, stream)
        job, waiter = self._job(
            model, version, method, args, kwargs or {}, timeout, inline_reply=True, span=span
        )
        fields = self._encode(job)
        if stream not in self._served.known:  # once per model: fail fast if nobody serves it
            await self._served.check(model, version, stream, timeout)
        self._waiters[job.id] = waiter
        # The deadline in each backend's own terms: anyio's fail_after costs ~10 us a call on
        # either, asyncio.timeout ~3.5 us, trio's own cancel scope ~5.5 us.
        with Measured(self.metrics, model, method), traced(span):
            try:
                if self._asyncio:
                    async with asyncio.timeout(timeout):
                        message = await self._sender.send_and_wait(
                            waiter, job, stream, fields, wait_when_full
                        )
                else:
                    import trio  # loaded already (see __aenter__): a dict lookup

                    with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
                        message = await self._sender.send_and_wait(
                            waiter, job, stream, fields, wait_when_full
                        )
                    if scope.cancelled_caught:
                        raise TimeoutError
            except TimeoutError:
                error = await self._sender.timed_out(job, waiter, timeout)
                failed = await self._forget(waiter, job, waiter.sent)
                if isinstance(failed, BrokerOutOfMemory):
                    # why no answer came: the worker could not store it (it keeps trying)
                    raise failed from error
                raise error from None
            except BaseException:
                await self._forget(waiter, job, waiter.sent)
                raise
            self._waiters.pop(waiter.request_id, None)
            if waiter.streamed:
                self._reader.finished.append(waiter.key)
            return result(job, message)

    async def stream(
        self,
        model: str,
        requests: AsyncIterator[Payload],
        *,
        version: str | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[Payload, None]:
        """Runs ``predict_stream``: sends ``requests`` as they come, yields each response.

        ``timeout`` bounds the whole stream. The worker runs at most ``stream_window`` chunks
        ahead of the caller, so a slow reader pauses the model instead of filling Redis.
        """
        timeout = self.timeout if timeout is None else timeout
        method, stream = ModelMethods.PredictStream.value, self.keys.jobs(model, version)
        tracer = self._tracer
        span = None if tracer is None else publish_span(tracer, model, method, stream)
        job, waiter = self._job(model, version, method, (), {}, timeout, streamed=True, span=span)
        assert job.inputs is not None
        waiter.trim = True
        fields = self._encode(job)
        if stream not in self._served.known:  # once per model: fail fast if nobody serves it
            await self._served.check(model, version, stream, timeout)
        self._waiters[job.id] = waiter
        deadline = anyio.current_time() + timeout
        finished = False
        broker = self._broker
        # The input pump lives in the client's task group, not in this generator: a yield
        # inside a task group or cancel scope of an async generator breaks cancellation.
        pump_scope = anyio.CancelScope()
        # not current across the yields (it would leak into the caller's code): ended here
        with Measured(self.metrics, model, method), traced(span, current=False):
            try:
                with anyio.fail_after(timeout):
                    await self._sender.send(waiter, job, stream, fields, False)
                self._task_group.start_soon(pump_inputs, broker, job, waiter, requests, pump_scope)
                while True:
                    with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                        message = await waiter.next()
                    if message.type is MessageType.CHUNK:
                        if span is not None:
                            span.add_event("chunk", {"seq": message.seq})
                        yield message.payload
                        # back for more: credit the worker every half window
                        if job.credit and waiter.taken % max(job.window // 2, 1) == 0:
                            ttl = job.deadline - time.time() + INPUTS_TTL_GRACE_S
                            await retry_until(
                                broker, deadline, broker.send_credit, job.credit, waiter.taken, ttl
                            )
                    elif message.type is MessageType.END:
                        finished = True
                        return
                    else:
                        # the job is over, unless the stream broke (then stop its restart)
                        # or the caller's own inputs failed (the worker still waits on them)
                        finished = message.error is None or message.error.code not in (
                            ErrorCode.STREAM_INTERRUPTED,
                            ErrorCode.INPUT_ERROR,
                        )
                        result(job, message)
            except TimeoutError:
                raise await self._sender.timed_out(job, waiter, timeout) from None
            finally:
                pump_scope.cancel()
                keys = [key for key in (job.inputs, job.credit) if key]
                await self._forget(waiter, job, None if finished else waiter.sent, *keys)

    async def control(self, model: str, method: str, *, timeout: float | None = None) -> bool:
        """Sends ``load`` or ``unload`` to every live worker of ``model``.

        Returns once the first worker reports it done; raises :class:`DeadlineExceeded` if
        none does within ``timeout`` (no live worker has the model in its folders).
        """
        timeout = self.timeout if timeout is None else timeout
        job, waiter = self._job(model, None, method, (), {}, timeout)
        stream = self.keys.control(model)
        fields = self._encode(job)
        # a typo must not leave a control stream behind: only a model some worker has
        await self._served.check_control(model, timeout)
        self._waiters[job.id] = waiter
        try:
            with anyio.fail_after(timeout):
                await self._broker.send_control(stream, fields)
                while True:
                    message = await waiter.next()
                    answer = result(job, message)
                    if isinstance(answer, dict):
                        return bool(answer.get("ready")) == (method == ControlVerb.LOAD)
        except TimeoutError:
            raise DeadlineExceeded(
                job.id, timeout, f"no live worker answered {method} of model {model!r}"
            ) from None
        finally:
            await self._forget(waiter, job, None)

    async def ping(self) -> bool:
        """Whether Redis answers now (False when it does not; never raises for that)."""
        try:
            await self._broker.ping()
        except BrokerConnectionError:
            return False
        return True

    async def fleet(self) -> FleetView | None:
        """The live workers and what their heartbeats say of their models; None when the
        ACL does not let this client read them."""
        return await self._broker.read_fleet()

    async def serves(self, model: str, version: str | None = None) -> bool:
        """Whether some live worker serves ``model`` (and ``version``, when given) now."""
        view = await self._broker.read_fleet()
        if view is not None and not view.serving(model):
            return False
        if version is None:
            return True
        # heartbeats name models, not versions: a version is served once its stream has the
        # workers' group (a worker made it when it loaded that version)
        return bool(await self._broker.has_group(self.keys.jobs(model, version)))

    async def _forget(
        self, waiter: Waiter, job: Job, unanswered: Sent | None, *keys: str
    ) -> ConveyorError | None:
        """Drops the waiter and its reply stream; for a call given up on (``unanswered``),
        withdraws its job (see :meth:`Sender.withdraw`). Returns why that cleanup failed."""
        self._reader.forget(waiter)
        return await self._sender.withdraw(job, unanswered, *keys)
