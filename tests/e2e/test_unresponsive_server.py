"""Something that is not a working Redis on the port (issue 11 §3, items 5 and 6).

A server that accepts connections and never answers (a firewall, a wrong port, a hung
proxy), an HTTP server, an http:// URL: every Redis operation ends within a bound, and the
user gets one line naming the server (password hidden) instead of a hang or a traceback.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from conveyor.broker import RedisSettings, create_client, translate_errors
from conveyor.client import Client
from conveyor.errors import BrokerConnectionError
from tests.support.calls import request

SECRET = "hunter2-Zq"
REPO = Path(__file__).parents[2]
MODELS = Path(__file__).parents[1] / "models" / "common"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A server that accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for sock in [*held, listener]:
            sock.close()


@pytest.fixture
def http_port() -> Iterator[int]:
    """An HTTP server (answers every request line with an HTML error page)."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _url(port: int) -> str:
    return f"redis://alice:{SECRET}@127.0.0.1:{port}/0"


# -- the broker's clients ------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize(
    "kind", ["command", "blocking", "reader"], ids=["command", "blocking", "reader"]
)
async def test_every_client_gives_up_on_a_silent_server(silent_port: int, kind: str) -> None:
    """The connection's handshake is bounded by the connect timeout, and not retried. Before:
    a blocking client (no read timeout) waited for ever; a command client ~40 s (4 tries of a
    10 s read timeout)."""
    settings = RedisSettings.from_url(_url(silent_port))
    client = create_client(
        settings, blocking=kind != "command", retry=kind != "reader", max_connections=1
    )
    command = client.ping() if kind == "command" else client.blmpop(1, 1, "bell", direction="RIGHT")
    try:
        with (
            anyio.fail_after(15),
            pytest.raises(BrokerConnectionError, match="handshake") as caught,
            translate_errors(settings),
        ):
            await command
    finally:
        await client.aclose()
    assert f"redis://alice:***@127.0.0.1:{silent_port}/0" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.anyio
async def test_a_call_to_a_silent_server_names_redis(silent_port: int) -> None:
    """Before: "no answer to request ... within 3.0s", as if no worker were running."""
    async with Client(_url(silent_port), timeout=3) as client:
        with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as caught:
            await client.model("echo").predict(request(1.0))
    message = str(caught.value)
    assert f"cannot reach Redis at redis://alice:***@127.0.0.1:{silent_port}/0" in message
    assert SECRET not in message


@pytest.mark.anyio
async def test_a_call_to_an_http_server_is_a_clear_error(http_port: int) -> None:
    """Before: redis-py's raw InvalidResponse ("Protocol error, got "<" ...")."""
    async with Client(_url(http_port), timeout=10) as client:
        with anyio.fail_after(20), pytest.raises(BrokerConnectionError) as caught:
            await client.model("echo").predict(request(1.0))
    assert "not Redis's protocol" in str(caught.value)
    assert f"127.0.0.1:{http_port}" in str(caught.value)


# -- the command line ----------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,  # ours end in ~6 s; before the fix `inspect` took ~40 s (4 tries x 10 s)
        env=env,
        cwd=REPO,
    )


def _error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The command failed with one ``error:`` line (its last), and no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: "), result.stderr
    assert SECRET not in result.stderr + result.stdout
    return last


_DATA = '{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}'


@pytest.mark.parametrize(
    "command",
    [["inspect"], ["worker", str(MODELS / "echo")], ["infer", "echo", "--timeout", "5"]],
    ids=["inspect", "worker", "infer"],
)
def test_commands_against_a_silent_server(silent_port: int, command: list[str]) -> None:
    """Before: `inspect` hung, `worker` loaded its models and hung, `infer` blamed the
    workers. The worker checks Redis before it loads any model."""
    extra = ["--data", _DATA] if command[0] == "infer" else []
    result = _run(*command, *extra, "--redis", _url(silent_port))
    line = _error_line(result)
    assert f"127.0.0.1:{silent_port}" in line
    assert "model.loaded" not in result.stderr


@pytest.mark.parametrize("command", [["inspect"], ["worker", str(MODELS / "echo")]])
def test_commands_against_an_http_server(http_port: int, command: list[str]) -> None:
    result = _run(*command, "--redis", _url(http_port))
    assert "not Redis's protocol" in _error_line(result)


@pytest.mark.parametrize("command", [["inspect"], ["worker", str(MODELS / "echo")]])
def test_an_http_url_is_one_line(command: list[str]) -> None:
    result = _run(*command, "--redis", f"http://alice:{SECRET}@127.0.0.1:8080/")
    assert "scheme 'http' is not one of" in _error_line(result)


@pytest.mark.parametrize("command", [["inspect"], ["worker", str(MODELS / "echo")]])
def test_a_password_with_a_question_mark_never_shows(command: list[str]) -> None:
    """Issue 12 §6: `redact_url` split at "?" before finding "@" and printed the password."""
    result = _run(*command, "--redis", f"redis://u:{SECRET}?k9@127.0.0.1:6399/0")
    assert "percent-encode" in _error_line(result)  # _error_line checks the secret is absent


def test_a_client_with_such_a_url_never_shows_the_password() -> None:
    with pytest.raises(ValueError, match="percent-encode") as caught:
        Client(f"redis://u:{SECRET}?k9@127.0.0.1:6399/0")
    assert SECRET not in str(caught.value)
