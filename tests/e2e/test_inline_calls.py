"""A plain ``def`` model whose calls are short and hold the GIL runs them on the worker's event
loop; at the first long call, or one that releases the GIL, they go back to threads
(``worker.inline_calls``). Real Redis, the worker a real subprocess; the model
(tests/models/inline/busy) answers whether it ran on the loop's thread.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest

from conveyor.client import Client, ParallelModel
from conveyor.errors import RemoteError
from conveyor.types import InferenceResponse
from tests.support.calls import request
from tests.support.fleet import Fleet, WorkerProcess

BUSY = Path(__file__).parents[1] / "models" / "inline" / "busy"
# Calls made before a model that qualifies must be on the loop: far more than the 8 in a row
# it needs, as a loaded machine may stretch a few calls' wall time past their CPU time.
ENOUGH = 200


def output(response: InferenceResponse, name: str) -> int:
    (found,) = (o for o in response.outputs if o.name == name)
    return int(np.asarray(found.data.root).ravel()[0])


@pytest.mark.anyio
async def test_short_gil_holding_calls_move_to_the_loop_and_a_long_one_moves_them_back(
    fleet: Fleet,
) -> None:
    worker = fleet.start(BUSY)
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        busy = client.model("busy")
        with anyio.fail_after(120):
            places = []
            for _ in range(ENOUGH):
                places.append(output(await busy.predict(request(busy_ms=1.0)), "on_loop"))
                if places[-1]:
                    break
            assert places[0] == 0, "the first calls run in a thread"
            assert places[-1] == 1, f"never on the loop in {len(places)} calls:\n{worker.log()}"
            worker.wait_for_log("model.calls_inline model=busy")
            # a concurrent burst while on the loop: one call at a time still, every one answered
            responses: list[InferenceResponse] = []

            async def one() -> None:
                responses.append(await busy.predict(request(busy_ms=1.0)))

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(one)
            assert [output(r, "peak") for r in responses] == [1] * 16
            # a long call (40 ms of CPU: past INLINE_MAX_S) runs where it was sent, on the loop
            assert output(await busy.predict(request(busy_ms=40.0)), "on_loop") == 1
            worker.wait_for_log("model.calls_threaded model=busy reason=long_call")
            assert output(await busy.predict(request(busy_ms=1.0)), "on_loop") == 0


async def until_on_loop(busy: ParallelModel, worker: WorkerProcess) -> None:
    """Calls ``busy`` with short GIL-holding calls until one ran on the loop."""
    for _ in range(ENOUGH):
        if output(await busy.predict(request(busy_ms=1.0)), "on_loop"):
            return
    raise AssertionError(f"never on the loop in {ENOUGH} calls:\n{worker.log()}")


@pytest.mark.anyio
async def test_a_call_that_raises_on_the_loop_sends_the_next_ones_to_a_thread(
    fleet: Fleet,
) -> None:
    worker = fleet.start(BUSY)
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        busy = client.model("busy")
        with anyio.fail_after(120):
            await until_on_loop(busy, worker)
            with pytest.raises(RemoteError, match="called on the event loop's thread"):
                await busy.predict(request(busy_ms=1.0, fail_on_loop=1))
            worker.wait_for_log("model.calls_threaded model=busy reason=raised")
            response = await busy.predict(request(busy_ms=1.0, fail_on_loop=1))
    assert output(response, "on_loop") == 0


@pytest.mark.anyio
async def test_calls_that_release_the_gil_stay_in_threads(fleet: Fleet) -> None:
    worker = fleet.start(BUSY)
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        busy = client.model("busy")
        with anyio.fail_after(60):
            places = [
                output(await busy.predict(request(sleep_ms=2.0)), "on_loop") for _ in range(40)
            ]
    assert places == [0] * 40
    assert worker.count("model.calls_inline") == 0


@pytest.mark.anyio
async def test_a_model_whose_settings_say_no_keeps_every_call_in_a_thread(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the field as any model setting is given without its folder's file: CONVEYOR_MODEL_*
    monkeypatch.setenv("CONVEYOR_MODEL_INLINE_CALLS", "false")
    worker = fleet.start(BUSY)
    async with Client(fleet.redis_url, prefix=fleet.prefix, timeout=30) as client:
        busy = client.model("busy")
        with anyio.fail_after(60):
            places = [
                output(await busy.predict(request(busy_ms=1.0)), "on_loop") for _ in range(40)
            ]
    assert places == [0] * 40
    assert worker.count("model.calls_inline") == 0
