"""MLServer's ``mlserver.handlers.custom``: the ``custom_handler`` decorator, which marks a model
method as callable by clients (defined in :mod:`conveyor.methods`)."""

from conveyor.methods import custom_handler as custom_handler

__all__ = ("custom_handler",)
