"""The V2 gateway against MLServer 1.7.1's own servers (issue 15): ``python -m bench.gateway``.

Two systems serve the same echo model (each request answered with its inputs) on this machine,
one after the other, against the same load:

- **Conveyor**: a private Redis, one ``conveyor worker`` process (bench/models/bench-echo,
  ``--concurrency 32``) and one ``conveyor gateway`` process in front of it;
- **MLServer 1.7.1**: ``mlserver start`` on bench/mlserver/echo_models (the same model with its
  imports changed to mlserver), one parallel worker, in its own venv (bench/peers/venvs.py).

The load comes from this process: aiohttp for REST (V2 JSON; Triton's binary tensor extension
for the gateway alone, as MLServer does not speak it), grpc.aio with tritonclient's generated
stubs for gRPC (``ModelInfer`` with ``raw_input_contents``, which both servers read). For each
tensor size (a 100-byte and a 1 MiB FP32 tensor): sequential calls (p50, at most 300 or 4 s),
then ``--in-flight`` callers for ``--seconds`` (calls/s). The issue's goals: the gateway plus
fleet at least 3x MLServer's REST calls/s at 64 in flight, and its sequential p50 within 1.2x
of MLServer's, at both sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bench.harness import machine
from bench.peers import _driver, venvs
from conveyor.embedded import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "bench-echo"
CONVEYOR_MODELS = ROOT / "bench" / "models" / MODEL
MLSERVER_MODELS = ROOT / "bench" / "mlserver" / "echo_models"
SIZES = {"100 B": 25, "1 MiB": 262_144}  # FP32 elements
READY_LIMIT_S = 120.0

Call = Callable[[], Awaitable[None]]


def json_body(values: np.ndarray) -> bytes:
    request = {
        "inputs": [
            {"name": "x", "shape": [1, values.size], "datatype": "FP32", "data": values.tolist()}
        ]
    }
    return json.dumps(request).encode()


def binary_body(values: np.ndarray) -> tuple[bytes, int]:
    """Triton's binary tensor extension: a JSON header, then the tensor's raw bytes."""
    raw = values.astype("<f4").tobytes()
    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [1, values.size],
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "x", "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    return head + raw, len(head)


def rest_calls(session: aiohttp.ClientSession, base: str, values: np.ndarray) -> dict[str, Call]:
    url = f"{base}/v2/models/{MODEL}/infer"
    body = json_body(values)
    binary, head = binary_body(values)
    expected = values.size

    async def json_call() -> None:
        headers = {"Content-Type": "application/json"}
        async with session.post(url, data=body, headers=headers) as response:
            answer = await response.read()
            if response.status != 200:
                raise RuntimeError(f"infer answered {response.status}: {answer[:200]!r}")
            outputs = json.loads(answer)["outputs"]
            if len(outputs[0]["data"]) != expected:
                raise RuntimeError("the echo lost data")

    async def binary_call() -> None:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(head),
        }
        async with session.post(url, data=binary, headers=headers) as response:
            answer = await response.read()
            if response.status != 200:
                raise RuntimeError(f"infer answered {response.status}: {answer[:200]!r}")
            size = int(response.headers.get("Inference-Header-Content-Length", len(answer)))
            if len(answer) - size != 4 * expected:
                raise RuntimeError("the echo lost data")

    return {"rest-json": json_call, "rest-binary": binary_call}


def grpc_call(channel: grpc.aio.Channel, values: np.ndarray) -> Call:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "x", "FP32"
    tensor.shape.extend([1, values.size])
    request.raw_input_contents.append(values.astype("<f4").tobytes())
    expected = 4 * values.size

    async def call() -> None:
        response = await stub.ModelInfer(request)
        if response.raw_output_contents:
            got = len(response.raw_output_contents[0])
        else:
            got = 4 * len(response.outputs[0].contents.fp32_contents)
        if got != expected:
            raise RuntimeError("the echo lost data")

    return call


async def wait_ready(
    session: aiohttp.ClientSession, base: str, server: _driver.WorkerProcess
) -> float:
    begin = time.perf_counter()
    while True:
        try:
            async with session.get(f"{base}/v2/models/{MODEL}/ready") as ready:
                if ready.status == 200:
                    return time.perf_counter() - begin
        except aiohttp.ClientError:
            pass
        if not server.alive() or time.perf_counter() - begin > READY_LIMIT_S:
            raise RuntimeError(f"not ready:\n{server.tail()}")
        await asyncio.sleep(0.1)


async def measure(call: Call, args: argparse.Namespace) -> dict[str, Any]:
    for _ in range(5):
        await call()
    figures = await _driver.sequential(call, args.sequential, args.sequential_seconds)
    await _driver.load(call, args.in_flight, args.warmup)
    figures.update(await _driver.load(call, args.in_flight, args.seconds))
    return figures


async def run_system(
    name: str, base: str, grpc_address: str, server: _driver.WorkerProcess, args: argparse.Namespace
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    connector = aiohttp.TCPConnector(limit=args.in_flight + 8)
    async with aiohttp.ClientSession(connector=connector) as session:
        results["ready_s"] = await wait_ready(session, base, server)
        channel = grpc.aio.insecure_channel(
            grpc_address,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        async with channel:
            for size, count in SIZES.items():
                values = np.random.default_rng(0).random(count, dtype=np.float32)
                calls = rest_calls(session, base, values)
                calls["grpc"] = grpc_call(channel, values)
                for case, call in calls.items():
                    if case not in args.cases or (case == "rest-binary" and name == "mlserver"):
                        continue
                    try:
                        figures = await measure(call, args)
                    except Exception as error:  # the run goes on; the table says why
                        figures = {"error": f"{type(error).__name__}: {error}"[:200]}
                    results[f"{case} {size}"] = figures
                    print(f"  {name} {case} {size}: {figures}", file=sys.stderr, flush=True)
    return results


async def conveyor(args: argparse.Namespace) -> dict[str, Any]:
    http, grpc_port = free_port(), free_port()
    with RedisServer() as redis:
        worker_argv = [sys.executable, "-m", "conveyor.cli", "worker", str(CONVEYOR_MODELS)]
        worker_argv += ["--redis", redis.url, "--concurrency", "32", "--log-level", "warning"]
        gateway_argv = [sys.executable, "-m", "conveyor.cli", "gateway", "--redis", redis.url]
        gateway_argv += ["--http-port", str(http), "--grpc-port", str(grpc_port)]
        gateway_argv += ["--log-level", "warning"]
        with (
            _driver.WorkerProcess(worker_argv) as _worker,
            _driver.WorkerProcess(gateway_argv) as gateway,
        ):
            return await run_system(
                "conveyor", f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}", gateway, args
            )


async def mlserver(args: argparse.Namespace) -> dict[str, Any]:
    venv = venvs.ensure("mlserver")
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    env = {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc_port),
        "MLSERVER_METRICS_PORT": str(metrics),
        "MLSERVER_PARALLEL_WORKERS": "1",
        "MLSERVER_DEBUG": "false",
        "MLSERVER_GRPC_MAX_MESSAGE_LENGTH": str(64 << 20),
    }
    argv = [str(venv.script("mlserver")), "start", str(MLSERVER_MODELS)]
    with _driver.WorkerProcess(argv, env) as server:
        results = await run_system(
            "mlserver", f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc_port}", server, args
        )
    results["versions"] = venv.versions("mlserver", "fastapi", "uvicorn", "grpcio")
    return results


def _ratio(a: Any, b: Any) -> str:
    numbers = isinstance(a, float | int) and isinstance(b, float | int)
    return f"{a / b:.2f}x" if numbers and b else "-"


def _num(value: Any, digits: int = 0) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, float | int) else "-"


def report(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| case | Conveyor calls/s | MLServer calls/s | ratio | Conveyor p50 ms "
        "| MLServer p50 ms | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ours, theirs = results.get("conveyor", {}), results.get("mlserver", {})
    for key, figures in ours.items():
        if not isinstance(figures, dict) or key == "versions":
            continue
        peer = theirs.get(key, {})
        rate, peer_rate = figures.get("results_per_s"), peer.get("results_per_s")
        p50, peer_p50 = figures.get("seq_p50_ms"), peer.get("seq_p50_ms")
        lines.append(
            f"| {key} | {_num(rate) if rate else figures.get('error', '-')} | {_num(peer_rate)} "
            f"| {_ratio(rate, peer_rate)} | {_num(p50, 2)} | {_num(peer_p50, 2)} "
            f"| {_ratio(p50, peer_p50)} |"
        )
    for size in SIZES:
        rate = ours.get(f"rest-json {size}", {}).get("results_per_s")
        peer = theirs.get(f"rest-json {size}", {}).get("results_per_s")
        best = max(
            (
                ours.get(f"{c} {size}", {}).get("results_per_s") or 0
                for c in ("rest-json", "rest-binary")
            ),
            default=0,
        )
        lines.append(
            f"goal {size}: REST calls/s >= 3x MLServer's: JSON {_ratio(rate, peer)}, "
            f"best REST {_ratio(float(best), peer)}"
        )
        p50 = ours.get(f"rest-json {size}", {}).get("seq_p50_ms")
        peer_p50 = theirs.get(f"rest-json {size}", {}).get("seq_p50_ms")
        lines.append(f"goal {size}: REST p50 <= 1.2x MLServer's: {_ratio(p50, peer_p50)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--sequential-seconds", type=float, default=4.0)
    parser.add_argument(
        "--cases", default="rest-json,rest-binary,grpc", type=lambda text: text.split(",")
    )
    parser.add_argument("--systems", default="conveyor,mlserver", type=lambda text: text.split(","))
    parser.add_argument("--json", type=Path, help="Write every figure to this file.")
    args = parser.parse_args()
    os.chdir(ROOT)
    results: dict[str, dict[str, Any]] = {"machine": machine("private redis-server")}
    if "conveyor" in args.systems:
        results["conveyor"] = asyncio.run(conveyor(args))
    if "mlserver" in args.systems:
        results["mlserver"] = asyncio.run(mlserver(args))
    for line in report(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
