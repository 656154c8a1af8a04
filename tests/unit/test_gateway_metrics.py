"""The gateway's metrics: a model name nobody serves never becomes a series of its own."""

from __future__ import annotations

from conveyor.gateway.metrics import GatewayMetrics


def _count(metrics: GatewayMetrics, **labels: str) -> float | None:
    return metrics.registry.get_sample_value("conveyor_gateway_requests_total", labels)


def test_not_found_calls_are_counted_without_their_model_name() -> None:
    metrics = GatewayMetrics()
    metrics.observe("rest", "typo-1", "404", 0.001)
    metrics.observe("grpc", "typo-2", "NOT_FOUND", 0.001)
    metrics.observe("rest", "served", "200", 0.001)
    assert _count(metrics, protocol="rest", model="", status="404") == 1
    assert _count(metrics, protocol="grpc", model="", status="NOT_FOUND") == 1
    assert _count(metrics, protocol="rest", model="typo-1", status="404") is None
    assert _count(metrics, protocol="rest", model="served", status="200") == 1
