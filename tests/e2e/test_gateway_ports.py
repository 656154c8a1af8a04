"""``conveyor gateway`` and ``conveyor up`` on a taken port: one ``error:`` line, exit code 1,
nothing left running (a held socket plays the other program)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

UNREACHABLE = "redis://127.0.0.1:1/0"  # the port fails first: Redis is never asked


@pytest.fixture
def taken() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    yield sock.getsockname()[1]
    sock.close()


def _error_line(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("option", ["--http-port", "--grpc-port"])
def test_gateway_on_a_taken_port_is_one_line(taken: int, option: str, workers: str) -> None:
    other = "--grpc-port" if option == "--http-port" else "--http-port"
    line = _error_line(
        *("gateway", "--redis", UNREACHABLE, option, str(taken), other, "0"),
        *("--workers", workers),
    )
    assert line == (
        f"error: cannot listen on 127.0.0.1:{taken} ({option}): Address already in use; is "
        f"another process using it? Choose another {option} (0 picks a free one)"
    )


@pytest.mark.timeout(60)
def test_up_on_a_taken_chosen_port_is_one_line(taken: int) -> None:
    line = _error_line(
        *("up", "examples/models", "--redis", UNREACHABLE),
        *("--http-port", str(taken), "--grpc-port", "0"),
    )
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{taken} (--http-port)"), line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_gateway_on_a_taken_metrics_port_is_one_line(taken: int, workers: str) -> None:
    line = _error_line(
        *("gateway", "--redis", UNREACHABLE, "--metrics-port", str(taken)),
        *("--http-port", "0", "--grpc-port", "0", "--workers", workers),
    )
    assert line.startswith(f"error: cannot listen on 127.0.0.1:{taken} (--metrics-port)"), line
