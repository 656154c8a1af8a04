"""The JSON documents the dashboard serves, built from the operator reports'
:class:`~conveyor.broker.ops.fleet_report.Snapshot` and dead letters.

Every figure is one ``conveyor inspect`` shows (so one ``redis-cli`` returns); times are
seconds, measured against the Redis server's clock. A worker is *late* when its last heartbeat
is older than half its heartbeat's TTL: it beats every TTL/3, so two beats were missed.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from conveyor.broker.ops.dead_letters import DeadLetter
from conveyor.broker.ops.fleet_report import ModelInfo, ModelLoad, Snapshot, WorkerInfo, model_load
from conveyor.dashboard.panel import errors_doc, settings_doc

__all__ = ("LATE_WITHOUT_TTL_S", "dead_doc", "fleet_doc", "model_doc")

# A worker whose heartbeat does not say its TTL (an older one) is late after this long.
LATE_WITHOUT_TTL_S: Final = 5.0

Doc = dict[str, object]


def _late(worker: WorkerInfo) -> bool:
    if worker.heartbeat_age_s is None:
        return True
    limit = worker.ttl_s / 2 if worker.ttl_s else LATE_WITHOUT_TTL_S
    return worker.heartbeat_age_s > limit


def _worker(worker: WorkerInfo) -> Doc:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "models": list(worker.models),
        "ready": list(worker.ready),
        "in_flight": worker.in_flight,
        "done": worker.done,
        "heartbeat_age_s": worker.heartbeat_age_s,
        "started_ago_s": worker.uptime_s,
        "late": _late(worker),
    }


def _model(model: ModelInfo, shot: Snapshot, load: dict[str, ModelLoad]) -> Doc:
    ages = [
        s.group.oldest_pending_age_s
        for s in model.streams
        if s.group is not None and s.group.oldest_pending_age_s is not None
    ]
    return {
        "name": model.name,
        "versions": [s.version for s in model.streams if s.version is not None],
        "backlog": model.backlog,
        # queued: not yet delivered; running: delivered, not acked (XLEN counts both)
        "running": model.pending,
        "queued": max(model.backlog - model.pending, 0),
        "dead_letters": model.dead_letters,
        "workers": sum(model.name in w.ready for w in shot.workers),
        "oldest_running_age_s": max(ages) if ages else None,
        **_load(load.get(model.name)),
    }


def _load(load: ModelLoad | None) -> Doc:
    """The last minute, summed over the live workers' heartbeats (``conveyor inspect``'s
    figures, and the model panel's queue wait, run time and batches; None where no worker
    says). Each pushed snapshot carries them: the page draws their history."""
    return {
        "calls_per_s": load.calls_per_s if load else None,
        "errors_last_minute": load.errors if load else None,
        "p50_s": load.p50_s if load else None,
        "p99_s": load.p99_s if load else None,
        "wait_p50_s": load.wait_p50_s if load else None,
        "wait_p99_s": load.wait_p99_s if load else None,
        "run_p50_s": load.run_p50_s if load else None,
        "run_p99_s": load.run_p99_s if load else None,
        "batches_per_s": load.batches_per_s if load else None,
        "batch_mean": load.batch_mean if load else None,
        "batch_p99": load.batch_p99 if load else None,
    }


def fleet_doc(shot: Snapshot) -> Doc:
    """The whole fleet: models, live workers, and workers gone without unregistering."""
    load = model_load(shot)
    return {
        "prefix": shot.prefix,
        "time": shot.time,
        "error": None,
        "models": [_model(model, shot, load) for model in shot.models],
        "workers": [_worker(worker) for worker in shot.workers],
        "gone": [dataclasses.asdict(gone) for gone in shot.gone],
    }


def model_doc(shot: Snapshot, name: str) -> Doc | None:
    """One model: its figures, each job stream's group and consumers, the workers serving it,
    the settings they loaded it with and its recent errors; None when the prefix has no such
    model."""
    model = next((m for m in shot.models if m.name == name), None)
    if model is None:
        return None
    return {
        **_model(model, shot, model_load(shot)),
        "time": shot.time,
        "streams": [dataclasses.asdict(stream) for stream in model.streams],
        "serving": [_worker(w) for w in shot.workers if name in w.ready],
        "settings": settings_doc(shot, name),
        "recent_errors": errors_doc(shot, name),
    }


def dead_doc(model: str, total: int, letters: list[DeadLetter], now: float) -> Doc:
    """A model's dead letters (the oldest ones), each with its age in seconds."""
    entries = [
        {
            **dataclasses.asdict(letter),
            "age_s": None if letter.dead_at is None else max(now - letter.dead_at, 0.0),
        }
        for letter in letters
    ]
    return {"model": model, "total": total, "entries": entries}
