"""``conveyor inspect``: known traffic from a real worker, then every figure checked, against
what was sent and against what plain ``redis-cli`` commands return (README.md promises both).

One private Redis for the module (keyspace notifications on, so a test can wait for a worker's
next heartbeat instead of sleeping) and one worker serving tests/models. Every wait blocks on
Redis (XREAD BLOCK, a keyspace notification) or on a process's output, never on a sleep.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, cast
from uuid import uuid4

import anyio
import pytest
import redis
from typer.testing import CliRunner, Result

from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.ops.fleet_report import (
    GroupInfo,
    LastMinute,
    ModelInfo,
    ModelLoad,
    ModelMinute,
    Snapshot,
    StreamInfo,
    WorkerInfo,
    delivery_rates,
    model_load,
    parse_last_minute,
)
from conveyor.broker.wire import Job, encode_job
from conveyor.cli.app import app
from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.types import InferenceRequest, RequestInput
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.process import Watcher, chunks_of

SERVED = "echo"  # tests/models/echo
UNSERVED = "nobody-serves-me"
CALLS = 5
QUEUED = 3
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"  # port 1: nothing listens, connect is refused


@dataclasses.dataclass
class Scene:
    """What the module's traffic left in Redis, to compare inspect's figures with."""

    url: str
    prefix: str
    keys: Keys
    worker: WorkerProcess
    worker_id: str
    ghost: str  # in <prefix>:workers without a heartbeat hash
    probe: redis.Redis


# -- helpers ---------------------------------------------------------------------------------


def inspect(*args: str, env: dict[str, str] | None = None) -> Result:
    """``conveyor inspect ARGS`` in-process, on a wide terminal."""
    return CliRunner().invoke(app, ["inspect", *args], env={"COLUMNS": "250", **(env or {})})


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def error_line(result: Result) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "conveyor.cli", *args]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    env.update(COLUMNS="250", **extra)
    return env


def queued_job(keys: Keys, model: str, number: int) -> dict[Any, Any]:
    """The fields of a real ``predict`` job, as a client XADDs them."""
    client_id = uuid4().hex[:8]
    request_id = f"queued-{number}"
    now = time.time()
    job = Job(
        id=request_id,
        method="predict",
        model=model,
        version=None,
        reply=keys.reply(client_id, request_id),
        bell=keys.bell(client_id),
        deadline=now + 300,
        sent_at=now,
        args=(
            InferenceRequest(
                inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[1.0])]
            ),
        ),
    )
    return cast(dict[Any, Any], encode_job(job))  # redis-py's dict type is invariant


def wait_entries(probe: redis.Redis, key: str, count: int, timeout: float = 20.0) -> None:
    """Blocks (XREAD BLOCK) until ``key`` holds ``count`` entries."""
    after = b"0-0"
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < count:
        left_ms = int((deadline - time.monotonic()) * 1000)
        assert left_ms > 0, f"{seen} of {count} entries in {key} after {timeout}s"
        reply = cast(Any, probe.xread({key: after}, count=count, block=left_ms))
        for _, entries in reply or []:
            seen += len(entries)
            after = entries[-1][0]


def wait_heartbeat(probe: redis.Redis, keys: Keys, worker_id: str, done: int) -> None:
    """Blocks on keyspace notifications until the worker's heartbeat hash says ``done`` >= the
    given count (the heartbeat thread writes it every ttl / 3 s)."""
    key = keys.worker(worker_id)
    pubsub = probe.pubsub()
    pubsub.subscribe(f"__keyspace@0__:{key}")  # before the first look: no beat is missed
    try:
        deadline = time.monotonic() + 20
        while int(cast(bytes, probe.hget(key, "done") or b"0")) < done:
            left = deadline - time.monotonic()
            assert left > 0, f"no heartbeat with done >= {done} in 20s"
            pubsub.get_message(timeout=left)
    finally:
        pubsub.close()


def minute_calls(probe: redis.Redis, keys: Keys, worker_id: str, model: str) -> int:
    """The calls of ``model`` in the worker's heartbeat's ``last_minute`` (0 if none yet)."""
    field = cast(bytes | None, probe.hget(keys.worker(worker_id), "last_minute"))
    models = json.loads(field)["models"] if field else {}
    return int(models.get(model, {}).get("calls", 0))


def wait_last_minute(probe: redis.Redis, keys: Keys, worker_id: str, calls: int) -> None:
    """Blocks on keyspace notifications until the worker's heartbeat says SERVED had ``calls``
    in its last minute (its figures are read once a beat: a beat may lag the answers)."""
    key = keys.worker(worker_id)
    pubsub = probe.pubsub()
    pubsub.subscribe(f"__keyspace@0__:{key}")
    try:
        deadline = time.monotonic() + 20
        while minute_calls(probe, keys, worker_id, SERVED) < calls:
            left = deadline - time.monotonic()
            assert left > 0, f"no heartbeat with {calls} calls of {SERVED} in 20s"
            pubsub.get_message(timeout=left)
    finally:
        pubsub.close()


async def answered_calls(url: str, prefix: str) -> None:
    async with Client(url, prefix=prefix) as client:
        model = client.model(SERVED)
        for i in range(CALLS):
            request = InferenceRequest(
                inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[float(i)])]
            )
            response = await model.predict(request, timeout=20)
            assert response.outputs[0].data.root == [float(i)]


def stream(document: dict[str, Any], model: str) -> dict[str, Any]:
    """The main job stream of ``model`` in inspect's JSON."""
    [found] = [m for m in document["models"] if m["name"] == model]
    [main] = [s for s in found["streams"] if s["version"] is None]
    return cast(dict[str, Any], main)


def model_entry(document: dict[str, Any], model: str) -> dict[str, Any]:
    [found] = [m for m in document["models"] if m["name"] == model]
    return cast(dict[str, Any], found)


# -- the scene -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene() -> Iterator[Scene]:
    """A private Redis and one worker of tests/models, after known traffic: CALLS answered
    predicts on echo, one garbage entry in echo's stream (dead-lettered), QUEUED jobs for a
    model no worker serves (its group made, so it shows lag), and a worker id whose heartbeat
    hash is gone."""
    with RedisServer() as server:
        probe = redis.Redis.from_url(server.url)
        probe.config_set("notify-keyspace-events", "Kh")  # hash events: heartbeats
        prefix = f"t{uuid4().hex[:10]}"
        keys = Keys(prefix)
        fleet = Fleet(server.url, prefix)
        try:
            worker = fleet.start(MODELS)
            anyio.run(answered_calls, server.url, prefix)

            probe.xadd(keys.jobs(SERVED), {"id": "garbage", "junk": "1"})
            wait_entries(probe, keys.dead(SERVED), 1)

            for number in range(QUEUED):
                probe.xadd(keys.jobs(UNSERVED), queued_job(keys, UNSERVED, number))
            probe.xgroup_create(keys.jobs(UNSERVED), GROUP, id="0")

            ghost = "ghost-worker"
            probe.zadd(keys.workers(), {ghost: time.time() - 30})
            [worker_id] = [
                member.decode()
                for member in cast(list[bytes], probe.zrange(keys.workers(), 0, -1))
                if member.decode() != ghost
            ]
            wait_heartbeat(probe, keys, worker_id, CALLS)
            wait_last_minute(probe, keys, worker_id, CALLS + 1)  # and the garbage, refused
            yield Scene(server.url, prefix, keys, worker, worker_id, ghost, probe)
        finally:
            fleet.stop()
            probe.close()


def check_document(scene: Scene, document: dict[str, Any]) -> None:
    """What the module's traffic must show."""
    assert document["prefix"] == scene.prefix
    assert abs(document["time"] - time.time()) < 60

    unserved = stream(document, UNSERVED)
    assert unserved["key"] == scene.keys.jobs(UNSERVED)
    assert unserved["backlog"] == QUEUED
    assert unserved["group"]["lag"] == QUEUED
    assert unserved["group"]["pending"] == 0
    assert unserved["group"]["consumers"] == []
    assert model_entry(document, UNSERVED)["dead_letters"] == 0

    served = stream(document, SERVED)
    assert served["backlog"] == 0
    assert served["group"]["lag"] == 0
    assert served["group"]["pending"] == 0
    assert served["group"]["entries_read"] == CALLS + 1  # the calls and the garbage
    assert served["group"]["oldest_pending_id"] is None
    [consumer] = served["group"]["consumers"]
    assert consumer["name"] == scene.worker_id
    assert consumer["pending"] == 0
    entry = model_entry(document, SERVED)
    assert entry["dead_letters"] == 1
    assert entry["dead_key"] == scene.keys.dead(SERVED)

    [worker] = document["workers"]
    assert worker["id"] == scene.worker_id
    assert worker["pid"] == scene.worker.pid
    assert worker["host"] == socket.gethostname()
    assert SERVED in worker["models"]
    assert UNSERVED not in worker["models"]
    assert worker["done"] >= CALLS
    assert worker["in_flight"] == 0
    assert 0 <= worker["heartbeat_age_s"] < 10
    assert worker["uptime_s"] >= worker["heartbeat_age_s"]

    [gone] = document["gone"]
    assert gone["id"] == scene.ghost
    assert 25 < gone["heartbeat_age_s"] < 120

    # the last minute, from the heartbeat: the calls and the garbage (refused: an error)
    minute = worker["last_minute"]
    assert minute["models"][SERVED]["calls"] == CALLS + 1
    assert sum(minute["models"][SERVED]["counts"]) == CALLS  # answered: timed
    load = document["load"][SERVED]
    assert load["calls_per_s"] == pytest.approx((CALLS + 1) / minute["window_s"])
    assert load["errors"] == 1
    assert 0 < load["p50_s"] <= load["p99_s"] < 5
    assert UNSERVED not in document["load"]  # no worker, no figures


# -- one-shot --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_json_reports_the_traffic(scene: Scene) -> None:
    document = json.loads(ok(inspect("--json", "--redis", scene.url, "--prefix", scene.prefix)))
    check_document(scene, document)
    # every model of the worker has its stream; none of them holds a job
    names = {model["name"] for model in document["models"]}
    assert set(document["workers"][0]["models"]) | {UNSERVED} == names


@pytest.mark.timeout(60)
def test_json_from_a_subprocess_and_the_url_from_the_environment(scene: Scene) -> None:
    result = subprocess.run(
        cli("inspect", "--json", "--prefix", scene.prefix),
        capture_output=True,
        text=True,
        timeout=30,
        env=environment(CONVEYOR_REDIS_URL=scene.url),  # read at run time, not import time
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    check_document(scene, json.loads(result.stdout))


@pytest.mark.timeout(60)
def test_table_shows_models_then_workers(scene: Scene) -> None:
    text = ok(inspect("--redis", scene.url, "--prefix", scene.prefix))
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0].startswith(f"prefix {scene.prefix!r} at ")
    assert lines.index("models") < lines.index("workers")
    assert lines[2].split() == [
        *("model", "stream", "backlog", "lag", "pending", "oldest", "pending", "workers"),
        *("read", "dead", "calls/s", "p50", "p99", "errors"),
    ]
    rows = {line.split()[0]: line.split() for line in lines if line.split()[1:2] == ["jobs"]}
    # model stream backlog lag pending oldest workers read dead calls/s p50 p99 errors
    idle = ("0.0", "-", "-", "0")  # no calls in the last minute
    assert rows[UNSERVED] == [UNSERVED, "jobs", "3", "3", "0", "-", "0", "-", "0", *idle]
    assert rows[SERVED][:9] == [SERVED, "jobs", "0", "0", "0", "-", "1", str(CALLS + 1), "1"]
    assert float(rows[SERVED][9]) > 0
    assert rows[SERVED][10].endswith("ms")  # p50
    assert rows[SERVED][12] == "1"  # errors
    [worker_row] = [line.split() for line in lines if line.startswith(scene.worker_id)]
    assert worker_row[1:3] == [socket.gethostname(), str(scene.worker.pid)]
    assert SERVED in worker_row[3].split(",")
    assert worker_row[4] == "0"  # in flight
    assert int(worker_row[5]) >= CALLS  # done
    assert any(line.startswith(f"gone: {scene.ghost} (last heartbeat ") for line in lines)
    assert "jobs in flight" not in lines  # nothing pending


@pytest.mark.timeout(90)
def test_workers_column_counts_the_live_workers_serving_an_idle_model(
    redis_url: str, prefix: str
) -> None:
    """Three workers serve a model no call has reached yet: Redis lists no consumer in its
    group (one appears only once it has read an entry), inspect must still say 3."""
    fleet = Fleet(redis_url, prefix)
    try:
        for _ in range(3):
            fleet.start(MODELS)
        text = ok(inspect("--redis", redis_url, "--prefix", prefix))
        document = json.loads(ok(inspect("--json", "--redis", redis_url, "--prefix", prefix)))
    finally:
        fleet.stop()
    rows = [line.split() for line in text.splitlines()]
    [echo] = [row for row in rows if row[:2] == [SERVED, "jobs"]]
    # model stream backlog lag pending oldest workers read dead
    assert echo[6] == "3", text
    assert [SERVED in worker["ready"] for worker in document["workers"]] == [True] * 3


def redis_cli(url: str, *command: str) -> list[str]:
    """The reply of one command as ``redis-cli`` prints it to a pipe (raw: one line per
    element, nil as an empty line)."""
    result = subprocess.run(
        ["redis-cli", "-u", url, *command], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def pairs(lines: list[str]) -> dict[str, str]:
    return dict(zip(lines[::2], lines[1::2], strict=True))


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not on PATH")
def test_every_figure_equals_what_redis_cli_returns(scene: Scene) -> None:
    document = json.loads(ok(inspect("--json", "--redis", scene.url, "--prefix", scene.prefix)))
    url, keys = scene.url, scene.keys
    checked = 0
    for model in document["models"]:
        assert redis_cli(url, "XLEN", model["dead_key"]) == [str(model["dead_letters"])]
        for found in model["streams"]:
            key = found["key"]
            assert redis_cli(url, "XLEN", key) == [str(found["backlog"])]
            group = found["group"]
            info = pairs(redis_cli(url, "XINFO", "GROUPS", key))
            assert info["name"] == GROUP
            assert info["pending"] == str(group["pending"])
            assert info["lag"] == ("" if group["lag"] is None else str(group["lag"]))
            read = group["entries_read"]
            assert info["entries-read"] == ("" if read is None else str(read))
            assert info["last-delivered-id"] == group["last_delivered_id"]
            consumers = redis_cli(url, "XINFO", "CONSUMERS", key, GROUP)
            # field, value, ... of each consumer in turn (Redis >= 7.2 adds `inactive`)
            consumers = consumers if consumers != [""] else []  # none: an empty line
            flat = list(zip(consumers[::2], consumers[1::2], strict=True))
            names = [value for field, value in flat if field == "name"]
            assert names == [c["name"] for c in group["consumers"]]
            pending = [value for field, value in flat if field == "pending"]
            assert pending == [str(c["pending"]) for c in group["consumers"]]
            summary = redis_cli(url, "XPENDING", key, GROUP)
            assert summary[0] == str(group["pending"])
            assert (summary[1] or None) == group["oldest_pending_id"]
            checked += 1
    assert checked == sum(len(model["streams"]) for model in document["models"]) > 2

    members = redis_cli(url, "ZRANGE", keys.workers(), "0", "-1")
    listed = [w["id"] for w in document["workers"]] + [g["id"] for g in document["gone"]]
    assert sorted(members) == sorted(listed)
    for worker in document["workers"]:
        heartbeat = pairs(redis_cli(url, "HGETALL", keys.worker(worker["id"])))
        assert heartbeat["pid"] == str(worker["pid"])
        assert heartbeat["host"] == worker["host"]
        assert heartbeat["models"] == ",".join(worker["models"])
        assert heartbeat["in_flight"] == str(worker["in_flight"])
        assert heartbeat["done"] == str(worker["done"])  # idle worker: the figure is stable
    assert redis_cli(url, "HGETALL", keys.worker(scene.ghost)) in ([], [""])  # empty


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_unreachable_redis_is_one_line_without_the_password() -> None:
    line = error_line(inspect("--redis", UNREACHABLE))
    assert "cannot reach Redis at redis://127.0.0.1:1/0: connection failed" in line
    assert "s3cret" not in line


@pytest.mark.timeout(30)
def test_malformed_url_is_one_line() -> None:
    line = error_line(inspect("--redis", "http://example/0"))
    assert "invalid Redis URL" in line


@pytest.mark.timeout(30)
def test_a_key_of_the_wrong_type_is_one_line(scene: Scene) -> None:
    prefix = f"t{uuid4().hex[:10]}"
    scene.probe.set(Keys(prefix).workers(), "not a sorted set")
    line = error_line(inspect("--redis", scene.url, "--prefix", prefix))
    assert Keys(prefix).workers() in line
    assert "WRONGTYPE" in line


@pytest.mark.timeout(30)
def test_an_empty_prefix_says_so(scene: Scene) -> None:
    prefix = f"t{uuid4().hex[:10]}"
    text = ok(inspect("--redis", scene.url, "--prefix", prefix))
    assert f"no job streams under {prefix}:{{*}}" in text
    assert "no workers registered" in text
    document = json.loads(ok(inspect("--json", "--redis", scene.url, "--prefix", prefix)))
    assert (document["models"], document["workers"], document["gone"]) == ([], [], [])


# -- watch -----------------------------------------------------------------------------------


class Output:
    """A subprocess's output (a pipe, or a terminal's chunks), watched so a test can wait."""

    def __init__(self, fd: int, close: Callable[[], None]) -> None:
        self._close = close
        self._watcher = Watcher(chunks_of(fd), describe=lambda: self.text)

    @property
    def text(self) -> str:
        """What it printed so far."""
        return "".join(self._watcher.snapshot())

    def wait_for(self, count: int, text: str, timeout: float = 20.0) -> str:
        """Waits until ``text`` occurs ``count`` times; returns the output so far."""

        def found(chunks: list[str]) -> str | None:
            so_far = "".join(chunks)
            return so_far if so_far.count(text) >= count else None

        return self._watcher.wait(found, f"{count} x {text!r}", timeout)

    def close(self) -> None:
        self._watcher.join(timeout=5)
        self._close()


def start_watch(*args: str, tty: bool = False) -> tuple[subprocess.Popen[bytes], Output]:
    """``conveyor inspect --watch ARGS``; its stdout is a pipe, or a terminal with ``tty``."""
    if tty:
        parent, child = pty.openpty()
        process = subprocess.Popen(
            cli("inspect", "--watch", *args),
            stdin=subprocess.DEVNULL,
            stdout=child,
            stderr=child,
            env=environment(TERM="xterm"),
            start_new_session=True,
        )
        os.close(child)
        return process, Output(parent, lambda: os.close(parent))
    process = subprocess.Popen(
        cli("inspect", "--watch", *args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=environment(),
        start_new_session=True,
    )
    stdout = process.stdout
    assert stdout is not None
    return process, Output(stdout.fileno(), stdout.close)


def stop_with_ctrl_c(process: subprocess.Popen[bytes], output: Output) -> str:
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    assert process.wait(timeout=15) == 0, output.text
    output.close()
    assert "Traceback" not in output.text, output.text
    return output.text


def deliver(probe: redis.Redis, key: str, count: int) -> None:
    """``count`` jobs sent and taken by a consumer, as a worker would (raises entries-read)."""
    for number in range(count):
        probe.xadd(key, {"n": number})
    probe.xreadgroup(GROUP, "hand", {key: ">"}, count=count)


@pytest.fixture
def watched() -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Output]]]:
    """``start_watch`` for a test: whatever it left running is killed afterwards."""
    started: list[tuple[subprocess.Popen[bytes], Output]] = []

    def start(*args: str, tty: bool = False) -> tuple[subprocess.Popen[bytes], Output]:
        started.append(start_watch(*args, tty=tty))
        return started[-1]

    yield start
    for process, output in started:
        if process.poll() is None:
            process.kill()
            process.wait()
            output.close()


@pytest.mark.timeout(60)
def test_watch_json_gives_a_line_per_refresh_with_rates_and_stops_on_ctrl_c(
    scene: Scene, watched: Callable[..., tuple[subprocess.Popen[bytes], Output]]
) -> None:
    prefix = f"t{uuid4().hex[:10]}"
    key = Keys(prefix).jobs("rated")
    scene.probe.xgroup_create(key, GROUP, id="0", mkstream=True)
    process, output = watched(
        "--json", "--interval", "0.2", "--redis", scene.url, "--prefix", prefix
    )
    first = output.wait_for(1, "\n")
    deliver(scene.probe, key, 4)
    # wait for a refresh that saw the deliveries: entries_read 4
    output.wait_for(1, '"entries_read":4')
    text = stop_with_ctrl_c(process, output)
    documents = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert all(document["load"] == {} for document in documents)  # no worker under it
    assert json.loads(first.splitlines()[0])["rates"] == {}  # one sample: no rate yet
    seen = [d for d in documents if stream(d, "rated")["group"]["entries_read"] == 4]
    rates = [d["rates"][key] for d in documents[1:]]
    assert all(rate >= 0 for rate in rates)
    # the refresh that first saw the 4 deliveries measured them over its interval
    first_seen = documents.index(seen[0])
    assert first_seen >= 1
    assert seen[0]["rates"][key] > 0


@pytest.mark.timeout(60)
def test_watch_prints_tables_to_a_pipe_and_stops_on_ctrl_c(
    scene: Scene, watched: Callable[..., tuple[subprocess.Popen[bytes], Output]]
) -> None:
    args = ("--interval", "0.2", "--redis", scene.url, "--prefix", scene.prefix)
    process, output = watched(*args)
    output.wait_for(3, "jobs/s")  # a table per refresh, each with a rate column
    text = stop_with_ctrl_c(process, output)
    assert text.count(f"prefix {scene.prefix!r} at ") >= 3
    assert scene.worker_id in text
    assert text.count("calls/s") >= 3  # the last minute's figures, in every refresh


@pytest.mark.timeout(60)
def test_watch_in_a_terminal_refreshes_in_place_and_stops_on_ctrl_c(
    scene: Scene, watched: Callable[..., tuple[subprocess.Popen[bytes], Output]]
) -> None:
    args = ("--interval", "0.2", "--redis", scene.url, "--prefix", scene.prefix)
    process, output = watched(*args, tty=True)
    output.wait_for(3, "jobs/s")
    text = stop_with_ctrl_c(process, output)
    assert "\x1b[" in text  # Live redraws with cursor movements
    assert scene.worker_id in text


# -- rates -----------------------------------------------------------------------------------


def shot(time_s: float, **read: int | None) -> Snapshot:
    def stream_info(key: str, entries_read: int | None) -> StreamInfo:
        last = "0-0" if entries_read is None and key == "p:{c}:jobs" else "1-0"
        group = GroupInfo(0, 0, entries_read, last, (), None, None)
        return StreamInfo(key, None, 0, group)

    models = tuple(
        ModelInfo(name, (stream_info(f"p:{{{name}}}:jobs", count),), f"p:{{{name}}}:dead", 0)
        for name, count in read.items()
    )
    return Snapshot("p", time_s, models, (), ())


@pytest.mark.timeout(10)
def test_delivery_rates() -> None:
    before = shot(100.0, a=10, b=5, c=None, d=7, f=None)
    after = shot(102.0, a=30, b=5, c=3, d=2, e=9, f=4)
    # a: 20 in 2 s; b: none; c: nothing delivered before (nil at 0-0): 3 in 2 s;
    # d: went down (made again); e: new; f: unknown before (nil after a delivery)
    assert delivery_rates(before, after) == {
        "p:{a}:jobs": 10.0,
        "p:{b}:jobs": 0.0,
        "p:{c}:jobs": 1.5,
    }
    assert delivery_rates(after, before) == {}  # the clock went back


def _worker(window_s: float, bounds: tuple[float, ...], **models: ModelMinute) -> WorkerInfo:
    minute = LastMinute(window_s, bounds, models)
    none = None
    return WorkerInfo("w", "h", 1, (), (), 0, 0, none, none, none, none, none, minute)


@pytest.mark.timeout(10)
def test_model_load_sums_workers_and_merges_their_histograms() -> None:
    bounds = (0.01, 0.1, 1.0)
    one = _worker(60.0, bounds, m=ModelMinute(60, 1, (50, 10, 0, 0)))
    two = _worker(30.0, bounds, m=ModelMinute(30, 0, (0, 40, 0, 0)))  # started 30 s ago
    slow = _worker(60.0, bounds, n=ModelMinute(2, 2, (0, 0, 0, 2)))  # beyond the last bound
    odd = _worker(60.0, (0.5,), m=ModelMinute(6, 0, (6, 0)))  # other buckets: rate only
    load = model_load(Snapshot("p", 0.0, (), (one, two, slow, odd), ()))
    # m: 60/60 + 30/30 + 6/60 calls/s; 100 timed: the 50th in the first bucket, the 99th
    # in the second (its 49th of 50, linearly between 0.01 and 0.1)
    assert load["m"] == ModelLoad(2.1, 1, 0.01, load["m"].p99_s)
    assert load["m"].p99_s == pytest.approx(0.01 + 0.09 * 49 / 50)
    assert load["n"] == ModelLoad(load["n"].calls_per_s, 2, 1.0, 1.0)
    assert load["n"].calls_per_s == pytest.approx(2 / 60)


@pytest.mark.timeout(10)
def test_a_crafted_last_minute_is_left_out() -> None:
    crafted: tuple[object, ...] = (
        None,
        [],
        {"s": 0, "le": [], "models": {}},
        {"s": float("nan"), "le": [], "models": {}},
        {"s": 60, "le": ["x"], "models": {}},
        {"s": 60, "le": [1], "models": []},
    )
    for data in crafted:
        assert parse_last_minute(data) is None, data
    parsed = parse_last_minute(
        {"s": 60, "le": [1], "models": {"m": {"calls": 1, "errors": 0, "counts": [1, 0]}, "x": 1}}
    )
    assert parsed == LastMinute(60.0, (1.0,), {"m": ModelMinute(1, 0, (1, 0))})
