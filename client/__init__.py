"""conveyor.client: send jobs to the fleet and await their answers."""

from conveyor.client.client import Client as Client
from conveyor.client.model import ParallelModel as ParallelModel

__all__ = ("Client", "ParallelModel")
