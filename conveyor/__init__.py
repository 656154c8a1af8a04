"""Conveyor: serve MLServer-style models from a fleet of workers over Redis Streams."""

import logging

from conveyor.errors import ConveyorError as ConveyorError
from conveyor.methods import ModelMethods as ModelMethods
from conveyor.methods import custom_handler as custom_handler

logging.getLogger(__name__).addHandler(logging.NullHandler())

__version__ = "0.1.0"
