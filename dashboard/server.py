"""``conveyor dashboard``: the app under uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import socket
from typing import Final

import uvicorn

from conveyor.broker import redact_url
from conveyor.dashboard.app import DashboardSettings, build_app
from conveyor.errors import PortUnavailable

__all__ = ("serve",)

logger = logging.getLogger(__name__)

_GRACE_S: Final = 2  # open event streams never end by themselves: stop waiting for them


def serve(settings: DashboardSettings) -> None:
    """Binds ``settings.host:port`` (port 0: a free one), logs ``dashboard.started
    http=<host>:<port>`` and serves until SIGTERM / SIGINT.

    Raises:
        ValueError: the Redis URL is not valid.
        PortUnavailable: the address cannot be listened on (say, the port is taken).
    """
    app = build_app(settings)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        sock = socket.create_server((settings.host, settings.port), family=family)
    except OSError as error:
        raise PortUnavailable(
            "--port", settings.port, error, host=settings.host, hint=" (0 picks a free one)"
        ) from error
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", timeout_graceful_shutdown=_GRACE_S
    )
    # The socket listens already: connections wait in its backlog until uvicorn accepts them.
    logger.info(
        "dashboard.started http=%s:%d redis=%s prefix=%s actions=%s trusted_origins=%s",
        settings.host,
        port,
        redact_url(settings.redis_url),
        settings.prefix,
        "on" if settings.token else "off",
        ",".join(settings.trusted_origins) or "none",
    )
    uvicorn.Server(config).run(sockets=[sock])
