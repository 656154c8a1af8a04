"""Where the time goes: py-spy on Conveyor's client and worker.

``python -m bench --only profile`` (64 calls in flight) and ``--only profile.seq`` (1 in flight)
run a Conveyor case against one worker process and meanwhile record it with ``py-spy record
--format raw --subprocesses --threads`` attached to this process: its own samples are the
client, its child ``conveyor worker``'s are the worker. Each side's main thread (the event loop)
is then summed by phase (the deepest frame matching ``_PHASES``), by cross-cutting cost
(``_TOPICS``, inclusive), by the frame and the line that were running (self time) and by
library; other threads (stderr readers blocked on a pipe, waitpid, the worker's heartbeat) are
listed apart.

py-spy shows Python frames only: time in a C function (msgpack, hiredis, pydantic-core, the
socket) counts as self time of the Python line that called it, so the tables list lines too.
py-spy leaves out samples of threads it sees idle (waiting in epoll), and pauses the process for
each sample, so the throughput seen while profiling is lower than without it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console
from rich.table import Table

from bench.harness import ROOT, load
from conveyor.client import Client

if TYPE_CHECKING:
    from bench.run import Env

RATE = 250  # samples per second
_TOP_LIBRARIES = 15
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?):(?P<line>\d+)\)$")
_PROCESS = re.compile(r"^process (?P<pid>\d+):")
_SITE = "/site-packages/"
# (substring of the file's path, library); the first match wins
_LIBRARIES = (
    (_SITE + "redis/", "redis-py"),
    (_SITE + "hiredis", "hiredis"),
    (_SITE + "pydantic_core/", "pydantic"),
    (_SITE + "pydantic/", "pydantic"),
    (_SITE + "msgpack/", "msgpack"),
    (_SITE + "anyio/", "anyio"),
    (_SITE + "trio/", "trio"),
    (_SITE + "sniffio/", "anyio"),
    (_SITE + "prometheus_client/", "prometheus_client"),
    (_SITE + "numpy/", "numpy"),
    ("/asyncio/", "asyncio"),
    (str(ROOT / "bench" / "models") + "/", "the model (bench/models)"),
    (str(ROOT / "bench") + "/", "bench harness"),
    (str(ROOT) + "/", "conveyor"),
)


# Where a sample's time goes, by the deepest frame of its stack that matches one of these:
# (phase, "func" | "lib" | "file" | "harness", value). What matches nothing is the event loop's
# own work ("harness": a closure of bench/, the callers' tasks, not the frames that run the loop).
_PHASES: tuple[tuple[str, str, str], ...] = (
    ("metrics (prometheus_client)", "lib", "prometheus_client"),
    ("uuid4", "func", "uuid4"),
    ("encode job (wire: msgpack, pydantic dump)", "func", "encode_job"),
    ("decode job (wire: msgpack, pydantic validate)", "func", "decode_job"),
    ("encode reply (wire)", "func", "encode_message"),
    ("decode reply (wire: msgpack, pydantic validate)", "func", "decode_message"),
    ("the model", "lib", "the model (bench/models)"),
    ("Redis: pipeline flush (redis-py pack, send, parse)", "func", "PipelineBatcher._flush"),
    ("Redis: XREADGROUP", "func", "WorkerStreams._read_group"),
    ("Redis: BLMPOP (doorbell) + UNLINK", "func", "ClientStreams.wait_bell"),
    ("Redis: XREAD of reply streams", "func", "ClientStreams.read_replies"),
    ("queue commands for the pipeline batcher", "func", "PipelineBatcher.run"),
    ("client: dispatch replies to waiters", "func", "Reader._dispatch"),
    ("client: call bookkeeping (waiter, deadline, forget)", "file", "client/"),
    ("worker: consume loop (read, spawn tasks)", "func", "Consumer.consume"),
    ("worker: job bookkeeping (checks, scopes, logs)", "file", "worker/"),
    ("bench harness (the callers' loop)", "harness", "bench/"),
)
_LOOP = "event loop and scheduling (asyncio, anyio, epoll)"


def phase(frames: list[re.Match[str]]) -> str:
    """The phase of one stack (frames from the root to the leaf)."""
    for frame in reversed(frames):
        func, path = frame["func"], frame["file"]
        for label, kind, value in _PHASES:
            if (
                (kind == "func" and func == value)
                or (kind == "lib" and library(path) == value)
                or (kind == "file" and short(path).startswith(value))
                or (kind == "harness" and short(path).startswith(value) and "<locals>" in func)
            ):
                return label
    return _LOOP


# Costs that cut across phases: the share of samples with any frame matching (inclusive).
_TOPICS: tuple[tuple[str, Callable[[str, str], bool]], ...] = (
    ("socket send (asyncio transport.write)", lambda f, _: f == "_SelectorSocketTransport.write"),
    ("epoll (selector.select)", lambda f, _: f == "EpollSelector.select"),
    (
        "redis-py: packing commands",
        lambda f, _: f in ("AbstractConnection.pack_command", "AbstractConnection.pack_commands"),
    ),
    (
        "redis-py: reading replies (hiredis + callbacks)",
        lambda f, lib: lib == "redis-py" and ("read_response" in f or "parse_" in f),
    ),
    ("redis-py: everything", lambda _, lib: lib == "redis-py"),
    ("pydantic (validate, construct)", lambda _, lib: lib == "pydantic"),
    (
        "msgpack (pack / unpack with our hooks)",
        lambda f, _: f in ("_Encoder.pack", "_Decoder.unpack"),
    ),
    (
        "anyio deadlines and cancel scopes",
        lambda f, lib: (
            lib == "anyio" and ("CancelScope" in f or f.startswith(("fail_", "move_on")))
        ),
    ),
    ("events (anyio / asyncio Event)", lambda f, _: f.startswith("Event.")),
    ("prometheus_client", lambda _, lib: lib == "prometheus_client"),
    ("contextlib (@contextmanager)", lambda _, lib: lib == "stdlib: contextlib.py"),
    ("uuid4", lambda f, _: f == "uuid4"),
)


def library(path: str) -> str:
    for marker, name in _LIBRARIES:
        if marker in path:
            return name
    if "/lib/python3" in path and _SITE not in path:
        return "stdlib: " + path.rsplit("/", 1)[-1]
    return "other: " + path.rsplit("/", 1)[-1]


def short(path: str) -> str:
    """A path as it reads in the tables: relative to the repository or to site-packages."""
    if path.startswith(str(ROOT) + "/"):
        return path[len(str(ROOT)) + 1 :]
    if _SITE in path:
        return path.split(_SITE, 1)[1]
    if "/lib/python3" in path:
        return path.split("/lib/", 1)[1].split("/", 1)[1]
    return path


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def run(
    env: Env, in_flight: int, seconds: float, directory: Path | None, console: Console
) -> dict[str, Any]:
    """Profiles Conveyor at ``in_flight`` calls for ``seconds``; returns both sides' summaries."""
    py_spy = _py_spy()
    if py_spy is None:
        console.print("[yellow]py-spy not found: pip install py-spy (skipping the profile)")
        return {"error": "py-spy not found"}
    out = directory or Path(tempfile.mkdtemp(prefix="conveyor-bench-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    raw = out / f"conveyor-{in_flight}.txt"
    worker = env.fleets["echo1"][0]
    argv = [py_spy, "record", "--pid", str(os.getpid()), "--subprocesses", "--format", "raw"]
    argv += [
        "--threads",
        "--full-filenames",
        "--rate",
        str(RATE),
        "--duration",
        str(round(seconds)),
    ]
    argv += ["--output", str(raw)]
    console.print(f"profiling Conveyor, {in_flight} in flight, {seconds:.0f} s: {' '.join(argv)}")
    figures = anyio.run(_profiled_load, env, in_flight, seconds, argv)
    client = summarise(raw, os.getpid())
    served = summarise(raw, worker.pid)
    return {
        "in_flight": in_flight,
        "raw": str(raw),
        "command": argv,
        "load": figures,
        "client": client,
        "worker": served,
    }


async def _profiled_load(
    env: Env, in_flight: int, seconds: float, argv: list[str]
) -> dict[str, float]:
    from bench.run import FLEETS, _small_request

    request = _small_request()
    meter = env.meter(env.fleets["echo1"])
    async with Client(env.url, prefix=FLEETS["echo1"][0]) as client:
        model = client.model("bench-echo")

        async def call() -> object:
            return await model.predict(request)

        await load("warm-up", call, in_flight, 0.5, meter)
        async with anyio.create_task_group() as tg:
            results = []

            async def measure() -> None:
                results.append(await load("profile", call, in_flight, seconds + 3, meter))

            tg.start_soon(measure)
            started = time.perf_counter()
            spy = await anyio.run_process(argv, check=False)
            if spy.returncode != 0:
                err = spy.stderr.decode()[-2000:]
                raise RuntimeError(f"py-spy failed ({spy.returncode}): {err}")
            recorded = time.perf_counter() - started
    result = results[0]
    return {
        "calls_per_s": result.calls_per_s or 0.0,
        "seconds_recorded": recorded,
        **{f"cpu_us_per_call_{k}": v for k, v in result.cpu_us_per_call.items()},
    }


def summarise(raw: Path, pid: int, top: int = 15) -> dict[str, Any]:
    """Self and inclusive time, by frame, line and library, of one process's main thread.

    The main thread runs the event loop (client and worker alike); other threads (stderr
    readers, waitpid, the heartbeat) are counted apart, with the frame they sat in most.
    """
    self_frames: Counter[str] = Counter()
    self_lines: Counter[str] = Counter()
    self_libs: Counter[str] = Counter()
    incl_libs: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    others: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    topics: Counter[str] = Counter()
    total = 0
    for text in raw.read_text().splitlines():
        stack, _, count_text = text.rpartition(" ")
        frames = stack.split(";")
        owner = os.getpid()
        while frames and (match := _PROCESS.match(frames[0])) is not None:
            owner = int(match["pid"])  # nested: parent, child, grandchild...
            frames = frames[1:]
        if owner != pid:
            continue
        if frames and frames[0].startswith("thread ("):
            frames = frames[1:]
        count = int(count_text)
        parsed = [m for m in map(_FRAME.match, frames) if m is not None]
        if not parsed:
            continue
        leaf = parsed[-1]
        if parsed[0]["func"] not in ("_run_module_as_main", "<module>"):
            others[f"{leaf['func']} ({short(leaf['file'])})"] += count
            continue
        total += count
        phases[phase(parsed)] += count
        pairs = [(m["func"], library(m["file"])) for m in parsed]
        for label, match_frame in _TOPICS:
            if any(match_frame(func, lib) for func, lib in pairs):
                topics[label] += count
        lib = library(leaf["file"])
        self_frames[f"{leaf['func']} ({short(leaf['file'])}) [{lib}]"] += count
        self_lines[f"{leaf['func']} ({short(leaf['file'])}:{leaf['line']})"] += count
        self_libs[lib] += count
        for name in {library(m["file"]) for m in parsed}:
            incl_libs[name] += count
        ours = {
            f"{m['func']} ({short(m['file'])})" for m in parsed if library(m["file"]) == "conveyor"
        }
        for name in ours:
            incl_ours[name] += count

    def shares(counter: Counter[str], n: int | None = top) -> list[tuple[str, float]]:
        return [(name, 100.0 * c / max(total, 1)) for name, c in counter.most_common(n)]

    for name, count in list(incl_ours.items()):
        if count >= 0.995 * total:  # entry points (cli main, Worker.run...): in every sample
            del incl_ours[name]

    return {
        "samples": total,
        "phases": shares(phases, None),
        "topics": shares(topics, None),
        "self_frames": shares(self_frames),
        "self_lines": shares(self_lines),
        "self_libraries": shares(self_libs, None),
        "inclusive_libraries": shares(incl_libs, None),
        "inclusive_conveyor": shares(incl_ours),
        "other_threads": shares(others, 5),
    }


def print_summary(profile: dict[str, Any], console: Console) -> None:
    if "error" in profile:
        return
    load_figures = profile["load"]
    console.print(
        f"profile, {profile['in_flight']} in flight: {load_figures['calls_per_s']:,.0f} calls/s "
        f"while sampled at {RATE} Hz; "
        f"raw samples in {profile['raw']}"
    )
    for side in ("client", "worker"):
        data = profile[side]
        where = Table(title=f"{side}, {profile['in_flight']} in flight: where the time goes")
        where.add_column("phase (deepest matching frame)")
        where.add_column("%", justify="right")
        where.add_column("across phases (inclusive)")
        where.add_column("%", justify="right")
        topics = data["topics"]
        for i in range(max(len(data["phases"]), len(topics))):
            a = data["phases"][i] if i < len(data["phases"]) else ("", 0.0)
            b = topics[i] if i < len(topics) else ("", 0.0)
            where.add_row(a[0], f"{a[1]:.1f}" if a[0] else "", b[0], f"{b[1]:.1f}" if b[0] else "")
        console.print(where)
        table = Table(title=f"{side}, {profile['in_flight']} in flight: {data['samples']} samples")
        table.add_column("self time, by frame")
        table.add_column("%", justify="right")
        table.add_column("by library (self / inclusive)")
        table.add_column("%", justify="right")
        inclusive = dict(data["inclusive_libraries"])
        libs = [(n, f"{s:.1f} / {inclusive.get(n, 0):.1f}") for n, s in data["self_libraries"]]
        frames = [(n, f"{s:.1f}") for n, s in data["self_frames"]]
        for i in range(max(len(frames), len(libs[:_TOP_LIBRARIES]))):
            frame = frames[i] if i < len(frames) else ("", "")
            lib = libs[i] if i < min(len(libs), _TOP_LIBRARIES) else ("", "")
            table.add_row(*frame, *lib)
        console.print(table)
        lines = Table(title=f"{side}: top lines (self) and Conveyor functions (inclusive)")
        lines.add_column("self time, by line")
        lines.add_column("%", justify="right")
        lines.add_column("inclusive, Conveyor's functions")
        lines.add_column("%", justify="right")
        ours = data["inclusive_conveyor"]
        for i in range(max(len(data["self_lines"]), len(ours))):
            a = data["self_lines"][i] if i < len(data["self_lines"]) else ("", 0.0)
            b = ours[i] if i < len(ours) else ("", 0.0)
            lines.add_row(a[0], f"{a[1]:.1f}" if a[0] else "", b[0], f"{b[1]:.1f}" if b[0] else "")
        console.print(lines)
        if data["other_threads"]:
            text = ", ".join(f"{name} {share:.1f}%" for name, share in data["other_threads"])
            console.print(f"{side}: other threads (as % of the main thread's samples): {text}")
