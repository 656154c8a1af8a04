"""A model that fails, as a new user meets it: in predict, in load(), with a wrong Redis URL.

Real Redis, workers as real subprocesses; each test waits on log lines, never on sleeps.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path

import anyio
import numpy as np
import pytest
import redis

from conveyor import MLModel
from conveyor.broker.keys import GROUP, Keys
from conveyor.client import Client
from conveyor.errors import ModelNotServed, RemoteError
from conveyor.settings import ModelSettings
from conveyor.types import InferenceRequest, InferenceResponse, ResponseOutput
from tests.support.calls import request
from tests.support.fleet import EXAMPLES, MODELS, Fleet

pytestmark = pytest.mark.anyio

REPO = Path(__file__).parents[2]


def model_folder(root: Path, name: str, source: str) -> Path:
    """A model folder ``root/name`` whose class ``Model`` is ``source``."""
    folder = root / name
    folder.mkdir(parents=True)
    module = name.replace("-", "_")
    (folder / f"{module}.py").write_text(source)
    (folder / "model-settings.json").write_text(
        f'{{"name": "{name}", "implementation": "{module}.Model"}}'
    )
    return folder


_LOAD_FALSE = """
from conveyor import MLModel


class Model(MLModel):
    def load(self) -> bool:
        return False  # e.g. its weights were not found
"""

_LOAD_RAISES = """
from conveyor import MLModel


class Model(MLModel):
    async def load(self) -> bool:
        raise ValueError("no weights at /nowhere/weights.bin")
"""

_LOAD_MARKS = """
from pathlib import Path

from conveyor import MLModel


class Model(MLModel):
    def load(self) -> bool:
        Path(__file__).with_name("loaded").touch()  # proof that load() ran
        return True
"""


# -- 1. a model's exception ---------------------------------------------------------------


async def test_a_model_error_is_logged_with_its_message_and_traceback_once(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    # `conveyor up` runs its workers at --log-level warning: the failure must show there
    worker = fleet.start(MODELS, extra=["--log-level", "warning"], wait=False)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:
        with pytest.raises(RemoteError, match="cannot handle 1 inputs") as caught:
            await client.model("fails").predict(request())
    # the traceback's last line is the exception itself
    last = "ValueError: cannot handle 1 inputs"
    await anyio.to_thread.run_sync(worker.wait_for_log, last)
    line = await anyio.to_thread.run_sync(worker.wait_for_log, "job.failed")
    assert "ERROR" in line
    assert f"request={caught.value.request_id}" in line
    assert "model=fails" in line
    assert "error=ValueError: cannot handle 1 inputs" in line
    log = "\n".join(worker.lines)
    assert log.count("Traceback (most recent call last)") == 1, log
    assert worker.lines.count(last) == 1, log  # the traceback's last line, once
    assert "fails_model.py" in log  # the model's own frame, where it raised


# -- 2. load() returns False --------------------------------------------------------------


@pytest.mark.parametrize("history", ["new", "served-before"])
async def test_a_model_whose_load_returns_false_is_not_served_and_callers_fail_fast(
    fleet: Fleet, redis_url: str, prefix: str, tmp_path: Path, history: str
) -> None:
    models = tmp_path / "models"
    model_folder(models, "not-loaded", _LOAD_FALSE)
    if history == "served-before":  # its job stream and group, from a deployment that loaded
        probe = redis.Redis.from_url(redis_url)
        try:
            probe.xgroup_create(Keys(prefix).jobs("not-loaded"), GROUP, id="0", mkstream=True)
        finally:
            probe.close()
    worker = fleet.start(models, MODELS)  # and the test models, which load
    lines = [line for line in worker.lines if "model=not-loaded" in line]
    assert len(lines) == 1, worker.log()
    assert "model.not_ready model=not-loaded" in lines[0]
    assert "load() returned False" in lines[0] or "load_returned_false" in lines[0]
    async with Client(redis_url, prefix=prefix, timeout=30) as client:
        with anyio.fail_after(5):  # not the call's 30 s timeout
            with pytest.raises(ModelNotServed, match=r"load\(\) returned False") as caught:
                await client.model("not-loaded").predict(request())
            # its neighbour serves as usual
            await client.model("echo").predict(request())
    assert "no worker" not in str(caught.value)
    probe = redis.Redis.from_url(redis_url)
    try:
        stream = Keys(prefix).jobs("not-loaded")
        if history == "new":
            assert probe.exists(stream) == 0  # nothing sent, nothing left behind
        else:  # nothing sent: no job queued, none ever delivered
            assert probe.xlen(stream) == 0
            assert probe.xinfo_groups(stream)[0]["last-delivered-id"] in (b"0-0", "0-0")
    finally:
        probe.close()


# -- 3. load() raises ---------------------------------------------------------------------


def run_worker(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "conveyor.cli", "worker", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_worker_whose_model_load_raises_says_so_in_one_line_with_the_traceback_once(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    model_folder(models, "broken", _LOAD_RAISES)
    result = await anyio.to_thread.run_sync(
        lambda: run_worker(str(models), "--redis", redis_url, "--prefix", prefix)
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == (
        "error: model 'broken' failed to load: ValueError: no weights at /nowhere/weights.bin"
    ), result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1, result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    # it never joined the fleet
    probe = redis.Redis.from_url(redis_url)
    try:
        assert probe.zcard(Keys(prefix).workers()) == 0
    finally:
        probe.close()


# -- a wrong Redis URL ----------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_worker_pointed_at_a_closed_port_fails_before_loading_its_models(
    tmp_path: Path,
) -> None:
    folder = model_folder(tmp_path / "models", "marks", _LOAD_MARKS)
    result = await anyio.to_thread.run_sync(
        lambda: run_worker(str(folder), "--redis", "redis://127.0.0.1:1/0")
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: cannot reach Redis at "), result.stderr
    assert "Traceback" not in result.stderr
    assert not (folder / "loaded").exists(), "the model was loaded before Redis was tried"


# -- 7. the default predict_stream of a plain-def predict -----------------------------------


class _PlainEcho(MLModel):
    def predict(self, payload: InferenceRequest) -> InferenceResponse:  # type: ignore[override]
        output = ResponseOutput(name="y", shape=[1], datatype="FP32", data=[2.0])
        return InferenceResponse(model_name=self.name, outputs=[output])


async def test_default_predict_stream_runs_a_plain_def_predict() -> None:
    model = _PlainEcho(ModelSettings(name="plain", implementation=_PlainEcho))

    async def one() -> AsyncGenerator[InferenceRequest]:
        yield request()

    async with aclosing(one()) as inputs:  # the default reads only the first request
        responses = [response async for response in model.predict_stream(inputs)]
    assert [r.outputs[0].name for r in responses] == ["y"]


async def test_predict_stream_of_the_shipped_plain_def_example(
    fleet: Fleet, redis_url: str, prefix: str
) -> None:
    fleet.start(EXAMPLES)
    async with Client(redis_url, prefix=prefix, timeout=20) as client:

        async def one() -> AsyncIterator[InferenceRequest]:
            yield request(3.0)

        chunks = [c async for c in client.model("echo-sync").predict_stream(one())]
    assert len(chunks) == 1
    assert np.asarray(chunks[0].outputs[0].data.root).tolist() == [3.0]
