"""core/collector.py: a serving process's first collector threshold, and its start-up freeze."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from conveyor.collector import FIRST_THRESHOLD, freeze_survivors, tune_collector


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


def test_freezing_moves_what_is_alive_out_of_the_collectors_reach() -> None:
    alive = [object() for _ in range(10)]
    gc.unfreeze()
    try:
        freeze_survivors()
        assert gc.get_freeze_count() >= len(alive)
    finally:
        gc.unfreeze()
