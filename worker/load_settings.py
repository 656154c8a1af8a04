"""The settings each served model was loaded with: the heartbeat's ``settings`` field
(documented in ``broker/fleet.py``), serialised once per load or unload, not per beat.

A model's ``parameters.extra`` is the runtime's own and may hold credentials: any value whose
key looks like a secret is replaced by :data:`REDACTED` (at any depth), as is the password of
a URI; long values are cut. Nothing else of the settings file is secret by design.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from conveyor.broker import REDACTED, looks_secret
from conveyor.settings import ModelSettings
from conveyor.worker.registry import ServedModel

__all__ = ("REDACTED", "redact", "settings_field", "settings_of")

_TEXT_CHARS: Final = 200
_ITEMS: Final = 50  # entries kept of one object or list
_DEPTH: Final = 4


def _uri(value: str) -> str:
    """A URI without its password (``s3://user:pw@host/x`` -> ``s3://user:<redacted>@host/x``)."""
    try:
        parts = urlsplit(value)
        if parts.password is None:
            return value
    except ValueError:
        return value
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))


def redact(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can hold it, every secret-looking key's value replaced, URIs'
    passwords removed, long texts cut and big containers shortened."""
    if isinstance(value, dict):
        if depth >= _DEPTH:
            return "…"
        return {
            str(k): REDACTED if looks_secret(str(k)) else redact(v, depth + 1)
            for k, v in list(value.items())[:_ITEMS]
        }
    if isinstance(value, list | tuple):
        if depth >= _DEPTH:
            return "…"
        return [redact(v, depth + 1) for v in list(value)[:_ITEMS]]
    if isinstance(value, str):
        text = _uri(value)
        return text if len(text) <= _TEXT_CHARS else text[: _TEXT_CHARS - 1] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(repr(value), depth)


def _one(settings: ModelSettings, calls_at_once: int | None) -> dict[str, Any]:
    fields = settings.__dict__  # not getattr: parallel_workers warns as deprecated
    parameters = settings.parameters
    return {
        "name": settings.name,
        "version": settings.version,
        "implementation": settings.implementation_,
        "platform": settings.platform,
        "max_batch_size": settings.max_batch_size,
        "max_batch_time": settings.max_batch_time,
        "max_concurrent_calls": settings.max_concurrent_calls,
        "calls_at_once": calls_at_once,
        "parallel_workers": fields.get("parallel_workers"),
        "timeout": settings.timeout,
        "max_deliveries": settings.max_deliveries,
        "max_queue_length": settings.max_queue_length,
        "max_payload_bytes": settings.max_payload_bytes,
        "inputs": [tensor.name for tensor in settings.inputs],
        "outputs": [tensor.name for tensor in settings.outputs],
        "parameters": None
        if parameters is None
        else redact(
            {
                "uri": parameters.uri,
                "format": parameters.format,
                "content_type": parameters.content_type,
                # unknown keys (MLServer runtimes read their own), then extra
                **(parameters.model_extra or {}),
                "extra": parameters.extra,
            }
        ),
    }


def settings_field(served: Iterable[tuple[ModelSettings, int | None]]) -> str:
    """The heartbeat field: a JSON list, one object per loaded model instance (name,
    version, implementation, batching, concurrency, limits, redacted parameters).
    ``served``: each one's settings and the calls it takes at once (None: no bound)."""
    return json.dumps(
        [_one(settings, calls) for settings, calls in served],
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )


def settings_of(served: Iterable[ServedModel]) -> str:
    """:func:`settings_field` of the ready ones of ``served`` (a worker's registry)."""
    return settings_field(
        (s.settings, None if s.calls.concurrent else int(s.calls.threads.total_tokens))
        for s in served
        if s.ready
    )
