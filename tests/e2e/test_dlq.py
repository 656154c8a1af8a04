"""``conveyor dlq``: dead letters made as production makes them, then listed, shown, sent again
and deleted through the command line. Real Redis; workers as real subprocesses where a test
needs one to dead-letter or to answer. Every wait blocks on Redis (XREAD BLOCK) or on a
worker's log line, never on a sleep.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any, cast
from uuid import uuid4

import anyio
import numpy as np
import pytest
import redis
from typer.testing import CliRunner, Result

from conveyor.broker import RedisSettings, create_client
from conveyor.broker.keys import Keys
from conveyor.broker.ops import dead_letters as admin
from conveyor.broker.wire import Fields, Job, MessageType, decode_message, encode_job
from conveyor.cli.app import app
from conveyor.types import InferenceRequest, InferenceResponse, RequestInput
from tests.support.fleet import MODELS, Fleet, wait_acked

MODEL = "echo"
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"  # port 1: nothing listens, connect is refused
TENSOR = np.arange(4096, dtype="<f4")  # 16 KiB: travels as its own raw field, t0


# -- helpers ---------------------------------------------------------------------------------


def dlq(redis_url: str, prefix: str, *args: str, stdin: str | None = None) -> Result:
    """``conveyor dlq ARGS --redis URL --prefix PREFIX`` in-process, on a wide terminal."""
    argv = ["dlq", *args, "--redis", redis_url, "--prefix", prefix]
    return CliRunner().invoke(app, argv, input=stdin, env={"COLUMNS": "250"})


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def error_line(result: Result) -> str:
    """The one ``error: ...`` line a failed command prints on stderr (and no traceback)."""
    assert result.exit_code == 1, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def wait_entries(
    probe: redis.Redis, key: str, count: int, after: bytes = b"0-0", timeout: float = 20.0
) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Blocks (XREAD BLOCK) until ``count`` entries after ``after`` are in ``key``."""
    found: list[tuple[bytes, dict[bytes, bytes]]] = []
    deadline = time.monotonic() + timeout
    while len(found) < count:
        left_ms = int((deadline - time.monotonic()) * 1000)
        assert left_ms > 0, f"{len(found)} of {count} entries in {key} after {timeout}s"
        reply = cast(Any, probe.xread({key: after}, count=count, block=left_ms))
        for _, entries in reply or []:
            found += entries
            after = entries[-1][0]
    return found


def job_fields(
    keys: Keys, request_id: str, *, span: float = 10.0, age: float = 0.0
) -> tuple[Job, Fields]:
    """A real ``predict`` job for the echo model, sent ``age`` seconds ago with ``span``
    seconds to run (so ``age > span`` makes a job whose deadline has passed)."""
    client_id = uuid4().hex[:8]
    sent_at = time.time() - age
    job = Job(
        id=request_id,
        method="predict",
        model=MODEL,
        version=None,
        reply=keys.reply(client_id, request_id),
        bell=keys.bell(client_id),
        deadline=sent_at + span,
        sent_at=sent_at,
        args=(
            InferenceRequest(
                inputs=[RequestInput(name="x", shape=[4096], datatype="FP32", data=TENSOR)]
            ),
        ),
    )
    return job, encode_job(job)


def bury(
    probe: redis.Redis,
    keys: Keys,
    fields: Mapping[str, Any],
    *,
    reason: str = "delivered 4 times (max_deliveries=3); each worker that took it stopped",
    dead_from: str | None = None,
) -> str:
    """XADDs a dead letter as ``WorkerStreams.dead_letter`` writes one: the ``dead_*`` fields
    first, then the job's own; returns its entry id."""
    dead: dict[Any, Any] = {
        "dead_reason": reason,
        "dead_at": f"{time.time():.3f}",
        "dead_from": dead_from or keys.jobs(MODEL),
        "dead_entry": "1700000000000-0",
        "dead_deliveries": "4",
        "dead_consumer": "worker-a",
    }
    dead.update(fields)
    return cast(bytes, probe.xadd(keys.dead(MODEL), dead)).decode()


def xrange(probe: redis.Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """Every entry of ``key`` (redis-py's stubs allow str and None; this client gives bytes)."""
    return cast(list[tuple[bytes, dict[bytes, bytes]]], probe.xrange(key))


def as_bytes(fields: Fields) -> dict[bytes, bytes]:
    """An entry's fields as Redis returns them."""
    return {
        name.encode(): value.encode() if isinstance(value, str) else bytes(cast(Any, value))
        for name, value in fields.items()
    }


# -- dead letters written by a worker ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_worker_dead_letters_garbage_then_list_show_and_retry(
    redis_url: str, prefix: str, probe: redis.Redis, fleet: Fleet
) -> None:
    keys = Keys(prefix)
    fleet.start(MODELS)
    probe.xadd(keys.jobs(MODEL), {"id": "x", "junk": "1"})
    [(first, dead)] = wait_entries(probe, keys.dead(MODEL), 1)
    consumer = dead[b"dead_consumer"].decode()
    assert consumer

    text = ok(dlq(redis_url, prefix, "list", MODEL))
    assert f"1 dead letter in {keys.dead(MODEL)}" in text
    row = next(line for line in text.splitlines() if line.startswith(first.decode()))
    for cell in ("x", "bad entry", consumer):
        assert cell in row, text
    assert text.splitlines()[1].split() == [
        *("entry", "request", "method", "tries", "dead", "at", "(UTC)", "consumer", "reason")
    ]  # no "from" column: it came from the model's stream

    listed = json.loads(ok(dlq(redis_url, prefix, "list", MODEL, "--json")))
    assert listed["total"] == 1
    assert listed["stream"] == keys.dead(MODEL)
    [entry] = listed["entries"]
    assert entry["entry_id"] == first.decode()
    assert entry["request_id"] == "x"
    assert entry["method"] is None
    assert entry["reason"].startswith("bad entry: ")
    assert entry["deliveries"] == 1
    assert entry["from_stream"] == keys.jobs(MODEL)
    assert entry["consumer"] == consumer
    assert abs(entry["dead_at"] - time.time()) < 60

    shown = json.loads(ok(dlq(redis_url, prefix, "show", MODEL, first.decode(), "--json")))
    assert shown["entry_id"] == first.decode()
    assert shown["fields"]["id"] == "x"
    assert shown["fields"]["junk"] == "1"
    assert shown["fields"]["dead_reason"] == entry["reason"]
    assert shown["binary"] == {}
    lines = ok(dlq(redis_url, prefix, "show", MODEL, first.decode())).splitlines()
    assert lines[0].split() == ["entry", first.decode()]
    assert ["junk", "1"] in [line.split() for line in lines]

    # Sent again, garbage dies again: a new dead letter in place of the old one.
    assert ok(dlq(redis_url, prefix, "retry", MODEL, "--all")).startswith("retried 1 dead letter")
    [(second, again)] = wait_entries(probe, keys.dead(MODEL), 1, after=first)
    assert again[b"junk"] == b"1"
    assert again[b"dead_reason"] == dead[b"dead_reason"]
    listed = json.loads(ok(dlq(redis_url, prefix, "list", MODEL, "--json")))
    assert [e["entry_id"] for e in listed["entries"]] == [second.decode()]


@pytest.mark.timeout(60)
def test_retried_job_is_answered_by_a_worker(
    redis_url: str, prefix: str, probe: redis.Redis, fleet: Fleet
) -> None:
    keys = Keys(prefix)
    # Its deadline passed long ago: only a fresh one gets it run rather than refused.
    job, fields = job_fields(keys, "req-1", span=10.0, age=300.0)
    entry_id = bury(probe, keys, fields)

    shown = json.loads(ok(dlq(redis_url, prefix, "show", MODEL, entry_id, "--json")))
    assert shown["binary"]["t0"] == TENSOR.nbytes
    assert shown["binary"]["envelope"] == len(cast(bytes, fields["envelope"]))
    assert shown["fields"]["method"] == "predict"
    text = ok(dlq(redis_url, prefix, "show", MODEL, entry_id))
    assert f"<{TENSOR.nbytes} bytes>" in text

    fleet.start(MODELS)
    assert ok(dlq(redis_url, prefix, "retry", MODEL, entry_id)) == (
        f"retried 1 dead letter of model {MODEL!r}\n"
    )
    [(_, raw)] = wait_entries(probe, job.reply, 1)
    message = decode_message(raw)
    assert message.type is MessageType.RESULT, message.error
    assert message.id == "req-1"
    assert isinstance(message.payload, InferenceResponse)
    output = np.asarray(message.payload.outputs[0].data.root)
    np.testing.assert_array_equal(output.ravel(), TENSOR)
    assert probe.xlen(keys.dead(MODEL)) == 0
    wait_acked(probe, keys.jobs(MODEL))  # answered, then acked and deleted


# -- retry, purge, errors: dead letters written directly ---------------------------------------


@pytest.mark.timeout(30)
def test_retry_sends_the_original_fields_with_a_fresh_deadline(
    redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    keys = Keys(prefix)
    _, fields = job_fields(keys, "req-1", span=10.0, age=300.0)
    first = bury(probe, keys, fields)
    second = bury(probe, keys, fields, dead_from=keys.jobs(MODEL, "v1"))
    third = bury(probe, keys, fields, dead_from="elsewhere:jobs")  # not the model's: rerouted

    header = ok(dlq(redis_url, prefix, "list", MODEL)).splitlines()[1].split()
    assert header[-1] == "from"  # shown when some entry came from another stream
    before = time.time()
    assert "retried 2 dead letters" in ok(dlq(redis_url, prefix, "retry", MODEL, first, third))
    after = time.time()
    out = ok(dlq(redis_url, prefix, "retry", MODEL, second, "--timeout", "2.5"))
    assert out == f"retried 1 dead letter of model {MODEL!r}\n"
    assert probe.xlen(keys.dead(MODEL)) == 0
    assert not probe.exists("elsewhere:jobs")

    main = xrange(probe, keys.jobs(MODEL))
    versioned = xrange(probe, keys.jobs(MODEL, "v1"))
    assert [len(main), len(versioned)] == [2, 1]
    original = as_bytes(fields)
    times = (b"deadline", b"sent_at")
    for (_, sent), span in [(main[0], 10.0), (main[1], 10.0), (versioned[0], 2.5)]:
        assert list(sent) == list(original)  # the same fields in the same order: no dead_*
        assert {k: v for k, v in sent.items() if k not in times} == {
            k: v for k, v in original.items() if k not in times
        }
        sent_at, deadline = float(sent[b"sent_at"]), float(sent[b"deadline"])
        assert before <= sent_at <= time.time()
        assert deadline - sent_at == pytest.approx(span)
    assert float(main[0][1][b"sent_at"]) <= after


@pytest.mark.timeout(30)
def test_retry_all_sends_every_entry_in_batches(
    redis_url: str, prefix: str, probe: redis.Redis
) -> None:
    keys = Keys(prefix)
    pipe = probe.pipeline(transaction=False)
    for i in range(250):  # more than one XRANGE batch
        pipe.xadd(keys.dead(MODEL), {"dead_reason": "r", "dead_from": keys.jobs(MODEL), "id": i})
    pipe.execute()
    out = ok(dlq(redis_url, prefix, "retry", MODEL, "--all"))
    assert out == f"retried 250 dead letters of model {MODEL!r}\n"
    sent = xrange(probe, keys.jobs(MODEL))
    assert [int(fields[b"id"]) for _, fields in sent] == list(range(250))  # oldest first
    assert all(list(fields) == [b"id"] for _, fields in sent)  # not a job: no deadline added
    assert probe.xlen(keys.dead(MODEL)) == 0
    assert ok(dlq(redis_url, prefix, "retry", MODEL, "--all")) == (
        f"retried 0 dead letters of model {MODEL!r}\n"
    )


@pytest.mark.timeout(30)
def test_purge_given_ids_then_all(redis_url: str, prefix: str, probe: redis.Redis) -> None:
    keys = Keys(prefix)
    ids = [bury(probe, keys, {"id": f"r{i}", "method": "predict"}) for i in range(3)]

    out = ok(dlq(redis_url, prefix, "purge", MODEL, ids[0]))
    assert out == f"deleted 1 dead letter of model {MODEL!r}\n"
    assert [entry_id.decode() for entry_id, _ in xrange(probe, keys.dead(MODEL))] == ids[1:]

    refused = dlq(redis_url, prefix, "purge", MODEL, "--all", stdin="n\n")
    assert error_line(refused) == "error: nothing deleted"
    assert f"delete all 2 dead letters in {keys.dead(MODEL)}?" in refused.stdout
    assert error_line(dlq(redis_url, prefix, "purge", MODEL, "--all")) == "error: nothing deleted"
    assert probe.xlen(keys.dead(MODEL)) == 2

    out = ok(dlq(redis_url, prefix, "purge", MODEL, "--all", stdin="y\n"))
    assert out.endswith(f"deleted 2 dead letters of model {MODEL!r}\n")
    assert not probe.exists(keys.dead(MODEL))
    assert ok(dlq(redis_url, prefix, "list", MODEL)).startswith("no dead letters")

    bury(probe, keys, {"id": "r9"})
    out = ok(dlq(redis_url, prefix, "purge", MODEL, "--all", "--yes"))
    assert out == f"deleted 1 dead letter of model {MODEL!r}\n"
    assert not probe.exists(keys.dead(MODEL))
    out = ok(dlq(redis_url, prefix, "purge", MODEL, "--all"))  # nothing to ask about
    assert out == f"no dead letters for model {MODEL!r} ({keys.dead(MODEL)})\n"


@pytest.mark.timeout(30)
def test_unknown_model_has_no_dead_letters(redis_url: str, prefix: str) -> None:
    key = Keys(prefix).dead("nope")
    out = ok(dlq(redis_url, prefix, "list", "nope"))
    assert out == f"no dead letters for model 'nope' ({key})\n"
    listed = json.loads(ok(dlq(redis_url, prefix, "list", "nope", "--json")))
    assert listed == {"model": "nope", "stream": key, "total": 0, "entries": []}


@pytest.mark.timeout(30)
def test_list_count_and_terminal_safe_text(redis_url: str, prefix: str, probe: redis.Redis) -> None:
    keys = Keys(prefix)
    ids = [bury(probe, keys, {"id": f"r{i}"}, reason="\x1b[2J[bold]wiped") for i in range(3)]
    text = ok(dlq(redis_url, prefix, "list", MODEL, "--count", "2"))
    assert text.splitlines()[0] == f"3 dead letters in {keys.dead(MODEL)} (showing the oldest 2)"
    assert ids[1] in text
    assert ids[2] not in text
    assert "\x1b" not in text
    assert "\\x1b[2J[bold]wiped" in text  # escaped, and not taken for rich markup
    shown = ok(dlq(redis_url, prefix, "show", MODEL, ids[0]))
    assert "\x1b" not in shown
    assert "\\x1b[2J[bold]wiped" in shown
    listed = json.loads(ok(dlq(redis_url, prefix, "list", MODEL, "--json", "--count", "2")))
    assert [e["reason"] for e in listed["entries"]] == ["\x1b[2J[bold]wiped"] * 2
    assert listed["total"] == 3


@pytest.mark.timeout(30)
def test_mistakes_are_one_line_errors(redis_url: str, prefix: str, probe: redis.Redis) -> None:
    keys = Keys(prefix)
    entry_id = bury(probe, keys, {"id": "r1"})
    dead = keys.dead(MODEL)

    assert error_line(dlq(redis_url, prefix, "show", MODEL, "1-0")) == (
        f"error: no dead letter 1-0 in {dead} (see `conveyor dlq list {MODEL}`)"
    )
    assert "not a stream entry id: 'abc'" in error_line(
        dlq(redis_url, prefix, "show", MODEL, "abc")
    )
    assert "not a stream entry id: '1-x'" in error_line(
        dlq(redis_url, prefix, "retry", MODEL, entry_id, "1-x")
    )
    assert "not a stream entry id: '123'" in error_line(
        dlq(redis_url, prefix, "show", MODEL, "123")
    )
    assert "give the entry ids" in error_line(dlq(redis_url, prefix, "retry", MODEL))
    assert "not both" in error_line(dlq(redis_url, prefix, "purge", MODEL, entry_id, "--all"))
    assert probe.xlen(dead) == 1  # nothing was done by any of these

    partly = dlq(redis_url, prefix, "retry", MODEL, entry_id, "1-0")
    assert partly.stdout == f"retried 1 dead letter of model {MODEL!r}\n"
    assert error_line(partly).startswith(f"error: 1 of the 2 given entry ids are not in {dead}")
    assert probe.xlen(keys.jobs(MODEL)) == 1

    probe.set(dead, "not a stream")
    wrong = error_line(dlq(redis_url, prefix, "list", MODEL))
    assert wrong.startswith(f"error: {dead}: Redis refused the command: WRONGTYPE")


@pytest.mark.timeout(30)
def test_bad_or_unreachable_redis_is_a_one_line_error(prefix: str) -> None:
    unreachable = error_line(dlq(UNREACHABLE, prefix, "list", MODEL))
    assert unreachable.startswith("error: cannot reach Redis at redis://")
    assert "127.0.0.1:1" in unreachable
    assert "s3cret" not in unreachable
    bad = error_line(dlq("http://:s3cret@example.com", prefix, "retry", MODEL, "--all"))
    assert bad.startswith("error: invalid Redis URL")
    assert "s3cret" not in bad


@pytest.mark.timeout(30)
def test_dlq_list_in_a_real_process(redis_url: str, prefix: str, probe: redis.Redis) -> None:
    keys = Keys(prefix)
    _, fields = job_fields(keys, "req-7")
    entry_id = bury(probe, keys, fields)
    argv = [sys.executable, "-m", "conveyor.cli", "dlq", "list", MODEL, "--json"]
    result = subprocess.run(
        [*argv, "--redis", redis_url, "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [entry] = json.loads(result.stdout)["entries"]
    assert entry["entry_id"] == entry_id
    assert entry["request_id"] == "req-7"
    assert entry["method"] == "predict"
    assert entry["deliveries"] == 4
    assert entry["consumer"] == "worker-a"


# -- the library API -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_admin_api(redis_url: str, prefix: str, probe: redis.Redis) -> None:
    keys = Keys(prefix)
    ids = [bury(probe, keys, {"id": f"r{i}", "bin": b"\xff\xfe"}) for i in range(3)]

    async def main() -> None:
        client = create_client(RedisSettings.from_url(redis_url))
        try:
            assert await admin.count_dead(client, keys, MODEL) == 3
            letters = await admin.list_dead(client, keys, MODEL, 2)
            assert [letter.entry_id for letter in letters] == ids[:2]
            assert letters[0] == admin.DeadLetter(
                entry_id=ids[0],
                request_id="r0",
                method=None,
                reason=letters[0].reason,
                deliveries=4,
                dead_at=letters[0].dead_at,
                from_stream=keys.jobs(MODEL),
                consumer="worker-a",
            )
            detail = await admin.show_dead(client, keys, MODEL, ids[0])
            assert detail is not None
            assert detail.binary == {"bin": 2}  # not UTF-8: shown by size
            assert await admin.show_dead(client, keys, MODEL, "1-0") is None
            with pytest.raises(TypeError):
                await admin.retry_dead(client, keys, MODEL, ids[0])
            with pytest.raises(ValueError, match="timeout"):
                await admin.retry_dead(client, keys, MODEL, ids, timeout=0)
            with pytest.raises(ValueError, match="count"):
                await admin.list_dead(client, keys, MODEL, 0)
            assert await admin.purge_dead(client, keys, MODEL, [ids[0], ids[0], "1-0"]) == 1
            assert await admin.retry_dead(client, keys, MODEL, [ids[1]]) == 1
            empty = bury(probe, keys, {})  # dead_* fields only: nothing to send, left alone
            assert await admin.retry_dead(client, keys, MODEL, [empty]) == 0
            assert await admin.purge_dead(client, keys, MODEL, admin.ALL) == 2
            assert await admin.purge_dead(client, keys, MODEL, admin.ALL) == 0
            assert await admin.list_dead(client, keys, "nope") == []
        finally:
            await client.aclose()

    anyio.run(main)
    assert probe.xlen(keys.jobs(MODEL)) == 1
