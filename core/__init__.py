"""Conveyor: serve MLServer-style models from a fleet of workers over Redis Streams.

The core names a runtime needs, as MLServer exports them; the client is
``conveyor.client.Client`` and the worker ``conveyor.worker.Worker``.
"""

import logging
from typing import TYPE_CHECKING, Any

__all__ = (
    "ConveyorError",
    "MLModel",
    "ModelMethods",
    "ModelParameters",
    "ModelSettings",
    "custom_handler",
    "log",
    "register",
)

# Imported on first use (PEP 562): `conveyor.cli` lives under this package, and `conveyor
# --help` must not pay for numpy and pydantic (~0.3 s) to print a help text.
_LAZY = {
    "ConveyorError": "conveyor.errors",
    "MLModel": "conveyor.model",
    "ModelMethods": "conveyor.methods",
    "custom_handler": "conveyor.methods",
    "ModelParameters": "conveyor.settings",
    "ModelSettings": "conveyor.settings",
    # MLServer's `mlserver.register` / `mlserver.log` (custom metrics)
    "log": "conveyor.metrics",
    "register": "conveyor.metrics",
}

if TYPE_CHECKING:
    from conveyor.errors import ConveyorError as ConveyorError
    from conveyor.methods import ModelMethods as ModelMethods
    from conveyor.methods import custom_handler as custom_handler
    from conveyor.metrics import log as log
    from conveyor.metrics import register as register
    from conveyor.model import MLModel as MLModel
    from conveyor.settings import ModelParameters as ModelParameters
    from conveyor.settings import ModelSettings as ModelSettings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
