"""A loopback TCP proxy that resets connections on demand or at random: a flaky network,
a load balancer or a firewall dropping idle flows, between Conveyor and a real Redis.

It runs its own asyncio loop in a thread, so tests on any anyio backend (and worker
subprocesses) can go through it::

    with ResettingProxy(server.port) as proxy:
        url = proxy.url(server.url)          # the same URL, through the proxy's port
        proxy.reset_all()                    # every open connection gets a TCP RST now
        proxy.start_chaos(mean_interval=0.5, seed=1)   # one random connection at a time

A reset is a real RST (``SO_LINGER`` 0, then abort) on both sides, so each end sees
``ECONNRESET`` as it would from a dying peer or a middlebox, not a polite FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


@dataclass
class ProxyStats:
    accepted: int = 0
    resets: int = 0  # connections reset (by reset_all or the chaos loop)
    open: int = 0
    resets_log: list[float] = field(default_factory=list)


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server

    def reset(self) -> None:
        for writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()


class ResettingProxy:
    """Forwards 127.0.0.1:<port> to ``upstream_port``; resets connections when told to."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stats = ProxyStats()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None
        self._chaos: asyncio.Task[None] | None = None
        self.port = 0

    # -- lifetime --

    def __enter__(self) -> Self:
        self._thread.start()
        self._server = self._call(
            asyncio.start_server(self._accept, "127.0.0.1", 0, reuse_address=True)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self.stop_chaos()
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.reset()
        self._pairs.clear()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def url(self, url: str) -> str:
        """``url`` with its port replaced by the proxy's (user, password, query kept)."""
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc[-1] = host
        return urlunsplit(parts._replace(netloc="@".join(netloc)))

    # -- forwarding --

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()  # upstream down: the client sees a reset, as from Redis
            return
        pair = _Pair(writer, up_writer)
        self._pairs.add(pair)
        self.stats.accepted += 1
        self.stats.open = len(self._pairs)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            self.stats.open = len(self._pairs)
            for w in (writer, up_writer):
                w.transport.abort()

    # -- faults --

    def reset_all(self) -> int:
        """Resets every open connection now; returns how many."""
        return self._call(self._reset_all())

    async def _reset_all(self) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            self._reset(pair)
        return len(pairs)

    def _reset(self, pair: _Pair) -> None:
        self._pairs.discard(pair)
        pair.reset()
        self.stats.resets += 1
        self.stats.resets_log.append(self._loop.time())

    def stall(self) -> int:
        """Stops reading from every open client connection (a hung middlebox): what the
        clients send piles up in their socket buffers. New connections are not stalled."""
        return self._call(self._stall())

    async def _stall(self) -> int:
        for pair in self._pairs:
            transport = pair.client.transport
            assert isinstance(transport, asyncio.Transport)  # a socket's: it reads too
            transport.pause_reading()
        return len(self._pairs)

    def start_chaos(self, mean_interval: float, seed: int = 0) -> None:
        """Resets one open connection, chosen at random, every ``mean_interval`` s on average
        (exponential gaps, from ``seed``), until :meth:`stop_chaos`."""
        self._chaos = self._call(self._start_chaos(mean_interval, seed))

    async def _start_chaos(self, mean_interval: float, seed: int) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._chaos_loop(mean_interval, seed))

    async def _chaos_loop(self, mean_interval: float, seed: int) -> None:
        rng = random.Random(seed)
        while True:
            await asyncio.sleep(rng.expovariate(1 / mean_interval))
            if self._pairs:
                self._reset(rng.choice(sorted(self._pairs, key=id)))

    def stop_chaos(self) -> None:
        task, self._chaos = self._chaos, None
        if task is not None:
            self._loop.call_soon_threadsafe(task.cancel)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()  # one side gone: drop the other at once
