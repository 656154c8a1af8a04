"""The broker's face to a client: every Redis operation a client makes, one awaitable each.

A :class:`ClientBroker` owns what a client needs of Redis, so the client never sees redis-py:

- **connections**: a pool of ``SEND_CONNECTIONS`` for sending and one blocking connection for
  the reader's ``BLMPOP``/``XREAD``, named ``conveyor-client-<client id>`` (``CLIENT LIST``
  shows which belong to the client), whatever the number of calls in flight;
- **auto-pipelining**: every waiting caller's commands go in one round trip
  (:class:`~conveyor.broker.pipelining.PipelineBatcher`, its flusher runs while the broker is
  open);
- **the trio hop**: redis-py runs on asyncio only. On asyncio an operation awaits Redis
  directly; on trio it crosses whole (one pipelined round trip) to a private asyncio loop in
  a helper thread (``bridge.py``). Every method below may cross threads on trio; the caller
  awaits it as any other;
- **error translation**, the one place on the client's side where Redis errors become
  Conveyor's: a connection failure, timeout, ACL refusal or non-Redis answer raises
  :class:`~conveyor.errors.BrokerConnectionError` (naming the server without its password),
  a Redis out of memory :class:`~conveyor.errors.BrokerOutOfMemory`, any other error reply
  (``WRONGTYPE``: a key of the client's holds another type) ``BrokerCommandError``; the
  Redis error is the ``__cause__``, and redis-py's exceptions never leave. An ACL refusal
  that only keeps the client from *telling* something (a job's state, the fleet) answers
  None instead.

The operations themselves, as they run on the asyncio loop, are ``client_streams.py``'s.
Use as ``async with ClientBroker(settings, keys, client_id) as broker:``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType

from conveyor.broker.bridge import Transport, on_asyncio, open_transport
from conveyor.broker.client_streams import ClientStreams
from conveyor.broker.clients import create_client
from conveyor.broker.errors import translate_every_error
from conveyor.broker.fleet import FleetView, has_group, read_fleet
from conveyor.broker.keys import Keys
from conveyor.broker.settings import RedisSettings
from conveyor.broker.wire import Fields, RawFields, Rung
from conveyor.errors import ConveyorError

__all__ = ("SEND_CONNECTIONS", "ClientBroker", "Replies")

SEND_CONNECTIONS = 3  # + 1 for the reader: at most 4 connections, whatever is in flight

# What the reader gets of reply streams: (key, [(entry id, fields), ...]) per stream with news.
Replies = list[tuple[str, list[tuple[bytes, RawFields]]]]


class ClientBroker:
    """One client's connections to Redis, and the operations it makes on them.

    Opening it (``async with``) makes the connections' pools; the first operation
    connects. :meth:`aclose` closes them, on the loop that used them.
    """

    def __init__(self, settings: RedisSettings, keys: Keys, client_id: str) -> None:
        self.settings = settings
        self.keys = keys
        self.client_id = client_id
        self.bell = keys.bell(client_id)  # the client's doorbell: its jobs name it
        self.reached = False  # whether Redis ever answered this broker
        self.on_asyncio = True  # whether it runs on asyncio (set when opened; else trio)
        self._errors = translate_every_error(settings)  # reused by every operation: it is stateless
        self._transport: Transport | None = None
        # set when opened; every operation reads self._io first, which raises until then
        self._streams: ClientStreams
        self._exit: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> ClientBroker:
        named = self.settings.model_copy(
            update={"client_name": f"conveyor-client-{self.client_id}"}
        )
        self.on_asyncio = on_asyncio()
        redis = create_client(named, max_connections=SEND_CONNECTIONS)
        # The reader's connection never re-sends by itself: a BLMPOP whose answer was lost
        # with the connection must be noticed, so that the reader resyncs.
        blocking = create_client(named, blocking=True, max_connections=1, retry=False)
        ops = self._streams = ClientStreams(redis, blocking, self.keys, self.client_id)

        async def close_connections() -> None:
            await redis.aclose()
            await blocking.aclose()

        async with contextlib.AsyncExitStack() as stack:
            self._transport = await stack.enter_async_context(
                open_transport([ops.batcher.run_flusher], close_connections)
            )
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
        """Stops the pipeline's flusher and closes the connections; idempotent."""
        exit_stack, self._exit = self._exit, None
        if exit_stack is not None:
            await exit_stack.aclose()

    @property
    def _io(self) -> Transport:
        if self._transport is None:
            raise ConveyorError("the client is not open: use `async with Client(...)`")
        return self._transport

    # Each operation: the hop (self._io.step), inside the translation, then `reached`. Spelled
    # out in each rather than through a shared helper: one coroutine frame less a call.

    async def send_job(
        self, stream: str, fields: Fields, max_backlog: int | None = None
    ) -> bytes | int:
        """XADDs a job (pipelined with other callers' commands); returns its entry id. With
        ``max_backlog``: only while the stream holds fewer entries, else returns the backlog."""
        with self._errors:
            sent = await self._io.step(self._streams.send_job, stream, fields, max_backlog)
        self.reached = True
        return sent

    def send_job_soon(
        self, stream: str, fields: Fields, sent: Callable[[bytes | BaseException], None]
    ) -> bool:
        """As :meth:`send_job` (no queue limit) without waiting for Redis, on trio: the XADD
        crosses to Redis's loop with the next hop and rides with the next round trip; ``sent``
        gets (on trio) the entry id, or the error untranslated (send the job again with
        :meth:`send_job`, which says what went wrong). Each such send saves a step through the
        bridge: a task on Redis's loop and a wake of its caller. False on asyncio, where a
        waiting send measured cheaper: nothing was sent."""
        if self.on_asyncio:
            return False
        io = self._io
        io.fire(self._streams.submit_job, stream, fields, functools.partial(io.back, sent))
        return True

    async def send_control(self, stream: str, fields: Fields) -> None:
        """XADDs a control request (load, unload, cancel) to a model's control stream."""
        with self._errors:
            await self._io.step(self._streams.send_control, stream, fields)
        self.reached = True

    async def send_inputs(self, key: str, entries: Sequence[Fields], ttl_s: float) -> None:
        """XADDs a predict_stream's input entries; the stream expires ``ttl_s`` later."""
        with self._errors:
            await self._io.step(self._streams.send_inputs, key, entries, ttl_s)
        self.reached = True

    async def send_credit(self, key: str, taken: int, ttl_s: float) -> None:
        """Tells a predict_stream's worker how many chunks the caller has taken."""
        with self._errors:
            await self._io.step(self._streams.send_credit, key, taken, ttl_s)
        self.reached = True

    async def model_limits(self, model: str) -> int | None:
        """The queue limit the workers published for ``model`` (None: unbounded)."""
        with self._errors:
            limit = await self._io.step(self._streams.model_limits, model)
        self.reached = True
        return limit

    async def wait_bell(
        self, block_s: float, unlink: Sequence[str] = (), trim: Mapping[str, bytes] | None = None
    ) -> Rung:
        """Deletes the finished reply streams (``unlink``) and the entries read of open ones
        (``trim``: key -> last entry read), then waits up to ``block_s`` on the doorbell: the
        request ids whose reply streams have news, and the answers that came inline."""
        with self._errors:
            rung = await self._io.step(self._streams.wait_bell, block_s, unlink, trim)
        self.reached = True
        return rung

    async def drain_bell(self) -> Rung:
        """Everything on the doorbell now, hardly waiting (after an outage)."""
        with self._errors:
            rung = await self._io.step(self._streams.drain_bell)
        self.reached = True
        return rung

    async def read_replies(self, cursors: Mapping[str, bytes]) -> Replies:
        """Every reply stream's entries after its cursor (reply key -> last entry read)."""
        with self._errors:
            replies = await self._io.step(self._streams.read_replies, cursors)
        self.reached = True
        return replies

    async def jobs_present(self, jobs: Sequence[tuple[str, bytes]]) -> list[bool]:
        """Whether each (job stream, entry id) is still in its stream: queued or running."""
        with self._errors:
            present = await self._io.step(self._streams.jobs_present, jobs)
        self.reached = True
        return present

    async def job_was_taken(self, stream: str, entry_id: bytes) -> bool | None:
        """Whether a worker was handed the job (None: the ACL does not let us tell)."""
        with self._errors:
            taken = await self._io.step(self._streams.job_was_taken, stream, entry_id)
        self.reached = True
        return taken

    async def withdraw_job(self, stream: str, entry_id: bytes) -> None:
        """Deletes a job its caller gave up on, so no worker runs it later."""
        with self._errors:
            await self._io.step(self._streams.withdraw_job, stream, entry_id)
        self.reached = True

    async def delete(self, *keys: str) -> None:
        """Deletes keys (a finished predict_stream's inputs and credit)."""
        with self._errors:
            await self._io.step(self._streams.delete, *keys)
        self.reached = True

    async def ping(self) -> None:
        """Asks Redis whether it answers; raises :class:`BrokerConnectionError` if not."""
        with self._errors:
            await self._io.step(self._streams.ping)
        self.reached = True

    async def has_group(self, stream: str) -> bool | None:
        """Whether a job stream has the workers' consumer group (a worker served it once);
        None when the ACL does not let us tell."""
        with self._errors:
            found = await self._io.step(has_group, self._streams.redis, stream)
        self.reached = True
        return found

    async def read_fleet(self) -> FleetView | None:
        """The live workers and their models, from their heartbeats (None: the ACL does not
        let us tell)."""
        with self._errors:
            view = await self._io.step(read_fleet, self._streams.redis, self.keys)
        self.reached = True
        return view
