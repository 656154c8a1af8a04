"""conveyor.broker"""

# -- the client's face (broker/client_broker.py) ---------------------------------------------
from conveyor.broker.client_broker import ClientBroker as ClientBroker
from conveyor.broker.client_broker import Replies as Replies
from conveyor.broker.connection import RedisSettings as RedisSettings
from conveyor.broker.connection import default_redis_url as default_redis_url
from conveyor.broker.entries import Rung as Rung
from conveyor.broker.fleet import FleetView as FleetView
