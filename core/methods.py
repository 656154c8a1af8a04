"""Which model methods travel as jobs, and how a model exposes custom ones."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

__all__ = ("ModelMethods", "custom_handler", "exposed_methods", "get_custom_handlers")

_F = TypeVar("_F", bound=Callable[..., Any])

# The attribute MLServer's own `custom_handler` sets, so a ported runtime keeps working.
_CUSTOM_HANDLER_ATTR = "__custom_handler__"


class ModelMethods(Enum):
    """The methods of a model that run on the fleet, named as in MLServer."""

    Predict = "predict"
    Metadata = "metadata"
    PredictStream = "predict_stream"
    Load = "load"
    Unload = "unload"


def custom_handler(rest_path: str | None = None, rest_method: str = "POST") -> Callable[[_F], _F]:
    """Marks a model method as callable by clients, like MLServer's ``custom_handler``.

    Only methods marked so (plus ``predict``, ``predict_stream`` and ``metadata``) can be
    called through the fleet; a client calls it by the method's name. ``rest_path`` and
    ``rest_method`` are kept for runtimes ported from MLServer and are otherwise unused.
    """

    def mark(method: _F) -> _F:
        setattr(method, _CUSTOM_HANDLER_ATTR, {"rest_path": rest_path, "rest_method": rest_method})
        return method

    return mark


def get_custom_handlers(model: object) -> dict[str, Callable[..., Any]]:
    """The bound methods of ``model`` marked with :func:`custom_handler`, by name."""
    handlers: dict[str, Callable[..., Any]] = {}
    for name, member in inspect.getmembers(type(model)):
        if callable(member) and hasattr(member, _CUSTOM_HANDLER_ATTR):
            handlers[name] = getattr(model, name)
    return handlers


def exposed_methods(model: object) -> frozenset[str]:
    """Every method name a client may call on ``model`` through the fleet."""
    builtin = {
        ModelMethods.Predict.value,
        ModelMethods.PredictStream.value,
        ModelMethods.Metadata.value,
    }
    return frozenset(builtin | set(get_custom_handlers(model)))
