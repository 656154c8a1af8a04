"""The heartbeat fields behind the dashboard's model panel, parsed: ``settings`` (what each
served model was loaded with) and ``recent_errors`` (each model's last errors), as
``conveyor.broker.fleet`` documents them. Older workers lack both: they parse as empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from conveyor.broker.fleet import REDACTED, looks_secret

__all__ = ("LoadSettings", "RecentError", "parse_recent_errors", "parse_settings")


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """A model instance a worker serves, as it was loaded (heartbeat field ``settings``):
    its name, version, and every setting it published (secret-looking keys redacted)."""

    name: str
    version: str | None
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecentError:
    """One of a model's last errors on a worker (heartbeat field ``recent_errors``)."""

    time: float  # unix seconds, Redis's clock
    request_id: str
    kind: str  # the error code: model_error, deadline, cancelled, bad_entry, ...
    type: str  # the exception's type name (ValueError, DeadlineExceeded, ...)
    message: str


def _scrubbed(value: Any) -> Any:
    """A published setting, secret-looking keys redacted again (a worker of another version,
    or a crafted heartbeat, must not put a secret on a page)."""
    if isinstance(value, dict):
        return {
            str(k): REDACTED if looks_secret(str(k)) else _scrubbed(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def parse_settings(data: object) -> tuple[LoadSettings, ...]:
    """The ``settings`` field's JSON (already loaded); () where it is not a list of objects."""
    if not isinstance(data, list):
        return ()
    found = []
    for one in data:
        if isinstance(one, dict) and isinstance(one.get("name"), str):
            version = one.get("version")
            values = _scrubbed(one)
            found.append(
                LoadSettings(one["name"], version if isinstance(version, str) else None, values)
            )
    return tuple(found)


def parse_recent_errors(data: object) -> dict[str, tuple[RecentError, ...]]:
    """The ``recent_errors`` field's JSON (already loaded); entries not of its form are left
    out."""
    if not isinstance(data, dict):
        return {}
    found: dict[str, tuple[RecentError, ...]] = {}
    for model, entries in data.items():
        if not isinstance(entries, list):
            continue
        kept = []
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            when = entry.get("t")
            texts = [entry.get(k) for k in ("id", "kind", "type", "message")]
            if (
                isinstance(when, int | float)
                and math.isfinite(when)
                and all(isinstance(text, str) for text in texts)
            ):
                kept.append(RecentError(float(when), *texts))  # type: ignore[arg-type]
        if kept:
            found[str(model)] = tuple(kept)
    return found
