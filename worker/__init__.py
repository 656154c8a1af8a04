"""conveyor.worker: consume jobs of a model's stream, run them, answer."""

from conveyor.worker.worker import Worker as Worker
from conveyor.worker.worker import WorkerSettings as WorkerSettings

__all__ = ("Worker", "WorkerSettings")
