"""A flaky network under load: a loopback proxy resets connections at random (issue 12).

A worker subprocess and a client both reach a real Redis through tests/proxy.py, which resets
one open connection (a TCP RST on both sides) about once a second, for a bounded time
(``CONVEYOR_CHAOS_S``, 20 s by default), while calls and streams run at a steady concurrency.
The client runs on asyncio and on trio (whose calls' jobs cross to Redis's loop without
waiting, and are sent again when a reset fails their round trip).

Every call must end with exactly one correct answer or a ``ConveyorError``; a stream's chunks
come from one run of the model, complete and in order, or the stream raises. The figures
(calls, runs of the model beyond one per call, errors) are printed for README's Reliability
section.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.errors import ConveyorError
from conveyor.types import InferenceRequest, InferenceResponse
from tests.support.calls import request
from tests.support.fleet import Fleet
from tests.support.proxy import ResettingProxy

CHAOS_S = float(os.environ.get("CONVEYOR_CHAOS_S", "20"))
CONCURRENCY = 16
RESET_EVERY_S = float(os.environ.get("CONVEYOR_CHAOS_RESET_S", "1"))  # mean gap between resets
MODELS = Path(__file__).parents[1] / "models" / "connections"

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"]),
    pytest.mark.timeout(CHAOS_S + 90),
]


def _output(response: InferenceResponse, name: str) -> Any:
    for output in response.outputs:
        if output.name == name:
            return np.asarray(output.data.root).ravel()[0]
    raise AssertionError(f"no output {name!r} in {response}")


async def _one_request(value: float) -> AsyncIterator[InferenceRequest]:
    yield request(value, datatype="FP64")


class Tally:
    def __init__(self) -> None:
        self.calls = 0
        self.answers = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.wrong: list[str] = []  # answers that were not this call's
        self.mixed: list[str] = []  # streams whose chunks came from more than one run


async def _predict(client: Client, value: float, tally: Tally) -> None:
    try:
        response = await client.model("tally").predict(request(value, datatype="FP64"), timeout=30)
    except ConveyorError as error:
        tally.errors[type(error).__name__] += 1
        return
    tally.answers += 1
    if float(_output(response, "x")) != value:
        tally.wrong.append(f"predict {value}: got {_output(response, 'x')}")


async def _stream(client: Client, value: float, tally: Tally) -> None:
    chunks: list[InferenceResponse] = []
    try:
        async for chunk in client.model("tally").predict_stream(_one_request(value), timeout=30):
            chunks.append(chunk)
    except ConveyorError as error:
        tally.errors[type(error).__name__] += 1
        return
    tally.answers += 1
    seqs = [int(_output(c, "seq")) for c in chunks]
    values = {float(_output(c, "x")) for c in chunks}
    runs = {_output(c, "run") for c in chunks}
    if seqs != list(range(5)) or values != {value}:
        tally.wrong.append(f"stream {value}: seqs {seqs} values {values}")
    if len(runs) > 1:
        tally.mixed.append(f"stream {value}: chunks of {len(runs)} runs, seqs {seqs}")


async def test_calls_through_a_proxy_that_resets_connections(
    redis_server_factory: Callable[..., RedisServer],
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = redis_server_factory()
    runs_file = tmp_path / "runs"
    monkeypatch.setenv("TALLY_FILE", str(runs_file))
    tally = Tally()
    values = itertools.count(1)
    with ResettingProxy(server.port) as proxy:
        url = proxy.url(server.url)
        fleet = Fleet(url, prefix)
        try:
            fleet.start(MODELS, extra=["--concurrency", "16"])
            async with Client(url, prefix=prefix) as client:
                await _predict(client, 0.0, tally)  # reached once before the chaos
                proxy.start_chaos(mean_interval=RESET_EVERY_S, seed=12)
                stop_at = time.monotonic() + CHAOS_S

                async def caller(n: int) -> None:
                    while time.monotonic() < stop_at:
                        value = float(next(values))
                        tally.calls += 1
                        if n % 4 == 0:  # a quarter of the callers stream
                            await _stream(client, value, tally)
                        else:
                            await _predict(client, value, tally)

                async with anyio.create_task_group() as tg:
                    for n in range(CONCURRENCY):
                        tg.start_soon(caller, n)
                proxy.stop_chaos()
            worker_alive = fleet.workers[0].process.poll() is None
        finally:
            fleet.stop()
    runs = collections.Counter(line.split()[1] for line in runs_file.read_text().splitlines())
    double = sum(count - 1 for count in runs.values() if count > 1)
    errors = sum(tally.errors.values())
    figures = (
        f"proxy chaos: {CHAOS_S:.0f} s, {proxy.stats.resets} resets "
        f"({proxy.stats.accepted} connections), {tally.calls} calls at {CONCURRENCY} in flight, "
        f"{tally.answers} answered, {errors} errors {dict(tally.errors)}, "
        f"{double} extra runs of the model ({100 * double / max(tally.calls, 1):.2f}%), "
        f"{len(tally.mixed)} streams mixing runs"
    )
    with capsys.disabled():
        print(f"\n{figures}")
    assert worker_alive
    assert tally.answers + errors == tally.calls + 1  # every call ended once
    assert tally.wrong == []
    assert proxy.stats.resets > 0
    # Two copies of one job (redis-py re-sending the XADD pipeline after a reset) are told
    # apart by their entries: one runs, and a stream takes one run's chunks (issue 12 §4).
    assert tally.mixed == []
