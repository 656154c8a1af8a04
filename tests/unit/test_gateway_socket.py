"""The gateway's listening socket: shared by its processes, and answers sent at once."""

from __future__ import annotations

import asyncio
import socket

from conveyor.gateway.server import bind


def test_accepted_connections_send_without_delay() -> None:
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP; without it
    a keep-alive client waited ~40 ms for each answer written in two parts (measured)."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    nodelay: list[int] = []

    async def main() -> None:
        accepted_one = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted = writer.get_extra_info("socket")
            nodelay.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            accepted_one.set()
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(10):
                await accepted_one.wait()
            writer.close()

    asyncio.run(main())
    assert nodelay == [1]


def test_two_processes_may_bind_one_port() -> None:
    first = bind("127.0.0.1", 0)
    second = bind("127.0.0.1", first.getsockname()[1])  # SO_REUSEPORT: no EADDRINUSE
    assert second.getsockname() == first.getsockname()
    first.close()
    second.close()
