"""The V2 gateway's REST side, called by clients nobody here wrote (tritonclient.http, sync and
aio; httpx with MLServer's JSON), in front of real worker processes and a real Redis.

One fleet and one gateway serve the whole module: worker A serves tests/models/common and
examples/models; worker B the queue-limited ``bounded`` model, one job at a time (for 429 and
503). Tests that kill a gateway start one of their own.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import httpx
import numpy as np
import pytest
import redis
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.support.fleet import EXAMPLES, MODELS, Fleet, GatewayProcess, WorkerProcess, wait_acked
from tests.support.probe import pending_count
from tests.support.waiting import wait_until

LIMITED = Path(__file__).parents[1] / "models" / "limited"
BATCHED_TEXT = Path(__file__).parents[1] / "models" / "batching" / "batched-text"

pytestmark = pytest.mark.timeout(30)


class Setup:
    def __init__(self, fleet: Fleet, worker: WorkerProcess, gateway: GatewayProcess) -> None:
        self.fleet, self.worker, self.gateway = fleet, worker, gateway
        self.url = gateway.http_url
        self.http = httpx.Client(base_url=self.url, timeout=20)

    def post(self, path: str, body: object, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, content=json.dumps(body).encode(), **kwargs)

    def triton(self) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(self.url.removeprefix("http://"), network_timeout=20)


@pytest.fixture(scope="module")
def gw(redis_url: str) -> Iterator[Setup]:
    fleet = Fleet(redis_url, f"t{uuid4().hex[:10]}")
    try:
        worker = fleet.start(MODELS, EXAMPLES, BATCHED_TEXT, wait=False)
        fleet.start(LIMITED, extra=["--concurrency", "1"], wait=False)
        gateway = fleet.start_gateway()
        for process in fleet.workers[:2]:
            process.wait_for_log("worker.started")
        setup = Setup(fleet, worker, gateway)
        yield setup
        setup.http.close()
    finally:
        fleet.stop()


def v2_input(name: str, data: list[Any], datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": [len(data)], "datatype": datatype, "data": data}


# -- health, metadata, repository ------------------------------------------------------------


def test_health_metadata_and_readiness(gw: Setup) -> None:
    client = gw.triton()
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("numpy-linear")
        assert client.is_model_ready("numpy-linear", "v1")
        assert not client.is_model_ready("no-such-model")
        server = client.get_server_metadata()
        assert server["name"] == "conveyor"
        assert "binary_tensor_data" in server["extensions"]
        metadata = client.get_model_metadata("numpy-linear")
        assert metadata["name"] == "numpy-linear"
        assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]
        assert client.get_model_metadata("numpy-linear", "v1")["name"] == "numpy-linear"
        with pytest.raises(InferenceServerException, match="no worker serves model 'nope'"):
            client.get_model_metadata("nope")
        x = triton.InferInput("x", [1, 2], "FP32").set_data_from_numpy(np.ones((1, 2), "f4"))
        result = client.infer("numpy-linear", [x], model_version="v1")
        assert result.get_response()["model_version"] == "v1"
        with pytest.raises(InferenceServerException, match="v9") as caught:
            client.infer("numpy-linear", [x], model_version="v9")
        assert caught.value.status() == "404"
    finally:
        client.close()


def test_repository_index_unload_and_load(gw: Setup) -> None:
    client = gw.triton()
    try:
        index = {item["name"]: item for item in client.get_model_repository_index()}
        assert index["numpy-linear"]["state"] == "READY"
        assert {"echo", "token-streamer", "bounded"} <= set(index)
        client.unload_model("counter")
        wait_until(lambda: not client.is_model_ready("counter"), "counter unloaded", 10)
        ready = gw.post("/v2/repository/index", {"ready": True}).json()
        assert "counter" not in {item["name"] for item in ready}
        client.load_model("counter")
        wait_until(lambda: client.is_model_ready("counter"), "counter loaded again", 10)
    finally:
        client.close()


# -- inference: tritonclient, every datatype, binary and JSON -------------------------------

TENSORS = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**63]], dtype=np.uint64),
    "INT8": np.array([[-128, 7, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 7, 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 7, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 7, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.25, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, np.pi, 3e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, np.pi, 1e300]], dtype=np.float64),
    "BYTES": np.array([[b"", b"a\x00b", "naïve".encode()]], dtype=object),
}


def _inputs(binary: bool, module: Any = triton) -> list[Any]:
    inputs = []
    for datatype, array in TENSORS.items():
        tensor = module.InferInput(datatype.lower(), list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize(("binary_in", "binary_out"), [(True, True), (False, False), (True, False)])
def test_tritonclient_every_datatype(gw: Setup, binary_in: bool, binary_out: bool) -> None:
    client = gw.triton()
    try:
        outputs = [
            triton.InferRequestedOutput(name.lower(), binary_data=binary_out) for name in TENSORS
        ]
        result = client.infer("echo", _inputs(binary_in), outputs=outputs, request_id="r-1")
    finally:
        client.close()
    assert result.get_response()["id"] == "r-1"
    for datatype, array in TENSORS.items():
        got = result.as_numpy(datatype.lower())
        if datatype == "BYTES" and not binary_out:
            got = np.array([[item.encode() for item in got.ravel()]], dtype=object)
        np.testing.assert_array_equal(got, array, err_msg=datatype)
        output = result.get_output(datatype.lower())
        assert output["datatype"] == datatype
        assert ("binary_data_size" in output.get("parameters", {})) == binary_out


def test_binary_tensors_reach_the_model_as_arrays(gw: Setup) -> None:
    """The echo model answers with what it got: an array comes back as the array (not as the
    list that JSON would have made of it), so the worker saw an array."""
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = triton.InferInput("x", [2, 3], "FP32").set_data_from_numpy(array)
    client = gw.triton()
    try:
        result = client.infer("echo", [tensor])  # no outputs named: all come back binary
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("x"), array)
    assert result.get_output("x")["parameters"]["binary_data_size"] == 24


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
def test_compressed_requests(gw: Setup, compression: str) -> None:
    """tritonclient can compress the body (and ask for a compressed answer, which it reads
    plain as well: the gateway answers uncompressed)."""
    x = triton.InferInput("x", [1, 2], "FP32").set_data_from_numpy(np.ones((1, 2), "f4"))
    client = gw.triton()
    try:
        result = client.infer(
            "numpy-linear",
            [x],
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("y"), [[3.5]])


def test_a_one_mib_tensor_both_ways(gw: Setup) -> None:
    array = np.random.default_rng(0).random((512, 512), dtype=np.float32)  # 1 MiB
    client = gw.triton()
    try:
        for binary in (True, False):
            tensor = triton.InferInput("x", [512, 512], "FP32")
            tensor.set_data_from_numpy(array, binary_data=binary)
            wanted = [triton.InferRequestedOutput("x", binary_data=binary)]
            result = client.infer("echo", [tensor], outputs=wanted)
            np.testing.assert_array_equal(result.as_numpy("x").reshape(512, 512), array)
    finally:
        client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiohttp: asyncio only
async def test_tritonclient_aio_posts_without_a_content_type(gw: Setup) -> None:
    client = triton_aio.InferenceServerClient(gw.url.removeprefix("http://"))
    try:
        assert await client.is_model_ready("numpy-linear")
        for binary in (True, False):
            x = triton_aio.InferInput("x", [2, 2], "FP32")
            x.set_data_from_numpy(np.array([[1, 2], [3, 4]], np.float32), binary_data=binary)
            wanted = [triton_aio.InferRequestedOutput("y", binary_data=binary)]
            result = await client.infer("numpy-linear", [x], outputs=wanted)
            np.testing.assert_allclose(result.as_numpy("y"), [[5.5], [10.5]])
        # its infer sent JSON, then JSON + binary, neither with a Content-Type; tritonclient's
        # default asks for every output in binary
        result = await client.infer("echo", _inputs(True, triton_aio))
        np.testing.assert_array_equal(result.as_numpy("bytes"), TENSORS["BYTES"])
    finally:
        await client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
async def test_mlserver_infers_request_format(gw: Setup, binary: bool) -> None:
    """``mlserver infer`` (MLServer 1.7.1, mlserver/batch_processing.py) sends each line of its
    input file through tritonclient.http.aio, as built here: the line's id as the body's
    ``id`` and as ``seldon-puid`` / ``x-request-id`` headers, ``content-type:
    application/json`` even on a JSON + binary body (``-b``), requested outputs with a
    ``binary_data`` parameter, or none (then tritonclient asks ``binary_data_output``), and
    ``-s N`` micro-batches lines into one request along the first axis. It reads the answer's
    ``id`` and outputs. (The real command, run by hand against a gateway, wrote the expected
    answers in all three modes.)"""
    client = triton_aio.InferenceServerClient(gw.url.removeprefix("http://"))
    lines = [  # (id, x, outputs the line names)
        ("line-1", np.array([[1.0, 2.0]], np.float32), []),
        ("line-2", np.array([[3.0, 4.0]], np.float32), ["y"]),
        ("batch-1", np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), []),  # -s 2
    ]
    try:
        for request_id, x, named in lines:
            tensor = triton_aio.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            outputs = [triton_aio.InferRequestedOutput(n, binary_data=binary) for n in named]
            headers = {"content-type": "application/json"}
            headers |= {"seldon-puid": request_id, "x-request-id": request_id}
            result = await client.infer(
                "numpy-linear",
                [tensor],
                outputs=outputs,
                request_id=request_id,
                headers=headers,
            )
            assert result.get_response()["id"] == request_id
            np.testing.assert_allclose(result.as_numpy("y"), 0.5 * x[:, :1] + 2 * x[:, 1:] + 1)
    finally:
        await client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_64_calls_in_flight_each_get_their_own_answer(gw: Setup) -> None:
    client = triton_aio.InferenceServerClient(gw.url.removeprefix("http://"), conn_limit=64)
    answers: dict[int, np.ndarray] = {}

    async def one(i: int) -> None:
        x = triton_aio.InferInput("x", [1, 3], "INT64")
        x.set_data_from_numpy(np.array([[i, i + 1, i + 2]], np.int64), binary_data=i % 2 == 0)
        result = await client.infer("echo", [x], request_id=f"call-{i}")
        assert result.get_response()["id"] == f"call-{i}"
        answers[i] = result.as_numpy("x")

    try:
        async with anyio.create_task_group() as tg:
            for i in range(256):
                tg.start_soon(one, i)
    finally:
        await client.close()
    for i, answer in answers.items():
        np.testing.assert_array_equal(answer, [[i, i + 1, i + 2]])
    assert len(answers) == 256


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_text_calls_batched_together_each_get_their_own_sentence(gw: Setup) -> None:
    """Single-sentence calls (binary and JSON tensors, sentences of every length, one of 70 KB)
    into a batched text model: each caller gets its own sentence back, upper-cased."""
    client = triton_aio.InferenceServerClient(gw.url.removeprefix("http://"), conn_limit=64)
    lengths = [0, 5, 31, 300, 70_000]
    answers: dict[int, list[bytes]] = {}
    batches: set[int] = set()

    def sentence(i: int) -> str:
        return f"call {i} é " + "w" * lengths[i % len(lengths)]

    async def one(i: int) -> None:
        text = triton_aio.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[sentence(i).encode()]], object), binary_data=i % 2)
        result = await client.infer("batched-text", [text], request_id=f"call-{i}")
        assert result.get_response()["id"] == f"call-{i}"
        answers[i] = result.as_numpy("upper").ravel().tolist()
        batches.add(int(result.as_numpy("rows").ravel()[0]))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(64):
                tg.start_soon(one, i)
    finally:
        await client.close()
    assert answers == {i: [sentence(i).upper().encode()] for i in range(64)}
    assert max(batches) > 1, "64 calls in flight never shared a batch"


# -- MLServer's JSON, the examples, generate and generate_stream -----------------------------

EXAMPLE_CALLS: dict[str, dict[str, Any]] = {
    "numpy-linear": {"inputs": [v2_input("x", [1.0, 2.0])]},
    "echo-sync": {"id": "abc", "inputs": [v2_input("x", [[1, 2], [3, 4]], "INT32")]},
    "token-streamer": {"inputs": [v2_input("prompt", ["hello big world"], "BYTES")]},
}


def _conveyor_infer(gw: Setup, model: str, stream: bool = False) -> list[Any]:
    argv = [sys.executable, "-m", "conveyor.cli", "infer", model, "--redis", gw.fleet.redis_url]
    argv += ["--prefix", gw.fleet.prefix, "--data", json.dumps(EXAMPLE_CALLS[model])]
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    done = subprocess.run(
        [*argv, *(["--stream"] if stream else [])], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def _without_id(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "id"}


@pytest.mark.parametrize("model", sorted(EXAMPLE_CALLS))
def test_the_examples_answer_as_conveyor_infer_does(gw: Setup, model: str) -> None:
    # httpx sends MLServer's request JSON (with a Content-Type, as curl -H would)
    answer = gw.http.post(f"/v2/models/{model}/infer", json=EXAMPLE_CALLS[model])
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    [expected] = _conveyor_infer(gw, model)
    if "id" in EXAMPLE_CALLS[model]:
        assert answer.json() == expected
    else:  # no id given: each call gets one of its own
        assert _without_id(answer.json()) == _without_id(expected)
    generated = gw.http.post(f"/v2/models/{model}/generate", json=EXAMPLE_CALLS[model])
    assert _without_id(generated.json()) == _without_id(expected)


def test_generate_stream_sends_each_chunk_as_an_event(gw: Setup) -> None:
    expected = _conveyor_infer(gw, "token-streamer", stream=True)
    body = EXAMPLE_CALLS["token-streamer"]
    with gw.http.stream("POST", "/v2/models/token-streamer/generate_stream", json=body) as sse:
        assert sse.status_code == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        events = [line for line in sse.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events), events
    chunks = [json.loads(line.removeprefix("data: ")) for line in events]
    assert chunks == expected
    assert [c["outputs"][0]["data"] for c in chunks] == [["HELLO"], ["BIG"], ["WORLD"]]


def test_generate_stream_failures_before_and_after_the_first_chunk(gw: Setup) -> None:
    body = {"inputs": [v2_input("x", [1.0])]}
    # before any chunk: a status and MLServer's body, as infer answers
    _error(gw.post("/v2/models/nope/generate_stream", body), 404, "no worker serves model")
    # after two chunks (the status is sent): one last event with the error
    with gw.http.stream("POST", "/v2/models/fails/generate_stream", json=body) as sse:
        assert sse.status_code == 200
        events = [json.loads(line.removeprefix("data: ")) for line in sse.iter_lines() if line]
    assert [event.get("model_name") for event in events] == ["fails", "fails", None]
    assert "generator broke after 2 chunks" in events[-1]["error"]


def test_generate_stream_events_come_as_the_worker_yields_them(gw: Setup) -> None:
    """The ticker yields a tick every 20 ms forever: events arrive one by one (the response
    is not gathered first), and leaving the stream cancels the job."""
    start = len(gw.worker.lines)
    body = {"inputs": [v2_input("x", [0.0])]}
    with gw.http.stream("POST", "/v2/models/ticker/generate_stream", json=body) as sse:
        ticks = []
        for line in sse.iter_lines():
            if line:
                ticks.append(json.loads(line.removeprefix("data: "))["outputs"][0]["data"][0])
            if len(ticks) == 3:
                break
    assert ticks == [0, 1, 2]
    line = gw.worker.wait_for_log("reason=cancelled", 10, start)
    assert "model=ticker method=predict_stream" in line


# -- custom handlers -------------------------------------------------------------------------


def test_custom_handlers_at_their_rest_paths(gw: Setup) -> None:
    assert gw.post("/add", {"a": 2, "b": 3}).json() == {"sum": 5}  # JSON object: keywords
    assert gw.http.post("/stats").json()["calls"] >= 0  # no body: no arguments
    missing = gw.http.post("/no/such/path")
    assert missing.status_code == 404
    assert "no model serves POST /no/such/path" in missing.json()["error"]


# -- errors ----------------------------------------------------------------------------------


def _error(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()


def test_errors_have_mlservers_body_and_the_issues_statuses(gw: Setup) -> None:
    good = {"inputs": [v2_input("x", [1.0])]}
    _error(gw.post("/v2/models/nope/infer", good), 404, "no worker serves model 'nope'")
    _error(gw.http.post("/v2/models/echo/infer", content=b"{nope"), 400, "not valid JSON")
    _error(gw.post("/v2/models/echo/infer", {"inputs": [{"name": 1}]}), 400, "inputs.0.shape")
    _error(gw.post("/v2/models/echo/infer", [1]), 400, "must be a JSON object")
    binary = {"inputs": [{**v2_input("x", [1.0]), "parameters": {"binary_data_size": 4}}]}
    header = json.dumps(binary).encode()
    short = gw.http.post(
        "/v2/models/echo/infer",
        content=header + b"\x00\x00",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    _error(short, 400, "binary_data_size 4, but 2 bytes")
    _error(gw.post("/v2/models/fails/infer", good), 500, "ValueError: cannot handle 1 inputs")
    # tritonclient's timeout: microseconds
    slow = {"inputs": [v2_input("x", [30.0])], "parameters": {"timeout": 500_000}}
    _error(gw.post("/v2/models/ticker/infer", slow), 504, "taken by a worker")
    negative = {**good, "parameters": {"timeout": -1}}
    _error(gw.post("/v2/models/echo/infer", negative), 400, "parameters.timeout is -1")


# -- the body size limit (--max-request-bytes) -----------------------------------------------

LIMIT = 4096


@pytest.fixture(scope="module")
def small(gw: Setup) -> GatewayProcess:
    """A gateway of the module's fleet that takes bodies of at most LIMIT bytes."""
    return gw.fleet.start_gateway(extra=["--max-request-bytes", str(LIMIT)])


def _raw_post(gateway: GatewayProcess, head: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """Sends a request's head and the start of its body, never the rest: an answer can only
    come from a gateway that stopped reading at its limit. Returns its status and JSON."""
    with socket.create_connection(("127.0.0.1", gateway.http_port), timeout=10) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            part = conn.recv(65536)
            assert part, answer
            answer += part
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_a_body_over_the_limit_is_413_unread(small: GatewayProcess) -> None:
    path = "/v2/models/echo/infer"
    declared = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n"
    status, body = _raw_post(small, declared, b"")
    assert (status, body) == (
        413,
        {"error": f"the request body is over the limit of {LIMIT} bytes (--max-request-bytes)"},
    )
    # chunked: no length to read, counted as it comes; the last chunk is never sent
    chunked = f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    chunk = b"%x\r\n%s\r\n" % (LIMIT + 1, b"x" * (LIMIT + 1))
    status, body = _raw_post(small, chunked, chunk)
    assert status == 413, body
    assert "over the limit of 4096 bytes" in body["error"]


def test_the_limit_counts_decompressed_bytes_and_lets_smaller_bodies_through(
    small: GatewayProcess,
) -> None:
    url = f"{small.http_url}/v2/models/echo/infer"
    fits = json.dumps({"inputs": [v2_input("x", [1.0] * 100)]}).encode()
    assert len(fits) < LIMIT
    assert httpx.post(url, content=fits, timeout=10).status_code == 200
    bomb = json.dumps({"inputs": [v2_input("x", [1.0] * 10_000)]}).encode()
    packed = gzip.compress(bomb)
    assert len(packed) < LIMIT < len(bomb)
    answer = httpx.post(url, content=packed, headers={"Content-Encoding": "gzip"}, timeout=10)
    _error(answer, 413, f"over the limit of {LIMIT} bytes once decompressed")
    # custom handlers' bodies too
    big = httpx.post(f"{small.http_url}/add", content=b"x" * (LIMIT + 1), timeout=10)
    _error(big, 413, "over the limit")


def test_a_job_nobody_takes_is_503_and_a_full_queue_429(gw: Setup, redis_url: str) -> None:
    probe = redis.Redis.from_url(redis_url)
    stream = f"{gw.fleet.prefix}:{{bounded}}:jobs"
    busy = {"inputs": [v2_input("x", [1.0])]}  # `bounded` sleeps 1 s, one job at a time

    def post_busy() -> None:
        gw.post("/v2/models/bounded/infer", busy)

    threads = [threading.Thread(target=post_busy)]
    try:
        threads[0].start()
        wait_until(lambda: pending_count(probe, stream) == 1, "the busy job taken", 10)
        quick = {"inputs": [v2_input("x", [0.0])], "parameters": {"timeout": 300_000}}
        _error(gw.post("/v2/models/bounded/infer", quick), 503, "")
        threads[0].join(timeout=10)
        # one runs, two wait: the backlog (XLEN) reaches the limit, 3
        threads += [threading.Thread(target=post_busy) for _ in range(3)]
        for thread in threads[1:]:
            thread.start()
        wait_until(lambda: probe.xlen(stream) >= 3, "3 bounded jobs queued", 10)
        _error(gw.post("/v2/models/bounded/infer", busy), 429, "jobs waiting, limit 3")
    finally:
        for thread in threads:
            thread.join(timeout=15)
        probe.close()


def test_a_client_that_disconnects_cancels_its_job(gw: Setup) -> None:
    start = len(gw.worker.lines)
    body = {"inputs": [v2_input("x", [30.0])]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/v2/models/ticker/infer", json=body, timeout=1.0)
    line = gw.worker.wait_for_log("reason=cancelled", 10, start)
    assert "model=ticker method=predict " in line + " "


def test_a_gateway_killed_mid_request_loses_nothing(gw: Setup, redis_url: str) -> None:
    own = gw.fleet.start_gateway()
    probe = redis.Redis.from_url(redis_url)
    stream = f"{gw.fleet.prefix}:{{ticker}}:jobs"
    failures: list[BaseException] = []

    def call() -> None:
        body = {"inputs": [v2_input("x", [1.0])]}
        try:
            httpx.post(f"{own.http_url}/v2/models/ticker/infer", json=body, timeout=20)
        except httpx.HTTPError as exc:
            failures.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_until(lambda: pending_count(probe, stream) == 1, "the job taken by the worker", 10)
        own.signal(signal.SIGKILL)
        caller.join(timeout=10)
        assert len(failures) == 1, "the caller got no error"
        assert isinstance(failures[0], httpx.RemoteProtocolError | httpx.ReadError)
        # the worker finishes the job, stores its answer and acks it: nothing pending, nothing
        # left in the stream, no dead letter
        wait_acked(probe, stream, timeout=10)
        assert not probe.exists(f"{gw.fleet.prefix}:{{ticker}}:dead")
    finally:
        caller.join(timeout=10)
        probe.close()


def test_gateway_workers_share_the_ports(gw: Setup) -> None:
    """``--workers 2``: two processes on one port pair (SO_REUSEPORT), both serving."""
    gateways = gw.fleet.start_gateway(extra=["--workers", "2"])
    try:
        first = gateways.lines.index(gateways.wait_for_log("gateway.started"))
        second = gateways.wait_for_log("gateway.started", 20, first + 1)
        assert f"http=127.0.0.1:{gateways.http_port} grpc={gateways.grpc_port}" in second
        body = {"inputs": [v2_input("x", [1.0, 2.0])]}
        for _ in range(10):  # a connection each: the kernel spreads them
            answer = httpx.post(f"{gateways.http_url}/v2/models/numpy-linear/infer", json=body)
            assert answer.status_code == 200, answer.text
    finally:
        gateways.stop()
    assert gateways.wait() == 0


# -- README's Gateway section ----------------------------------------------------------------

README = Path(__file__).parents[2] / "README.md"


def _readme_block(fence: str) -> str:
    text = README.read_text()
    section = text[text.index("## Gateway") :]
    start = section.index(f"```{fence}\n") + len(f"```{fence}\n")
    return section[start : section.index("\n```", start)]


def test_readmes_curl_line_and_tritonclient_snippet(gw: Setup, tmp_path: Path) -> None:
    address = gw.url.removeprefix("http://")
    curl = shlex.split(_readme_block("").replace("\\\n", " "))
    assert curl[:2] == ["curl", "-s"]
    answer = httpx.post("http://" + curl[2].replace("localhost:8080", address), content=curl[4])
    assert answer.json()["outputs"][0]["data"] == [5.5]
    script = tmp_path / "snippet.py"
    script.write_text(_readme_block("python").replace("localhost:8080", address))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[[3.5]", "[3.5]]"], done.stdout
