"""conveyor.broker"""

# -- the worker's face (broker/worker_broker.py): all that worker/ asks of Redis
from conveyor.broker.entries import Delivery
from conveyor.broker.heartbeats import Beat, HeartbeatLink
from conveyor.broker.worker_broker import WorkerBroker

__all__ = ["Beat", "Delivery", "HeartbeatLink", "WorkerBroker"]
