"""A CPU stand-in for a device model on the fleet: single-item calls, unbatched and batched.

Run from the repository root::

    python -m bench.device [--quick] [--processes 1,2] [--call-ms 2] [--row-ms 0.2]
                           [--max-batch-size 32] [--rounds N] [--seconds S] [--clients K]

The model (``bench/models/bench-device``) is a plain ``def predict`` that holds the GIL for a
fixed cost per call plus a smaller cost per row (pure-Python loops calibrated here to
``--call-ms`` and ``--row-ms``), as tokenization and kernel launches do for a model whose
arithmetic runs on a GPU: all-MiniLM-L6-v2 on an H200 (issue 14) cost ~3.3 ms a call at batch 1
and ~62 ms at batch 256, ~3 ms + 0.23 ms a row. The cases are ``bench.serving``'s: in process
at batch 1 and at ``--max-batch-size`` (the best batch: the cost per row only falls with it);
the fleet at each of ``--processes``, unbatched and with adaptive batching, single-item calls;
the mean batch and the share of the jobs each process ran; ratios against the in-process
figures of the same run, and issue 14's goals.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from redis import Redis as SyncRedis

from bench import serving
from bench.blocking import calibrate
from bench.harness import MODELS, machine
from conveyor.codecs import NumpyCodec
from conveyor.embedded import RedisServer
from conveyor.repository import load_model_settings
from conveyor.types import InferenceRequest

MODEL = "bench-device"


def request(i: int, rows: int) -> InferenceRequest:
    """``rows`` rows of input ``x`` (FP32, shape [rows, 1])."""
    x = np.full((rows, 1), float(i % 1000), dtype=np.float32)
    return InferenceRequest(id=f"r{i}", inputs=[NumpyCodec.encode_input("x", x)])


def folders(
    into: Path, loops: dict[str, int], max_batch_size: int, max_batch_time: float
) -> dict[str, Path]:
    """Two copies of the model folder: unbatched and batched, under distinct names."""
    out = {}
    for kind, name, size, wait in (
        ("unbatched", f"{MODEL}-1", 1, 0.0),
        ("batched", f"{MODEL}-b", max_batch_size, max_batch_time),
    ):
        folder = into / name
        shutil.copytree(MODELS / MODEL, folder, ignore=shutil.ignore_patterns("__pycache__"))
        file = folder / "model-settings.json"
        body = {
            **json.loads(file.read_text()),
            "name": name,
            "max_batch_size": size,
            "max_batch_time": wait,
            "parameters": {"extra": loops},
        }
        file.write_text(json.dumps(body, indent=2))
        out[kind] = folder
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.device", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds of every case (3; quick 1)")
    parser.add_argument("--seconds", type=float, help="per case per round (4; quick 1.5)")
    parser.add_argument("--warmup", type=float, help="fleet warm-up per round (1; quick 0.5)")
    parser.add_argument("--processes", default="1,2", help="fleet sizes, e.g. 1,2,4,8")
    parser.add_argument("--call-ms", type=float, default=2.0, help="GIL held per call")
    parser.add_argument("--row-ms", type=float, default=0.2, help="GIL held per row")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-time", type=float, default=0.005, help="seconds")
    parser.add_argument("--in-flight-unbatched", type=int, help="(max(16, 4 x processes))")
    parser.add_argument("--in-flight-batched", type=int, help="(8 x max batch size)")
    parser.add_argument("--clients", type=int, default=1, help="client processes")
    parser.add_argument("--json", type=Path, help="save every figure")
    args = parser.parse_args(argv)
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    per_call = calibrate(1.0)  # loop turns per millisecond here
    loops = {
        "call_loops": round(per_call * args.call_ms),
        "row_loops": round(per_call * args.row_ms),
    }
    b = args.max_batch_size
    with tempfile.TemporaryDirectory(prefix="conveyor-device-") as tmp, RedisServer() as redis:
        copies = folders(Path(tmp), loops, b, args.max_batch_time)
        settings = load_model_settings(copies["unbatched"])
        model: Any = settings.implementation(settings)
        model.load()
        spec = serving.Spec(
            unit="calls",
            folders=copies,
            factory="bench.device:request",
            in_process=lambda rows: model.predict(request(0, rows)),
            processes=[int(p) for p in args.processes.split(",")],
            max_batch_size=b,
            rounds=args.rounds or (1 if args.quick else 3),
            seconds=args.seconds or (1.5 if args.quick else 4.0),
            warmup=args.warmup or (0.5 if args.quick else 1.0),
            in_flight_unbatched=lambda p: args.in_flight_unbatched or max(16, 4 * p),
            in_flight_batched=args.in_flight_batched or 8 * b,
            clients=args.clients,
        )
        one, best, fleet = serving.measure(spec, redis.url)
        with SyncRedis.from_url(redis.url) as probe:
            info = machine(str(probe.info("server")["redis_version"]))
    info["load average"] = f"{load_at_start} at the start, {info['load average']} at the end"
    info["model"] = (
        f"{loops['call_loops']:,} + {loops['row_loops']:,} x rows loop turns (~{args.call_ms:g} ms "
        f"a call + {args.row_ms:g} ms a row of Python holding the GIL); max_batch_time "
        f"{args.max_batch_time * 1e3:g} ms; {spec.rounds} rounds of {spec.seconds:g} s a case; "
        f"{args.clients} client process(es)"
    )
    lines = serving.report("calls", one, best, fleet, b, info)
    print("\n".join(lines))
    if args.json:
        serving.save(args.json, [one, best, *fleet], info)


if __name__ == "__main__":
    main()
