"""worker/collector.py: the worker process's first collector threshold."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from conveyor.worker.collector import FIRST_THRESHOLD, tune_collector


@pytest.fixture(autouse=True)
def _kept() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_the_first_threshold_is_raised_and_the_others_kept() -> None:
    gc.set_threshold(700, 11, 12)
    tune_collector()
    assert gc.get_threshold() == (FIRST_THRESHOLD, 11, 12)


@pytest.mark.parametrize("first", [0, FIRST_THRESHOLD * 2])
def test_a_higher_threshold_or_a_collector_turned_off_is_kept(first: int) -> None:
    gc.set_threshold(first, 10, 10)
    tune_collector()
    assert gc.get_threshold() == (first, 10, 10)
