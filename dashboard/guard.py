"""Who may change state, and which Host names are answered: the checks in front of every
dashboard action (dead letters sent again or deleted, a model loaded or unloaded).

An action needs all of:

- a same-site request: a browser's ``Sec-Fetch-Site`` is ``same-origin`` (or ``none``: typed
  by the user), and an ``Origin`` header, when sent, names this very host, or is one of the
  trusted origins (``--trusted-origin``: a reverse proxy's public address, for proxies that
  rewrite Host). A page elsewhere cannot make the operator's browser act (CSRF), token or not;
- a token configured (``--token`` / ``CONVEYOR_DASHBOARD_TOKEN``): without one, actions are
  off, and say how to turn them on;
- that token in ``Authorization: Bearer <token>`` or ``X-Conveyor-Token: <token>``, compared
  in constant time.

Bound to loopback, the dashboard answers only loopback Host names, plus the names of the
trusted origins (:class:`LoopbackHosts`).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = (
    "LOOPBACK_NAMES",
    "LoopbackHosts",
    "Refusal",
    "check_action",
    "host_name",
    "refused",
    "trusted_origin",
)

logger = logging.getLogger(__name__)

LOOPBACK_NAMES: Final = ("127.0.0.1", "localhost", "::1")
_SAME_SITE: Final = ("same-origin", "none")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401: no or wrong token; 403: actions off, or a cross-site request
    message: str


def trusted_origin(value: str) -> str:
    """``value`` as browsers write an Origin (``https://ops.example.com``: scheme and host,
    lower case, no default port, no path).

    Raises:
        ValueError: not an http(s) origin.
    """
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (
        parts.scheme.lower() not in _DEFAULT_PORTS
        or not parts.hostname
        or port == -1
        or parts.username is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"trusted origin {value!r} is not an origin: give scheme://host[:port], "
            "as https://ops.example.com"
        )
    return _origin(parts.scheme, parts.hostname, port)


def _origin(scheme: str, hostname: str, port: int | None) -> str:
    scheme = scheme.lower()
    host = f"[{hostname}]" if ":" in hostname else hostname.lower()
    shown = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{host}{shown}"


def _as_origin(header: str) -> str | None:
    """An Origin header in :func:`trusted_origin`'s form; None if it is none."""
    try:
        return trusted_origin(header)
    except ValueError:
        return None


def host_name(header: str) -> str:
    """The name part of a Host header: ``[::1]:8088`` -> ``::1``, ``localhost:80`` ->
    ``localhost`` (Starlette's TrustedHostMiddleware cuts an IPv6 address at its first colon)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def _cross_site(request: Request, trusted: Collection[str]) -> str | None:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _SAME_SITE:
        return f"a cross-site request (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is None:
        return None  # not a browser's cross-origin request: browsers send Origin on POST
    host = request.headers.get("host", "")
    if origin != "null" and urlsplit(origin).netloc.lower() == host.lower():
        return None
    written = _as_origin(origin)
    if written is not None and written in trusted:
        return None  # the reverse proxy's own address: it rewrote Host
    return f"a cross-site request (Origin: {origin[:100]})"


def _given_token(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-conveyor-token")


def check_action(
    request: Request, token: str | None, trusted: Collection[str] = ()
) -> Refusal | None:
    """None when ``request`` may change state; otherwise why not (never echoing a token).
    ``trusted``: origins in :func:`trusted_origin`'s form, accepted besides this host."""
    cross = _cross_site(request, trusted)
    if cross is not None:
        return Refusal(403, f"refused: {cross}; open the dashboard's own page to act")
    if not token:
        return Refusal(
            403,
            "actions are off: start `conveyor dashboard` with --token (`conveyor gateway "
            "--dashboard` with --dashboard-token) or CONVEYOR_DASHBOARD_TOKEN to retry or "
            "delete dead letters, load or unload models",
        )
    given = _given_token(request)
    if given is None:
        return Refusal(401, "this action needs the dashboard's token (Authorization: Bearer …)")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return Refusal(401, "wrong token")
    return None


def refused(
    request: Request, action: str, model: str, token: str | None, trusted: Collection[str]
) -> Refusal | None:
    """:func:`check_action`, with a refusal logged (``dashboard.action_refused``)."""
    refusal = check_action(request, token, trusted)
    if refusal is not None:
        client = request.client.host if request.client else "?"
        logger.warning(
            "dashboard.action_refused action=%s model=%s client=%s status=%d reason=%s",
            action, model, client, refusal.status, refusal.message,
        )  # fmt: skip
    return refusal


class LoopbackHosts:
    """Bound to loopback, only loopback names in Host (and the trusted origins' names): a
    DNS-rebinding page (a name of the attacker's that resolves to 127.0.0.1) cannot read the
    dashboard from the operator's browser."""

    def __init__(self, app: ASGIApp, trusted: Collection[str] = ()) -> None:
        self.app = app
        names = (urlsplit(origin).hostname for origin in trusted)
        self.names = frozenset([*LOOPBACK_NAMES, *(n for n in names if n)])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if host_name(host).lower() not in self.names:
                message = (
                    "this dashboard answers loopback host names only (behind a reverse proxy "
                    "that sets Host: start it with --trusted-origin <the proxy's address>)"
                )
                body = orjson.dumps({"error": message})
                await Response(body, 400, media_type="application/json")(scope, receive, send)
                return
        await self.app(scope, receive, send)
