"""Drives ``mlserver start`` (MLServer 1.7.1's own process pool) over its REST API.

Runs inside MLServer's own venv (``mlserver==1.7.1``, ``uvloop<0.22``: 1.7.1's pool fails to
start with uvloop >= 0.22; ``aiohttp`` for the client). Serves bench/mlserver/models, the
bench-noop model of bench/peers/models with its imports changed from conveyor to mlserver,
with ``parallel_workers`` N (``MLSERVER_PARALLEL_WORKERS``), ``MLSERVER_DEBUG=false`` (no
access log line per request: Conveyor's worker is measured at ``--log-level warning``), on
free loopback ports.

Waits for ``GET /v2/health/ready`` (bounded), then ``POST /v2/models/bench-noop/infer`` with
one FP32 input of shape [1] (the request Conveyor's driver sends): sequential calls (p50),
then 64 callers at once (requests/s). Prints one JSON line, as the peers' drivers do.

``python -m bench.mlserver.driver --parallel-workers 1 [--seconds S] ...`` from the root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp

from bench.peers import _driver

MODEL = "bench-noop"
MODELS = Path(__file__).resolve().parent / "models"
REQUEST = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
READY_LIMIT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_ready(
    session: aiohttp.ClientSession, base: str, server: _driver.WorkerProcess
) -> float:
    """Polls /v2/health/ready and the model's ready endpoint until both answer 200."""
    begin = time.perf_counter()
    while True:
        try:
            async with (
                session.get(f"{base}/v2/health/ready") as server_ready,
                session.get(f"{base}/v2/models/{MODEL}/ready") as model_ready,
            ):
                if server_ready.status == 200 and model_ready.status == 200:
                    return time.perf_counter() - begin
        except aiohttp.ClientError:
            pass
        if not server.alive() or time.perf_counter() - begin > READY_LIMIT_S:
            raise RuntimeError(f"mlserver not ready:\n{server.tail()}")
        await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {
        "MLSERVER_HOST": "127.0.0.1",
        "MLSERVER_HTTP_PORT": str(http),
        "MLSERVER_GRPC_PORT": str(grpc),
        "MLSERVER_METRICS_PORT": str(metrics),
        "MLSERVER_PARALLEL_WORKERS": str(args.parallel_workers),
        "MLSERVER_DEBUG": "false",
    }
    mlserver = str(Path(sys.executable).parent / "mlserver")
    base = f"http://127.0.0.1:{http}"
    url = f"{base}/v2/models/{MODEL}/infer"
    connector = aiohttp.TCPConnector(limit=args.in_flight + 8)
    with _driver.WorkerProcess([mlserver, "start", str(MODELS)], env) as server:
        async with aiohttp.ClientSession(connector=connector) as session:
            ready_s = await wait_ready(session, base, server)

            async def call() -> None:
                async with session.post(url, json=REQUEST) as response:
                    body = await response.json()
                    if response.status != 200:
                        raise RuntimeError(f"infer answered {response.status}: {body}")

            for _ in range(5):  # as the peers' drivers do
                await call()
            figures = await _driver.sequential(call, args.sequential, args.sequential_seconds)
            await _driver.load(call, args.in_flight, args.warmup)
            figures.update(await _driver.load(call, args.in_flight, args.seconds))
    figures["in_flight"] = args.in_flight
    figures["ready_s"] = ready_s
    figures["parallel_workers"] = args.parallel_workers
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel-workers", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--sequential", type=int, default=300)
    parser.add_argument("--sequential-seconds", type=float, default=4.0)
    args = parser.parse_args()
    _driver.stop_on_sigterm()
    try:
        figures = asyncio.run(run(args))
    except Exception as error:
        traceback.print_exc()
        figures = {"error": f"{type(error).__name__}: {error}".strip().splitlines()[0]}
    figures["versions"] = _driver.versions("mlserver", "uvloop", "aiohttp", "fastapi", "uvicorn")
    figures["python"] = sys.version.split()[0]
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
