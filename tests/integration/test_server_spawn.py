"""How the embedded server's process is started: without a real ``fork`` where the system
allows it, so that no library's fork handlers run in the child before its ``exec``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conveyor.embedded.spawn import _setpriv

# A child that counts the forks Python runs its at-fork hooks for (a ``preexec_fn`` start
# does; ``vfork`` and ``posix_spawn`` starts do not, and neither runs pthread_atfork
# handlers such as gRPC's), then starts and stops a server.
_CHILD = """
import os, sys
from conveyor.embedded import RedisServer
forks = []
os.register_at_fork(before=lambda: forks.append(1))
with RedisServer() as server:
    assert server.running
print(len(forks))
"""


@pytest.mark.skipif(_setpriv() is None, reason="needs util-linux setpriv with --pdeathsig")
@pytest.mark.timeout(60)
def test_the_server_starts_without_a_fork_that_runs_fork_handlers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", "a fork ran the process's fork handlers"
