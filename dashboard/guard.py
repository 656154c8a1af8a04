"""Who may change state: the checks in front of every dashboard action (dead letters sent
again or deleted).

An action needs all of:

- a same-site request: a browser's ``Sec-Fetch-Site`` is ``same-origin`` (or ``none``: typed
  by the user), and an ``Origin`` header, when sent, names this very host. A page elsewhere
  cannot make the operator's browser act (CSRF), token or not;
- a token configured (``--token`` / ``CONVEYOR_DASHBOARD_TOKEN``): without one, actions are
  off, and say how to turn them on;
- that token in ``Authorization: Bearer <token>`` or ``X-Conveyor-Token: <token>``, compared
  in constant time.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = ("Refusal", "check_action")

_SAME_SITE = ("same-origin", "none")


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int  # 401: no or wrong token; 403: actions off, or a cross-site request
    message: str


def _cross_site(request: Request) -> str | None:
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in _SAME_SITE:
        return f"a cross-site request (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is None:
        return None  # not a browser's cross-origin request: browsers send Origin on POST
    host = request.headers.get("host", "")
    if origin == "null" or urlsplit(origin).netloc.lower() != host.lower():
        return f"a cross-site request (Origin: {origin[:100]})"
    return None


def _given_token(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("x-conveyor-token")


def check_action(request: Request, token: str | None) -> Refusal | None:
    """None when ``request`` may change state; otherwise why not (never echoing a token)."""
    cross = _cross_site(request)
    if cross is not None:
        return Refusal(403, f"refused: {cross}; open the dashboard's own page to act")
    if not token:
        return Refusal(
            403,
            "actions are off: start `conveyor dashboard` with --token (`conveyor gateway "
            "--dashboard` with --dashboard-token) or CONVEYOR_DASHBOARD_TOKEN to retry or "
            "delete dead letters",
        )
    given = _given_token(request)
    if given is None:
        return Refusal(401, "this action needs the dashboard's token (Authorization: Bearer …)")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return Refusal(401, "wrong token")
    return None
