"""The environment of the child workers of ``conveyor worker --processes N`` / ``conveyor up``:
the Redis URL, and each process's share of the cores for numeric thread pools."""

from __future__ import annotations

import os

import pytest

from conveyor.worker.supervisor import worker_env

URL = "redis://user:secret@127.0.0.1:6390/0"


def cpus() -> int:
    return len(os.sched_getaffinity(0))


def test_the_url_goes_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = worker_env(URL)
    assert env["CONVEYOR_REDIS_URL"] == URL
    assert "OMP_NUM_THREADS" not in env  # one process: the libraries' own default


@pytest.mark.parametrize("processes", [2, 3, 64])
def test_several_processes_share_the_cores(monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = worker_env(URL, processes)
    assert env["OMP_NUM_THREADS"] == str(max(1, cpus() // processes))


def test_a_thread_count_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert worker_env(URL, 4)["OMP_NUM_THREADS"] == "7"
