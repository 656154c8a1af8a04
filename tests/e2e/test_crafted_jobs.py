"""Crafted job entries (issue 12, section 6): a producer who can write to one job stream must
not make a worker write to, expire or pop keys the job's own client and request do not name,
nor run another model's code, nor decode an oversized entry.

One worker subprocess over ``tests/models`` serves the module; each test XADDs a crafted entry
straight to Redis under the module's own key prefix, with victim keys of its own outside it,
and checks the victims are untouched and the entry is dead-lettered with a readable reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.typing import EncodableT, FieldT

from conveyor.broker.keys import Keys
from conveyor.broker.wire import Job, MessageType, decode_message, encode_job
from tests.support.calls import request
from tests.support.fleet import MODELS, Fleet, WorkerProcess

pytestmark = pytest.mark.timeout(60)

SMALL_LIMIT = 4096  # max_payload_bytes of tests/models/small-limit


@dataclass
class Served:
    keys: Keys
    worker: WorkerProcess
    probe: redis.Redis


@pytest.fixture(scope="module")
def served(redis_url: str) -> Iterator[Served]:
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")  # module scope: a prefix of the fixture's form
    fleet = Fleet(redis_url, keys.prefix)
    probe = redis.Redis.from_url(redis_url)
    try:
        yield Served(keys, fleet.start(MODELS), probe)
    finally:
        probe.close()
        fleet.stop()


def job(keys: Keys, model: str = "echo", method: str = "predict", timeout: float = 5) -> Job:
    """A well-formed job as a client sends it (client id and request id of its own)."""
    client_id, request_id = uuid.uuid4().hex[:12], uuid.uuid4().hex
    now = time.time()
    streamed = method == "predict_stream"
    return Job(
        id=request_id,
        method=method,
        model=model,
        version=None,
        reply=keys.reply(client_id, request_id),
        bell=keys.bell(client_id),
        deadline=now + timeout,
        sent_at=now,
        args=(request(1.0),),
        credit=keys.credit(client_id, request_id) if streamed else None,
        window=1 if streamed else 0,
        inline_reply=not streamed,
    )


def wait_entry(
    probe: redis.Redis, stream: str, match: Callable[[dict[bytes, bytes]], bool], timeout: float
) -> dict[bytes, bytes]:
    """The first entry of ``stream`` that ``match``es, waiting with XREAD BLOCK (bounded)."""
    cursor: bytes | str = "0-0"
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        answer: Any = probe.xread({stream: cursor}, count=100, block=int(min(left, 1) * 1000) + 1)
        for _, found in answer or []:
            for entry_id, fields in found:
                cursor = entry_id
                if match(fields):
                    return dict(fields)
    raise TimeoutError(f"no matching entry in {stream} after {timeout:.0f}s")


def dead_letter_of(served: Served, stream: str, entry_id: bytes) -> str:
    """The reason of the dead letter of ``entry_id`` (the stream's own dead-letter stream)."""
    dead = served.keys.dead(stream.split("{", 1)[1].split("}", 1)[0])
    letter = wait_entry(served.probe, dead, lambda f: f.get(b"dead_entry") == entry_id, 20)
    return letter[b"dead_reason"].decode()


@dataclass
class Victims:
    """Keys of another application, outside the prefix, and another model's queued job."""

    string: str
    newlist: str
    queue: str
    stream: str
    other_jobs: str

    def snapshot(self, probe: redis.Redis) -> dict[int, object]:
        pipe = probe.pipeline(transaction=False)
        for key in (self.string, self.newlist, self.queue, self.stream, self.other_jobs):
            pipe.exists(key)
            pipe.pttl(key)
        pipe.get(self.string)
        pipe.lrange(self.queue, 0, -1)
        pipe.xrange(self.stream)
        pipe.xrange(self.other_jobs)
        return dict(enumerate(pipe.execute()))


@pytest.fixture
def victims(served: Served) -> Iterator[Victims]:
    tag = uuid.uuid4().hex[:8]
    found = Victims(
        string=f"victim-{tag}:string",
        newlist=f"victim-{tag}:newlist",
        queue=f"victim-{tag}:queue",
        stream=f"victim-{tag}:stream",
        other_jobs=served.keys.jobs(f"other-{tag}"),
    )
    probe = served.probe
    probe.set(found.string, "precious")
    probe.rpush(found.queue, "task-1", "task-2", "task-3")
    probe.xadd(found.stream, {"secret": "s3cr3t"})
    probe.xadd(found.other_jobs, encode_job(job(served.keys, model=f"other-{tag}")))  # type: ignore[arg-type]
    yield found
    probe.delete(found.string, found.newlist, found.queue, found.stream, found.other_jobs)


# field -> (method of the job, which victim key it names)
CRAFTED = {
    "reply-string": ("predict", "reply", "string"),
    "reply-other-models-jobs": ("predict", "reply", "other_jobs"),
    "bell-newlist": ("predict", "bell", "newlist"),
    "bell-other-models-jobs": ("predict", "bell", "other_jobs"),
    "credit-queue": ("predict_stream", "credit", "queue"),
    "inputs-stream": ("predict_stream", "inputs", "stream"),
}


@pytest.mark.parametrize(
    ("case", "stream_kind"),
    [(case, "jobs") for case in CRAFTED]
    # a control request (load, unload, cancel) has a reply and a bell, no credit nor inputs
    + [(case, "control") for case, (method, _, _) in CRAFTED.items() if method == "predict"],
)
def test_crafted_keys_are_refused_and_the_victims_untouched(
    served: Served, victims: Victims, case: str, stream_kind: str
) -> None:
    method, field, victim = CRAFTED[case]
    model = "ticker" if method == "predict_stream" else "echo"
    if stream_kind == "control":
        method = "load"
    keys, probe, worker = served.keys, served.probe, served.worker
    before = victims.snapshot(probe)
    crafted = job(keys, model=model, method=method)._replace(**{field: getattr(victims, victim)})
    stream = keys.jobs(model) if stream_kind == "jobs" else keys.control(model)
    start = len(worker.lines)
    entry_id = probe.xadd(stream, encode_job(crafted))  # type: ignore[arg-type]
    assert isinstance(entry_id, bytes)

    if stream_kind == "jobs":
        reason = dead_letter_of(served, stream, entry_id)
        assert f"field {field!r}" in reason, reason
        assert getattr(victims, victim) in reason, reason
        assert reason.isprintable()
    else:  # read by every worker, in no group: refused with a log line
        line = worker.wait_for_log("control.refused", timeout=10, start=start)
        assert f"field {field!r}" in line, line
    # Nothing was written: the worker cannot write to keys it has not validated, and a
    # real job afterwards is answered (so the crafted one was handled first).
    honest = job(keys)
    probe.xadd(keys.jobs("echo"), encode_job(honest))  # type: ignore[arg-type]
    answer = probe.blmpop(10, 1, honest.bell, direction="RIGHT", count=1)
    assert answer, "the worker stopped answering"
    assert victims.snapshot(probe) == before
    assert not probe.exists(crafted.reply) or field == "reply"  # no answer anywhere
    assert worker.process.poll() is None


def test_a_reply_to_another_client_is_refused(served: Served) -> None:
    """The bell of another client than the reply stream's: both are under the prefix, but
    they do not belong to one client."""
    keys, probe = served.keys, served.probe
    honest = job(keys)
    crafted = honest._replace(bell=keys.bell("someone-else"))
    entry_id = probe.xadd(keys.jobs("echo"), encode_job(crafted))  # type: ignore[arg-type]
    assert isinstance(entry_id, bytes)
    reason = dead_letter_of(served, keys.jobs("echo"), entry_id)
    assert "field 'bell'" in reason
    assert keys.bell("someone-else") in reason
    assert not probe.exists(keys.bell("someone-else"))
    assert not probe.exists(honest.reply)


def test_a_job_naming_another_model_is_refused(served: Served) -> None:
    """The stream decides: a job on echo's stream whose ``model`` field says ``counter``
    must not run the counter model (another model's code, limits and ACL)."""
    keys, probe = served.keys, served.probe
    crafted = job(keys, model="counter")
    stream = keys.jobs("echo")
    entry_id = probe.xadd(stream, encode_job(crafted))  # type: ignore[arg-type]
    assert isinstance(entry_id, bytes)
    reason = dead_letter_of(served, stream, entry_id)
    assert "'counter'" in reason, reason
    assert "'echo'" in reason, reason
    # the caller hears why (its reply keys are its own)
    message = decode_message(wait_entry(probe, crafted.reply, lambda f: True, 10))
    assert message.type is MessageType.ERROR
    assert message.error is not None
    assert "'counter'" in message.error.message


def test_a_version_stream_decides_the_version(served: Served) -> None:
    """A job on echo's ``v1`` stream asking for version ``v9`` is refused, not served by
    whatever answers ``v9`` (or reported as a model nobody serves)."""
    keys, probe = served.keys, served.probe
    crafted = job(keys)._replace(version="v9")
    stream = keys.jobs("echo", "v1")
    entry_id = probe.xadd(stream, encode_job(crafted))  # type: ignore[arg-type]
    assert isinstance(entry_id, bytes)
    reason = dead_letter_of(served, stream, entry_id)
    assert "'v9'" in reason, reason
    assert "'v1'" in reason, reason


def test_an_oversized_entry_is_refused_before_it_is_decoded(served: Served) -> None:
    """Sizes are checked before any msgpack decode: an entry over the model's limit whose
    envelope is not even msgpack is refused for its size (a decode would have said "not
    valid msgpack" first, after allocating what the envelope describes)."""
    keys, probe = served.keys, served.probe
    crafted = job(keys, model="small-limit")
    fields: dict[FieldT, EncodableT] = dict(encode_job(crafted).items())
    fields["envelope"] = b"\xc1" * (2 * SMALL_LIMIT)  # 0xc1: never valid msgpack
    stream = keys.jobs("small-limit")
    entry_id = probe.xadd(stream, fields)
    assert isinstance(entry_id, bytes)
    reason = dead_letter_of(served, stream, entry_id)
    assert f"over the limit of {SMALL_LIMIT} bytes" in reason, reason
    assert "msgpack" not in reason


def test_a_memory_bomb_envelope_is_refused_before_it_is_decoded(served: Served) -> None:
    """An envelope of 64 KiB over a model limit of 4 KiB that would decode into a list of
    millions of objects is refused by its size."""
    keys, probe = served.keys, served.probe
    crafted = job(keys, model="small-limit")
    fields: dict[FieldT, EncodableT] = dict(encode_job(crafted).items())
    # a map {"v": 1, "args": [[nil x 65_000]]}: ~65 KB on the wire, ~520 KB of pointers
    bomb = b"\x82\xa1v\x01\xa4args\x91\xdd" + (65_000).to_bytes(4, "big") + b"\xc0" * 65_000
    fields["envelope"] = bomb
    stream = keys.jobs("small-limit")
    entry_id = probe.xadd(stream, fields)
    assert isinstance(entry_id, bytes)
    reason = dead_letter_of(served, stream, entry_id)
    assert f"over the limit of {SMALL_LIMIT} bytes" in reason, reason
