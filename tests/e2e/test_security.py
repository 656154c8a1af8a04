"""Security, end to end: an ACL user held to its prefix, passwords, TLS, and nothing read from
Redis unpickled or run unless the model exposes it.

Each test starts a private Redis (``redis_server_factory``) and real worker subprocesses; the
client runs in-process, on asyncio (the tests also drive redis.asyncio directly). Workers get
the Redis URL, password included, from ``CONVEYOR_REDIS_URL``, never on their command line,
as README advises: any local user can read a command line with ``ps``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker import RedisSettings, create_client, ping, translate_errors
from conveyor.broker.client_streams import ClientStreams
from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, encode_job
from conveyor.broker.worker_streams import WorkerStreams
from conveyor.client import Client
from conveyor.embedded import LOOPBACK, RedisServer, RedisStartError, TLSFiles
from conveyor.errors import (
    BrokerConnectionError,
    DeadlineExceeded,
    MethodNotAllowed,
    NoWorkerError,
)
from conveyor.types import InferenceRequest, InferenceResponse, Parameters, RequestInput
from tests.support.fleet import MODELS, WorkerProcess
from tests.support.tls import openssl_tls_files

pytestmark = pytest.mark.timeout(60)

ServerFactory = Callable[..., RedisServer]

ECHO = MODELS / "echo"
GUARDED = Path(__file__).parents[1] / "models" / "security" / "guarded"
DEVICE = Path(__file__).parents[1] / "models" / "device"  # batched (broker.waiting_jobs)

SECRET = "Zq7/s3cr@t:pw"  # must be percent-encoded in a URL: neither form may ever show
WRONG = "Wr0ng-guess-41"  # a mistyped password is a secret too (often a near miss)
ADMIN_SECRET = "admin-Kx9-pw"
USER = "conveyor"

# Every command a worker or a client sends (through the broker, and worker/heartbeat.py;
# redis-py's connect sends AUTH, which needs no permission). README
# documents the ACL line built from it; the first test checks it is complete and minimal.
COMMANDS = (
    "ping",  # connection.ping(), and health checks of a connection idle 30 s
    "client|setname",  # the Client names its connections; redis-py fails the connect without it
    "xadd",
    "xreadgroup",
    "xread",
    "xack",
    "xdel",
    "xgroup|create",
    "xinfo|groups",  # the client's "did a worker take the job?" at a timeout
    "xpending",
    "xclaim",  # the heartbeat's claim refresh, and reclaiming a dead worker's jobs
    "xrevrange",
    "xrange",  # the client's check, after a Redis outage, that its jobs are still there
    "expire",
    "pexpire",
    "lpush",
    "blmpop",
    "unlink",
    "del",
    "hset",
    "hget",  # the client reads a model's published queue limit
    "hdel",  # a worker clears the queue limit of a model that has none
    "zadd",
    "zrem",
    "zrange",  # a client's first call to a model nobody serves yet: which models are served?
    "zrangebyscore",  # the heartbeat forgets workers gone for long (and not alive after all)
    "exists",  # is a job's or a consumer's owner still alive?
    "time",  # the heartbeat reads Redis's clock: job deadlines are measured on it
    "xinfo|consumers",  # consumers of dead workers are deleted once they own nothing ...
    "xgroup|delconsumer",  # ... and a stopping worker's own
    # A starting worker makes its consumer, so busy workers see it has room (waiting_jobs)
    "xgroup|createconsumer",
    "set",  # a worker claims a request for one copy of its job (SET NX GET): one run
    "xtrim",  # the client deletes what it read of a predict_stream's reply stream
    # A busy batched model takes its next batch only of jobs no idle worker waits for: one
    # script per look (broker.waiting_jobs), sent by its hash, loaded once per server.
    "evalsha",
    "script|load",
)
# redis-py sends CLIENT SETINFO on connect (Redis >= 7.2) and ignores a refusal.
TOLERATED_REFUSALS = frozenset({"client|setinfo"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio, used by these tests directly, runs on asyncio only


def acl_user_line(prefix: str, commands: Sequence[str] = COMMANDS) -> str:
    """The ACL file line of a user that can run Conveyor under ``prefix`` and nothing else."""
    rules = ["on", f">{SECRET}", "resetkeys", f"~{prefix}:*", "resetchannels", "-@all"]
    return " ".join(["user", USER, *rules, *(f"+{command}" for command in commands)])


def user_url(port: int, password: str = SECRET) -> str:
    return f"redis://{USER}:{quote(password, safe='')}@{LOOPBACK}:{port}/0"


def start_acl_server(
    factory: ServerFactory, directory: Path, prefix: str, commands: Sequence[str] = COMMANDS
) -> RedisServer:
    """A server whose default user is off: ``admin`` may do anything, ``conveyor`` is held
    to ``acl_user_line(prefix, commands)``."""
    acl = directory / "users.acl"
    acl.touch(mode=0o600)
    lines = [
        "user default off",
        f"user admin on >{ADMIN_SECRET} ~* &* +@all",
        acl_user_line(prefix, commands),
    ]
    acl.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return factory(args=["--aclfile", str(acl)])


def admin_of(server: RedisServer) -> redis.Redis:
    return redis.Redis(
        host=LOOPBACK,
        port=server.port,
        username="admin",
        password=ADMIN_SECRET,
        protocol=2,
        decode_responses=True,
        socket_timeout=5,
    )


def refusals(server: RedisServer) -> set[str]:
    """The commands Redis refused the ``conveyor`` user (its ACL LOG), but the tolerated."""
    admin = admin_of(server)
    try:
        log = admin.acl_log()
    finally:
        admin.close()
    return {str(e["object"]) for e in log if e["username"] == USER} - TOLERATED_REFUSALS


def assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret shows in: {text}"
        assert quote(secret, safe="") not in text, f"a percent-encoded secret shows in: {text}"


def exception_texts(error: BaseException) -> list[str]:
    """``str`` and ``repr`` of an exception and of every cause and context behind it."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current)]
        current = current.__cause__ or current.__context__
    return texts


def tensor_request(data: object, **params: object) -> InferenceRequest:
    array = np.asarray(data, dtype=np.float32)
    return InferenceRequest(
        parameters=Parameters(**params) if params else None,
        inputs=[RequestInput(name="x", shape=list(array.shape), datatype="FP32", data=array)],
    )


def values(response: InferenceResponse) -> list[float]:
    return [float(v) for v in np.asarray(response.outputs[0].data.root).ravel()]


async def numbered(count: int) -> AsyncIterator[InferenceRequest]:
    for i in range(count):
        yield tensor_request([float(i)])


async def exercise_echo(url: str, prefix: str) -> None:
    """predict, predict_stream and metadata of the ``echo`` model, as a client of ``url``."""
    async with Client(url, prefix=prefix, timeout=20) as client:
        echo = client.model("echo")
        assert values(await echo.predict(tensor_request([1.0, 2.0]))) == [1.0, 2.0]
        chunks = [values(chunk)[0] async for chunk in echo.predict_stream(numbered(3))]
        assert chunks == [0.0, 1.0, 2.0]
        assert (await echo.metadata()).name == "echo"


async def exercise_batches(url: str, prefix: str) -> None:
    """Three batches' worth of single-row calls at once to the batched ``device`` model: while
    one batch runs, its worker looks for the next one in the stream (broker.waiting_jobs)."""
    async with Client(url, prefix=prefix, timeout=20) as client:
        device = client.model("device")
        answers: list[InferenceResponse] = []

        async def call(i: int) -> None:
            answers.append(await device.predict(tensor_request([[float(i)]])))

        async with anyio.create_task_group() as tg:
            for i in range(96):
                tg.start_soon(call, i)
        assert len(answers) == 96


class Workers:
    """``conveyor worker`` subprocesses of one test; the fixture stops them all at its end."""

    def __init__(self, prefix: str, markers: Path) -> None:
        self.prefix = prefix
        self.markers = markers  # where the guarded test model records the calls it got
        self.started: list[WorkerProcess] = []

    def start(
        self,
        url: str,
        *model_dirs: Path,
        prefix: str | None = None,
        extra: Sequence[str] = (),
        log_level: str = "info",
        wait: bool = True,
    ) -> WorkerProcess:
        """Starts a worker of ``model_dirs`` (default: echo) on ``url``, passed in the
        environment; waits for its ``worker.started`` line unless ``wait`` is false."""
        argv = [sys.executable, "-m", "conveyor.cli", "worker", *map(str, model_dirs or [ECHO])]
        argv += ["--prefix", prefix or self.prefix, "--heartbeat-ttl", "3"]
        argv += ["--log-level", log_level, *extra]
        env = dict(os.environ, CONVEYOR_REDIS_URL=url, CONVEYOR_TEST_MARKERS=str(self.markers))
        worker = WorkerProcess(argv, env)
        self.started.append(worker)
        if wait:
            worker.wait_for_log("worker.started")
        return worker

    def stop(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(prefix: str, tmp_path: Path) -> Iterator[Workers]:
    markers = tmp_path / "markers"
    markers.mkdir()
    started = Workers(prefix, markers)
    yield started
    started.stop()


async def exit_code(worker: WorkerProcess, timeout: float = 20.0) -> int:
    """Waits for the worker to exit and for all its output to be read; its exit code."""
    code = await anyio.to_thread.run_sync(worker.wait, timeout)
    await anyio.to_thread.run_sync(worker.wait_for_log, "<eof>", 5.0)
    return code


# -- 1. an ACL user held to its prefix ------------------------------------------------------


@pytest.mark.anyio
async def test_acl_user_held_to_its_prefix_serves_every_call(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tmp_path: Path
) -> None:
    server = start_acl_server(redis_server_factory, tmp_path, prefix)
    url = user_url(server.port)
    assert await ping(RedisSettings.from_url(url)) >= 0
    worker = workers.start(url, ECHO, DEVICE)
    await exercise_echo(url, prefix)
    await exercise_batches(url, prefix)
    async with Client(url, prefix=prefix, timeout=20) as client:
        echo = client.model("echo")
        # a job longer than the heartbeat's period (ttl / 3 = 1 s): its claim is refreshed
        assert values(await echo.predict(tensor_request([5.0], sleep=1.5))) == [5.0]
        assert await echo.call("add", 2, b=3) == {"sum": 5}
        assert await echo.unload() is True  # the control stream, and its reply
        assert await echo.load() is True
        assert values(await echo.predict(tensor_request([6.0]))) == [6.0]
        # at the timeout the client asks the consumer group whether a worker took the job
        with pytest.raises(NoWorkerError):
            await client.model("nobody").predict(tensor_request([0.0]), timeout=0.5)
    worker.signal(signal.SIGTERM)  # and the worker unregisters itself
    assert await exit_code(worker) == 0
    # Two paths a healthy run does not take, as the same user: a worker reclaiming a dead
    # worker's job (XPENDING, EXISTS, XCLAIM), and a client back after a Redis outage
    # checking that its jobs are still queued (XRANGE).
    keys = Keys(prefix)
    stream = keys.jobs("echo")
    redis_user = create_client(RedisSettings.from_url(url))
    try:
        entry = await redis_user.xadd(stream, {"f": "v"})
        assert isinstance(entry, bytes)
        await redis_user.xreadgroup("workers", "ghost", {stream: ">"}, count=1)
        reclaimed = await WorkerStreams(redis_user, keys, "heir").reclaim([stream], 0, 1)
        assert [delivery.entry_id for delivery in reclaimed] == [entry]
        present = ClientStreams(redis_user, redis_user, keys, "c1").jobs_present
        assert await present([(stream, entry)]) == [True]
    finally:
        await redis_user.aclose()

    assert refusals(server) == set(), "the ACL line lacks a command Conveyor sends"
    admin = admin_of(server)
    try:
        stats = admin.info("commandstats")
    finally:
        admin.close()
    # Complete: nothing was refused (above). Minimal: Redis ran each command of the line. The
    # stats count every user's calls: the admin's, and its client's connect (CLIENT SETINFO,
    # on Redis >= 7.2 and Valkey), run more.
    used = {name.removeprefix("cmdstat_") for name, stat in stats.items() if stat["calls"]}
    assert set(COMMANDS) <= used, "every command of the line is needed"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("GET", "other:key"), id="get-other-key"),
        pytest.param(("XADD", "other:{m}:jobs", "*", "f", "v"), id="xadd-other-prefix"),
        pytest.param(("XADD", "PREFIX-x:{m}:jobs", "*", "f", "v"), id="xadd-lookalike-prefix"),
        pytest.param(("GET", "PREFIX:key"), id="get-own-prefix"),  # GET is not in the list
        pytest.param(("KEYS", "*"), id="keys"),
        pytest.param(("FLUSHALL",), id="flushall"),
        pytest.param(("CONFIG", "GET", "requirepass"), id="config-get"),
        pytest.param(("EVAL", "return 1", "0"), id="eval"),
    ],
)
async def test_acl_user_is_refused_other_keys_and_commands(
    redis_server_factory: ServerFactory, prefix: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    server = start_acl_server(redis_server_factory, tmp_path, prefix)
    settings = RedisSettings.from_url(user_url(server.port))
    client = create_client(settings)
    try:
        with translate_errors(settings):
            allowed = ("XADD", f"{prefix}:{{m}}:jobs", "*", "f", "v")
            assert await client.execute_command(*allowed)  # type: ignore[no-untyped-call]
        refused = [arg.replace("PREFIX", prefix) for arg in command]
        with (
            pytest.raises(BrokerConnectionError, match="permission denied") as caught,
            translate_errors(settings),
        ):
            await client.execute_command(*refused)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
    assert f"redis://{USER}:***@{LOOPBACK}:{server.port}/0" in str(caught.value)
    assert_hidden(str(caught.value), SECRET)


@pytest.mark.anyio
async def test_a_worker_with_a_wrong_password_exits_without_showing_it(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tmp_path: Path
) -> None:
    server = start_acl_server(redis_server_factory, tmp_path, prefix)
    worker = workers.start(user_url(server.port, WRONG), log_level="debug", wait=False)
    assert await exit_code(worker) != 0
    assert_hidden("\n".join(worker.lines), WRONG, SECRET)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "case",
    [
        "wrong-password",
        "prefix-outside-acl",
        "untrusted-tls",
        "command-outside-acl",
    ],
)
async def test_a_worker_refused_by_redis_exits_with_one_error_line(
    redis_server_factory: ServerFactory,
    workers: Workers,
    prefix: str,
    tmp_path: Path,
    case: str,
    request: pytest.FixtureRequest,
) -> None:
    worker_prefix = prefix
    if case == "untrusted-tls":
        tls: TLSFiles = request.getfixturevalue("tls_files")
        port = start_tls_server(redis_server_factory, tls).port
        url = f"rediss://{LOOPBACK}:{port}/0"  # the system's CAs, which never signed ours
        shown, reason = url, "certificate verify failed"
    else:
        commands = [c for c in COMMANDS if case != "command-outside-acl" or c != "xrevrange"]
        port = start_acl_server(redis_server_factory, tmp_path, prefix, commands).port
        shown = f"redis://{USER}:***@{LOOPBACK}:{port}/0"
        if case == "wrong-password":
            url, reason = user_url(port, WRONG), "authentication failed"
        else:
            url, reason = user_url(port), "permission denied"
        if case == "prefix-outside-acl":
            worker_prefix = f"{prefix}-other"
    worker = workers.start(url, prefix=worker_prefix, wait=False)
    code = await exit_code(worker)
    output = "\n".join(worker.lines)
    assert_hidden(output, WRONG, SECRET)
    errors = [line for line in worker.lines if line.startswith("error: ")]
    assert code == 1, output
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    assert shown in errors[0]
    assert reason in errors[0]


@pytest.mark.anyio
async def test_a_heartbeat_the_acl_refuses_is_reported(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tmp_path: Path
) -> None:
    without_hset = [command for command in COMMANDS if command != "hset"]
    server = start_acl_server(redis_server_factory, tmp_path, prefix, without_hset)
    worker = workers.start(user_url(server.port))
    try:  # the heartbeat runs every ttl / 3 = 1 s: five refusals by then
        said = await anyio.to_thread.run_sync(worker.wait_for_log, "permission", 5.0)
    except TimeoutError:
        said = ""
    if "hset" not in refusals(server):
        raise RuntimeError("Redis never refused the heartbeat's HSET: the test proves nothing")
    assert said, "Redis refused every heartbeat and the worker said nothing:\n" + worker.log()


@pytest.mark.anyio
async def test_a_worker_under_an_acl_line_of_before_its_bookkeeping_serves_and_says_so(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tmp_path: Path
) -> None:
    """An ACL user set up from an older README (no TIME, XINFO CONSUMERS, XGROUP
    DELCONSUMER or CREATECONSUMER, EVALSHA, SCRIPT LOAD): the worker serves every call, and
    says what the user lacks."""
    newer = {"time", "xinfo|consumers", "xgroup|delconsumer", "evalsha", "script|load"}
    newer |= {"xgroup|createconsumer"}
    older = [command for command in COMMANDS if command not in newer]
    server = start_acl_server(redis_server_factory, tmp_path, prefix, older)
    url = user_url(server.port)
    worker = workers.start(url, ECHO, DEVICE)
    await exercise_echo(url, prefix)
    await exercise_batches(url, prefix)
    assert "+evalsha" in worker.wait_for_log("worker.look_unchecked", 5)
    assert "+time" in worker.wait_for_log("worker.clock_unknown", 5)
    assert "+xinfo|consumers" in worker.wait_for_log("worker.consumers_kept", 5)
    assert "+xgroup|createconsumer" in worker.wait_for_log("worker.consumer_unlisted", 5)
    assert worker.count("worker.consumer_unlisted") == 1
    worker.signal(signal.SIGTERM)
    assert await exit_code(worker) == 0
    assert "permission" in worker.wait_for_log("worker.consumer_kept", 5)
    assert newer - {"script|load"} <= refusals(server)  # EVALSHA refused: no load tried


@pytest.mark.anyio
async def test_a_batched_model_whose_look_the_acl_refuses_inside_the_script_keeps_serving(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tmp_path: Path
) -> None:
    """The script may run, but not a command in it (XINFO CONSUMERS): the worker says so
    once, and its busy batched model takes waiting jobs with plain reads."""
    without = [command for command in COMMANDS if command != "xinfo|consumers"]
    server = start_acl_server(redis_server_factory, tmp_path, prefix, without)
    url = user_url(server.port)
    worker = workers.start(url, DEVICE)
    await exercise_batches(url, prefix)
    await exercise_batches(url, prefix)
    said = worker.wait_for_log("worker.look_unchecked", 5)
    # Redis 7.0's words, then Redis >= 7.2's and Valkey's
    assert "can't run this command" in said or "run the 'xinfo|consumers'" in said
    assert worker.count("worker.look_unchecked") == 1
    assert "xinfo|consumers" in refusals(server)
    worker.signal(signal.SIGTERM)
    assert await exit_code(worker) == 0


@pytest.mark.anyio
async def test_a_timeout_under_an_acl_without_xinfo_is_not_blamed_on_missing_workers(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tmp_path: Path
) -> None:
    without_xinfo = [command for command in COMMANDS if command != "xinfo|groups"]
    server = start_acl_server(redis_server_factory, tmp_path, prefix, without_xinfo)
    url = user_url(server.port)
    workers.start(url)
    async with Client(url, prefix=prefix, timeout=20) as client:
        with pytest.raises((DeadlineExceeded, BrokerConnectionError)) as caught:
            await client.model("echo").predict(tensor_request([1.0], sleep=3.0), timeout=0.5)
    admin = admin_of(server)
    try:
        groups = admin.xinfo_groups(Keys(prefix).jobs("echo"))
    finally:
        admin.close()
    if "xinfo|groups" not in refusals(server) or groups[0]["last-delivered-id"] == "0-0":
        raise RuntimeError("the worker never took the job, or XINFO was never refused")
    assert not isinstance(caught.value, NoWorkerError), f"misreported: {caught.value}"


# -- 2. a password (requirepass) --------------------------------------------------------------


@pytest.mark.anyio
async def test_a_password_in_the_url_works_and_stays_out_of_logs(
    redis_server_factory: ServerFactory,
    workers: Workers,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_server_factory(password=SECRET)
    url = server.url
    assert quote(SECRET, safe="") in url
    worker = workers.start(url, log_level="debug")
    await exercise_echo(url, prefix)
    # Errors are where URLs get printed: Redis goes away under a connected worker and client.
    async with Client(url, prefix=prefix, timeout=20):
        server.stop()
        # RuntimeError: the worker exited instead; its last words are checked all the same
        with contextlib.suppress(RuntimeError):
            await anyio.to_thread.run_sync(worker.wait_for_log, " WARNING ", 20.0)
        server.start()
    await anyio.to_thread.run_sync(worker.stop)
    assert_hidden("\n".join(worker.lines), SECRET)
    assert_hidden(caplog.text, SECRET)


@pytest.mark.anyio
@pytest.mark.parametrize("password", [WRONG, None], ids=["wrong-password", "no-password"])
async def test_a_bad_password_fails_fast_and_never_shows(
    redis_server_factory: ServerFactory,
    prefix: str,
    password: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = redis_server_factory(password=SECRET)
    auth = "" if password is None else f":{quote(password, safe='')}@"
    url = f"redis://{auth}{LOOPBACK}:{server.port}/0"
    started = time.monotonic()
    async with Client(url, prefix=prefix, timeout=10) as client:
        with pytest.raises(BrokerConnectionError, match="authentication failed") as caught:
            await client.model("echo").predict(tensor_request([1.0]))
    assert time.monotonic() - started < 5  # not retried until the call's deadline
    shown = f"redis://{':***@' if password else ''}{LOOPBACK}:{server.port}/0"
    assert shown in str(caught.value)
    for text in [*exception_texts(caught.value), caplog.text]:
        assert_hidden(text, SECRET, WRONG)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``, from /proc."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it exited meanwhile
            continue
        # pid (comm) state ppid ...; comm may hold spaces and parentheses
        if int(text.rpartition(")")[2].split()[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


@pytest.mark.anyio
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux only)")
async def test_supervised_workers_keep_the_password_off_their_command_lines(
    redis_server_factory: ServerFactory, workers: Workers
) -> None:
    server = redis_server_factory(password=SECRET)
    supervisor = workers.start(server.url, extra=["--processes", "2"], wait=False)
    first = await anyio.to_thread.run_sync(supervisor.wait_for_log, "worker.started")
    await anyio.to_thread.run_sync(
        supervisor.wait_for_log, "worker.started", 30.0, supervisor.lines.index(first) + 1
    )
    children = _children(supervisor.pid)
    if len(children) != 2:
        raise RuntimeError(f"expected 2 worker processes, found {children}")
    for pid in [supervisor.pid, *children]:
        assert_hidden(_command_line(pid), SECRET)


def _read_until(process: subprocess.Popen[str], text: str) -> list[str]:
    """The lines ``process`` prints up to the first that holds ``text``, or to its end."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if text in line:
            break
    return lines


def test_conveyor_up_on_a_password_protected_redis_never_prints_it(
    redis_server_factory: ServerFactory, prefix: str
) -> None:
    server = redis_server_factory(password=SECRET)
    argv = [sys.executable, "-m", "conveyor.cli", "up", str(ECHO), "--workers", "1"]
    argv += ["--redis", server.url, "--prefix", prefix]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(_read_until(process, "Ctrl-C stops everything")),
        daemon=True,
    )
    reader.start()
    try:
        reader.join(timeout=30)
    finally:
        process.send_signal(signal.SIGINT)  # a terminal's Ctrl-C
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)  # the pipe is at its end now
        assert process.stdout is not None
        process.stdout.close()
    output = "\n".join(lines)
    if "Try, in another terminal" not in output:
        raise RuntimeError(f"conveyor up never became ready:\n{output}")
    assert_hidden(output, SECRET)


# -- 3. TLS (rediss://) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command to make a test CA and server certificate")
    return openssl_tls_files(tmp_path_factory.mktemp("tls"), openssl)


def start_tls_server(factory: ServerFactory, tls: TLSFiles) -> RedisServer:
    """A server on a TLS port only; skips the test if the binary was built without TLS."""
    try:
        return factory(tls=tls)
    except RedisStartError as exc:
        if "tls" in exc.log_tail.lower():
            last = exc.log_tail.splitlines()[-1]
            pytest.skip(f"{exc.binary} cannot serve TLS: {last}")
        raise


@pytest.mark.anyio
async def test_rediss_with_our_ca_serves_worker_and_client(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str, tls_files: TLSFiles
) -> None:
    server = start_tls_server(redis_server_factory, tls_files)
    url = server.url
    assert url == f"rediss://{LOOPBACK}:{server.port}/0?ssl_ca_certs={tls_files.ca_file}"
    workers.start(url)
    await exercise_echo(url, prefix)


@pytest.mark.anyio
async def test_rediss_without_our_ca_fails_fast_and_clearly(
    redis_server_factory: ServerFactory, prefix: str, tls_files: TLSFiles
) -> None:
    server = start_tls_server(redis_server_factory, tls_files)
    url = f"rediss://{LOOPBACK}:{server.port}/0"  # the system's CAs; verification is on
    started = time.monotonic()
    async with Client(url, prefix=prefix, timeout=10) as client:
        with pytest.raises(BrokerConnectionError, match="certificate verify failed") as caught:
            await client.model("echo").predict(tensor_request([1.0]))
    assert time.monotonic() - started < 5  # retried a few times at most, never hangs
    assert url in str(caught.value)


# -- 4. nothing from Redis is unpickled, evaluated, or run unless exposed ----------------------


class _TouchOnUnpickle:
    """Unpickling this creates ``path``: what a pickle read from Redis could do to a worker."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


def _job_fields(keys: Keys, model: str) -> dict[str, bytes | str | int | float | memoryview]:
    """The fields of a well-formed predict job, as a client XADDs them."""
    client_id, request_id = uuid.uuid4().hex[:12], uuid.uuid4().hex
    now = time.time()
    job = Job(
        id=request_id,
        method="predict",
        model=model,
        version=None,
        reply=keys.reply(client_id, request_id),
        bell=keys.bell(client_id),
        deadline=now + 30,
        sent_at=now,
        args=(tensor_request([1.0]),),
    )
    return encode_job(job)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        # a client's job, but its envelope a pickle, not msgpack
        pytest.param("envelope", "field 'envelope' is not valid msgpack", id="pickled-envelope"),
        # a pickle-based queue's entry (arq, streaq, celery put one pickled blob in a field)
        pytest.param("entry", "missing field 'id'", id="pickled-entry"),
    ],
)
async def test_a_pickled_job_is_dead_lettered_and_never_unpickled(
    redis_server_factory: ServerFactory,
    workers: Workers,
    prefix: str,
    tmp_path: Path,
    shape: str,
    reason: str,
) -> None:
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_TouchOnUnpickle(armed)))
    assert armed.exists(), "the payload creates its file when unpickled"
    marker = tmp_path / "unpickled-by-the-worker"
    payload = pickle.dumps(_TouchOnUnpickle(marker))

    server = redis_server_factory()
    worker = workers.start(server.url, GUARDED)
    keys = Keys(prefix)
    jobs, dead = keys.jobs("guarded"), keys.dead("guarded")
    fields = _job_fields(keys, "guarded")
    if shape == "envelope":
        fields["envelope"] = payload
    else:
        fields = {"job": payload}
    redis_client = create_client(RedisSettings.from_url(server.url), blocking=True)
    try:
        await redis_client.xadd(jobs, fields)  # type: ignore[arg-type]
        with anyio.fail_after(20):
            answer: Any = await redis_client.xread({dead: "0-0"}, count=1, block=15_000)
        assert answer, "the job was not dead-lettered"
        letter: dict[bytes, bytes] = answer[0][1][0][1]  # the only entry of the only stream
        # acked and deleted (not retried forever), once its dead letter and the caller's
        # error are stored: polled, Redis has no event for it
        with anyio.fail_after(10):
            while await redis_client.xlen(jobs):  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert (await redis_client.xpending(jobs, "workers"))["pending"] == 0
    finally:
        await redis_client.aclose()
    assert letter[b"dead_reason"].decode().startswith(f"bad entry: {reason}")
    assert payload in letter.values()  # kept as it came, for a person to look at
    assert "job.bad_entry" in worker.wait_for_log("job.bad_entry", timeout=5)
    async with Client(server.url, prefix=prefix, timeout=20) as client:
        response = await client.model("guarded").predict(tensor_request([1.0]))
        assert response.outputs[0].name == "served"
    assert not marker.exists(), "the worker unpickled a job"
    assert worker.process.poll() is None


@pytest.mark.anyio
async def test_methods_the_model_does_not_expose_are_refused_and_never_run(
    redis_server_factory: ServerFactory, workers: Workers, prefix: str
) -> None:
    server = redis_server_factory()
    workers.start(server.url, GUARDED)
    async with Client(server.url, prefix=prefix, timeout=20) as client:
        guarded = client.model("guarded")
        # jobs on the job stream naming the methods (guarded.load() would use the control
        # stream, which is the way to load and unload)
        for method in ("load", "unload", "_private", "not_exposed"):
            with pytest.raises(MethodNotAllowed, match=f"does not expose method '{method}'"):
                await guarded.call(method)
        assert (await guarded.predict(tensor_request([1.0]))).outputs[0].name == "served"
    calls = {
        marker.name: len(marker.read_text().splitlines()) for marker in workers.markers.iterdir()
    }
    assert calls == {"load": 1}  # at start-up; nothing a client asked for ever ran
