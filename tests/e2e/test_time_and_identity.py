"""Time and identity (issue 12, section 7): hosts' clocks differ, and callers pick client ids.

- A client or a worker whose wall clock is off by seconds or a minute, either way, is served
  as any other: deadlines are measured on Redis's clock from when Redis stored the job
  (``worker/clock.py``), never by comparing two hosts' clocks. The processes are real, with
  their clock moved by ``tests/skewed_clock.py``.
- Two processes that both say ``client_id="api"`` each get their own answers.

Real Redis; workers and skewed clients as real subprocesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, Message, MessageType, decode_message, encode_job
from conveyor.client import Client
from conveyor.errors import DeadlineExceeded
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet, WorkerProcess
from tests.support.probe import entries, last_entries

pytestmark = pytest.mark.timeout(90)

ECHO = MODELS / "echo"
SKEWED = Path(__file__).parents[1] / "support" / "skewed_clock.py"
DATA = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.5]}]}


def start_skewed_worker(fleet: Fleet, skew: float, *extra: str) -> WorkerProcess:
    """A worker of ``echo`` whose wall clock reads ``skew`` seconds off."""
    python, *rest = fleet.argv(ECHO, extra=extra)
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    worker = WorkerProcess([python, str(SKEWED), str(skew), *rest], env)
    fleet.workers.append(worker)
    worker.wait_for_log("worker.started")
    return worker


def value_of(response: Any) -> float:
    return float(np.asarray(response.outputs[0].data.root).ravel()[0])


def crafted_job(keys: Keys, client_clock: float, timeout: float, **params: Any) -> Job:
    """A job as a client whose clock reads ``client_clock`` now sends it."""
    client_id, request_id = uuid.uuid4().hex[:12], uuid.uuid4().hex
    return Job(
        id=request_id,
        method="predict",
        model="echo",
        version=None,
        reply=keys.reply(client_id, request_id),
        bell=keys.bell(client_id),
        deadline=client_clock + timeout,
        sent_at=client_clock,
        args=(request(2.0, **params),),
    )


def answer_of(probe: redis.Redis, job: Job, timeout: float = 20) -> Message:
    """The job's answer, from its reply stream (read once its doorbell rang)."""
    assert probe.blmpop(timeout, 1, job.bell, direction="RIGHT", count=1), "no answer"
    [(_, fields)] = entries(probe, job.reply, count=1)
    return decode_message(fields)


# -- deadlines under clock skew --------------------------------------------------------------


@pytest.mark.parametrize("skew", [-60.0, -5.0, 60.0])
def test_a_client_whose_clock_is_off_is_served(
    fleet: Fleet, redis_url: str, prefix: str, skew: float
) -> None:
    """``conveyor infer`` on a host whose clock is a minute or 5 s behind (or a minute
    ahead), with a 3 s timeout: answered, by predict and by predict_stream (before: the
    worker skipped every job of a client behind it as already past its deadline)."""
    fleet.start(ECHO)
    for stream in ([], ["--stream"]):
        argv = [sys.executable, str(SKEWED), str(skew), "-m", "conveyor.cli", "infer", "echo"]
        argv += ["--data", json.dumps(DATA), "--timeout", "3", *stream]
        argv += ["--redis", redis_url, "--prefix", prefix]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        response = json.loads(done.stdout.splitlines()[0])
        assert response["outputs"][0]["data"] == [1.5]


CONTROL = """
import sys
import anyio
from conveyor.client import Client

async def main():
    async with Client(sys.argv[1], prefix=sys.argv[2], timeout=5) as client:
        echo = client.model("echo")
        print(await echo.unload(), await echo.load())

anyio.run(main)
"""


def test_a_client_whose_clock_is_off_can_unload_and_load(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    """Control requests (load, unload, cancel) have deadlines too (before: a client a minute
    behind was ignored by every worker)."""
    fleet.start(ECHO)
    argv = [sys.executable, str(SKEWED), "-60", "-c", CONTROL, redis_url, prefix]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


@pytest.mark.parametrize("skew", [-60.0, 60.0])
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_worker_whose_clock_is_off_serves_and_stops_on_time(
    fleet: Fleet, probe: redis.Redis, redis_url: str, prefix: str, skew: float
) -> None:
    """A worker whose clock is a minute ahead serves (before: it skipped every job); one a
    minute behind still stops a job at its deadline (before: a minute late)."""
    worker = start_skewed_worker(fleet, skew)
    async with Client(redis_url, prefix=prefix, timeout=3) as client:
        echo = client.model("echo")
        assert value_of(await echo.predict(request(4.0))) == 4.0

        async def one() -> Any:
            yield request(5.0)

        assert [value_of(chunk) async for chunk in echo.predict_stream(one())] == [5.0]
    # No caller waits to cancel it: only its deadline can stop a job of 60 s with 1.5 s.
    keys = Keys(prefix)
    job = crafted_job(keys, time.time(), 1.5, sleep=60)
    probe.xadd(keys.jobs("echo"), encode_job(job))  # type: ignore[arg-type]
    line = await anyio.to_thread.run_sync(worker.wait_for_log, f"request={job.id}", 15)
    assert "job.stopped" in line
    assert "reason=deadline" in line
    message = answer_of(probe, job)
    assert message.error is not None
    assert message.error.code == "deadline"
    assert "1.5s timeout" in message.error.message


@pytest.mark.parametrize("skew", [-60.0, 60.0])
def test_a_job_that_waited_past_its_timeout_is_skipped_whatever_the_clocks(
    fleet: Fleet, probe: redis.Redis, prefix: str, skew: float
) -> None:
    """A job whose 1 s went by while the only worker was busy is skipped, and its caller
    told how long it waited, though its client's clock is a minute off (before: a client a
    minute ahead had its job run after its caller had given up)."""
    worker = fleet.start(ECHO, extra=["--concurrency", "1"])
    keys = Keys(prefix)
    busy = crafted_job(keys, time.time(), 30, sleep=2.0)
    late = crafted_job(keys, time.time() + skew, 1.0)
    probe.xadd(keys.jobs("echo"), encode_job(busy))  # type: ignore[arg-type]
    probe.xadd(keys.jobs("echo"), encode_job(late))  # type: ignore[arg-type]
    assert answer_of(probe, busy).type is MessageType.RESULT
    message = answer_of(probe, late)
    assert message.error is not None, message
    assert message.error.code == "deadline"
    assert "past its 1.0s timeout" in message.error.message
    assert "job.expired" in worker.wait_for_log(f"request={late.id}", 10)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_job_sent_again_keeps_only_the_time_its_caller_has_left(
    fleet: Fleet, probe: redis.Redis, redis_url: str, prefix: str
) -> None:
    """A queued job Redis lost is sent again by the client (its resync) with the time its
    caller has left, not its whole timeout again (before: the same deadline and sent_at, so
    a worker counting the budget from the new entry gave it all of it)."""
    fleet.start(ECHO, extra=["--concurrency", "1"])
    stream = Keys(prefix).jobs("echo")
    answers: list[float] = []
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        echo = client.model("echo")

        async def call(value: float, sleep: float) -> None:
            payload = request(value, sleep=sleep) if sleep else request(value)
            answers.append(value_of(await echo.predict(payload, timeout=15)))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, 1.0, 3.0)  # keeps the only worker busy 3 s
            with anyio.fail_after(10):
                while probe.xpending(stream, "workers")["pending"] < 1:  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # watching Redis, which has no event to await
            tg.start_soon(call, 2.0, 0.0)
            with anyio.fail_after(10):
                while probe.xlen(stream) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # watching Redis: the second waits its turn
            [(queued_id, first)] = last_entries(probe, stream)
            probe.xdel(stream, queued_id)  # as if Redis lost it in a crash
            for connection in probe.client_list():  # the client notices: its reader resyncs
                if connection["name"] == f"conveyor-client-{client.client_id}":
                    probe.client_kill_filter(_id=connection["id"])
            with anyio.fail_after(10):
                while not (again := entries(probe, stream, f"({queued_id.decode()}")):  # noqa: ASYNC110
                    await anyio.sleep(0.01)  # watching Redis for the job sent again
    [(_, resent)] = again
    assert resent[b"attempt"] == b"2"
    assert resent[b"deadline"] == first[b"deadline"]  # the caller's deadline, as it was
    budget = float(resent[b"deadline"]) - float(resent[b"sent_at"])
    assert budget < float(first[b"deadline"]) - float(first[b"sent_at"])
    assert sorted(answers) == [1.0, 2.0]


def test_a_deadline_the_worker_reports_does_not_claim_a_wait() -> None:
    """The worker said the deadline passed (it may say so at once): the error says what
    happened, not "no answer within 10.0s"."""
    from conveyor.client.results import result as _result

    keys = Keys("t")
    job = crafted_job(keys, time.time(), 10.0)
    text = "the job waited 10.2s in its queue, past its 10.0s timeout, ...; it was skipped"
    message = Message(
        MessageType.ERROR, job.id, 1, error=_error_info("deadline", "DeadlineExceeded", text)
    )
    with pytest.raises(DeadlineExceeded) as caught:
        _result(job, message)
    assert "within" not in str(caught.value)
    assert text in str(caught.value)
    assert caught.value.timeout_s == 10.0


def _error_info(code: str, type_name: str, text: str) -> Any:
    from conveyor.broker.wire import ErrorInfo

    return ErrorInfo(code, type_name, text)


# -- client ids ------------------------------------------------------------------------------

CALLER = """
import json, sys
import anyio
import numpy as np
from conveyor.client import Client
from conveyor.types import InferenceRequest, RequestInput

url, prefix, base = sys.argv[1], sys.argv[2], float(sys.argv[3])

def request(value):
    data = np.full(1, value, "f4")
    return InferenceRequest(inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=data)])

async def main():
    counts = {"right": 0, "wrong": 0, "errors": 0}
    async with Client(url, prefix=prefix, client_id="api", timeout=10) as client:
        echo = client.model("echo")
        await echo.predict(request(base))  # connected, and the model is served
        print(json.dumps({"ready": client.client_id}), flush=True)
        sys.stdin.readline()  # both processes call at once
        limit = anyio.CapacityLimiter(20)

        async def call(value):
            async with limit:
                try:
                    response = await echo.predict(request(value))
                except Exception:
                    counts["errors"] += 1
                    return
            got = float(np.asarray(response.outputs[0].data.root).ravel()[0])
            counts["right" if got == value else "wrong"] += 1

        async with anyio.create_task_group() as tg:
            for i in range(300):
                tg.start_soon(call, base + i)
    print(json.dumps(counts), flush=True)

anyio.run(main)
"""


def test_two_processes_with_one_client_id_each_get_their_own_answers(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    """``Client(url, client_id="api")`` in two processes at once: every answer is the
    caller's own (before: 232 of 600 calls got the other process's answer)."""
    fleet.start(ECHO)
    argv = [sys.executable, "-c", CALLER, redis_url, prefix]
    callers = [
        subprocess.Popen(
            [*argv, str(base)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for base in (1000.0, 5000.0)
    ]
    try:
        ids = []
        for caller in callers:
            assert caller.stdout is not None
            ids.append(json.loads(caller.stdout.readline())["ready"])
        for caller in callers:
            assert caller.stdin is not None
            caller.stdin.write("go\n")
            caller.stdin.flush()
        results = []
        for caller in callers:
            out, _ = caller.communicate(timeout=60)
            results.append(json.loads(out.splitlines()[-1]))
    finally:
        for caller in callers:
            if caller.poll() is None:
                caller.kill()
                caller.wait()
    assert results == [{"right": 300, "wrong": 0, "errors": 0}] * 2
    assert ids[0] != ids[1]
    assert all(client_id.startswith("api-") for client_id in ids)


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "tab\there"])
def test_a_client_id_that_cannot_name_keys_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="client_id"):
        Client("redis://127.0.0.1:1/0", client_id=bad)
