"""Conveyor: serve MLServer-style models from a fleet of workers over Redis Streams.

The core names a runtime needs, as MLServer exports them; the client is
``conveyor.client.Client`` and the worker ``conveyor.worker.Worker``.
"""

import logging

from conveyor.errors import ConveyorError as ConveyorError
from conveyor.methods import ModelMethods as ModelMethods
from conveyor.methods import custom_handler as custom_handler
from conveyor.model import MLModel as MLModel
from conveyor.settings import ModelParameters as ModelParameters
from conveyor.settings import ModelSettings as ModelSettings

__all__ = (
    "ConveyorError",
    "MLModel",
    "ModelMethods",
    "ModelParameters",
    "ModelSettings",
    "custom_handler",
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
