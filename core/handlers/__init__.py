"""MLServer's ``mlserver.handlers``, as far as a runtime uses it: ``custom_handler``.

MLServer's data plane and repository handlers belong to its HTTP/gRPC server, which a fleet
does not have; its ``get_custom_handlers`` returns (handler, method) pairs, Conveyor's
(``conveyor.methods.get_custom_handlers``) a dict by name, so it is not offered here.
"""

from conveyor.handlers.custom import custom_handler as custom_handler

__all__ = ("custom_handler",)
