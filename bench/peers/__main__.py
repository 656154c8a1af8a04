"""Conveyor against the Redis job queues people use today, and against MLServer's own pool.

Run from the repository root::

    python -m bench.peers [--quick] [--only NAME ...] [--json FILE] [--markdown]

In one run, against one private Redis (``RedisServer``, flushed before each case):

- **drain**: 20,000 no-op jobs enqueued before any worker exists, then one worker process
  (concurrency 32) drains them: jobs/s from its first finished job to an empty backlog;
- **rpc**: one worker process (concurrency 32); sequential calls awaiting their result (p50),
  then 64 callers at once, each awaiting its result before the next call (results/s);

for Conveyor (bench/peers/conveyor_peer.py), taskiq + taskiq-redis's stream broker, streaQ
and arq (bench/peers/<name>_peer.py, each in its own virtual environment under
``~/.cache/conveyor-bench/venvs``, made on first use); and MLServer 1.7.1's pool
(``mlserver start``, ``parallel_workers`` 1 and 2, REST) on the same no-op model code
(bench/mlserver/); and Ray Serve (bench/peers/ray_peer.py: the same no-op through a deployment
handle, one replica; rpc only). Each driver runs as a subprocess of its venv's Python, starts
its worker (or server) itself and prints its figures as JSON. A peer that cannot be installed
or fails is reported as ``failed: <reason>`` and the run goes on.

Goals (from the issues): Conveyor >= 3x each queue peer's results/s with results awaited at
64 in flight; Conveyor's sequential p50 below MLServer's pool; ahead of Ray Serve (results/s
and sequential p50).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from redis import Redis as SyncRedis
from rich.console import Console
from rich.table import Table

from bench import harness
from bench.peers import venvs
from conveyor.embedded import RedisServer

ROOT = Path(__file__).resolve().parent.parent.parent
QUEUE_PEERS = ("taskiq", "streaq", "arq")
# Conveyor first and MLServer right after it: the tight comparison (sequential p50) is then
# measured within a minute; the queue peers' ratios are far from their goal either way.
SYSTEMS = ("conveyor", "mlserver-1", "mlserver-2", *QUEUE_PEERS, "ray")
TABLE_ORDER = ("conveyor", *QUEUE_PEERS, "mlserver-1", "mlserver-2", "ray")
# Serving systems with no queue to drain: the rpc case only.
RPC_ONLY = ("mlserver-1", "mlserver-2", "ray")
LABELS = {
    "conveyor": "Conveyor",
    "taskiq": "taskiq + taskiq-redis (stream broker)",
    "streaq": "streaQ",
    "arq": "arq",
    "mlserver-1": "MLServer pool, parallel_workers 1 (REST)",
    "mlserver-2": "MLServer pool, parallel_workers 2 (REST)",
    "ray": "Ray Serve, 1 replica, deployment handle",
}
THROUGHPUT_GOAL = 3.0  # Conveyor's results/s >= 3x each queue peer's


@dataclass(frozen=True)
class Settings:
    count: int  # jobs per drain
    concurrency: int  # jobs a worker process runs at once
    in_flight: int
    seconds: float  # per load measurement
    warmup: float
    sequential: int
    sequential_seconds: float

    @classmethod
    def full(cls) -> Settings:
        return cls(20_000, 32, 64, 5.0, 1.0, 500, 4.0)

    @classmethod
    def quick(cls) -> Settings:
        return cls(2_000, 32, 64, 1.5, 0.3, 100, 1.0)

    def driver_args(self) -> list[str]:
        return [
            "--concurrency",
            str(self.concurrency),
            "--in-flight",
            str(self.in_flight),
            "--seconds",
            str(self.seconds),
            "--warmup",
            str(self.warmup),
            "--sequential",
            str(self.sequential),
            "--sequential-seconds",
            str(self.sequential_seconds),
        ]


# -- running the drivers ---------------------------------------------------------------------


def _run_driver(argv: list[str], timeout: float) -> dict[str, Any]:
    """Runs one driver; its figures are the JSON object on its last stdout line."""
    env = dict(os.environ)
    env.pop("CONVEYOR_REDIS_URL", None)
    env["PYTHONPATH"] = str(ROOT)  # `bench.peers` from a venv that does not have the project
    driver = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stdout, stderr = driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.terminate()  # the driver stops its worker on SIGTERM
        try:
            _, stderr = driver.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            driver.kill()
            _, stderr = driver.communicate()
        return {"error": f"no answer in {timeout:.0f} s", "stderr": stderr[-3000:]}
    lines = stdout.strip().splitlines()
    try:
        figures: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"exit {driver.returncode}, no figures", "stderr": stderr[-3000:]}
    if "error" in figures:
        figures["stderr"] = stderr[-3000:]
    return figures


def _peer_case(system: str, python: Path, mode: str, url: str, s: Settings) -> dict[str, Any]:
    module = f"bench.peers.{system}_peer"
    argv = [str(python), "-m", module, mode, "--url", url, "--count", str(s.count)]
    timeout = 120 + (s.count / 50 if mode == "drain" else s.seconds + s.sequential_seconds)
    return _run_driver(argv + s.driver_args(), timeout)


def _mlserver_case(python: Path, workers: int, s: Settings) -> dict[str, Any]:
    argv = [str(python), "-m", "bench.mlserver.driver", "--parallel-workers", str(workers)]
    argv += s.driver_args()[2:]  # all but --concurrency
    return _run_driver(argv, 180 + s.seconds + s.sequential_seconds)


def _case(system: str, mode: str, python: Path, url: str, s: Settings) -> dict[str, Any]:
    if system.startswith("mlserver-"):
        return _mlserver_case(python, int(system.rsplit("-", 1)[1]), s)
    return _peer_case(system, python, mode, url, s)


def _venv_python(name: str, console: Console) -> Path | str:
    """The venv's Python, or why there is none."""
    try:
        return venvs.ensure(name).python
    except (venvs.VenvError, OSError) as error:
        reason = str(error).splitlines()[0]
        console.print(f"[red]{name}: could not install: {reason}[/red]")
        return f"could not install: {reason}"


def _plan(systems: list[str]) -> list[tuple[str, str]]:
    """(system, case) in the order run. Conveyor's rpc runs before and after MLServer's (A-B-A):
    the tight comparison, sequential p50, then does not hang on the machine's drift."""
    plan: list[tuple[str, str]] = []
    for system in SYSTEMS:
        if system in systems:
            modes = ("rpc",) if system in RPC_ONLY else ("drain", "rpc")
            plan += [(system, mode) for mode in modes]
    if "conveyor" in systems and any(x.startswith("mlserver-") for x in systems):
        last_mlserver = max(i for i, (x, _) in enumerate(plan) if x.startswith("mlserver-"))
        plan.insert(last_mlserver + 1, ("conveyor", "rpc"))
    return plan


# the figures of an rpc case; a system whose rpc ran twice reports the mean of the two
_RPC_FIGURES = ("seq_p50_ms", "seq_p99_ms", "results_per_s")


def _merge_rpc_runs(figures: dict[str, Any]) -> None:
    runs = figures.get("rpc_runs", [])
    if len(runs) > 1 and all(not run.get("error") for run in runs):
        for key in _RPC_FIGURES:
            figures[key] = statistics.mean(run[key] for run in runs)


def run(systems: list[str], s: Settings, console: Console) -> dict[str, Any]:
    pythons: dict[str, Path | str] = {"conveyor": Path(sys.executable)}
    for system in systems:
        name = system.split("-")[0]
        if name not in pythons:
            with console.status(f"virtual environment of {name}"):
                pythons[name] = _venv_python(name, console)
    results: dict[str, dict[str, Any]] = {system: {} for system in systems}
    with RedisServer() as server, SyncRedis.from_url(server.url) as redis:
        info = redis.info("server")
        machine = harness.machine(f"{info['redis_version']} ({info.get('executable', '?')})")
        for key, value in machine.items():
            console.print(f"[bold]{key}:[/bold] {value}")
        for system, mode in _plan(systems):
            figures = results[system]
            python = pythons[system.split("-")[0]]
            if isinstance(python, str):
                figures["error"] = python
                continue
            redis.flushall()
            begin = time.monotonic()
            with console.status(f"{system}: {mode}"):
                got = _case(system, mode, python, server.url, s)
            took = time.monotonic() - begin
            if "error" in got:
                console.print(f"[red]{system} {mode} failed: {got['error']}[/red]")
                console.print(got.get("stderr", "")[-1500:], markup=False, highlight=False)
                figures[f"{mode}_error"] = got["error"]
            else:
                console.print(f"{system} {mode}: {took:.0f} s")
                figures.pop(f"{mode}_error", None)  # a second rpc run that worked
            if mode == "rpc":
                figures.setdefault("rpc_runs", []).append(got)
            figures.update({k: v for k, v in got.items() if k not in ("error", "stderr")})
        for figures in results.values():
            _merge_rpc_runs(figures)
        machine["load average (end)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"machine": machine, "settings": asdict(s), "results": results}


# -- the tables ------------------------------------------------------------------------------


def _failed(row: dict[str, Any], mode: str) -> str | None:
    if "error" in row:
        return f"failed: {row['error']}"
    if f"{mode}_error" in row:
        return f"failed: {row[f'{mode}_error']}"
    return None


def _num(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:,.0f}" if value >= 100 else f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return text + unit


def _ratio(conveyor: float | None, peer: float | None) -> str:
    if not conveyor or not peer:
        return ""
    ratio = conveyor / peer
    return f"{ratio:.2g}x" if ratio < 0.1 else f"{ratio:.2f}x"


HEADER = (
    "system",
    "drain jobs/s",
    "results/s, 64 in flight",
    "p50 ms, 1 in flight",
    "Conveyor / it: drain",
    "Conveyor / it: results/s",
    "Conveyor / it: p50",
)


def rows(report: dict[str, Any]) -> list[list[str]]:
    results = report["results"]
    conv = results.get("conveyor", {})
    out = []
    for system in TABLE_ORDER:
        if system not in results:
            continue
        row = results[system]
        drain_fail, rpc_fail = _failed(row, "drain"), _failed(row, "rpc")
        is_mlserver = system in RPC_ONLY  # no drain column
        drain = "n/a" if is_mlserver else drain_fail or _num(row.get("drain_jobs_per_s"))
        rate = rpc_fail or _num(row.get("results_per_s"))
        p50 = "" if rpc_fail else _num(row.get("seq_p50_ms"))
        label = LABELS[system]
        if len(row.get("rpc_runs", [])) > 1 and not rpc_fail:
            label += " (rpc: mean of the runs before and after MLServer)"
        cells = [label, drain, rate, p50]
        if system == "conveyor":
            cells += ["1x", "1x", "1x"]
        else:
            cells += [
                ""
                if is_mlserver
                else _ratio(conv.get("drain_jobs_per_s"), row.get("drain_jobs_per_s")),
                _ratio(conv.get("results_per_s"), row.get("results_per_s")),
                _ratio(conv.get("seq_p50_ms"), row.get("seq_p50_ms")),
            ]
        out.append(cells)
    return out


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    results = report["results"]
    conv = results.get("conveyor", {})
    out: list[dict[str, Any]] = []
    for peer in QUEUE_PEERS:
        if peer not in results:
            continue
        text = f">= {THROUGHPUT_GOAL:.0f}x {LABELS[peer]}'s results/s, 64 in flight"
        mine, theirs = conv.get("results_per_s"), results[peer].get("results_per_s")
        if not mine or not theirs:
            out.append({"goal": text, "measured": "n/a (a side failed)", "met": None})
            continue
        ratio = mine / theirs
        out.append({"goal": text, "measured": f"{ratio:.2f}x", "ratio": ratio, "met": ratio >= 3.0})
    for system in ("mlserver-1", "mlserver-2", "ray"):
        if system not in results:
            continue
        text = f"sequential p50 below {LABELS[system]}"
        mine, theirs = conv.get("seq_p50_ms"), results[system].get("seq_p50_ms")
        if not mine or not theirs:
            out.append({"goal": text, "measured": "n/a (a side failed)", "met": None})
            continue
        measured = f"{mine:.2f} ms vs {theirs:.2f} ms ({mine / theirs:.2f}x)"
        out.append(
            {"goal": text, "measured": measured, "ratio": mine / theirs, "met": mine < theirs}
        )
    if "ray" in results:  # issue 14: ahead of Ray Serve on the same load
        text = f"results/s above {LABELS['ray']}'s, 64 in flight"
        mine, theirs = conv.get("results_per_s"), results["ray"].get("results_per_s")
        if not mine or not theirs:
            out.append({"goal": text, "measured": "n/a (a side failed)", "met": None})
        else:
            ratio = mine / theirs
            out.append(
                {"goal": text, "measured": f"{ratio:.2f}x", "ratio": ratio, "met": ratio > 1}
            )
    return out


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "NOT met"


def print_tables(report: dict[str, Any], console: Console) -> None:
    table = Table(title="Conveyor and its peers (one run, one Redis, one worker process each)")
    for i, name in enumerate(HEADER):
        table.add_column(name, justify="left" if i == 0 else "right")
    for cells in rows(report):
        table.add_row(*cells)
    console.print(table)
    goal_table = Table(title="Goals")
    for name in ("goal", "measured", "result"):
        goal_table.add_column(name)
    for goal in goals(report):
        style = {True: "green", False: "red", None: "yellow"}[goal["met"]]
        verdict = _verdict(goal["met"])
        goal_table.add_row(goal["goal"], goal["measured"], f"[{style}]{verdict}[/{style}]")
    console.print(goal_table)


def markdown(report: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|" + "---:|" * (len(HEADER) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(report)]
    lines += ["", "| goal | measured | result |", "|---|---|---|"]
    for goal in goals(report):
        lines.append(f"| {goal['goal']} | {goal['measured']} | **{_verdict(goal['met'])}** |")
    return "\n".join(lines)


def versions_line(report: dict[str, Any]) -> str:
    parts = []
    for system in SYSTEMS:
        found = report["results"].get(system, {}).get("versions")
        if found and not system.endswith("-2"):
            name = system.split("-")[0]
            parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=SYSTEMS,
        metavar="NAME",
        help=f"run only this system (repeatable): {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="save every figure here")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    args = parser.parse_args(argv)
    s = Settings.quick() if args.quick else Settings.full()
    systems = [x for x in SYSTEMS if not args.only or x in args.only]
    console = Console(width=160)
    started = time.monotonic()
    report = run(systems, s, console)
    print_tables(report, console)
    console.print(f"versions: {versions_line(report)}", highlight=False)
    console.print(f"{time.monotonic() - started:.0f} s in all")
    if args.markdown:
        print()
        print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        console.print(f"saved {args.json}")


if __name__ == "__main__":
    main(sys.argv[1:])
