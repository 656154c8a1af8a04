"""MLServer's custom-metrics API, and the model context the worker runs each method in."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

import conveyor
from conveyor import metrics
from conveyor.model import MLModel
from conveyor.settings import ModelSettings
from conveyor.worker import execution
from conveyor.worker.model_calls import instrument


def _count(name: str, model: str) -> float | None:
    labels = {"model_name": model, "model_version": "v1"}
    return metrics.REGISTRY.get_sample_value(f"{name}_count", labels)


def test_log_outside_a_model_says_where_to_call_it() -> None:
    with pytest.raises(metrics.InvalidModelContext, match="outside a model's method"):
        conveyor.log(anything=1.0)


def test_register_returns_the_same_metric_and_refuses_bad_names_and_values() -> None:
    assert metrics.register("unit_same", "a") is conveyor.register("unit_same", "b")
    with pytest.raises(ValueError, match="cannot register metric ''"):
        metrics.register("", "d")
    with metrics.model_context("m", "v1"), pytest.raises(TypeError, match="takes a number"):
        metrics.log(unit_text="1")  # type: ignore[arg-type]


class _Kinds(MLModel):
    async def predict(self, payload: object) -> object:  # type: ignore[override]
        conveyor.log(unit_async=1)
        return payload

    @conveyor.custom_handler()
    def plain(self) -> int:
        conveyor.log(unit_plain=1)
        return 1

    async def predict_stream(  # type: ignore[override]
        self, payloads: AsyncIterator[object]
    ) -> AsyncIterator[object]:
        async for payload in payloads:
            conveyor.log(unit_agen=1)
            yield payload

    @conveyor.custom_handler()
    def steps(self, inputs: Iterator[object]) -> Iterator[object]:
        for item in inputs:
            conveyor.log(unit_gen=1)
            yield item


def test_instrumented_methods_keep_their_kind_and_run_in_their_models_context() -> None:
    settings = ModelSettings(name="kinds", implementation=_Kinds, parameters={"version": "v1"})
    model = _Kinds(settings)
    instrument(model)
    assert inspect.iscoroutinefunction(model.predict)
    assert inspect.isasyncgenfunction(model.predict_stream)
    assert inspect.isgeneratorfunction(model.steps)
    assert not inspect.iscoroutinefunction(model.plain)

    async def run() -> None:
        limiter = anyio.CapacityLimiter(1)
        assert await execution.call(model.predict, limiter, 5) == 5

        async def inputs() -> AsyncIterator[object]:
            yield 1
            yield 2

        items = [item async for item in execution.iterate(model.predict_stream, inputs(), limiter)]
        assert items == [1, 2]
        assert await execution.call(model.plain, limiter) == 1  # in a thread
        items = [item async for item in execution.iterate(model.steps, inputs(), limiter)]
        assert items == [1, 2]  # each step in a thread
        assert metrics.current_model.get(None) is None  # nothing leaks into the caller

    anyio.run(run)
    assert _count("unit_async", "kinds") == 1
    assert _count("unit_agen", "kinds") == 2
    assert _count("unit_plain", "kinds") == 1
    assert _count("unit_gen", "kinds") == 2
