"""examples/client.py, run as a user would against a fleet serving examples/models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from conveyor.broker.keys import DEFAULT_PREFIX
from conveyor.embedded import RedisServer
from tests.support.fleet import EXAMPLES, Fleet

SCRIPT = Path(__file__).parents[2] / "examples" / "client.py"


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    """Two workers serving examples/models under a prefix of this module's own."""
    fleet = Fleet(redis_url, f"t{uuid4().hex[:10]}")
    fleet.start(EXAMPLES)
    fleet.start(EXAMPLES)
    yield fleet
    fleet.stop()


def run_script(
    *args: str, cwd: Path, url_env: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    if url_env is not None:
        env["CONVEYOR_REDIS_URL"] = url_env
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,  # not the repository: the script finds its own files
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["asyncio-url-argument", "trio-url-environment"])
def test_client_example(fleet: Fleet, how: str, tmp_path: Path) -> None:
    if how == "asyncio-url-argument":
        result = run_script(fleet.redis_url, "--prefix", fleet.prefix, cwd=tmp_path)
    else:
        args = ("--prefix", fleet.prefix, "--trio")
        result = run_script(*args, cwd=tmp_path, url_env=fleet.redis_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    assert lines[0] == "predict numpy-linear: x=[[1.0, 2.0]] -> y=[[5.5]]"
    # the tokens of both prompts, in order, on one line as they arrived
    assert lines[1] == "predict_stream token-streamer: STREAMS KEEP THEIR ORDER TOKEN BY TOKEN"
    assert re.fullmatch(
        r"100 concurrent predict calls: 100 correct, 0 wrong, 0 failed in [\d.]+s "
        r"\(\d+ calls/s\)",
        lines[2],
    ), lines[2]


@pytest.mark.timeout(30)
def test_client_example_without_workers_fails_in_one_line(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    result = run_script(redis_url, "--prefix", prefix, "--timeout", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no worker serves model 'numpy-linear'" in result.stderr
    assert "'numpy-linear'" in result.stderr


README = Path(__file__).parents[2] / "README.md"


def readme_snippet() -> str:
    """The Python snippet of README.md's "Use it from Python"."""
    text = README.read_text()
    section = text[text.index("## Use it from Python") :]
    start = section.index("```python\n") + len("```python\n")
    return section[start : section.index("\n```", start)]


def test_readme_snippet_takes_the_url_from_the_environment() -> None:
    """`conveyor up` picks a random port and prints `export CONVEYOR_REDIS_URL=...`: the
    snippet must use it, not a hard-coded URL (and say how to get trio)."""
    snippet = readme_snippet()
    assert "Client()" in snippet
    assert "redis://" not in snippet
    assert "[trio]" in README.read_text()
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["trio"]
    assert any(requirement.startswith("trio") for requirement in extra)


@pytest.mark.timeout(90)
def test_readme_snippet_runs_against_a_fleet_named_by_the_environment(tmp_path: Path) -> None:
    # A Redis of its own: the snippet uses the default key prefix, which no other test owns.
    with RedisServer() as server:
        fleet = Fleet(server.url, DEFAULT_PREFIX)
        fleet.start(EXAMPLES)
        try:
            env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
            env["CONVEYOR_REDIS_URL"] = server.url
            script = tmp_path / "snippet.py"
            script.write_text(readme_snippet())
            result = subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=tmp_path,
            )
        finally:
            fleet.stop()
    assert result.returncode == 0, result.stderr
    # y = x @ W + b with x = ones((4, 2)): 0.5 + 2.0 + 1.0 for each row
    assert result.stdout.split() == ["[[3.5]"] + ["[3.5]"] * 2 + ["[3.5]]"], result.stdout
