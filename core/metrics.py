"""MLServer's custom metrics: ``register(name, description)`` and ``log(**metrics)``.

A runtime ported from MLServer keeps its calls: ``from conveyor import metrics`` then
``metrics.register("my_latency", "...")`` and ``metrics.log(my_latency=0.1)``, or
``conveyor.register`` / ``conveyor.log``. Each metric is a histogram labelled with the
``model_name`` and ``model_version`` of the model whose call is running (MLServer's label names,
so its dashboards keep working): the worker sets :data:`current_model` around every call of a
model's methods (``load`` included). A worker serves them on its metrics endpoint; under
``--processes N`` every process's values are summed into one (prometheus-client's multiprocess
mode, as MLServer does).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Histogram

from conveyor.errors import ConveyorError

__all__ = (
    "REGISTRY",
    "InvalidModelContext",
    "current_model",
    "log",
    "model_context",
    "register",
)

MODEL_NAME_LABEL = "model_name"
MODEL_VERSION_LABEL = "model_version"
_DEFAULT_DESCRIPTION = "Logged by the model with conveyor.log()"

# (name, version) of the model whose method runs now; version "" when it has none (as MLServer)
current_model: ContextVar[tuple[str, str]] = ContextVar("conveyor_current_model")

# The models' own metrics, apart from the worker's (a runtime cannot clash with those).
REGISTRY = CollectorRegistry(auto_describe=True)
_metrics: dict[str, Histogram] = {}
_lock = threading.Lock()  # plain `def` models run in threads: two may register at once


class InvalidModelContext(ConveyorError):
    """``log()`` was called outside a model's method (no model to label the values with)."""

    def __init__(self) -> None:
        super().__init__(
            "conveyor.log() was called outside a model's method: call it from load(), "
            "predict(), predict_stream() or a custom handler of a model a worker serves"
        )


def register(name: str, description: str) -> Histogram:
    """The histogram ``name``, made on first use (later calls return the same one).

    Raises ``ValueError`` for a name prometheus_client does not accept.
    """
    with _lock:
        metric = _metrics.get(name)
        if metric is None:
            try:
                metric = Histogram(
                    name,
                    description,
                    labelnames=(MODEL_NAME_LABEL, MODEL_VERSION_LABEL),
                    registry=REGISTRY,
                )
            except ValueError as error:
                raise ValueError(f"cannot register metric {name!r}: {error}") from None
            _metrics[name] = metric
        return metric


def log(**metrics: float) -> None:
    """Observes each ``name=value`` in the histogram ``name`` (registered if new), labelled
    with the running model's name and version. Raises :class:`InvalidModelContext` outside a
    model's method, ``TypeError`` for a value that is not a number."""
    try:
        name, version = current_model.get()
    except LookupError:
        raise InvalidModelContext() from None
    for metric_name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(
                f"conveyor.log({metric_name}=...) takes a number, not {type(value).__name__}"
            )
        register(metric_name, _DEFAULT_DESCRIPTION).labels(name, version).observe(value)


@contextmanager
def model_context(name: str, version: str | None) -> Iterator[None]:
    """Runs the block as a call of model ``name`` (``version``): what ``log()`` labels."""
    token = current_model.set((name, version or ""))
    try:
        yield
    finally:
        current_model.reset(token)
