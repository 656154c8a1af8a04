"""Workers on other hosts: Redis, two worker hosts and a client host, each in a network
namespace of its own, joined by a bridge (``tests/netns.py``). Both worker hosts serve; one is
cut off under load (its cable pulled, or a silent partition): the other finishes its jobs after
the heartbeat TTL; it comes back, rejoins and serves again; every call gets exactly one answer.

The client host runs this file as a program (``python test_multihost.py client URL PREFIX
CLIENT_ID``): a Conveyor client that takes commands as JSON lines on stdin (bursts, steady
load, Redis probes) and writes one JSON line per answer and per command done; it counts the
answers each request id gets. The pytest process stays in the machine's namespace and only starts
processes (``ip netns exec``) and moves links; it never talks to the test subnet itself.

Every wait is on an event: a process's log line, an answer, or Redis state polled by the client
host under a deadline (Redis has no event to await). Figures are printed: run with ``-s``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import anyio
import numpy as np
import pytest
from anyio.abc import TaskGroup
from redis.asyncio import Redis

from conveyor.broker.keys import GROUP, Keys
from conveyor.broker.wire import MessageType, decode_job, decode_message
from conveyor.client import Client
from conveyor.embedded import RedisBinaryNotFound, find_redis_binary
from conveyor.errors import ConveyorError, WireError
from conveyor.types import InferenceRequest, InferenceResponse, Parameters, RequestInput
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.netns import Host, NetnsError, NetnsUnavailable, Network, unavailable
from tests.support.process import Watcher

REDIS_PORT = 16379  # inside the Redis host's namespace only
TTL = 2.0  # every worker's --heartbeat-ttl: the cut-off host's jobs move after about this
CALL_TIMEOUT_S = 40.0
WORKER_CONCURRENCY = 8  # jobs per worker at once
LOAD_CONCURRENCY = 12  # calls at a time under load: more than one worker takes, so both hold jobs
LOAD_SLEEP_S = 0.2
BURST_CALLS = 40
MODEL = "counter"  # answers with the pid of the worker process that ran it

Json = dict[str, Any]
T = TypeVar("T")


# -- the client host (runs inside its namespace, as `python test_multihost.py client ...`) --------


def _emit(line: Json) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def _pid_of(response: InferenceResponse) -> int:
    return int(np.asarray(response.outputs[0].data.root).ravel()[0])


class _Ledger:
    """Every call the client host made, and every answer its callers got."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}  # request id -> when sent (monotonic)
        self.answers: Counter[str] = Counter()  # request id -> answers callers got for it
        self.pid: dict[str, int] = {}  # request id -> pid that answered (first answer)
        self.errors: dict[str, str] = {}
        self.mismatched: list[str] = []  # answers carrying another request's id

    def in_flight(self) -> list[str]:
        return [r for r in self.sent if r not in self.answers and r not in self.errors]

    def summary(self) -> Json:
        return {
            "sent": len(self.sent),
            "answered": len(self.answers),
            "answers": sum(self.answers.values()),
            "duplicates": {r: n for r, n in self.answers.items() if n > 1},
            "missing": self.in_flight(),
            "errors": self.errors,
            "mismatched": self.mismatched,
            "by_pid": {str(p): n for p, n in Counter(self.pid.values()).items()},
        }


class _ClientHost:
    def __init__(self, client: Client, probe: Redis, keys: Keys) -> None:
        self.model = client.model(MODEL)
        self.client = client
        self.probe = probe
        self.keys = keys
        self.ledger = _Ledger()
        self.stopping = False
        self.loops = 0
        self.loops_done = anyio.Event()

    async def call(self, sleep: float) -> int | None:
        request_id = uuid.uuid4().hex
        sent = time.monotonic()
        self.ledger.sent[request_id] = sent
        request = InferenceRequest(
            id=request_id,
            parameters=Parameters(sleep=sleep),
            inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[0.0])],
        )
        try:
            response = await self.model.predict(request, timeout=CALL_TIMEOUT_S)
        except ConveyorError as error:
            self.ledger.errors[request_id] = f"{type(error).__name__}: {error}"
            _emit({"ev": "error", "id": request_id, "error": repr(error)})
            return None
        pid = _pid_of(response)
        # counted by the id the answer carries: one answer handed to two callers counts twice
        answer_id = response.id or ""
        if answer_id != request_id:
            self.ledger.mismatched.append(request_id)
        self.ledger.answers[answer_id] += 1
        self.ledger.pid.setdefault(answer_id, pid)
        _emit({"ev": "answer", "id": request_id, "pid": pid, "sent": sent, "at": time.monotonic()})
        return pid

    async def burst(self, calls: int, sleep: float) -> Json:
        pids: list[int | None] = []

        async def one() -> None:
            pids.append(await self.call(sleep))

        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(one)
        answered = [p for p in pids if p is not None]
        return {
            "by_pid": {str(p): n for p, n in Counter(answered).items()},
            "failed": calls - len(answered),
        }

    async def loop(self, sleep: float) -> None:
        try:
            while not self.stopping:
                await self.call(sleep)
        finally:
            self.loops -= 1
            if self.loops == 0:
                self.loops_done.set()

    async def wait_until(self, check: Callable[[], Awaitable[Any]], timeout: float) -> Json:
        """Polls ``check`` until it returns something true: ``found`` (it) and ``waited`` (s)."""
        started = time.monotonic()
        with anyio.move_on_after(timeout):
            while not (found := await check()):  # noqa: ASYNC110
                await anyio.sleep(0.02)  # polling Redis, which has no event to await
            return {"found": found, "waited": time.monotonic() - started}
        return {"error": f"not true after {timeout}s"}

    async def command(self, op: str, args: Json, tg: TaskGroup) -> Json:
        workers = self.keys.workers()
        stream = self.keys.jobs(MODEL)
        if op == "burst":
            return await self.burst(int(args["calls"]), float(args["sleep"]))
        if op == "load_start":
            self.loops = int(args["concurrency"])
            for _ in range(self.loops):
                tg.start_soon(self.loop, float(args["sleep"]))
            return {}
        if op == "load_stop":
            self.stopping = True
            with anyio.fail_after(CALL_TIMEOUT_S + 5):
                await self.loops_done.wait()
            return self.ledger.summary()
        if op == "in_flight":
            return {"ids": self.ledger.in_flight()}
        if op == "wait_pending":  # until the consumer holds at least `min` jobs

            async def pending() -> int:
                for info in await self.probe.xinfo_consumers(stream, GROUP):
                    if info["name"] == args["worker"].encode():
                        return int(info["pending"]) if info["pending"] >= args["min"] else 0
                return 0

            return await self.wait_until(pending, float(args["timeout"]))
        if op == "held":  # the requests whose jobs the worker holds (pending, not acked)
            return {"ids": await self.held(stream, args["worker"])}
        if op == "wait_gone":  # until the worker's heartbeat entry has expired

            async def gone() -> bool:
                return not await self.probe.exists(self.keys.worker(args["worker"]))

            return await self.wait_until(gone, float(args["timeout"]))
        if op == "wait_heartbeat":  # until the worker beats after `after` (wall clock)

            async def beat() -> float:
                score = await self.probe.zscore(workers, args["worker"])
                raw = await self.probe.hget(self.keys.worker(args["worker"]), "heartbeat")
                value = float(raw) if isinstance(raw, bytes | str) else 0.0
                fresh = score is not None and score > args["after"] and value > args["after"]
                return value if fresh else 0.0

            return await self.wait_until(beat, float(args["timeout"]))
        if op == "wait_drained":  # until no job is queued or pending

            async def drained() -> bool:
                pending = await self.probe.xpending(stream, GROUP)
                return await self.probe.xlen(stream) == 0 and pending["pending"] == 0

            return await self.wait_until(drained, float(args["timeout"]))
        if op == "late_replies":
            return {"replies": await self.late_replies()}
        raise ValueError(f"unknown op {op!r}")

    async def held(self, stream: str, worker: str) -> list[str]:
        """The request ids of the jobs ``worker`` has been handed and not acked."""
        pending = await self.probe.xpending_range(
            stream, GROUP, min="-", max="+", count=1000, consumername=worker
        )
        ids = []
        for entry in pending:
            entry_id = entry["message_id"]
            for _, fields in await self.probe.xrange(stream, entry_id, entry_id) or []:
                job = decode_job(cast("dict[bytes, bytes]", fields))
                request = job.args[0]
                if isinstance(request, InferenceRequest) and request.id is not None:
                    ids.append(request.id)
        return ids

    async def late_replies(self) -> list[Json]:
        """Every reply entry still in Redis. The client deletes a reply stream once its call is
        answered, so what is left came after that (or was answered a moment ago)."""
        found = []
        pattern = self.keys.reply(f"{self.client.client_id}-*", "*")  # the id and its suffix
        async for key in self.probe.scan_iter(match=pattern, count=1000):
            for _, fields in await self.probe.xrange(key) or []:
                try:
                    message = decode_message(cast("dict[bytes, bytes]", fields))
                except WireError as error:
                    found.append({"key": key.decode(), "error": error.reason})
                    continue
                payload = message.payload
                if message.type is MessageType.RESULT and isinstance(payload, InferenceResponse):
                    request_id = payload.id or ""
                    found.append(
                        {
                            "id": request_id,
                            "attempt": message.attempt,
                            "pid": _pid_of(payload),
                            "answered_by": self.ledger.pid.get(request_id),
                            "answers": self.ledger.answers[request_id],
                        }
                    )
                else:
                    found.append({"key": key.decode(), "type": message.type.value})
        return found


async def _client_host(url: str, prefix: str, client_id: str) -> None:
    keys = Keys(prefix)
    probe = Redis.from_url(url)
    try:
        async with (
            Client(url, prefix=prefix, timeout=CALL_TIMEOUT_S, client_id=client_id) as client,
            anyio.create_task_group() as tg,
        ):
            host = _ClientHost(client, probe, keys)
            _emit({"ev": "ready"})
            while line := await anyio.to_thread.run_sync(sys.stdin.readline):
                command = json.loads(line)
                if command["op"] == "quit":
                    break
                try:
                    reply = await host.command(command["op"], command, tg)
                except Exception as error:
                    reply = {"error": f"{type(error).__name__}: {error}"}
                _emit({"re": command["seq"], **reply})
            tg.cancel_scope.cancel()
    finally:
        await probe.aclose()


# -- the test's side -----------------------------------------------------------------------------


class ClientHostProcess:
    """The client host program in its namespace: send commands, watch its answers."""

    def __init__(self, host: Host, url: str, prefix: str, stderr: IO[str]) -> None:
        self.client_id = f"c{uuid.uuid4().hex[:8]}"
        # run as a module from the repository root, so that `tests.support` imports
        script = [sys.executable, "-m", "tests.e2e.test_multihost", "client", url, prefix]
        self.process = subprocess.Popen(
            host.argv([*script, self.client_id]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=Path(__file__).parents[2],
        )
        self._stderr_path = Path(stderr.name)
        self._seq = 0
        assert self.process.stdout is not None
        # each line a JSON object: a reply ("re": the command's seq) or an event ("ev")
        self.output: Watcher[Json] = Watcher(
            (json.loads(line) for line in self.process.stdout), describe=self._stderr_tail
        )

    @property
    def events(self) -> list[Json]:
        return [item for item in self.output.snapshot() if "re" not in item]

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._stderr_path.read_text().splitlines()[-30:])
        return "(no stderr)"

    def _wait(self, found: Callable[[list[Json]], T | None], what: str, timeout: float) -> T:
        return self.output.wait(found, f"client host: {what}", timeout)

    def ask(self, op: str, **args: Any) -> Json:
        """Sends one command and returns its reply; a reply with ``error`` fails the test.

        Waits for the reply 30 s longer than the command's own ``timeout`` (if it has one).
        """
        timeout = 30.0 + float(args.get("timeout", CALL_TIMEOUT_S))
        self._seq += 1
        seq = self._seq
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "seq": seq, **args}) + "\n")
        self.process.stdin.flush()
        reply = self._wait(
            lambda items: next((item for item in items if item.get("re") == seq), None),
            f"reply to {op}",
            timeout,
        )
        if "error" in reply:
            raise AssertionError(f"client host: {op} {args}: {reply['error']}")
        return reply

    def wait_event(self, check: Callable[[Json], bool], what: str, timeout: float = 30.0) -> Json:
        def first(items: list[Json]) -> Json | None:
            return next((item for item in items if "re" not in item and check(item)), None)

        return self._wait(first, what, timeout)

    def wait_answered(self, ids: set[str], what: str, timeout: float = 30.0) -> float:
        """Waits until every request in ``ids`` has its answer; returns when the last came."""

        def last(items: list[Json]) -> float | None:
            at = {e["id"]: e["at"] for e in items if e.get("ev") == "answer" and e["id"] in ids}
            return max(at.values(), default=0.0) if len(at) == len(ids) else None

        return self._wait(last, what, timeout)

    def answers(self) -> list[Json]:
        return [e for e in self.events if e["ev"] == "answer"]

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.process.stdin is not None
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.flush()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.join(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@dataclass
class Hosts:
    network: Network
    redis: Host
    w1: Host
    w2: Host
    client: Host


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Four hosts on one bridge; skips where network namespaces cannot be made."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    try:
        network = Network()
    except NetnsUnavailable as error:
        pytest.skip(f"cannot make network namespaces: {error}")
    try:
        try:
            made = Hosts(
                network,
                network.add_host("redis"),
                network.add_host("w1"),
                network.add_host("w2"),
                network.add_host("client"),
            )
        except NetnsUnavailable as error:
            pytest.skip(f"cannot make network namespaces: {error}")
        yield made
    finally:
        network.close()


@pytest.fixture
def redis_binary() -> str:
    try:
        return str(find_redis_binary())
    except RedisBinaryNotFound as error:
        pytest.skip(str(error))


def restore_all(network: Network, hosts: Sequence[Host]) -> None:
    for host in hosts:
        with contextlib.suppress(NetnsError):
            network.restore(host)


def answer_from(pid: int, since: float) -> Callable[[Json], bool]:
    """Matches an answer from worker ``pid`` to a call sent after ``since`` (monotonic)."""
    return lambda e: e["ev"] == "answer" and e["pid"] == pid and e["sent"] > since


def _count(worker: WorkerProcess, text: str) -> int:
    return sum(text in line for line in list(worker.lines))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("outage", "silent"),
    [
        # cable pulled (w1's link loses carrier); back as soon as its jobs are answered
        pytest.param("brief", False, id="brief-unplugged"),
        # a partition further away (w1's link stays up, its packets vanish); back only once
        # w1 itself notices: its heartbeat fails (a socket timeout, then failed reconnects)
        pytest.param("long", True, id="long-partitioned"),
    ],
)
def test_worker_host_cut_off_under_load_then_back(
    hosts: Hosts, redis_binary: str, prefix: str, tmp_path: Path, outage: str, silent: bool
) -> None:
    network = hosts.network
    url = f"redis://{hosts.redis.address}:{REDIS_PORT}/0"
    env = dict(os.environ)
    env.pop("CONVEYOR_REDIS_URL", None)
    fleet = Fleet(url, prefix)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        redis_argv = [redis_binary, "--bind", hosts.redis.address, "--port", str(REDIS_PORT)]
        redis_argv += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        redis_argv += ["--daemonize", "no", "--dir", str(tmp_path), "--logfile", "/dev/stderr"]
        redis = WorkerProcess(hosts.redis.argv(redis_argv), env)
        stack.callback(redis.stop)
        redis.wait_for_log("Ready to accept connections", timeout=15)

        names = {h.role: f"{h.role}-{network.tag}" for h in (hosts.w1, hosts.w2)}

        def start_worker(host: Host) -> WorkerProcess:
            extra = ["--name", names[host.role], "--heartbeat-ttl", f"{TTL:g}"]
            extra += ["--concurrency", str(WORKER_CONCURRENCY), "--grace-period", "5"]
            worker = WorkerProcess(host.argv(fleet.argv(MODELS, extra=extra)), env)
            fleet.workers.append(worker)
            return worker

        stack.callback(fleet.stop)
        w1, w2 = start_worker(hosts.w1), start_worker(hosts.w2)
        # plug every host back in before stopping anything: a cut-off worker could not unregister
        stack.callback(restore_all, network, (hosts.w1, hosts.w2))
        w1.wait_for_log("worker.started")
        w2.wait_for_log("worker.started")

        stderr = stack.enter_context(open(tmp_path / "client-host.err", "w"))
        client = ClientHostProcess(hosts.client, url, prefix, stderr)
        stack.callback(client.close)
        client.wait_event(lambda e: e["ev"] == "ready", "start-up")
        setup_s = time.monotonic() - started

        # 1. both worker hosts do work
        burst = client.ask("burst", calls=BURST_CALLS, sleep=0.1)
        assert burst["failed"] == 0, burst
        assert set(burst["by_pid"]) == {str(w1.pid), str(w2.pid)}, burst

        # 2. under load (more calls at a time than one worker takes), unplug w1
        load_started = time.monotonic()
        client.ask("load_start", concurrency=LOAD_CONCURRENCY, sleep=LOAD_SLEEP_S)
        for worker in (w1, w2):
            client.wait_event(answer_from(worker.pid, load_started), f"{worker.pid} under load")
        client.ask("wait_pending", worker=names["w1"], min=1, timeout=10)
        in_flight = set(client.ask("in_flight")["ids"])
        w2_lines, w1_lines = len(w2.lines), len(w1.lines)
        cut_at = time.monotonic()
        network.cut(hosts.w1, silent=silent)
        # w1 can write nothing now: what it holds in Redis is what it was running (or had just
        # been handed); its heartbeat entry lasts up to a TTL, so nobody reclaims it yet
        held = set(client.ask("held", worker=names["w1"])["ids"])
        assert held, "w1 held no job when it was cut off"
        w2.wait_for_log("job.reclaimed", timeout=20, start=w2_lines)
        reclaimed_at = time.monotonic()
        held_done_at = client.wait_answered(held, "answers to the jobs w1 held")
        all_done_at = client.wait_answered(in_flight, "answers to every call in flight")
        answers = {e["id"]: e["pid"] for e in client.answers()}
        # A job w1 answered just before the cut is pending still (its ack rides with the next
        # answer, or goes 50 ms later): that answer is w1's. w2 finished every other one.
        unanswered = {r for r in held if answers[r] != w1.pid}
        assert unanswered, "w1 held no unanswered job when it was cut off"
        assert {answers[r] for r in unanswered} == {w2.pid}, "w1's jobs were not finished by w2"
        assert _count(w2, "job.reclaimed") >= len(held)
        client.ask("wait_gone", worker=names["w1"], timeout=5)
        if outage == "long":
            w1.wait_for_log("worker.heartbeat_failed", timeout=60, start=w1_lines)
        # the fleet keeps serving while w1 is away: answers seen after the reclaim are w2's
        client.wait_event(answer_from(w2.pid, reclaimed_at), "answers during the cut")
        during = [e for e in client.answers() if e["at"] > reclaimed_at]
        assert {e["pid"] for e in during} == {w2.pid}, during

        # 3. plug w1 back in: it rejoins and answers again; no caller gets a second answer
        restored_at, restored_wall = time.monotonic(), time.time()
        network.restore(hosts.w1)
        beat = client.ask("wait_heartbeat", worker=names["w1"], after=restored_wall, timeout=60)
        back = client.wait_event(answer_from(w1.pid, restored_at), "w1 answers again", 60)
        summary = client.ask("load_stop")
        client.ask("wait_drained", timeout=15)
        leftovers = client.ask("late_replies")["replies"]

        events = client.answers()
        assert summary["errors"] == {}, summary["errors"]
        assert summary["mismatched"] == [], summary["mismatched"]
        assert summary["duplicates"] == {}, summary["duplicates"]
        assert summary["missing"] == [], summary["missing"]
        assert summary["answered"] == summary["sent"] == len(events)
        assert len({e["id"] for e in events}) == len(events)  # each request answered once
        # replies Redis got after their caller had its answer: w1's, written once it was back
        late = [r for r in leftovers if r.get("pid") != r.get("answered_by")]
        for reply in late:
            assert reply.get("answers") == 1, reply  # ... and not taken a second time
        load = Counter(e["pid"] for e in events if e["sent"] >= load_started)
        bursts = Counter({int(pid): n for pid, n in burst["by_pid"].items()})
        late_held = sum(r["id"] in held for r in late)
        attempts = sorted(Counter(r.get("attempt") for r in late).items())
        how = "partitioned" if silent else "unplugged"
        figures = [
            f"multihost [{outage}, {how}]: setup {setup_s:.1f}s (4 namespaces, redis,"
            f" 2 workers, client); burst of {BURST_CALLS}: w1 {bursts[w1.pid]},"
            f" w2 {bursts[w2.pid]}",
            f"  load: {summary['sent'] - BURST_CALLS} calls, {LOAD_CONCURRENCY} at a time:"
            f" w1 {load[w1.pid]}, w2 {load[w2.pid]}; {len(events)} answers for"
            f" {summary['sent']} calls: 0 duplicates, 0 missing, 0 errors",
            f"  cut: w1 held {len(held)} jobs ({len(in_flight)} calls in flight); w2's first"
            f" reclaim after {reclaimed_at - cut_at:.1f}s, w1's jobs answered by w2 after"
            f" {held_done_at - cut_at:.1f}s, every call in flight after"
            f" {all_done_at - cut_at:.1f}s; w2 reclaimed {_count(w2, 'job.reclaimed')} jobs;"
            f" {len(during)} answers after the reclaim, all w2's; cut for"
            f" {restored_at - cut_at:.1f}s",
            f"  back: w1's heartbeat after {beat['waited']:.1f}s, it answers after"
            f" {back['at'] - restored_at:.1f}s; late replies in Redis: {len(late)}"
            f" ({late_held} for jobs w1 held; attempts {attempts}), none taken by a caller;"
            f" w1 logged heartbeat_failed {_count(w1, 'heartbeat_failed')},"
            f" redis_unavailable {_count(w1, 'redis_unavailable')},"
            f" job.unfinished {_count(w1, 'job.unfinished')}",
            f"  total {time.monotonic() - started:.1f}s",
        ]
        print("\n" + "\n".join(figures))


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    url, prefix, client_id = sys.argv[2:5]
    anyio.run(_client_host, url, prefix, client_id)
