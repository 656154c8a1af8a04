"""The client: sends jobs to the fleet and hands each caller its own answer.

One reader per client waits on the client's doorbell (``BLMPOP``) and reads the reply
streams it names, so any number of calls in flight share two Redis connections: one for
sending (every waiting caller's commands pipelined together) and one for the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from conveyor.broker.bridge import Transport, on_asyncio, open_transport
from conveyor.broker.client_streams import ClientStreams
from conveyor.broker.connection import (
    RedisSettings,
    create_client,
    default_redis_url,
    translate_errors,
    translate_oom,
)
from conveyor.broker.entries import Rung
from conveyor.broker.keys import DEFAULT_PREFIX, Keys, is_client_id
from conveyor.broker.wire import (
    ErrorInfo,
    Fields,
    Job,
    Message,
    MessageType,
    Payload,
    RawFields,
    decode_message,
    encode_job,
    encode_message,
    fields_size,
)
from conveyor.client.metrics import ClientMetrics
from conveyor.client.served import ServedCheck
from conveyor.client.waiter import Event as _Event
from conveyor.client.waiter import Sent as _Sent
from conveyor.client.waiter import Waiter as _Waiter
from conveyor.errors import (
    BrokerConnectionError,
    BrokerOutOfMemory,
    ConveyorError,
    DeadLettered,
    DeadlineExceeded,
    InferenceError,
    MethodNotAllowed,
    ModelNotFound,
    NoWorkerError,
    PayloadTooLarge,
    QueueFull,
    RemoteError,
    StreamInterrupted,
    WireError,
)
from conveyor.methods import ModelMethods

if TYPE_CHECKING:
    from conveyor.client.model import ParallelModel

__all__ = ("Client",)

T = TypeVar("T")

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
# A predict_stream's worker runs at most this many chunks ahead of the caller.
DEFAULT_STREAM_WINDOW = 64
_BELL_BLOCK_S = 1.0  # the reader's longest wait; keeps it well below any socket timeout
_INPUTS_TTL_GRACE_S = 60.0
_LIMITS_TTL_S = 10.0  # how long a model's published queue limit is trusted
_SEND_CONNECTIONS = 3  # + 1 for the reader: at most 4 connections, whatever is in flight


_CANCEL = "cancel"  # the control request that stops a running job (see the worker)


class _Measured:
    """Counts a call in flight, then records its outcome and latency.

    A class rather than a ``@contextmanager`` generator: it wraps every call (~0.4 us a use
    against ~2.7).
    """

    __slots__ = ("_method", "_metrics", "_model", "_started")

    def __init__(self, metrics: ClientMetrics, model: str, method: str) -> None:
        self._metrics = metrics
        self._model = model
        self._method = method
        self._started = 0.0

    def __enter__(self) -> None:
        self._metrics.calls_in_flight += 1
        self._started = time.monotonic()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        metrics = self._metrics
        metrics.calls_in_flight -= 1
        if exc_type is None:
            outcome = "ok"
        elif exc_type is GeneratorExit:
            outcome = "closed"  # a predict_stream the caller left early
        else:
            outcome = exc_type.__name__
        metrics.record(self._model, self._method, outcome, time.monotonic() - self._started)


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
        self._waiters: dict[str, _Waiter] = {}
        self._finished: list[str] = []
        self._trims: dict[str, bytes] = {}  # open reply streams: read up to this entry
        self._exit: contextlib.AsyncExitStack | None = None
        self._transport: Transport | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._reached = False  # whether Redis ever answered this client
        self._request_numbers = itertools.count(1)
        self._limits: dict[str, tuple[float, int | None]] = {}  # model -> (when, queue limit)
        self._asyncio = True  # whether the client runs on asyncio (set when opened)
        self._new_event: Callable[[], _Event] = asyncio.Event
        self._served = ServedCheck(self._step, self.keys)  # its connection comes when opened

    async def __aenter__(self) -> Client:
        # Named connections, so `CLIENT LIST` shows which belong to this client. The sender
        # pipelines every caller's commands on (mostly) one connection; the reader has one.
        named = self.settings.model_copy(
            update={"client_name": f"conveyor-client-{self.client_id}"}
        )
        self._asyncio = on_asyncio()
        self._new_event = asyncio.Event if self._asyncio else anyio.Event
        redis = create_client(named, max_connections=_SEND_CONNECTIONS)
        # The reader's connection never re-sends by itself: a BLMPOP whose answer was lost
        # with the connection must be noticed, so that the reader resyncs (see _resync).
        blocking = create_client(named, blocking=True, max_connections=1, retry=False)
        self._streams = ClientStreams(redis, blocking, self.keys, self.client_id)
        self._served.redis = redis

        async def close_connections() -> None:
            await redis.aclose()
            await blocking.aclose()

        async with contextlib.AsyncExitStack() as stack:
            self._transport = await stack.enter_async_context(
                open_transport([self._streams.batcher.run_flusher], close_connections)
            )
            tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(tg.cancel_scope.cancel)
            tg.start_soon(self._read_replies)
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
        from conveyor.client.model import ParallelModel

        return ParallelModel(self, name, version)

    @property
    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise ConveyorError("the client is not open: use `async with Client(...)`")
        return self._tg

    @property
    def _io(self) -> Transport:
        if self._transport is None:
            raise ConveyorError("the client is not open: use `async with Client(...)`")
        return self._transport

    async def _step(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Runs one broker step; Redis failures become ``BrokerConnectionError``, and a
        Redis out of memory ``BrokerOutOfMemory``."""
        with translate_errors(self.settings), translate_oom(self.settings):
            result = await self._io.step(fn, *args)
        self._reached = True
        return result

    def _was_reached(self) -> bool:
        return self._reached

    async def _step_until(self, deadline: float, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """A broker step that, while a Redis that answered before is unreachable (restarting,
        failing over), tries again with backoff until ``deadline`` (anyio's clock), as a
        call's send does; then raises the connection error."""
        backoff = 0.05
        while True:
            try:
                return await self._step(fn, *args)
            except BrokerConnectionError:
                if not self._reached or anyio.current_time() + backoff >= deadline:
                    raise
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # -- the reader -------------------------------------------------------------------------

    async def _read_replies(self) -> None:
        streams = self._streams
        broken = False
        while True:
            finished, self._finished = self._finished, []
            trims, self._trims = self._trims, {}
            try:
                if broken:
                    # Back after an outage: a bell may have been lost, and Redis may have
                    # lost the last writes before a crash (appendfsync everysec).
                    await self._resync()
                    broken = False
                rung = await self._step(streams.wait_bell, _BELL_BLOCK_S, finished, trims)
                if rung.messages:
                    self._deliver_inline(rung)
                    # let the answered callers go on before the next BLMPOP is sent
                    await anyio.lowlevel.checkpoint()
                cursors = {}
                for request_id in set(rung.ids):
                    waiter = self._waiters.get(request_id)
                    if waiter is not None:
                        cursors[waiter.key] = waiter.cursor
                if not cursors:
                    continue
                replies = await self._step(streams.read_replies, cursors)
            except ConveyorError as error:
                if not broken:
                    logger.warning("client.redis_unavailable error=%s", error)
                broken = True
                await anyio.sleep(0.5)  # the connection's own retries have run out: wait
                continue
            self._dispatch(replies)

    def _deliver_inline(self, rung: Rung) -> None:
        """Hands the answers that came in the bell itself to their callers."""
        for fields in rung.messages:
            try:
                message = decode_message(fields)
            except WireError as error:  # no request id to tell: say it here
                logger.warning("client.bad_bell_entry reason=%s", error.reason)
                continue
            waiter = self._waiters.get(message.id)
            if waiter is not None:
                waiter.deliver(message)

    def _dispatch(self, replies: list[tuple[str, list[tuple[bytes, RawFields]]]]) -> None:
        for key, entries in replies:
            request_id = key.rsplit(":", 1)[-1]
            waiter = self._waiters.get(request_id)
            if waiter is None:
                continue
            waiter.streamed = True
            if waiter.trim and entries:
                # delete what was read with the next BLMPOP: Redis holds only the unread
                self._trims[key] = entries[-1][0]
            for entry_id, fields in entries:
                waiter.cursor = entry_id
                try:
                    message = decode_message(fields)
                except WireError as error:
                    waiter.fail(ErrorInfo("bad_entry", "WireError", error.reason))
                    continue
                waiter.deliver(message)

    async def _resync(self) -> None:
        """Reads every open reply stream, and sends again the jobs Redis no longer has.

        A job that is neither in its stream (queued or running) nor answered was lost with
        the last writes before a Redis crash: it goes again under the same request id, with
        the next attempt number. Workers and answer-taking are idempotent per request id.
        """
        waiters = [w for w in self._waiters.values() if w.sent is not None]
        if not waiters:
            return
        # answers that came inline first: the jobs they answer are gone from their streams
        self._deliver_inline(await self._step(self._streams.drain_bell))
        cursors = {w.key: w.cursor for w in waiters}
        self._dispatch(await self._step(self._streams.read_replies, cursors))
        pending = [
            (w, w.sent) for w in waiters if not w.inbox and w.taken == 0 and w.sent is not None
        ]
        present = await self._step(
            self._streams.jobs_present, [(sent.stream, sent.entry_id) for _, sent in pending]
        )
        for (waiter, sent), here in zip(pending, present, strict=True):
            if here:
                continue
            # What is left of its timeout, not all of it again: a worker counts the budget
            # (deadline - sent_at) from when Redis stores the new entry (worker/clock.py).
            now = time.time()
            job = replace(
                sent.job,
                attempt=sent.job.attempt + 1,
                sent_at=now,
                deadline=max(sent.job.deadline, now),
            )
            # no queue limit here: the job was admitted once already
            entry_id = await self._step(self._streams.send_job, sent.stream, encode_job(job))
            assert isinstance(entry_id, bytes)
            waiter.sent = _Sent(job, sent.stream, entry_id)
            logger.warning("client.resent request=%s attempt=%d", job.id, job.attempt)

    # -- calls ------------------------------------------------------------------------------

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
    ) -> tuple[Job, _Waiter]:
        # unique: the client id is random, the counter is this client's
        request_id = f"{self.client_id}-{next(self._request_numbers)}"
        now = time.time()
        job = Job(
            id=request_id,
            method=method,
            model=model,
            version=version,
            reply=self.keys.reply(self.client_id, request_id),
            bell=self._streams.bell,
            deadline=now + timeout,
            sent_at=now,
            args=tuple(args),
            kwargs=dict(kwargs),
            inputs=self.keys.inputs(self.client_id, request_id) if streamed else None,
            credit=self.keys.credit(self.client_id, request_id) if streamed else None,
            window=self.stream_window if streamed else 0,
            inline_reply=inline_reply,
        )
        return job, _Waiter(request_id, job.reply, self._new_event)

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
        job, waiter = self._job(
            model, version, method, args, kwargs or {}, timeout, inline_reply=True
        )
        stream = self.keys.jobs(model, version)
        fields = self._encode(job)
        if stream not in self._served.known:  # once per model: fail fast if nobody serves it
            await self._served.check(model, version, stream, timeout, self._was_reached)
        self._waiters[job.id] = waiter
        # The deadline is spelled out: anyio's fail_after costs ~10 us a call on asyncio.
        with _Measured(self.metrics, model, method):
            try:
                if self._asyncio:
                    async with asyncio.timeout(timeout):
                        message = await self._send_and_wait(
                            waiter, job, stream, fields, wait_when_full
                        )
                else:
                    with anyio.fail_after(timeout):
                        message = await self._send_and_wait(
                            waiter, job, stream, fields, wait_when_full
                        )
            except TimeoutError:
                error = await self._timed_out(job, waiter, timeout)
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
                self._finished.append(waiter.key)
            return _result(job, message)

    async def _send_and_wait(
        self, waiter: _Waiter, job: Job, stream: str, fields: Fields, wait_when_full: bool
    ) -> Message:
        await self._send(waiter, job, stream, fields, wait_when_full)
        return await waiter.next()

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
        job, waiter = self._job(
            model, version, ModelMethods.PredictStream.value, (), {}, timeout, streamed=True
        )
        assert job.inputs is not None
        waiter.trim = True
        stream = self.keys.jobs(model, version)
        fields = self._encode(job)
        if stream not in self._served.known:  # once per model: fail fast if nobody serves it
            await self._served.check(model, version, stream, timeout, self._was_reached)
        self._waiters[job.id] = waiter
        deadline = anyio.current_time() + timeout
        finished = False
        # The input pump lives in the client's task group, not in this generator: a yield
        # inside a task group or cancel scope of an async generator breaks cancellation.
        pump_scope = anyio.CancelScope()
        with _Measured(self.metrics, model, ModelMethods.PredictStream.value):
            try:
                with anyio.fail_after(timeout):
                    await self._send(waiter, job, stream, fields, False)
                self._task_group.start_soon(self._pump_inputs, job, waiter, requests, pump_scope)
                while True:
                    with anyio.fail_after(max(deadline - anyio.current_time(), 0)):
                        message = await waiter.next()
                    if message.type is MessageType.CHUNK:
                        yield message.payload
                        # back for more: credit the worker every half window
                        if job.credit and waiter.taken % max(job.window // 2, 1) == 0:
                            ttl = job.deadline - time.time() + _INPUTS_TTL_GRACE_S
                            await self._step_until(
                                deadline, self._streams.send_credit, job.credit, waiter.taken, ttl
                            )
                    elif message.type is MessageType.END:
                        finished = True
                        return
                    else:
                        # the job is over, unless the stream broke: then stop its restart
                        finished = not (
                            message.error is not None and message.error.code == "stream_interrupted"
                        )
                        _result(job, message)
            except TimeoutError:
                raise await self._timed_out(job, waiter, timeout) from None
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
        await self._served.check_control(model, timeout, self._was_reached)
        self._waiters[job.id] = waiter
        try:
            with anyio.fail_after(timeout):
                await self._step(self._streams.send_control, stream, fields)
                while True:
                    message = await waiter.next()
                    result = _result(job, message)
                    if isinstance(result, dict):
                        return bool(result.get("ready")) == (method == ModelMethods.Load.value)
        except TimeoutError:
            raise DeadlineExceeded(
                job.id, timeout, f"no live worker answered {method} of model {model!r}"
            ) from None
        finally:
            await self._forget(waiter, job, None)

    async def _send(
        self, waiter: _Waiter, job: Job, stream: str, fields: Fields, wait_when_full: bool
    ) -> None:
        """XADDs the job, within the model's queue limit.

        A full queue raises :class:`QueueFull`, or with ``wait_when_full`` waits for room.
        While a Redis that answered before is unreachable (restarting, failing over), tries
        again until the caller's deadline, whose TimeoutError then reports the connection
        error (see ``_timed_out``).
        """
        backoff = 0.05
        while True:
            try:
                limit = await self._queue_limit(job.model)
                sent = await self._step(self._streams.send_job, stream, fields, limit)
            except BrokerConnectionError as error:
                if not self._reached:
                    raise  # never reached: a wrong URL or a server that is down, say so now
                waiter.unreachable = error  # an outage of a Redis that worked: wait it out
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            waiter.unreachable = None
            if isinstance(sent, int):  # the queue is full: `sent` is its backlog
                assert limit is not None
                if not wait_when_full:
                    raise QueueFull(job.model, sent, limit)
                waiter.full = QueueFull(job.model, sent, limit)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            waiter.full = None
            assert isinstance(sent, bytes)
            waiter.sent = _Sent(job, stream, sent)
            return

    async def _queue_limit(self, model: str) -> int | None:
        """The model's ``max_queue_length`` as its workers published it (cached a while)."""
        cached = self._limits.get(model)
        now = time.monotonic()
        if cached is not None and now - cached[0] < _LIMITS_TTL_S:
            return cached[1]
        limit = await self._step(self._streams.model_limits, model)
        self._limits[model] = (now, limit)
        return limit

    async def _pump_inputs(
        self,
        job: Job,
        waiter: _Waiter,
        requests: AsyncIterator[Payload],
        scope: anyio.CancelScope,
    ) -> None:
        assert job.inputs is not None
        ttl = job.deadline - time.time() + _INPUTS_TTL_GRACE_S
        deadline = anyio.current_time() + job.deadline - time.time()
        seq = 0
        with scope:
            try:
                async for request in requests:
                    entry = encode_message(Message(MessageType.INPUT, job.id, 0, seq, request))
                    # an input sent twice (its first XADD's reply lost) is skipped by its seq
                    await self._step_until(
                        deadline, self._streams.send_inputs, job.inputs, [entry], ttl
                    )
                    seq += 1
                end = encode_message(Message(MessageType.END, job.id, 0, seq))
                await self._step_until(deadline, self._streams.send_inputs, job.inputs, [end], ttl)
            except Exception as error:  # the caller's iterator failed: end the call with it
                waiter.fail(ErrorInfo("input_error", type(error).__name__, str(error)))
            finally:
                # A stream that ended (or broke) before its inputs did: close the caller's
                # generator now, as `async with aclosing(...)` would, rather than leave it to
                # the garbage collector (which trio reports as a ResourceWarning).
                aclose = getattr(requests, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                        await aclose()

    async def _timed_out(self, job: Job, waiter: _Waiter, timeout: float) -> ConveyorError:
        """The error for a call that got no answer in time, saying as well as we can why."""
        if waiter.unreachable is not None:
            return waiter.unreachable
        if waiter.full is not None:
            return waiter.full
        sent = waiter.sent
        if sent is None:  # the job never reached Redis: it is Redis that did not answer
            return BrokerConnectionError(
                self.settings.redacted_url, f"no answer from Redis within {timeout:.1f}s"
            )
        taken: bool | None = None
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            if sent is not None:
                taken = await self._step(self._streams.job_was_taken, sent.stream, sent.entry_id)
        if taken is False:
            return NoWorkerError(job.id, timeout, job.model)
        if taken is None:
            return DeadlineExceeded(job.id, timeout)
        return DeadlineExceeded(job.id, timeout, "the job was taken by a worker")

    async def _forget(
        self, waiter: _Waiter, job: Job, unanswered: _Sent | None, *keys: str
    ) -> ConveyorError | None:
        """Drops the waiter and its reply stream. For a call given up on (``unanswered`` is
        its job as sent), deletes the job if no worker took it yet and asks the workers to
        stop it if one did, so a caller that gave up leaves no work running. Returns why
        that cleanup failed, if it did (it never raises)."""
        self._waiters.pop(waiter.request_id, None)
        self._finished.append(waiter.key)
        if unanswered is None and not keys:
            return None
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            try:
                if unanswered is not None:
                    await self._step(
                        self._streams.withdraw_job, unanswered.stream, unanswered.entry_id
                    )
                    cancel = replace(job, method=_CANCEL, args=(), kwargs={}, inputs=None)
                    await self._step(
                        self._streams.send_control, self.keys.control(job.model), encode_job(cancel)
                    )
                if keys:
                    await self._step(self._streams.delete, *keys)
            except ConveyorError as error:
                # Best effort: the keys expire by themselves, and the call's own outcome (an
                # answer, or the error that ended it) is what the caller must see.
                logger.warning("client.cleanup_failed request=%s error=%s", job.id, error)
                return error
        return None


def _result(job: Job, message: Message) -> Payload:
    """The payload of a final message, or the error it carries, raised."""
    if message.type is MessageType.RESULT:
        return message.payload
    if message.type is MessageType.ERROR and message.error is not None:
        error = message.error
        if error.code == "model_not_found":
            raise ModelNotFound(job.model, job.version)
        if error.code == "method_not_allowed":
            exc = MethodNotAllowed(job.model, job.method, [])
            exc.args = (error.message,)
            raise exc
        if error.code == "deadline":
            timeout = job.deadline - job.sent_at
            raise DeadlineExceeded(job.id, timeout, error.message, by_worker=True)
        if error.code == "payload_too_large":
            raise PayloadTooLarge(0, 0, error.message)
        if error.code == "stream_interrupted":
            raise StreamInterrupted(job.id, error.message)
        if error.code == "dead_letter":
            raise DeadLettered(job.id, job.model, error.message)
        if error.code == "bad_entry":
            raise InferenceError(f"request {job.id}: {error.message}")
        raise RemoteError(error.type, error.message, request_id=job.id)
    raise InferenceError(f"request {job.id}: unexpected {message.type.value!r} message")
