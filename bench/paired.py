"""Two trees side by side, at the same moment: ``python -m bench.paired --base-commit REV``.

On a shared machine the speed of the host moves by a third between runs seconds apart, so a
change of a few percent cannot be told from runs one after the other. Here the base tree and
this one run at once, under the same load, and only their ratio is read:

- ``--side client``: one worker (this tree) serves two client processes, the base tree's and
  this tree's, each with ``--in-flight`` calls of the echo model; each client's CPU a call.
- ``--side worker``: two workers, the base tree's and this tree's, each on a key prefix of its
  own, each driven by a client of this tree; each worker's CPU a call (``/proc``).

Round 0 warms both up and is not counted; the sides start in turns, each round the other first.
Two copies of one tree measure within ~2% of each other (base and "new" both this tree: pass
``--base-path`` of an install of it). The base tree is installed apart (``pip install
--no-deps --target``) from a git worktree of ``--base-commit``, or taken from ``--base-path``
(a folder holding such an install), and put first on the base side's ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis

from bench.harness import MODELS, ROOT, Process, cpu_seconds, machine
from conveyor.embedded import RedisServer

_CLIENT = r"""
import json, sys, time
import anyio
from conveyor.client import Client
from bench.run import _small_request

url, prefix, seconds, in_flight, backend = sys.argv[1:6]

async def main() -> None:
    async with Client(url, prefix=prefix) as client:
        model, request = client.model("bench-echo"), _small_request()
        for _ in range(200):
            await model.predict(request)
        print("ready", flush=True)
        sys.stdin.readline()
        calls, stop, cpu = 0, time.perf_counter() + float(seconds), time.process_time()

        async def caller() -> None:
            nonlocal calls
            while time.perf_counter() < stop:
                await model.predict(request)
                calls += 1

        async with anyio.create_task_group() as tg:
            for _ in range(int(in_flight)):
                tg.start_soon(caller)
        used = (time.process_time() - cpu) / calls * 1e6
        print(json.dumps({"calls": calls, "client_us": used}), flush=True)

anyio.run(main, backend=backend)
"""


def _install(commit: str, into: Path) -> Path:
    """An install of ``commit`` (from a git worktree of it) in ``into``/site."""
    tree, site = into / "tree", into / "site"
    subprocess.run(
        ["git", "worktree", "add", "-q", "--detach", str(tree), commit], cwd=ROOT, check=True
    )
    try:
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site)]
        subprocess.run([*pip, str(tree)], check=True, capture_output=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)
    return site


def _env(path: str | None) -> dict[str, str]:
    """The environment of a process of the base tree (its install first) or of this one."""
    env = dict(os.environ)
    env.pop("CONVEYOR_REDIS_URL", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, str(ROOT)) if p)
    return env


def _worker(url: str, prefix: str, path: str | None) -> Process:
    argv = [sys.executable, "-m", "conveyor.cli", "worker", str(MODELS / "bench-echo")]
    argv += ["--redis", url, "--prefix", prefix, "--concurrency", "128", "--name", f"{prefix}-w"]
    return Process(f"{prefix}-worker", [*argv, "--log-level", "info"], env=_env(path))


def _clients(
    url: str,
    sides: dict[str, tuple[str, str | None]],
    workers: dict[str, Process],
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    """One round: a client per side (prefix, tree), started together; what each measured, and
    each worker's CPU a call over the same time (from the clients' start, past their warm-up,
    to their end)."""
    procs = {}
    for side, (prefix, path) in sides.items():
        argv = [sys.executable, "-c", _CLIENT, url, prefix, str(args.seconds)]
        argv += [str(args.in_flight), args.backend]
        procs[side] = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env(path)
        )
    for proc in procs.values():
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    before = {side: cpu_seconds(worker.pid) for side, worker in workers.items()}
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
    out = {}
    for side, proc in procs.items():
        assert proc.stdout is not None
        out[side] = json.loads(proc.stdout.readline())
        proc.wait()
    for side, worker in workers.items():
        if side in out:
            used = cpu_seconds(worker.pid) - before[side]
            out[side]["worker_us"] = used / out[side]["calls"] * 1e6
    return out


def measure(args: argparse.Namespace, base: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
    with RedisServer() as server:
        with SyncRedis.from_url(server.url) as probe:
            for key, value in machine(str(probe.info("server")["redis_version"])).items():
                print(f"{key}: {value}")
        if args.side == "client":
            workers = {"both": _worker(server.url, "pc", None)}
            sides: dict[str, tuple[str, str | None]] = {"base": ("pc", base), "new": ("pc", None)}
        else:
            workers = {
                "base": _worker(server.url, "pa", base),
                "new": _worker(server.url, "pb", None),
            }
            sides = {"base": ("pa", None), "new": ("pb", None)}  # clients of this tree
        try:
            for worker in workers.values():
                worker.wait_for_log("worker.started")
            for turn in range(args.rounds + 1):
                order = dict(list(sides.items())[:: 1 if turn % 2 else -1])
                got = _clients(server.url, order, workers, args)
                figure = f"{args.side}_us"
                line = "  ".join(
                    f"{side} {got[side][figure]:.1f} us a call ({got[side]['calls']} calls)"
                    for side in ("base", "new")
                )
                print(f"round {turn}{' (warm-up)' if turn == 0 else ''}: {line}", flush=True)
                if turn:
                    for side in found:
                        found[side].append(got[side])
        finally:
            for worker in workers.values():
                worker.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--base-commit", help="the base tree: a commit of this repository")
    where.add_argument("--base-path", help="the base tree: a folder holding an install of it")
    parser.add_argument("--side", choices=("client", "worker"), default="worker")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--in-flight", type=int, default=32, help="calls in flight per client")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conveyor-paired-") as scratch:
        base = args.base_path or str(_install(args.base_commit, Path(scratch)))
        found = measure(args, base)
    figure = f"{args.side}_us"
    medians = {side: statistics.median(r[figure] for r in rows) for side, rows in found.items()}
    ratios = [n[figure] / b[figure] for b, n in zip(found["base"], found["new"], strict=True)]
    print(
        f"{args.side} CPU a call ({args.backend}, {args.in_flight} in flight per client): "
        f"base {medians['base']:.1f} us, new {medians['new']:.1f} us; new/base per round "
        + ", ".join(f"{r:.3f}" for r in ratios)
        + f" (median {statistics.median(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
