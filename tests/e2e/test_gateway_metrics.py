"""``conveyor gateway --metrics-port``: Prometheus metrics of REST and gRPC calls, scraped for
real, summed over ``--workers 2`` processes (prometheus-client's multiprocess files)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fleet import EXAMPLES, Fleet
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

BODY = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_two_gateway_processes_one_scrape(fleet: Fleet) -> None:
    fleet.start(EXAMPLES)
    gateways = fleet.start_gateway(extra=["--workers", "2", "--metrics-port", "0"])
    port = gateways.metrics_port()
    first = gateways.lines.index(gateways.wait_for_log("gateway.started"))
    gateways.wait_for_log("gateway.started", 20, first + 1)
    url = f"{gateways.http_url}/v2/models/numpy-linear"
    for _ in range(12):  # a connection each: the kernel spreads them over both processes
        assert httpx.post(f"{url}/infer", json=BODY, timeout=10).status_code == 200
    assert httpx.get(f"{url}/ready", timeout=10).status_code == 200
    client = triton.InferenceServerClient(gateways.grpc_address)
    try:
        x = triton.InferInput("x", [1, 2], "FP32").set_data_from_numpy(np.ones((1, 2), "f4"))
        for _ in range(3):
            client.infer("numpy-linear", [x], client_timeout=10)
    finally:
        client.close()

    requests = "conveyor_gateway_requests_total"
    rest = {"protocol": "rest", "model": "numpy-linear"}
    grpc = {"protocol": "grpc", "model": "numpy-linear"}
    # a call is counted once its answer is sent: the last may trail its answer a moment
    wait_until(
        lambda: value(scrape(port), requests, **grpc, status="OK") == 3, "gRPC calls counted"
    )
    samples = scrape(port)
    assert value(samples, requests, **rest, status="200") == 13
    assert value(samples, "conveyor_gateway_request_seconds_count", **rest) == 13
    # the model-call buckets, from half a millisecond to five minutes
    assert value(samples, "conveyor_gateway_request_seconds_bucket", **grpc, le="0.0005") >= 0
    assert value(samples, "conveyor_gateway_request_seconds_bucket", **grpc, le="300.0") == 3
    assert value(samples, "conveyor_gateway_processes") == 2  # both processes' files, summed
    # the fleet's side of the same calls (the client's metrics, in the same files)
    calls = {"model": "numpy-linear", "method": "predict", "outcome": "ok"}
    assert value(samples, "conveyor_client_calls_total", **calls) == 15
    gateways.stop()
    assert gateways.wait() == 0


def test_one_gateway_process_serves_its_own_metrics(fleet: Fleet) -> None:
    gateway = fleet.start_gateway(extra=["--metrics-port", "0"])
    port = gateway.metrics_port()
    assert httpx.get(f"{gateway.http_url}/v2/health/live", timeout=10).status_code == 200
    wait_until(
        lambda: (
            value(
                scrape(port),
                "conveyor_gateway_requests_total",
                protocol="rest",
                model="",
                status="200",
            )
            == 1
        ),
        "the call counted",
    )
    assert value(scrape(port), "conveyor_gateway_processes") == 1
