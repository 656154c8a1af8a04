"""Call the example models from Python: one predict, one stream, then 100 calls at once.

Start a fleet first (``conveyor up`` prints the Redis URL), then::

    python examples/client.py redis://127.0.0.1:PORT/0
    CONVEYOR_REDIS_URL=redis://127.0.0.1:PORT/0 python examples/client.py --trio

It exits 0 when every answer is right, and 1 (with a one-line ``error:``) otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import numpy as np
import numpy.typing as npt

from conveyor import ConveyorError
from conveyor.broker.keys import DEFAULT_PREFIX
from conveyor.client import Client, ParallelModel
from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.types import InferenceRequest

# The weights the numpy-linear model serves, to check its answers: y = x @ W + b.
_WEIGHTS = json.loads((Path(__file__).parent / "models/numpy-linear/weights.json").read_text())
W = np.asarray(_WEIGHTS["weights"], dtype=np.float32)
B = np.asarray(_WEIGHTS["bias"], dtype=np.float32)


def linear_request(x: npt.NDArray[np.float32], request_id: str | None = None) -> InferenceRequest:
    return InferenceRequest(id=request_id, inputs=[NumpyCodec.encode_input("x", x)])


def prompt_request(text: str) -> InferenceRequest:
    return InferenceRequest(inputs=[StringCodec.encode_input("prompt", [text])])


async def show_predict(linear: ParallelModel) -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    response = await linear.predict(linear_request(x))
    y = NumpyCodec.decode_output(response.outputs[0])
    print(f"predict {linear.name}: x={x.tolist()} -> y={y.tolist()}")


async def show_stream(streamer: ParallelModel) -> None:
    async def prompts() -> AsyncIterator[InferenceRequest]:
        yield prompt_request("streams keep their order")
        yield prompt_request("token by token")

    print(f"predict_stream {streamer.name}:", end="", flush=True)
    async for chunk in streamer.predict_stream(prompts()):
        for token in StringCodec.decode_output(chunk.outputs[0]):
            print(f" {token}", end="", flush=True)  # as each one arrives
    print()


async def many_calls(linear: ParallelModel, calls: int) -> int:
    """``calls`` predicts at once, each with its own input and checked against its own answer;
    prints a summary and returns how many were wrong or failed."""
    wrong: list[str] = []
    failed: list[str] = []

    async def one(i: int) -> None:
        x = np.array([[i, -i / 2]], dtype=np.float32)
        request_id = f"call-{i}"
        try:
            response = await linear.predict(linear_request(x, request_id))
        except ConveyorError as error:
            failed.append(f"{request_id}: {error}")
            return
        y = NumpyCodec.decode_output(response.outputs[0])
        if response.id != request_id or not np.allclose(y, x @ W + B):
            wrong.append(f"{request_id}: got id={response.id} y={y.tolist()}")

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for i in range(calls):
            tg.start_soon(one, i)
    elapsed = time.perf_counter() - started
    correct = calls - len(wrong) - len(failed)
    print(
        f"{calls} concurrent predict calls: {correct} correct, {len(wrong)} wrong, "
        f"{len(failed)} failed in {elapsed:.2f}s ({calls / elapsed:.0f} calls/s)"
    )
    for problem in (wrong + failed)[:5]:
        print(f"  {problem}", file=sys.stderr)
    return len(wrong) + len(failed)


async def main(url: str | None, prefix: str, timeout: float, calls: int) -> int:
    # url None: the client reads CONVEYOR_REDIS_URL (else the local Redis)
    async with Client(url, prefix=prefix, timeout=timeout) as client:
        await show_predict(client.model("numpy-linear"))
        await show_stream(client.model("token-streamer"))
        bad = await many_calls(client.model("numpy-linear"), calls)
    return 1 if bad else 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help="Redis URL (default: $CONVEYOR_REDIS_URL)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="the workers' key prefix")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls to make")
    parser.add_argument("--trio", action="store_true", help="run on trio instead of asyncio")
    args = parser.parse_args()
    try:
        return anyio.run(
            main,
            args.url,
            args.prefix,
            args.timeout,
            args.calls,
            backend="trio" if args.trio else "asyncio",
        )
    except (ConveyorError, ValueError) as error:  # ValueError: a malformed URL
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
