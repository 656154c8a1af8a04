"""conveyor.cli: the ``conveyor`` command (up, worker, infer)."""

from conveyor.cli.app import app as app
from conveyor.cli.app import main as main

__all__ = ("app", "main")
