"""broker/fastpath.py and broker/fastpipe.py against redis-py's own path, in the failures a
fleet meets.

Each scenario runs twice on a private Redis: once with Conveyor's shortcuts (pool checkout,
direct write, hiredis packing, a lone command outside a pipeline, a plain pipeline's round
trip) and once with redis-py's
own classes (``CONVEYOR_REDIS_FAST_PATHS=0``). Both must give the same outcome, and that
outcome must be the right one: a connection the server closed is dropped and the command
answered, with no error.

The corrections in the same module (a retry that gives up on what cannot succeed, a bounded
handshake) are on for both paths: their tests count what reaches the server. The last tests
check that every redis-py internal the module head lists is still there.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import hiredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import exceptions as rex
from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.retry import Retry as SyncRetry

from conveyor.broker import RedisSettings, create_client, create_sync_client, fastpath, fastpipe
from conveyor.broker.pipelining import PipelineBatcher
from conveyor.embedded import RedisServer
from tests.support.proxy import ResettingProxy

pytestmark = pytest.mark.timeout(60)

ServerFactory = Callable[..., RedisServer]
Scenario = Callable[[Redis, RedisServer], Awaitable[list[Any]]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio itself (trio reaches it through the bridge, tested apart)


def test_the_installed_redis_py_was_checked() -> None:
    """pyproject.toml pins redis to the versions fastpath.py was checked on."""
    assert redis.__version__ in fastpath.CHECKED_REDIS
    assert fastpath.fast_paths_enabled()


def _client(url: str, fast: bool, monkeypatch: pytest.MonkeyPatch, **update: Any) -> Redis:
    monkeypatch.setenv("CONVEYOR_REDIS_FAST_PATHS", "1" if fast else "0")
    settings = RedisSettings.from_url(url).model_copy(update={"client_name": "probe", **update})
    client = create_client(settings, max_connections=4)
    assert isinstance(client.connection_pool, fastpath.FastPool) is fast
    assert (type(client.connection_pool) is BlockingConnectionPool) is not fast
    return client


async def _outcome(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except Exception as error:  # the outcome compared is the error's type
        return type(error).__name__


async def _both(
    url: str,
    server: RedisServer,
    scenario: Scenario,
    monkeypatch: pytest.MonkeyPatch,
    **update: Any,
) -> tuple[list[Any], list[Any]]:
    outcomes = []
    for fast in (True, False):
        client = _client(url, fast, monkeypatch, **update)
        try:
            await client.delete("k", "n")  # each run starts afresh
            outcomes.append(await scenario(client, server))
        finally:
            await client.aclose()
    return outcomes[0], outcomes[1]


async def _ping(client: Redis) -> None:
    await client.ping()


async def _warm(client: Redis) -> None:
    """Leaves two idle connections in the pool (two concurrent commands open them)."""
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(_ping, client)
    assert len(client.connection_pool._available_connections) == 2


async def _commands(client: Redis) -> list[Any]:
    """What a client does next: plain commands, a pipeline, the batcher's lone command and
    its pipeline of two (fastpipe on the fast path)."""
    pipe = client.pipeline(transaction=False)
    pipe.set("k", b"v")
    pipe.get("k")
    batcher = PipelineBatcher(client)
    return [
        await _outcome(client.ping()),
        await _outcome(client.ping()),
        await _outcome(pipe.execute()),
        await _outcome(batcher.run(lambda p: p.incr("n"))),
        await _outcome(batcher.run(lambda p: (p.incr("n"), p.get("k")))),
    ]


async def _client_kill(client: Redis, server: RedisServer) -> list[Any]:
    await _warm(client)
    async with Redis.from_url(server.url) as admin:
        assert await admin.client_kill_filter(_type="normal", skipme=True) == 2
        await _wait_gone(admin)
    return await _commands(client)


async def _wait_gone(admin: Redis) -> None:
    # No event tells when Redis has closed a connection: poll CLIENT LIST under a deadline.
    with anyio.fail_after(10):
        while any(c.get("name") == "probe" for c in await admin.client_list()):  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def _wait_seen(client: Redis) -> None:
    """Until the client's loop has seen every idle connection closed (EOF or reset), so the
    next checkout meets a dead connection rather than racing the news."""

    def closed(conn: Any) -> bool:
        reader = conn._reader
        return reader is None or reader.at_eof() or reader.exception() is not None

    # The loop sees a FIN or RST on its next poll; no event tells us when: poll (bounded).
    with anyio.fail_after(5):
        while not all(map(closed, client.connection_pool._available_connections)):  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_idle_connections_killed_by_the_server(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CLIENT KILL TYPE normal on an idle pool: the next commands reconnect and succeed
    (before the fix the fast checkout handed out the dead connection: every try failed)."""
    server = redis_server_factory()
    fast, own = await _both(server.url, server, _client_kill, monkeypatch)
    assert fast == own == [True, True, [True, b"v"], [1], [2, b"v"]]


async def _idle_timeout(client: Redis, server: RedisServer) -> list[Any]:
    async with Redis.from_url(server.url) as admin:
        await admin.config_set("timeout", 1)
        try:
            await _warm(client)
            await _wait_gone(admin)  # Redis closed both idle connections after ~1 s
        finally:
            await admin.config_set("timeout", 0)
    await _wait_seen(client)
    return await _commands(client)


@pytest.mark.anyio
async def test_idle_connections_closed_by_the_server_timeout(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory()
    fast, own = await _both(server.url, server, _idle_timeout, monkeypatch)
    assert fast == own == [True, True, [True, b"v"], [1], [2, b"v"]]


async def _restart(client: Redis, server: RedisServer) -> list[Any]:
    await _warm(client)
    await anyio.to_thread.run_sync(server.kill)
    await _wait_seen(client)
    down = [await _outcome(client.ping()), await _outcome(client.get("k"))]
    await anyio.to_thread.run_sync(server.start)
    return down + await _commands(client)


@pytest.mark.anyio
async def test_a_redis_restart_with_an_outage(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Redis is down both paths fail with redis-py's ConnectionError (after its
    retries); once it is back, both reconnect."""
    server = redis_server_factory()
    fast, own = await _both(server.url, server, _restart, monkeypatch)
    down = ["ConnectionError", "ConnectionError"]
    assert fast == own == [*down, True, True, [True, b"v"], [1], [2, b"v"]]


@pytest.mark.anyio
async def test_connections_reset_by_a_middlebox(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy resets (RST) every idle connection: both paths reconnect."""
    server = redis_server_factory()
    with ResettingProxy(server.port) as proxy:

        async def scenario(client: Redis, server: RedisServer) -> list[Any]:
            await _warm(client)
            assert await anyio.to_thread.run_sync(proxy.reset_all) == 2
            await _wait_seen(client)
            return await _commands(client)

        fast, own = await _both(proxy.url(server.url), server, scenario, monkeypatch)
    assert fast == own == [True, True, [True, b"v"], [1], [2, b"v"]]


@pytest.mark.anyio
async def test_a_connection_reset_while_a_command_is_on_the_wire(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resets in the middle of commands: redis-py's retry re-sends, on both paths, and every
    command gets its own answer."""
    server = redis_server_factory()
    with ResettingProxy(server.port) as proxy:

        async def scenario(client: Redis, server: RedisServer) -> list[Any]:
            answers: list[Any] = []

            async def one(i: int) -> None:
                answers.append(await _outcome(client.echo(f"m{i}")))

            proxy.start_chaos(mean_interval=0.02, seed=7)
            try:
                for start in range(0, 200, 20):
                    async with anyio.create_task_group() as tg:
                        for i in range(start, start + 20):
                            tg.start_soon(one, i)
            finally:
                proxy.stop_chaos()
            return sorted(map(str, answers))

        # Every reset costs the command on it one try (connect, handshake, command again).
        # On a loaded host redis-py's own, slower path met four resets in a row for one
        # command, more than the default 3 retries: compare the paths, not the dice.
        fast, own = await _both(proxy.url(server.url), server, scenario, monkeypatch, retries=10)
    expected = sorted(str(f"m{i}".encode()) for i in range(200))
    assert fast == own == expected


@pytest.mark.anyio
async def test_a_write_that_does_not_drain_times_out(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct write waits for a backlog within the socket timeout, as redis-py's
    wait_for does: a peer that stops reading fails the command with TimeoutError, the
    connection is dropped, and the next command gets a fresh one."""
    server = redis_server_factory()
    with ResettingProxy(server.port) as proxy:

        async def scenario(client: Redis, server: RedisServer) -> list[Any]:
            await client.ping()
            assert await anyio.to_thread.run_sync(proxy.stall) >= 1
            big = b"x" * (64 << 20)  # far more than the socket buffers hold
            return [await _outcome(client.set("big", big)), await _outcome(client.ping())]

        outcomes = []
        for fast in (True, False):
            client = _client(
                proxy.url(server.url), fast, monkeypatch, socket_timeout=0.5, retries=0
            )
            try:
                outcomes.append(await scenario(client, server))
            finally:
                await client.aclose()
    assert outcomes[0] == outcomes[1] == ["TimeoutError", True]


async def _dirty(client: Redis, server: RedisServer) -> list[Any]:
    """A connection given back with an unread reply (a cancelled command, say)."""
    pool = client.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    await conn.send_command("ECHO", "stale")
    with anyio.fail_after(5):
        # No event says the reply has arrived in the buffer: poll can_read under a deadline.
        while not await conn.can_read():  # noqa: ASYNC110
            await anyio.sleep(0.01)
    await pool.release(conn)
    return [await client.echo("fresh")]


@pytest.mark.anyio
async def test_a_connection_with_unread_data_is_not_reused_as_is(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory()
    fast, own = await _both(server.url, server, _dirty, monkeypatch)
    assert fast == own == [b"fresh"]


async def _replies(client: Redis, server: RedisServer) -> list[Any]:
    """A pipeline whose replies come together (the second on are read from the buffer):
    values, error replies among them, a reply too big for one socket read, then the
    connection's next command."""
    pipe = client.pipeline(transaction=False)
    pipe.set("k", b"v")
    pipe.incr("k")  # an error reply: ERR value is not an integer
    pipe.set("n", b"x" * 200_000, get=True)
    pipe.get("n")
    pipe.lpush("k", b"a")  # WRONGTYPE
    pipe.get("k")
    replies = await pipe.execute(raise_on_error=False)
    outcomes = [type(r).__name__ if isinstance(r, Exception) else r for r in replies]
    outcomes[3] = len(outcomes[3])
    async with client.client() as single:  # one connection: the same one each time
        for _ in range(3):
            await single.set("k", b"w")
        outcomes.append(await _outcome(single.lpush("k", b"a")))
        outcomes.append(await single.get("k"))
    return outcomes


@pytest.mark.anyio
async def test_replies_read_from_the_buffer_are_redis_pys(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply already whole in the parser's buffer is read without redis-py's timeout: the
    values and errors are the same as redis-py's own read."""
    server = redis_server_factory()
    fast, own = await _both(server.url, server, _replies, monkeypatch)
    assert fast == own
    first = [True, "ResponseError", None, 200_000, "ResponseError", b"v"]
    assert fast == [*first, "ResponseError", b"w"]


@pytest.mark.anyio
async def test_a_blocking_client_killed_while_idle(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's and the reader's clients (blocking=True, retry off for the reader)."""
    server = redis_server_factory()
    outcomes = []
    for fast in (True, False):
        monkeypatch.setenv("CONVEYOR_REDIS_FAST_PATHS", "1" if fast else "0")
        settings = RedisSettings.from_url(server.url).model_copy(update={"client_name": "probe"})
        client = create_client(settings, blocking=True, max_connections=1, retry=False)
        try:
            await client.blmpop(0.01, 1, "bell", direction="RIGHT")
            async with Redis.from_url(server.url) as admin:
                await admin.client_kill_filter(_type="normal", skipme=True)
                await _wait_gone(admin)
                await admin.lpush("bell", b"x")
            outcomes.append(await _outcome(client.blmpop(1, 1, "bell", direction="RIGHT")))
        finally:
            await client.aclose()
    assert outcomes[0] == outcomes[1] == [b"bell", [b"x"]]


# -- packing ------------------------------------------------------------------------------------

_arg = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.binary(min_size=5990, max_size=6010),
    st.binary(max_size=16).map(lambda b: memoryview(b)),
)


def _redis_py_packing(args: tuple[Any, ...]) -> list[bytes]:
    return list(AsyncConnection().pack_command(*args))


@given(st.sampled_from(["XADD", "SET", b"HSET", "XINFO GROUPS", b"CLIENT LIST"]), st.lists(_arg))
@settings(max_examples=300, deadline=None)
def test_hiredis_packing_sends_the_bytes_redis_py_would(head: Any, rest: list[Any]) -> None:
    args = (head, *rest)
    ours = fastpath.FastConnection().pack_command(*args)
    theirs = _redis_py_packing(args)
    assert b"".join(map(bytes, ours)) == b"".join(map(bytes, theirs))
    for arg in rest:  # a tensor goes out as a chunk of its own, uncopied
        if isinstance(arg, memoryview):
            assert any(chunk is arg for chunk in ours)


@pytest.mark.parametrize("bad", [True, None, object()])
def test_packing_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(rex.DataError):
        fastpath.FastConnection().pack_command("SET", "k", bad)
    with pytest.raises(TypeError):
        # hiredis' stub types the command as a 1-tuple (it takes any length)
        hiredis.pack_command(("SET", "k", bad))  # type: ignore[arg-type]


def test_lone_command_sees_one_command_only() -> None:
    client = Redis()
    pipe = client.pipeline(transaction=False)
    assert fastpath.lone_command(pipe) is None
    pipe.set("k", b"v")
    assert fastpath.lone_command(pipe) == (("SET", "k", b"v"), {})
    pipe.get("k")
    assert fastpath.lone_command(pipe) is None


# -- the corrections (always on, on both paths) and the internals the module head lists -------


def test_every_internal_the_head_lists_is_there() -> None:
    """fastpath.py's head lists each redis-py internal the project touches: each must still
    exist, with the shape relied on, on the redis-py installed (a checked version)."""
    pool = BlockingConnectionPool(max_connections=1)
    for name in (
        "_available_connections",
        "_in_use_connections",
        "_in_maintenance",
        "_lock",
        "_condition",
        "connection_kwargs",
        "connection_class",
    ):
        assert hasattr(pool, name), name
    assert isinstance(pool._available_connections, list)
    assert isinstance(pool._in_use_connections, set)
    assert hasattr(pool._condition, "_waiters")
    connection = AsyncConnection()
    for name in (
        "_writer",
        "is_connected",
        "socket_timeout",
        "socket_connect_timeout",
        "redis_connect_func",
        "can_read",
        "check_health",
        "should_reconnect",
        "disconnect",
        "on_connect_check_health",
        "protocol",
        "health_check_interval",
        "_parser",
    ):
        assert hasattr(connection, name), name
    assert list(inspect.signature(connection.read_response).parameters) == [
        "disable_decoding",
        "timeout",
        "disconnect_on_error",
        "push_request",
    ]
    parser = _AsyncHiredisParser(1024)
    parser.on_connect(connection)  # type: ignore[no-untyped-call]
    assert parser._connected
    assert parser._reader is not None
    assert parser._reader.gets() is NOT_ENOUGH_DATA
    parser.on_disconnect()
    assert not parser._connected
    assert "check_health" in inspect.signature(connection.on_connect_check_health).parameters
    assert "nowait" in inspect.signature(connection.disconnect).parameters
    pipe = Redis().pipeline(transaction=False)
    assert pipe.command_stack == []
    # fastpipe.py's reads of a pipeline, its connection and redis-py's reply options
    for name in (
        "connection_pool",
        "connection",
        "is_transaction",
        "explicit_transaction",
        "watching",
        "scripts",
        "response_callbacks",
        "parse_response",
        "raise_first_error",
        "reset",
        "UNWATCH_COMMANDS",
    ):
        assert hasattr(pipe, name), name
    assert "WATCH" not in Pipeline.UNWATCH_COMMANDS
    for name in ("retry", "pack_commands", "himport_registry"):
        assert hasattr(connection, name), name
    if redis.__version__ == "8.1.0":
        # 8.1 has no RESP2 fallback flag: fastpipe reads its absence as "parse every reply
        # through redis-py's own parse_response" (found by CI's lowest-versions run)
        assert not hasattr(connection, "_resp2_fallback")
    else:
        assert connection._resp2_fallback is False
    registry = Redis().connection_pool.make_connection().himport_registry
    assert registry is not None
    assert registry.revision == 0  # nothing ever registered
    assert {"error", "failure_count"} <= set(inspect.signature(connection.disconnect).parameters)
    assert (EMPTY_RESPONSE, NEVER_DECODE) == ("EMPTY_RESPONSE", "NEVER_DECODE")
    for retry in (AsyncRetry, SyncRetry):
        assert list(inspect.signature(retry.call_with_retry).parameters) == [
            "self",
            "do",
            "fail",
            "is_retryable",
            "with_failure_count",
        ]


def _denied_auths(server: RedisServer) -> int:
    """AUTH refusals so far: ACL LOG keeps one entry per client and counts its repeats."""
    with redis.Redis.from_url(server.url) as admin:
        return sum(int(entry["count"]) for entry in admin.acl_log() if entry["reason"] == "auth")


@pytest.mark.anyio
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "own"])
async def test_a_refused_password_is_sent_once(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """fastpath.Retry and SyncRetry: a wrong password fails the same way every time, so AUTH
    is sent once, not ``retries + 1`` times, by the async and the sync client. The server
    counts the refusals; redis-py's own Retry, for contrast, re-sends it."""
    monkeypatch.setenv("CONVEYOR_REDIS_FAST_PATHS", "1" if fast else "0")
    server = redis_server_factory(password="right-pw")
    wrong = RedisSettings.from_url(server.url.replace("right-pw", "wrong-pw"))
    assert wrong.retries == 3
    before = _denied_auths(server)

    client = create_client(wrong)
    try:
        with pytest.raises(rex.AuthenticationError):
            await client.ping()
    finally:
        await client.aclose()
    assert _denied_auths(server) == before + 1

    sync = create_sync_client(wrong)
    try:
        with pytest.raises(rex.AuthenticationError):
            await anyio.to_thread.run_sync(sync.ping)
    finally:
        sync.close()
    assert _denied_auths(server) == before + 2

    plain = Redis.from_url(  # redis-py's own Retry: the correction is what makes it once
        wrong.to_url(), retry=AsyncRetry(NoBackoff(), 3), protocol=2
    )
    try:
        with pytest.raises(rex.AuthenticationError):
            await plain.ping()
    finally:
        await plain.aclose()
    assert _denied_auths(server) == before + 2 + 4


@pytest.mark.anyio
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "own"])
async def test_a_silent_handshake_is_bounded_tried_once_and_leaves_no_socket(
    monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """fastpath.bounded_handshake: a server that accepts and never answers fails the
    handshake (AUTH) at the connect timeout, where redis-py would wait the blocking client's
    read timeout (35 s here) per try; it is not retried, and redis-py's connect path drops
    the half-open connection (it disconnects on any RedisError its connect callback raises)."""
    monkeypatch.setenv("CONVEYOR_REDIS_FAST_PATHS", "1" if fast else "0")
    accepted: list[asyncio.StreamWriter] = []
    closed: list[bytes] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        closed.append(await reader.read())  # all the client sends, until it closes; no answer

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    settings = RedisSettings.from_url(
        f"redis://:pw@127.0.0.1:{port}/0?socket_connect_timeout=0.3&socket_timeout=30&retries=3"
    )
    client = create_client(settings, blocking=True)
    try:
        with pytest.raises(fastpath.HandshakeTimeout, match=r"handshake within 0\.3s"):
            await client.ping()
        assert len(accepted) == 1  # one try: not retried
        pool = client.connection_pool
        assert not pool._in_use_connections
        assert not any(c.is_connected for c in pool._available_connections)
        with anyio.fail_after(5):  # the server side sees the client close it
            while not closed:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert closed[0].startswith(b"*2\r\n$4\r\nAUTH\r\n")
    finally:
        await client.aclose()
        listener.close()
        for writer in accepted:
            writer.close()


# -- pipelines (fastpipe) -----------------------------------------------------------------------


async def _pipelines(client: Redis, server: RedisServer) -> list[Any]:
    """Pipelines through fastpipe.execute: replies with their callbacks applied, error replies
    handed back or raised (annotated as redis-py annotates them), a transaction (redis-py's
    own path on both), then the connection's next command."""
    pipe = client.pipeline(transaction=False)
    pipe.set("k", b"v")
    pipe.expire("k", 100)  # a callback: 1 -> True
    pipe.incr("k")  # ERR value is not an integer
    pipe.xadd("s", {"f": b"v"}, id="1-0")
    pipe.xrange("s")  # a callback: nested lists -> tuples
    outcomes: list[Any] = list(await fastpipe.execute(pipe, raise_on_error=False))
    outcomes[2] = type(outcomes[2]).__name__
    pipe.get("k")
    pipe.incr("k")
    outcomes.append(await _outcome_text(fastpipe.execute(pipe)))
    multi = client.pipeline(transaction=True)
    multi.incr("n")
    multi.incr("n")
    outcomes.append(await fastpipe.execute(multi))
    outcomes.append(await client.get("k"))
    return outcomes


async def _outcome_text(call: Awaitable[Any]) -> Any:
    try:
        return await call
    except Exception as error:
        return f"{type(error).__name__}: {error}"


@pytest.mark.anyio
async def test_pipelines_through_the_shortcut_are_redis_pys(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_server_factory()

    async def scenario(client: Redis, server: RedisServer) -> list[Any]:
        await client.delete("s")
        return await _pipelines(client, server)

    fast, own = await _both(server.url, server, scenario, monkeypatch)
    assert fast == own
    assert fast[:2] == [True, True]
    assert fast[2] == "ResponseError"
    assert fast[4] == [(b"1-0", {b"f": b"v"})]
    assert fast[5].startswith("ResponseError: Command # 2 (INCRBY k 1) of pipeline caused error")
    assert fast[6:] == [[1, 2], b"v"]


@pytest.mark.anyio
async def test_a_pipeline_cancelled_with_its_replies_on_the_wire_spoils_no_later_command(
    redis_server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while Redis blocks on it: the connection goes, so its late reply is never
    read as another command's."""
    server = redis_server_factory()

    async def scenario(client: Redis, server: RedisServer) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.echo("first")
        pipe.blmpop(0.5, 1, "empty", direction="RIGHT")
        with anyio.move_on_after(0.1):
            await fastpipe.execute(pipe)
        return [
            await client.echo("after"),
            await client.echo("and after"),
            len(client.connection_pool._in_use_connections),
        ]

    fast, own = await _both(server.url, server, scenario, monkeypatch)
    assert fast == own == [b"after", b"and after", 0]


def test_the_shortcut_takes_plain_pipelines_only() -> None:
    client = Redis(connection_pool=fastpath.FastPool())
    pipe = client.pipeline(transaction=False)
    assert not fastpipe.plain(pipe)  # nothing to send
    pipe.set("k", b"v")
    assert fastpipe.plain(pipe)
    multi = client.pipeline(transaction=True)
    multi.set("k", b"v")
    assert not fastpipe.plain(multi)
    own_pool = Redis().pipeline(transaction=False)
    own_pool.set("k", b"v")
    assert not fastpipe.plain(own_pool)
    cluster = RedisCluster(host="127.0.0.1", port=1).pipeline()  # never connects
    cluster.set("k", b"v")
    assert not fastpipe.plain(cluster)  # type: ignore[arg-type]  # as the batcher may hold
    long = client.pipeline(transaction=False)
    for _ in range(fastpipe.MAX_COMMANDS + 1):
        long.get("k")
    assert not fastpipe.plain(long)
