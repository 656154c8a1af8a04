"""A taken port is one line for the user, not a traceback; ``conveyor up`` moves off a taken
default port instead of losing its gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import pytest

from conveyor.cli.up import _port
from conveyor.client import Client
from conveyor.errors import ConveyorError, PortUnavailable
from conveyor.gateway.grpc import start_grpc
from conveyor.gateway.server import bind, claim
from conveyor.gateway.service import FleetService


@contextlib.contextmanager
def held_port(reuseport: bool = False) -> Iterator[int]:
    """A port some other program listens on (plain), or another gateway (``SO_REUSEPORT``)."""
    if reuseport:
        sock = bind("127.0.0.1", 0)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_port_unavailable_is_a_conveyor_error_and_an_oserror() -> None:
    error = PortUnavailable("--http-port", 8080, OSError(98, "Address already in use"))
    assert isinstance(error, ConveyorError)
    assert isinstance(error, OSError)


def test_a_taken_port_is_one_actionable_line() -> None:
    with held_port() as port, pytest.raises(PortUnavailable) as caught:
        claim("127.0.0.1", port, "--http-port")
    assert str(caught.value) == (
        f"cannot listen on 127.0.0.1:{port} (--http-port): Address already in use; is another "
        "process using it? Choose another --http-port (0 picks a free one)"
    )


def test_grpcs_failed_bind_is_port_unavailable() -> None:
    """grpc raises a bare RuntimeError ("Failed to bind") for a taken port."""

    async def main() -> None:
        service = FleetService(Client("redis://127.0.0.1:1/0"))  # never connected
        await start_grpc(service, f"127.0.0.1:{port}")

    with held_port() as port, pytest.raises(PortUnavailable) as caught:
        asyncio.run(main())
    assert f"cannot listen on 127.0.0.1:{port} (--grpc-port)" in str(caught.value)


@pytest.mark.parametrize("reuseport", [False, True], ids=["another-program", "another-up"])
def test_up_moves_off_a_taken_default_port_and_says_so(
    reuseport: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A gateway of an earlier `conveyor up` (SO_REUSEPORT) counts as taken: sharing its port
    would send half of the calls to the other fleet."""
    with held_port(reuseport) as port, contextlib.ExitStack() as held:
        picked = _port(held, port, "--http-port", default=port)
        assert picked not in (0, port)
        # the picked port is held for the gateway: bound with SO_REUSEPORT, not listening
        claim("127.0.0.1", picked, "--http-port").close()
    assert capsys.readouterr().out == (
        f"conveyor: port {port} is in use; the gateway takes {picked} (--http-port)\n"
    )


def test_up_keeps_a_free_port_and_refuses_a_taken_chosen_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with contextlib.ExitStack() as held:
        with held_port() as port:
            pass  # free again
        assert _port(held, port, "--grpc-port", default=8081) == port
        with held_port() as port, pytest.raises(PortUnavailable, match="Choose another --grpc"):
            _port(held, port, "--grpc-port", default=8081)
    assert capsys.readouterr().out == ""
