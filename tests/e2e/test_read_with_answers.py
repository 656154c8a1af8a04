"""End to end: once a worker's read takes several jobs, its next read rides with their answers
(one round trip answers them and takes the next jobs; broker/worker_streams.py,
``reads_ride``). Redis's MONITOR shows it: an XREADGROUP without BLOCK (the worker's only one,
for a single model that does not batch) right after the answers' commands, from the same
connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

import pytest
import redis

from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, MessageType, decode_message, encode_job, read_rung
from conveyor.embedded import RedisServer
from conveyor.types import InferenceRequest, RequestInput
from tests.support.fleet import MODELS, Fleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)


class Monitor:
    """The commands Redis ran, as MONITOR shows them, until stopped."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self.commands: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._marker = f"monitor-stop-{uuid4().hex}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        with self._client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            for command in monitor.listen():
                if self._marker in command["command"]:
                    return
                self.commands.append(command)

    def stop(self, url: str) -> None:
        """Stops once every command Redis ran before this call is listed: MONITOR shows them
        in order, and the listener may be behind (a flag, not a marker, lost the worker's
        answers on a busy machine)."""
        with redis.Redis.from_url(url) as poke:
            poke.echo(self._marker)
        self._thread.join(10)
        assert not self._thread.is_alive(), "MONITOR never showed the marker"
        self._client.close()


def job(prefix: str, n: int) -> Job:
    keys = Keys(prefix)
    request_id = f"{uuid4().hex}-{n}"
    request = InferenceRequest(
        inputs=[RequestInput(name="x", shape=[1], datatype="FP32", data=[float(n)])]
    )
    now = time.time()
    return Job(
        request_id,
        "predict",
        "echo",
        None,
        keys.reply("c", request_id),
        keys.bell("c"),
        now + 30,
        now,
        args=(request,),
        inline_reply=True,
    )


def test_the_read_after_a_read_of_several_jobs_rides_with_their_answers(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    server = redis_server_factory()
    prefix = f"t{uuid4().hex[:10]}"
    keys = Keys(prefix)
    jobs = [job(prefix, n) for n in range(4)]
    with Fleet(server.url, prefix) as fleet, redis.Redis.from_url(server.url) as probe:
        fleet.start(MODELS / "echo", extra=["--concurrency", "32"])
        monitor = Monitor(server.url)
        try:
            # in one transaction: the worker's read takes the four jobs at once
            with probe.pipeline(transaction=True) as pipe:
                for each in jobs:
                    pipe.xadd(keys.jobs("echo"), encode_job(each))
                pipe.execute()
            wait_until(lambda: probe.llen(keys.bell("c")) == 4, "the four answers")
            rung = read_rung(probe.lrange(keys.bell("c"), 0, -1))
        finally:
            monitor.stop(server.url)
    answers = [decode_message(fields) for fields in rung.messages]
    assert sorted(message.id for message in answers) == sorted(each.id for each in jobs)
    assert {message.type for message in answers} == {MessageType.RESULT}
    bell = keys.bell("c")
    last_of: dict[int, str] = {}  # each connection's command before the current one
    riding = []
    for command in monitor.commands:
        text, port = command["command"], command["client_port"]
        # a read that does not block, sent right after the answers' commands (their bell's
        # EXPIRE ends them) on the same connection: in their pipeline
        after_answers = last_of.get(port, "").startswith(f"EXPIRE {bell}")
        if text.startswith("XREADGROUP") and "BLOCK" not in text and after_answers:
            riding.append(text)
        last_of[port] = text
    assert riding, "\n".join(c["command"][:100] for c in monitor.commands)
