"""The model panel's parts of a model's document that are no figures: the settings its
workers loaded it with, and its recent errors, both from the workers' heartbeats
(``conveyor.broker.fleet``: ``settings``, ``recent_errors``; older workers say neither)."""

from __future__ import annotations

import json
from typing import Final

from conveyor.broker.ops.fleet_report import Snapshot

__all__ = ("ERRORS_SHOWN", "errors_doc", "settings_doc")

ERRORS_SHOWN: Final = 20  # the newest, over every live worker

Doc = dict[str, object]


def settings_doc(shot: Snapshot, name: str) -> list[Doc]:
    """Each distinct way ``name`` is loaded (one per version, usually), with the live workers
    that loaded it so; values as the workers published them (secrets redacted there and again
    when parsed)."""
    found: dict[str, Doc] = {}
    for worker in shot.workers:
        for loaded in worker.settings:
            if loaded.name != name:
                continue
            key = json.dumps(loaded.values, sort_keys=True, default=str)
            entry = found.setdefault(
                key, {"version": loaded.version, "values": loaded.values, "workers": []}
            )
            workers = entry["workers"]
            assert isinstance(workers, list)
            workers.append(worker.id)
    return sorted(found.values(), key=lambda e: str(e["version"] or ""))


def errors_doc(shot: Snapshot, name: str) -> list[Doc]:
    """The newest :data:`ERRORS_SHOWN` errors of ``name`` over the live workers, newest
    first, each with the worker that answered it and its age (Redis's clock)."""
    errors = [
        (error, worker.id)
        for worker in shot.workers
        for error in worker.recent_errors.get(name, ())
    ]
    errors.sort(key=lambda pair: pair[0].time, reverse=True)
    return [
        {
            "time": error.time,
            "age_s": max(shot.time - error.time, 0.0),
            "request_id": error.request_id,
            "kind": error.kind,
            "type": error.type,
            "message": error.message,
            "worker": worker,
        }
        for error, worker in errors[:ERRORS_SHOWN]
    ]
