"""``--health-port 0`` / ``--metrics-port 0``: the kernel picks a free port, the log line
says which, and that port answers (tests and scripts start servers this way: a port picked
before the start could be taken by another process in between)."""

from __future__ import annotations

import logging
import re
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from conveyor.multiprocess_metrics import serving
from conveyor.worker.health import Report, serving_health


def logged_port(caplog: pytest.LogCaptureFixture, event: str) -> int:
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(event)]
    assert len(lines) == 1, caplog.text
    found = re.search(r"(?:port=|address=\S*:)(\d+)$", lines[0])
    assert found, lines[0]
    return int(found[1])


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return str(response.read().decode())


@pytest.mark.timeout(10)
def test_health_port_zero_serves_on_the_logged_port(caplog: pytest.LogCaptureFixture) -> None:
    def ready() -> Report:
        return True, {"reasons": []}

    caplog.set_level(logging.INFO, logger="conveyor.worker.health")
    with serving_health(0, ready):
        port = logged_port(caplog, "health.serving")
        assert port != 0
        assert fetch(port, "/live") == '{"live": true}'
        assert fetch(port, "/ready") == '{"ready": true, "reasons": []}'


@pytest.mark.timeout(10)
def test_metrics_port_zero_serves_on_the_logged_port(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    Counter("seen_here", "A counter of this test's registry", registry=registry).inc()
    caplog.set_level(logging.INFO, logger="conveyor.multiprocess_metrics")
    with serving(0, "127.0.0.1", registry=registry):
        port = logged_port(caplog, "metrics.serving address=127.0.0.1:")
        assert port != 0
        assert "seen_here_total 1.0" in fetch(port, "/metrics")
