"""The ``conveyor`` command as a user runs it: real subprocesses, real Redis, real signals.

Every process is watched through its output lines (no sleeps), every wait is bounded, and
whatever a test started is stopped by pid in its ``finally``, even when it fails.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from uuid import uuid4

import httpx
import numpy as np
import pytest

from conveyor.codecs import NumpyCodec, StringCodec
from conveyor.types import InferenceResponse
from tests.support.fleet import EXAMPLES, MODELS, Fleet
from tests.support.process import Watcher, lines_of, stat_fields

REPO = Path(__file__).parents[2]
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"  # port 1: nothing listens, connect is refused
LINEAR_REQUEST = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}]}
LINEAR_ANSWER = 0.5 * 1.0 + 2.0 * 2.0 + 1.0  # examples/models/numpy-linear/weights.json


def cli(*args: str) -> list[str]:
    """The ``conveyor`` command line, with this interpreter (works in any virtualenv)."""
    return [sys.executable, "-m", "conveyor.cli", *args]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    env.update(extra)
    return env


def run(args: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli(*args), capture_output=True, text=True, timeout=timeout, env=environment(), cwd=REPO
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a failed command prints on stderr (and nothing else)."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


# -- processes -------------------------------------------------------------------------------


class Watched:
    """A long-running ``conveyor`` subprocess whose output lines (stdout and stderr together)
    are watched, so a test can wait for one."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        # Its own session, as a shell gives a foreground job: `ctrl_c` signals the group.
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        self.output = Watcher(lines_of(self.process.stdout), describe=self.tail)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def lines(self) -> list[str]:
        """The lines printed so far (a copy)."""
        return self.output.snapshot()

    def wait_for(self, pattern: str, timeout: float = 30.0, start: int = 0) -> re.Match[str]:
        """Waits for a line at index ``start`` or later matching the regex ``pattern``."""
        return self.wait_for_all(pattern, 1, timeout, start)[0]

    def wait_for_all(
        self, pattern: str, count: int, timeout: float = 30.0, start: int = 0
    ) -> list[re.Match[str]]:
        """Waits for ``count`` lines matching ``pattern`` (from line ``start`` on)."""
        regex = re.compile(pattern)

        def found(lines: list[str]) -> list[re.Match[str]] | None:
            matches = [m for line in lines[start:] if (m := regex.search(line)) is not None]
            return matches[:count] if len(matches) >= count else None

        return self.output.wait(found, f"{count} lines {pattern!r}", timeout)

    def mark(self) -> int:
        """Index of the next line: wait for lines printed from now on with ``start=mark()``."""
        return len(self.lines)

    def count(self, pattern: str) -> int:
        return sum(1 for line in self.lines if re.search(pattern, line))

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.items[-lines:])

    def ctrl_c(self) -> None:
        """What Ctrl-C in a terminal does: SIGINT to the whole foreground process group."""
        os.killpg(self.pid, signal.SIGINT)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.process.wait(timeout=timeout)
        self.output.join(timeout=5)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()


class Pid:
    """A process identified by pid *and* start time, so a reused pid is not taken for it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _start_time(pid)
        self.cmdline = _cmdline(pid)

    def alive(self) -> bool:
        return self.start is not None and _start_time(self.pid) == self.start

    def kill(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<pid {self.pid} {' '.join(self.cmdline)[:80]!r}>"


def _start_time(pid: int) -> str | None:
    fields = stat_fields(pid)
    # A zombie is dead too: nobody reaped it, but it runs nothing.
    return None if fields is None or fields[0] == "Z" else fields[19]


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def children(pid: int) -> list[Pid]:
    """The live child processes of ``pid`` (read from /proc, as ``ps --ppid`` does)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and fields[1] == str(pid):
                found.append(Pid(int(entry.name)))
    return found


@pytest.fixture
def cleanup() -> Iterator[list[Watched | Pid]]:
    """Processes to stop after the test if it left them running (a failed test, say)."""
    started: list[Watched | Pid] = []
    yield started
    for item in reversed(started):
        if isinstance(item, Watched):
            item.close()
        else:
            item.kill()


# -- conveyor up -----------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_up_serves_the_examples_and_ctrl_c_stops_everything(
    tmp_path: Path, cleanup: list[Watched | Pid]
) -> None:
    tmp = tmp_path / "tmp"  # the embedded Redis makes its directory here, so we can look
    tmp.mkdir()
    prefix = f"t{uuid4().hex[:10]}"
    up = Watched(
        # free ports for the gateway: other tests may hold 8080
        cli(
            *("up", "examples/models", "--workers", "2", "--prefix", prefix),
            *("--http-port", "0", "--grpc-port", "0", "--log-level", "info"),
        ),
        environment(TMPDIR=str(tmp)),
    )
    cleanup.append(up)

    url = up.wait_for(r"^conveyor: Redis at (redis://127\.0\.0\.1:\d+/0)$", timeout=30)[1]
    up.wait_for(r"^conveyor: 2 worker\(s\) ready", timeout=60)
    infer_line = up.wait_for(r"^  (conveyor infer .*)$")[1]
    curl_line = up.wait_for(r"^  (curl .*)$")[1]
    up.wait_for(r"^conveyor: Ctrl-C stops everything\.$")

    kids = children(up.pid)
    cleanup.extend(kids)
    workers = [kid for kid in kids if "worker" in kid.cmdline]
    gateways = [kid for kid in kids if "gateway" in kid.cmdline]
    servers = [kid for kid in kids if kid not in workers and kid not in gateways]
    assert (len(workers), len(gateways), len(servers)) == (2, 1, 1), kids
    # redis-server rewrites its command line; it runs in its private directory, though.
    data_dir = Path(os.readlink(f"/proc/{servers[0].pid}/cwd"))
    assert data_dir.parent == tmp
    assert data_dir.name.startswith("conveyor-redis-")

    # The printed line, pasted as is: it names this Redis and the workers' prefix.
    argv = shlex.split(infer_line)
    assert argv[:3] == ["conveyor", "infer", "numpy-linear"]
    assert argv[argv.index("--redis") + 1] == url
    assert argv[argv.index("--prefix") + 1] == prefix
    assert json.loads(argv[argv.index("--data") + 1]) == LINEAR_REQUEST
    result = run(argv[1:])
    assert result.returncode == 0, result.stderr
    response = InferenceResponse.model_validate_json(result.stdout)
    assert (response.model_name, response.model_version) == ("numpy-linear", "v1")
    assert response.outputs[0].name == "y"
    np.testing.assert_array_equal(NumpyCodec.decode_output(response.outputs[0]), [[LINEAR_ANSWER]])
    # The curl line, pasted as is: the gateway answers the same
    curl = shlex.split(curl_line)
    assert curl[:2] == ["curl", "-s"]
    assert json.loads(curl[curl.index("-d") + 1]) == LINEAR_REQUEST
    posted = httpx.post(curl[2], content=curl[curl.index("-d") + 1], timeout=10)
    assert posted.status_code == 200, posted.text
    assert posted.json()["outputs"] == json.loads(result.stdout)["outputs"]

    mark = up.mark()
    up.ctrl_c()
    assert up.wait(timeout=45) == 0, up.tail()
    # Each worker drained and unregistered (a worker killed on the way logs no "stopped").
    assert up.count(r"worker\.stopped") == 2, up.tail()
    up.wait_for(r"redis_server\.stopped", start=mark)
    assert [kid for kid in kids if kid.alive()] == []
    assert list(tmp.iterdir()) == []


_SLOW_MODEL = """
import anyio

from conveyor import MLModel


class SlowModel(MLModel):
    async def load(self) -> bool:
        await anyio.sleep(600)  # never ready while the test runs
        return True
"""


@pytest.mark.timeout(60)
def test_up_ctrl_c_while_workers_start_stops_at_once(
    tmp_path: Path, cleanup: list[Watched | Pid]
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    slow = tmp_path / "models" / "slow"
    slow.mkdir(parents=True)
    (slow / "slow.py").write_text(_SLOW_MODEL)
    (slow / "model-settings.json").write_text(
        '{"name": "slow", "implementation": "slow.SlowModel"}'
    )
    up = Watched(
        cli(
            *("up", str(tmp_path / "models"), "--workers", "2", "--log-level", "info"),
            *("--http-port", "0", "--grpc-port", "0"),
        ),
        environment(TMPDIR=str(tmp)),
    )
    cleanup.append(up)
    up.wait_for_all(r"supervisor\.started child=\d pid=\d+", 2)
    kids = children(up.pid)
    cleanup.extend(kids)
    assert len(kids) == 4, kids  # Redis, a gateway and two workers, which will not be ready

    up.ctrl_c()
    started = time.monotonic()
    assert up.wait(timeout=30) == 0, up.tail()
    assert time.monotonic() - started < 20  # not the 60 s readiness wait
    assert up.count("Try, in another terminal") == 0
    assert [kid for kid in kids if kid.alive()] == []
    assert list(tmp.iterdir()) == []


@pytest.mark.timeout(30)
def test_up_broken_model_folder_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "model-settings.json").write_text('{"name": "broken",')
    result = subprocess.run(
        cli("up", str(tmp_path / "models")),
        capture_output=True,
        text=True,
        timeout=20,
        env=environment(TMPDIR=str(tmp)),
    )
    line = error_line(result)
    assert line.startswith(f"error: {broken / 'model-settings.json'}: invalid JSON"), line
    assert result.stdout == ""
    assert list(tmp.iterdir()) == []  # no Redis was started


_LOAD_RAISES = """
from conveyor import MLModel


class Broken(MLModel):
    async def load(self) -> bool:
        raise ValueError("no weights at /nowhere/weights.bin")
"""

_LOAD_FALSE = """
from conveyor import MLModel


class NotLoaded(MLModel):
    def load(self) -> bool:
        return False
"""


def _folder(root: Path, name: str, source: str, cls: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    module = name.replace("-", "_")
    (folder / f"{module}.py").write_text(source)
    (folder / "model-settings.json").write_text(
        json.dumps({"name": name, "implementation": f"{module}.{cls}"})
    )


@pytest.mark.timeout(90)
def test_up_gives_up_on_a_model_whose_load_raises_in_one_line_with_the_traceback_once(
    tmp_path: Path, cleanup: list[Watched | Pid]
) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    _folder(tmp_path / "models", "broken", _LOAD_RAISES, "Broken")
    up = Watched(cli("up", str(tmp_path / "models")), environment(TMPDIR=str(tmp)))
    cleanup.append(up)
    assert up.wait(timeout=60) == 1, up.tail()
    output = "\n".join(up.lines)
    error = "model 'broken' failed to load: ValueError: no weights at /nowhere/weights.bin"
    assert up.lines[-1].startswith(f"error: {error}; gave up after 3 failed starts"), output
    assert output.count("Traceback (most recent call last)") == 1, output
    assert output.count('raise ValueError("no weights at /nowhere/weights.bin")') == 1, output
    assert len(up.lines) < 40, output  # not hundreds of lines of restarts
    assert "Try, in another terminal" not in output
    assert list(tmp.iterdir()) == []  # the embedded Redis stopped and cleaned up


@pytest.mark.timeout(90)
def test_up_says_what_it_serves_and_prints_the_url_to_export(
    tmp_path: Path, cleanup: list[Watched | Pid]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(EXAMPLES / "echo-sync", models / "echo-sync")
    _folder(models, "not-loaded", _LOAD_FALSE, "NotLoaded")
    up = Watched(cli("up", str(models), "--workers", "1"), environment())
    cleanup.append(up)
    url = up.wait_for(r"^conveyor: Redis at (redis://127\.0\.0\.1:\d+/0)$", timeout=30)[1]
    up.wait_for(r"^conveyor: 1 worker\(s\) ready, serving echo-sync\.$", timeout=60)
    up.wait_for(r"^conveyor: not served, their load\(\) returned False: not-loaded$")
    exported = up.wait_for(r"^  export CONVEYOR_REDIS_URL=(\S+)")[1]
    assert exported == url
    infer = up.wait_for(r"^  (conveyor infer .*)$")[1]
    assert shlex.split(infer)[:3] == ["conveyor", "infer", "echo-sync"]  # not numpy-linear
    up.wait_for(r"^conveyor: Ctrl-C stops everything\.$")
    up.ctrl_c()
    assert up.wait(timeout=45) == 0, up.tail()


@pytest.mark.timeout(180)
def test_up_from_a_plain_install_run_inside_the_checkout(
    tmp_path: Path, cleanup: list[Watched | Pid]
) -> None:
    """`pip install .` (not -e), then `conveyor up examples/models` from the repository root:
    the workers it starts must import the installed package, never the checkout's `conveyor/`
    folder (the core alone), which `python -m` would put first on sys.path."""
    target = tmp_path / "installed"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
    install = subprocess.run(
        [*pip, "--target", str(target), str(REPO)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert install.returncode == 0, install.stderr
    # A Python that knows only that copy and the dependencies: not this environment's editable
    # install (its import hook would find conveyor.cli even under the shadowing folder).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    deps = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = environment(TMPDIR=str(tmp), PYTHONPATH=f"{target}{os.pathsep}{deps}")
    script = target / "bin" / "conveyor"  # the console script, as on PATH after `pip install`
    argv = [str(venv / "bin" / "python"), str(script), "up", "examples/models", "--workers", "1"]
    up = Watched(argv, env)  # run from the repository root
    cleanup.append(up)
    ready = up.wait_for(r"^conveyor: (1 worker\(s\) ready|only 0 of 1).*", timeout=90)
    assert ready[1].startswith("1 worker"), up.tail()
    assert "No module named" not in "\n".join(up.lines), up.tail()
    kids = [kid for kid in children(up.pid) if "worker" in kid.cmdline]
    cleanup.extend(kids)
    assert "-P" in kids[0].cmdline, kids  # safe path: no current directory on sys.path
    up.ctrl_c()
    assert up.wait(timeout=45) == 0, up.tail()


# -- the command itself ----------------------------------------------------------------------


def test_help_imports_nothing_heavy() -> None:
    """`conveyor --help` must answer at once: numpy, pydantic, redis and rich (~0.4 s of
    imports together) wait until a command needs them."""
    probe = (
        "import sys\n"
        "from conveyor.cli import main\n"
        "sys.argv = ['conveyor', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = {'numpy', 'pydantic', 'redis', 'rich', 'anyio'}\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
    assert "infer" in result.stdout  # it did print the help


def test_version() -> None:
    result = run(["--version"])
    assert result.returncode == 0, result.stderr
    # and how it runs: pure Python, or compiled by a CONVEYOR_COMPILE=1 build (conveyor.compiled)
    pattern = r"conveyor \d+\.\d+\.\d+\S*, (pure Python|compiled \(\d+ modules, mypyc\))\n"
    assert re.fullmatch(pattern, result.stdout), result.stdout


def test_help_shows_flags_without_a_type() -> None:
    result = run(["infer", "--help"])
    assert result.returncode == 0, result.stderr
    [stream] = [line for line in result.stdout.splitlines() if line.strip().startswith("--stream")]
    assert stream.split()[:2] == ["--stream", "Call"], stream  # not `--stream <bool>`
    assert "<bool>" not in result.stdout


def test_up_help_does_not_promise_the_environment_url() -> None:
    result = run(["up", "--help"])
    assert result.returncode == 0, result.stderr
    assert "$CONVEYOR_REDIS_URL is not read" in " ".join(result.stdout.split())


# -- conveyor infer --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(redis_url: str) -> Iterator[Fleet]:
    """One worker serving examples/models, for the infer tests that need an answer."""
    fleet = Fleet(redis_url, f"t{uuid4().hex[:10]}")
    fleet.start(EXAMPLES)
    yield fleet
    fleet.stop()


def prompts(*texts: str) -> list[dict[str, object]]:
    return [
        {"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": [text]}]}
        for text in texts
    ]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param("{bad", r"^error: --data is not valid JSON: ", id="invalid-json"),
        pytest.param(
            '{"inputs": 5}', r"^error: --data is not a V2 inference request: ", id="not-v2"
        ),
        pytest.param(
            "@/nonexistent/request.json",
            r"^error: cannot read --data @/nonexistent/request\.json: No such file",
            id="missing-file",
        ),
    ],
)
def test_infer_bad_data_is_one_line(data: str, expected: str) -> None:
    # Refused before any connection: the unreachable URL is never tried.
    result = run(["infer", "numpy-linear", "--redis", UNREACHABLE, "--data", data])
    assert re.search(expected, error_line(result)), result.stderr


@pytest.mark.timeout(30)
@pytest.mark.parametrize("stream", [False, True], ids=["predict", "stream"])
def test_infer_unreachable_redis_is_one_line_without_password(stream: bool) -> None:
    args = ["infer", "numpy-linear", "--redis", UNREACHABLE, "--data", json.dumps(LINEAR_REQUEST)]
    started = time.monotonic()
    result = run([*args, "--stream"] if stream else args, timeout=20)
    line = error_line(result)
    assert time.monotonic() - started < 15
    assert line.startswith("error: cannot reach Redis at redis://:***@127.0.0.1:1/0: "), line
    assert "s3cret" not in result.stderr + result.stdout


@pytest.mark.timeout(30)
def test_infer_unknown_model_says_no_worker_serves_it(redis_url: str, prefix: str) -> None:
    args = ["infer", "no-such-model", "--redis", redis_url, "--prefix", prefix, "--timeout", "1"]
    result = run([*args, "--data", json.dumps(LINEAR_REQUEST)], timeout=20)
    line = error_line(result)
    assert "no worker serves model 'no-such-model'" in line
    assert "no worker is running" in line  # none under this prefix


@pytest.mark.timeout(60)
def test_infer_data_from_file(examples: Fleet, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(LINEAR_REQUEST))
    where = ["--redis", examples.redis_url, "--prefix", examples.prefix]
    result = run(["infer", "numpy-linear", *where, "--data", f"@{request}"])
    assert result.returncode == 0, result.stderr
    response = InferenceResponse.model_validate_json(result.stdout)
    np.testing.assert_array_equal(NumpyCodec.decode_output(response.outputs[0]), [[LINEAR_ANSWER]])


@pytest.mark.timeout(60)
def test_infer_stream_prints_one_line_per_chunk_in_order(examples: Fleet) -> None:
    where = ["--redis", examples.redis_url, "--prefix", examples.prefix]
    data = json.dumps(prompts("the quick brown fox", "jumps over"))
    result = run(["infer", "token-streamer", *where, "--stream", "--data", data])
    assert result.returncode == 0, result.stderr
    tokens = []
    for line in result.stdout.splitlines():
        response = InferenceResponse.model_validate_json(line)
        assert response.model_name == "token-streamer"
        tokens += StringCodec.decode_output(response.outputs[0])
    assert tokens == ["THE", "QUICK", "BROWN", "FOX", "JUMPS", "OVER"]


# -- conveyor worker -------------------------------------------------------------------------

_WORKER_PID = r"worker\.started worker=\S+-(\d+)-[0-9a-f]{4} "  # the name holds the pid


@pytest.mark.timeout(90)
def test_worker_processes_restarts_a_killed_child_and_stops_on_sigterm(
    redis_url: str, prefix: str, cleanup: list[Watched | Pid]
) -> None:
    supervisor = Watched(
        cli(
            "worker",
            str(MODELS),
            "--redis",
            redis_url,
            "--prefix",
            prefix,
            "--processes",
            "2",
            "--heartbeat-ttl",
            "3",
            "--grace-period",
            "5",
        ),
        environment(),
    )
    cleanup.append(supervisor)
    started = {
        int(supervisor.wait_for(rf"supervisor\.started child={i} pid=(\d+)")[1]) for i in (0, 1)
    }
    ready = supervisor.wait_for_all(_WORKER_PID, 2, timeout=60)
    assert {int(match[1]) for match in ready} == started
    kids = children(supervisor.pid)
    cleanup.extend(kids)
    assert sorted(kid.pid for kid in kids) == sorted(started)

    victim = kids[0]
    mark = supervisor.mark()
    victim.kill()
    exited = supervisor.wait_for(
        rf"supervisor\.child_exited child=(\d) pid={victim.pid} code=-9", start=mark
    )
    restarted = supervisor.wait_for(rf"supervisor\.started child={exited[1]} pid=(\d+)", start=mark)
    new_pid = int(restarted[1])
    assert new_pid not in started
    assert int(supervisor.wait_for(_WORKER_PID, timeout=60, start=mark)[1]) == new_pid
    replacement = [kid for kid in children(supervisor.pid) if kid.pid == new_pid]
    assert len(replacement) == 1
    cleanup.extend(replacement)
    assert not victim.alive()

    supervisor.process.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=45) == 0, supervisor.tail()
    # Both children drained and unregistered on the supervisor's SIGTERM, and are gone.
    assert supervisor.count(r"worker\.stopped") == 2, supervisor.tail()
    assert [kid for kid in [*kids, *replacement] if kid.alive()] == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        pytest.param('{"name": "broken",', "invalid JSON at line", id="invalid-json"),
        pytest.param(
            '{"name": "broken", "implementation": "no_such_module.Model"}',
            "cannot import module 'no_such_module'",
            id="bad-implementation",
        ),
    ],
)
def test_worker_broken_model_settings_is_one_line_naming_the_file(
    tmp_path: Path, processes: str, settings: str, expected: str
) -> None:
    folder = tmp_path / "models" / "broken"
    folder.mkdir(parents=True)
    (folder / "model-settings.json").write_text(settings)
    args = ["worker", str(tmp_path / "models"), "--redis", UNREACHABLE, "--processes", processes]
    line = error_line(run(args))
    assert line.startswith(f"error: {folder / 'model-settings.json'}: "), line
    assert expected in line
