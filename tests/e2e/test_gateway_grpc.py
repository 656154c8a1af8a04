"""The gateway's gRPC side, called as users call it: tritonclient.grpc (sync and aio), its
generated stub for typed contents, grpc_health's stub and server reflection, against a real
``conveyor gateway`` and real workers (one fleet and one gateway for the module)."""

from __future__ import annotations

import asyncio
import queue
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import grpc
import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conveyor.client import Client
from conveyor.embedded import RedisServer
from conveyor.types import InferenceRequest, RequestInput, ResponseOutput
from tests.support.fleet import (
    EXAMPLES,
    MODELS,
    Fleet,
    GatewayProcess,
    WorkerProcess,
    wait_acked,
)
from tests.support.probe import pending_count
from tests.support.process import stat_fields
from tests.support.waiting import wait_until

TESTS = Path(__file__).parents[1] / "models"
SERVICE = "inference.GRPCInferenceService"

# one tensor of each V2 datatype, 2-D, with each dtype's extremes
TENSORS: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-(2**15), 0, 2**15 - 1]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.5, 0.25, 3.4e38]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.25, 1.7e308]], dtype=np.float64),
    "BYTES": np.array([[b"", b"\x00nul", "caf\u00e9".encode()]], dtype=object),
}

# InferTensorContents' field of each datatype that has one (FP16 travels raw only)
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # tritonclient.grpc.aio runs on asyncio only


@pytest.fixture(scope="module")
def fleet(redis_url: str) -> Iterator[Fleet]:
    with Fleet(redis_url, f"t{uuid4().hex[:10]}") as fleet:
        yield fleet


@pytest.fixture(scope="module")
def worker(fleet: Fleet) -> WorkerProcess:
    """tests/models/common's and examples/models' models, and `batched-text`; and `bounded` (a
    queue of at most 3 jobs) on a worker of its own that runs one job at a time."""
    bounded = fleet.start(TESTS / "limited", extra=["--concurrency", "1"], wait=False)
    worker = fleet.start(MODELS, EXAMPLES, TESTS / "batching" / "batched-text")
    bounded.wait_for_log("worker.started")
    return worker


@pytest.fixture(scope="module")
def gateway(fleet: Fleet, worker: WorkerProcess) -> GatewayProcess:
    return fleet.start_gateway()


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(gateway.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(gateway: GatewayProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """tritonclient's generated stub: for what its client cannot send (typed contents, bad
    bytes)."""
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def infer_input(name: str, array: np.ndarray) -> triton.InferInput:
    datatype = "BYTES" if array.dtype == object else triton_dtype(array)
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def triton_dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return str(np_to_triton_dtype(array.dtype))


def prompt(text: str) -> list[triton.InferInput]:
    return [infer_input("prompt", np.array([text.encode()], dtype=object))]


def failure(caught: pytest.ExceptionInfo[InferenceServerException]) -> tuple[str, str]:
    return str(caught.value.status()), str(caught.value.message())


# An unknown model is NOT_FOUND at once, or after the client's grace for a worker about to
# serve it (2 s), or at the deadline: tests give such calls a short one.

# -- health, metadata, the repository -------------------------------------------------------


@pytest.mark.timeout(60)
def test_server_and_model_state(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "conveyor"
    assert "model_repository" in meta["extensions"]
    assert client.is_model_ready("echo")
    assert not client.is_model_ready("no-such-model")


@pytest.mark.timeout(30)
def test_model_metadata(client: triton.InferenceServerClient) -> None:
    meta = client.get_model_metadata("token-streamer", as_json=True)
    assert meta["name"] == "token-streamer"
    assert meta["inputs"] == [{"name": "prompt", "datatype": "BYTES", "shape": ["1"]}]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("no-such-model", client_timeout=1.0)
    assert failure(caught)[0] == "StatusCode.NOT_FOUND"


@pytest.mark.timeout(30)
def test_repository_index_load_and_unload(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index(as_json=True)["models"]
    states = {model["name"]: model["state"] for model in index}
    assert states["echo"] == states["token-streamer"] == states["bounded"] == "READY"
    client.unload_model("counter")
    # the worker answers the unload, then beats: its heartbeat (what ready reads) may lag
    wait_until(lambda: not client.is_model_ready("counter"), "counter unloaded", 10)
    index = client.get_model_repository_index(as_json=True)["models"]
    counter = next(model for model in index if model["name"] == "counter")
    assert counter["state"] == "UNAVAILABLE"
    client.load_model("counter")
    wait_until(lambda: client.is_model_ready("counter"), "counter loaded", 10)
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("no-such-model", client_timeout=1.0)
    assert failure(caught)[0] == "StatusCode.NOT_FOUND"


@pytest.mark.timeout(30)
def test_health_checking_answers(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE):
            ask = health_pb2.HealthCheckRequest(service=service)
            # types-grpcio-health-checking's HealthStub lacks the methods its __init__ sets
            answer = health.Check(ask, timeout=5)  # type: ignore[attr-defined]
            assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.timeout(60)
def test_health_follows_redis_and_the_gateways_stop(
    redis_server_factory: Callable[..., RedisServer],
) -> None:
    """NOT_SERVING while Redis does not answer, SERVING again when it does, NOT_SERVING once
    the gateway stops: heard on one Watch stream, as a load balancer would (no polling)."""
    server = redis_server_factory()
    with Fleet(server.url, f"t{uuid4().hex[:10]}") as own:
        gateway = own.start_gateway()
        with grpc.insecure_channel(gateway.grpc_address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            ask = health_pb2.HealthCheckRequest(service=SERVICE)
            watch = health.Watch(ask, timeout=45)  # type: ignore[attr-defined]
            statuses = iter(watch)
            serving, not_serving = (
                health_pb2.HealthCheckResponse.SERVING,
                health_pb2.HealthCheckResponse.NOT_SERVING,
            )
            assert next(statuses).status == serving
            server.stop()
            assert next(statuses).status == not_serving
            answer = health.Check(ask, timeout=5)  # type: ignore[attr-defined]
            assert answer.status == not_serving
            server.start()  # same port
            assert next(statuses).status == serving
            gateway.signal(signal.SIGTERM)
            assert next(statuses).status == not_serving
            watch.cancel()  # the server's stop waits for calls in flight, this one too
        assert gateway.wait(timeout=15) == 0


@pytest.mark.timeout(30)
def test_a_message_over_max_request_bytes_is_resource_exhausted(
    fleet: Fleet, worker: WorkerProcess
) -> None:
    small = fleet.start_gateway(extra=["--max-request-bytes", "4096"])
    client = triton.InferenceServerClient(small.grpc_address)
    try:
        fits = np.zeros((1, 100), dtype=np.float32)
        answer = client.infer("echo", [infer_input("x", fits)], client_timeout=10)
        np.testing.assert_array_equal(answer.as_numpy("x"), fits)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("echo", [infer_input("x", np.zeros((1, 2048), "f4"))], client_timeout=10)
        status, message = failure(caught)
        assert status == "StatusCode.RESOURCE_EXHAUSTED", message
        assert "4096" in message
    finally:
        client.close()
        small.stop()


@pytest.mark.timeout(30)
def test_reflection_lists_and_describes_the_service(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
        ]
        # (reflection_pb2_grpc has no types)
        answers = reflection.ServerReflectionInfo(iter(asks), timeout=5)  # type: ignore[operator]
        listed, described = answers
    names = {service.name for service in listed.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    [raw] = described.file_descriptor_response.file_descriptor_proto
    file = descriptor_pb2.FileDescriptorProto.FromString(raw)
    [service] = file.service
    methods = {method.name: method for method in service.method}
    assert methods["ModelStreamInfer"].client_streaming
    assert methods["ModelStreamInfer"].output_type == ".inference.ModelStreamInferResponse"


# -- ModelInfer -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_every_datatype_in_raw_contents(client: triton.InferenceServerClient) -> None:
    inputs = [infer_input(datatype.lower(), array) for datatype, array in TENSORS.items()]
    result = client.infer("echo", inputs, request_id="raw-1")
    response = result.get_response()
    assert response.id == "raw-1"
    assert len(response.raw_output_contents) == len(TENSORS)  # answered as it was asked
    for datatype, array in TENSORS.items():
        output = result.get_output(datatype.lower())
        assert (output.datatype, list(output.shape)) == (datatype, [1, 3])
        np.testing.assert_array_equal(result.as_numpy(datatype.lower()), array)


@pytest.mark.timeout(30)
def test_every_datatype_in_typed_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    request = service_pb2.ModelInferRequest(model_name="echo")
    for datatype, field in TYPED_FIELDS.items():
        tensor = request.inputs.add(name=datatype.lower(), datatype=datatype, shape=[1, 3])
        getattr(tensor.contents, field).extend(TENSORS[datatype].ravel().tolist())
    response = stub.ModelInfer(request, timeout=10)
    assert not response.raw_output_contents  # typed in, typed out
    assert [out.name for out in response.outputs] == [name.lower() for name in TYPED_FIELDS]
    for out in response.outputs:
        expected = TENSORS[out.datatype].ravel().tolist()
        assert list(getattr(out.contents, TYPED_FIELDS[out.datatype])) == expected
        assert list(out.shape) == [1, 3]


@pytest.mark.timeout(30)
def test_a_1_mib_tensor(client: triton.InferenceServerClient) -> None:
    array = np.random.default_rng(0).random((512, 512), dtype=np.float32)  # 1 MiB
    result = client.infer("echo", [infer_input("x", array)])
    np.testing.assert_array_equal(result.as_numpy("x"), array)


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_aio_client(gateway: GatewayProcess) -> None:
    array = np.random.default_rng(1).random((512, 512), dtype=np.float32)
    async with triton_aio.InferenceServerClient(gateway.grpc_address) as client:
        assert await client.is_server_ready()
        assert await client.is_model_ready("echo")
        meta = await client.get_model_metadata("echo", as_json=True)
        assert meta["name"] == "echo"
        results = await asyncio.gather(
            client.infer("echo", [infer_input("x", array)], parameters={"sleep": 0.01}),
            client.infer("echo", [infer_input("y", TENSORS["BYTES"])]),
        )
        np.testing.assert_array_equal(results[0].as_numpy("x"), array)
        np.testing.assert_array_equal(results[1].as_numpy("y"), TENSORS["BYTES"])
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("fails", [infer_input("x", array)])
        assert failure(caught) == ("StatusCode.INTERNAL", "ValueError: cannot handle 1 inputs")


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_text_calls_batched_together_each_get_their_own_sentence(
    gateway: GatewayProcess,
) -> None:
    """Single-sentence calls (raw BYTES contents, sentences of every length, one of 70 KB) into
    a batched text model: each caller gets its own sentence back, upper-cased."""
    lengths = [0, 5, 31, 300, 70_000]

    def sentence(i: int) -> str:
        return f"call {i} é {'w' * lengths[i % len(lengths)]}"

    async with triton_aio.InferenceServerClient(gateway.grpc_address) as client:

        async def one(i: int) -> tuple[list[object], int]:
            text = infer_input("text", np.array([[sentence(i).encode()]], dtype=object))
            result = await client.infer("batched-text", [text], request_id=f"call-{i}")
            assert result.get_response().id == f"call-{i}"
            return result.as_numpy("upper").ravel().tolist(), int(result.as_numpy("rows")[0, 0])

        answers = await asyncio.gather(*(one(i) for i in range(64)))
    assert [upper for upper, _ in answers] == [[sentence(i).upper().encode()] for i in range(64)]
    assert max(rows for _, rows in answers) > 1, "64 calls in flight never shared a batch"


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_the_examples_answer_as_the_client_does(
    gateway: GatewayProcess, fleet: Fleet
) -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    words = np.array([b"hello big world"], dtype=object)
    cases = {
        "numpy-linear": {"x": x},
        "echo-sync": {"x": x, "words": words, "flags": TENSORS["BOOL"]},
        "token-streamer": {"prompt": words},
    }
    async with (
        Client(fleet.redis_url, prefix=fleet.prefix, timeout=10) as conveyor,
        triton_aio.InferenceServerClient(gateway.grpc_address) as client,
    ):
        for model, arrays in cases.items():
            inputs = [infer_input(name, array) for name, array in arrays.items()]
            request = InferenceRequest(
                inputs=[
                    RequestInput(name=i.name(), shape=i.shape(), datatype=i.datatype(), data=a)
                    for i, a in zip(inputs, arrays.values(), strict=True)
                ]
            )
            expected = await conveyor.model(model).predict(request)
            result = await client.infer(model, inputs)
            assert [out.name for out in result.get_response().outputs] == [
                out.name for out in expected.outputs
            ]
            for out in expected.outputs:
                tensor = result.get_output(out.name)
                assert (tensor.datatype, list(tensor.shape)) == (out.datatype, out.shape)
                np.testing.assert_array_equal(result.as_numpy(out.name), as_array(out))


def as_array(out: ResponseOutput) -> np.ndarray:
    """An output's elements as tritonclient reads them (BYTES as bytes)."""
    data = np.asarray(out.data.root).reshape(out.shape)
    if out.datatype == "BYTES":
        data = np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(
            data
        )
    return data


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_errors_of_the_model_and_of_the_request(
    client: triton.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    x = [infer_input("x", np.zeros(3, dtype=np.float32))]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("no-such-model", x, client_timeout=1.0)
    status, message = failure(caught)
    assert status == "StatusCode.NOT_FOUND"
    assert "no-such-model" in message
    with pytest.raises(InferenceServerException) as caught:
        client.infer("fails", x)
    assert failure(caught) == ("StatusCode.INTERNAL", "ValueError: cannot handle 1 inputs")

    def bad(request: service_pb2.ModelInferRequest) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return str(caught.value.details())

    request = service_pb2.ModelInferRequest(model_name="echo", raw_input_contents=[b"\x00" * 7])
    request.inputs.add(name="x", datatype="FP32", shape=[2])
    assert "needs 8 bytes, but 7 came" in bad(request)
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1)
    assert "send it in raw_input_contents" in bad(request)
    request = service_pb2.ModelInferRequest(model_name="echo")
    request.inputs.add(name="x", datatype="FP32", shape=[3]).contents.fp32_contents.append(1)
    assert "needs 3 element(s) in contents.fp32_contents, but 1 came" in bad(request)


@pytest.mark.timeout(30)
def test_a_full_queue_is_resource_exhausted(
    client: triton.InferenceServerClient, fleet: Fleet, redis_url: str
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    sleep = [infer_input("x", np.array([0.5], dtype=np.float32))]
    for _ in range(3):  # one runs, two wait: the backlog is 3, its limit
        client.async_infer("bounded", sleep, lambda result, error: answers.put((result, error)))
    probe = redis.Redis.from_url(redis_url)
    try:
        jobs = f"{fleet.prefix}:{{bounded}}:jobs"
        wait_until(lambda: probe.xlen(jobs) >= 3, "3 jobs of `bounded` queued", 10)
    finally:
        probe.close()
    with pytest.raises(InferenceServerException) as caught:
        client.infer("bounded", sleep)
    status, message = failure(caught)
    assert status == "StatusCode.RESOURCE_EXHAUSTED"
    assert "3 jobs waiting, limit 3" in message
    for _ in range(3):
        assert answers.get(timeout=15)[1] is None


@pytest.mark.timeout(30)
def test_the_deadline_becomes_the_jobs(
    client: triton.InferenceServerClient, worker: WorkerProcess
) -> None:
    start = len(worker.lines)
    x = [infer_input("x", np.zeros(1, dtype=np.float32))]
    with pytest.raises(InferenceServerException) as caught:
        client.infer("echo", x, parameters={"sleep": 30.0}, client_timeout=1.0)
    assert failure(caught)[0] == "StatusCode.DEADLINE_EXCEEDED"
    # the worker stopped the job at its deadline (the call's), not after its 30 s
    line = worker.wait_for_log("job.stopped", 10, start)
    assert "model=echo method=predict" in line
    # Triton's timeout parameter (microseconds; tritonclient's `timeout=`) does the same
    start = len(worker.lines)
    with pytest.raises(InferenceServerException) as caught:
        client.infer("echo", x, parameters={"sleep": 30.0}, timeout=500_000)
    assert failure(caught)[0] == "StatusCode.DEADLINE_EXCEEDED"
    assert "model=echo method=predict" in worker.wait_for_log("job.stopped", 10, start)


def _stopped_with_no_read(worker: WorkerProcess, probe: redis.Redis, name: str) -> bool:
    """Whether ``worker`` (SIGSTOPped; its connections named ``name``) has stopped with no read
    left in Redis: a read it sent before it stopped, blocked there, would still be handed the
    next job. Such a read is ended as if its block had timed out (the worker never reads it)."""
    if (stat_fields(worker.pid) or ["?"])[0] != "T":
        return False  # the signal is on its way
    mine = [c for c in probe.client_list() if c.get("name") == name]
    for connection in mine:
        if "b" in connection["flags"]:
            probe.client_unblock(int(connection["id"]))
    return bool(mine) and all("b" not in c["flags"] and c["qbuf"] == "0" for c in mine)


@pytest.mark.timeout(30)
def test_no_worker_taking_the_job_is_unavailable(
    client: triton.InferenceServerClient, fleet: Fleet, redis_url: str, probe: redis.Redis
) -> None:
    name = f"stopped-{uuid4().hex[:8]}"
    named = f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}"
    stopped = fleet.start(TESTS / "faults", extra=["--redis", named])
    stopped.signal(signal.SIGSTOP)  # its heartbeat stays fresh a while: "served", not taken
    try:
        wait_until(lambda: _stopped_with_no_read(stopped, probe, name), "stopped, no read left")
        x = [infer_input("x", np.zeros(1, dtype=np.float32))]
        with pytest.raises(InferenceServerException) as caught:
            client.infer("slow", x, client_timeout=1.0)
        assert failure(caught)[0] == "StatusCode.UNAVAILABLE", failure(caught)
    finally:
        stopped.signal(signal.SIGKILL)
        stopped.wait()


@pytest.mark.timeout(30)
def test_a_cancelled_call_cancels_its_job(
    client: triton.InferenceServerClient, fleet: Fleet, worker: WorkerProcess, redis_url: str
) -> None:
    start = len(worker.lines)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    x = [infer_input("x", np.array([60.0], dtype=np.float32))]  # ticker sleeps 60 s
    call = client.async_infer("ticker", x, lambda result, error: answers.put((result, error)))
    probe = redis.Redis.from_url(redis_url)
    try:
        jobs = f"{fleet.prefix}:{{ticker}}:jobs"
        wait_until(lambda: pending_count(probe, jobs) == 1, "ticker's job taken", 10)
    finally:
        probe.close()
    call.cancel()
    result, error = answers.get(timeout=10)
    assert result is None
    assert "CANCELLED" in str(error.status())
    line = worker.wait_for_log("reason=cancelled", 10, start)
    assert "model=ticker method=predict " in line + " "


# -- ModelStreamInfer -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_bidirectional_stream(client: triton.InferenceServerClient) -> None:
    """Each prompt's tokens come back before the next prompt is sent: one predict_stream
    whose inputs and outputs both stream."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for text in ("hello streaming world", "and one more"):
            client.async_stream_infer("token-streamer", prompt(text))
            for word in text.split():
                result, error = answers.get(timeout=10)
                assert error is None, error
                assert result.as_numpy("token").tolist() == [[word.upper().encode()]]
    finally:
        client.stop_stream()
    assert answers.empty()


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_bidirectional_stream_on_aio(gateway: GatewayProcess) -> None:
    first_seen = asyncio.Event()

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "token-streamer", "inputs": prompt("one two")}
        await first_seen.wait()  # the model answered the first before the second exists
        yield {"model_name": "token-streamer", "inputs": prompt("three")}

    tokens = []
    async with triton_aio.InferenceServerClient(gateway.grpc_address) as client:
        async for result, error in client.stream_infer(requests(), stream_timeout=20):
            assert error is None, error
            tokens.extend(result.as_numpy("token").ravel().tolist())
            first_seen.set()
    assert tokens == [b"ONE", b"TWO", b"THREE"]


@pytest.mark.timeout(30)
def test_stream_errors(client: triton.InferenceServerClient) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    for model, chunks, status, message in (
        ("no-such-model", 0, "StatusCode.NOT_FOUND", "no-such-model"),
        ("fails", 2, "StatusCode.INTERNAL", "generator broke after 2 chunks"),
    ):
        client.start_stream(
            callback=lambda result, error: answers.put((result, error)), stream_timeout=1.0
        )
        try:
            client.async_stream_infer(model, prompt("x"))
            for _ in range(chunks):
                assert answers.get(timeout=10)[1] is None
            result, error = answers.get(timeout=10)
        finally:
            client.stop_stream()
        assert result is None
        assert str(error.status()) == status
        assert message in str(error.message())


def fp64_request(model: str, value: float) -> service_pb2.ModelInferRequest:
    msg = service_pb2.ModelInferRequest(model_name=model)
    msg.inputs.add(name="x", datatype="FP64", shape=[1]).contents.fp64_contents.append(value)
    return msg


@pytest.mark.timeout(30)
def test_a_stream_in_typed_contents_goes_to_one_model(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, fleet: Fleet, redis_url: str
) -> None:
    asks = [fp64_request("echo", 1.0), fp64_request("echo", 2.0)]
    answers = list(stub.ModelStreamInfer(iter(asks), timeout=10))
    assert [answer.error_message for answer in answers] == ["", ""]
    assert [list(a.infer_response.outputs[0].contents.fp64_contents) for a in answers] == [
        [1.0],
        [2.0],
    ]
    assert not any(answer.infer_response.raw_output_contents for answer in answers)
    asks = [fp64_request("echo", 1.0), fp64_request("ticker", 2.0)]
    answers = stub.ModelStreamInfer(iter(asks), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        list(answers)  # the first request's answer may come before the error
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a stream goes to one model" in str(caught.value.details())
    # and the job, which would wait for more inputs, is withdrawn, or stopped on its worker
    probe = redis.Redis.from_url(redis_url)
    try:
        wait_acked(probe, f"{fleet.prefix}:{{echo}}:jobs")
    finally:
        probe.close()


@pytest.mark.timeout(30)
def test_a_stream_to_a_model_without_predict_stream(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """MLServer's default predict_stream (one stream, one job): the first request answered
    by predict, the rest unread; the stream then ends cleanly. (Triton would answer each.)"""
    asks = [fp64_request("echo-sync", 1.0), fp64_request("echo-sync", 2.0)]
    answers = list(stub.ModelStreamInfer(iter(asks), timeout=10))
    assert [list(a.infer_response.outputs[0].contents.fp64_contents) for a in answers] == [[1.0]]


@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_a_cancelled_stream_cancels_its_job(
    gateway: GatewayProcess, worker: WorkerProcess
) -> None:
    start = len(worker.lines)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": "ticker", "inputs": [infer_input("x", np.zeros(1, np.float32))]}
        await asyncio.Event().wait()  # the client's side stays open

    async with triton_aio.InferenceServerClient(gateway.grpc_address) as client:
        stream = client.stream_infer(requests(), stream_timeout=20)
        ticks = []
        async for result, error in stream:
            assert error is None, error
            ticks.append(int(result.as_numpy("tick")[0]))
            if len(ticks) == 3:
                stream.cancel()
                break
    assert ticks == [0, 1, 2]
    line = await asyncio.to_thread(worker.wait_for_log, "reason=cancelled", 10, start)
    assert "model=ticker method=predict_stream" in line


@pytest.mark.timeout(30)
def test_a_gateway_killed_mid_call(
    client: triton.InferenceServerClient, fleet: Fleet, redis_url: str
) -> None:
    """Its caller gets an error at once; the fleet loses nothing: the job runs to its end and
    is acked, and the other gateway answers."""
    doomed = fleet.start_gateway()
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(doomed.grpc_address) as caller:
        x = [infer_input("x", np.array([0.5], dtype=np.float32))]  # `bounded` sleeps 0.5 s
        caller.async_infer("bounded", x, lambda result, error: answers.put((result, error)))
        probe = redis.Redis.from_url(redis_url)
        try:
            jobs = f"{fleet.prefix}:{{bounded}}:jobs"
            wait_until(lambda: pending_count(probe, jobs) == 1, "the job taken", 10)
            doomed.signal(signal.SIGKILL)
            result, error = answers.get(timeout=10)
            assert result is None
            assert str(error.status()) == "StatusCode.UNAVAILABLE"
            wait_acked(probe, jobs)
        finally:
            probe.close()
    assert client.infer("bounded", [infer_input("x", np.zeros(1, np.float32))]) is not None


@pytest.mark.timeout(30)
def test_the_gateway_logged_no_problems(gateway: GatewayProcess) -> None:
    """Last in the module: what every call above left in the gateway's log."""
    assert gateway.problems() == []
