"""The heartbeat fields behind the dashboard's model panel, written by the worker and parsed
by the operator reports: queue wait, run time and batch sizes in ``last_minute``, the load
``settings`` (secrets redacted) and ``recent_errors``; and older workers that lack them."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from conveyor.broker import Beat, HeartbeatLink
from conveyor.broker.ops.fleet_report import (
    LastMinute as ParsedMinute,
)
from conveyor.broker.ops.fleet_report import (
    ModelMinute,
    Snapshot,
    WorkerInfo,
    model_load,
    parse_last_minute,
    parse_recent_errors,
    parse_settings,
)
from conveyor.dashboard.view import model_doc
from conveyor.multiprocess_metrics import LATENCY_BUCKETS
from conveyor.settings import ModelSettings
from conveyor.worker.heartbeat import Heartbeat, WorkerStats
from conveyor.worker.load_settings import REDACTED, settings_field
from conveyor.worker.metrics import WorkerMetrics
from conveyor.worker.minute_stats import BATCH_BUCKETS, LastMinute, model_totals
from conveyor.worker.model_calls import RUN
from conveyor.worker.recent_errors import KEPT_PER_MODEL, MESSAGE_CHARS, RecentErrors

SECRETS = ("hunter2-password", "tok-123", "sk-secret", "aws-key", "nested-pw", "uri-pw")


def secretive_settings() -> ModelSettings:
    return ModelSettings.model_validate(
        {
            "name": "panel",
            "implementation": "conveyor.model.MLModel",
            "max_batch_size": 8,
            "max_batch_time": 0.02,
            "max_concurrent_calls": 2,
            "parameters": {
                "version": "v3",
                "uri": "s3://reader:uri-pw@bucket/models/panel",
                "db_password": "hunter2-password",
                "extra": {
                    "threshold": 0.5,
                    "labels": ["cat", "dog"],
                    "api_token": "tok-123",
                    "OPENAI_SECRET": "sk-secret",
                    "nested": {"aws_access_key_id": "aws-key", "db": {"Password": "nested-pw"}},
                    "long": "x" * 1000,
                },
            },
        }
    )


def test_settings_are_published_with_every_secret_redacted() -> None:
    field = settings_field([(secretive_settings(), 2)])
    for secret in SECRETS:
        assert secret not in field
    [published] = json.loads(field)
    assert published["name"] == "panel"
    assert published["version"] == "v3"
    assert published["implementation"] == "conveyor.model.MLModel"
    assert (published["max_batch_size"], published["max_batch_time"]) == (8, 0.02)
    assert (published["max_concurrent_calls"], published["calls_at_once"]) == (2, 2)
    parameters = published["parameters"]
    assert parameters["uri"] == f"s3://reader:{REDACTED}@bucket/models/panel"
    assert parameters["db_password"] == REDACTED
    extra = parameters["extra"]
    assert extra["threshold"] == 0.5
    assert extra["labels"] == ["cat", "dog"]
    assert extra["api_token"] == extra["OPENAI_SECRET"] == REDACTED
    assert extra["nested"]["aws_access_key_id"] == REDACTED
    assert extra["nested"]["db"]["Password"] == REDACTED
    assert len(extra["long"]) < 250  # cut

    [parsed] = parse_settings(json.loads(field))
    assert (parsed.name, parsed.version) == ("panel", "v3")
    assert parsed.values["max_batch_size"] == 8


def test_a_crafted_settings_field_is_scrubbed_and_garbage_left_out() -> None:
    crafted = [
        {"name": "m", "parameters": {"extra": {"token": "leak", "ok": [{"secret": "leak"}]}}},
        {"version": "no name"},
        "not an object",
    ]
    [parsed] = parse_settings(crafted)
    assert "leak" not in json.dumps(parsed.values)
    assert parsed.values["parameters"]["extra"]["ok"] == [{"secret": "<redacted>"}]
    garbage: object
    for garbage in (None, {}, "x", 3, [[1]]):
        assert parse_settings(garbage) == ()


def test_recent_errors_keep_the_last_ten_per_model_with_cut_messages() -> None:
    store = RecentErrors()
    for i in range(KEPT_PER_MODEL + 5):
        store.record("m", f"req-{i}", "model_error", "ValueError", f"bad {i}")
    store.record("other", "req-x", "deadline", "DeadlineExceeded", "y" * 5000)
    before = store.changes
    field = store.field(offset=100.0)
    assert store.changes == before  # reading changes nothing
    parsed = parse_recent_errors(json.loads(field))
    assert [e.request_id for e in parsed["m"]] == [f"req-{i}" for i in range(5, 15)]
    assert parsed["m"][-1].message == "bad 14"
    assert parsed["m"][-1].type == "ValueError"
    [other] = parsed["other"]
    assert other.kind == "deadline"
    assert len(other.message) == MESSAGE_CHARS
    crafted = {
        "m": [
            {"t": "soon", "id": 1},
            7,
            {"t": 1.0, "id": "a", "kind": "k", "type": "T", "message": "kept"},
        ],
        "n": "x",
    }
    assert [e.message for e in parse_recent_errors(crafted)["m"]] == ["kept"]
    assert parse_recent_errors([1]) == {}


def test_last_minute_carries_queue_wait_run_time_and_batch_sizes() -> None:
    metrics = WorkerMetrics()
    for seconds in (0.002, 0.002, 0.2):
        job = metrics.children("panel-m", "predict")
        metrics.job_taken(job, seconds)
        metrics.job_done(job, "panel-m", "predict", "ok", seconds * 2)
    run = RUN.labels("panel-m", "v1", "predict")
    for _ in range(3):
        run.observe(0.003)
    for size in (4, 8):
        metrics.batch_size.labels("panel-m").observe(size)
    minute = LastMinute(LATENCY_BUCKETS, 0.0, BATCH_BUCKETS)
    field = json.loads(minute.field(30.0, model_totals(metrics)))
    assert field["batch_le"] == list(map(float, BATCH_BUCKETS))
    figures = field["models"]["panel-m"]
    assert sum(figures["wait"]) == 3
    assert sum(figures["counts"]) == 3
    assert sum(figures["run"]) >= 3  # RUN is process-wide: other tests may add
    assert sum(figures["batches"]) == 2
    assert figures["batch_rows"] == 12

    parsed = parse_last_minute(field)
    assert parsed is not None
    info = worker_info("w1", last_minute=parsed)
    load = model_load(Snapshot("p", 0.0, (), (info,), ()))["panel-m"]
    assert load.wait_p50_s is not None
    assert 0.001 < load.wait_p50_s <= 0.0025
    assert load.wait_p99_s is not None
    assert load.wait_p99_s > 0.1
    assert load.run_p50_s is not None
    assert 0.0025 < load.run_p50_s <= 0.005
    assert load.batch_mean == 6.0
    assert load.batches_per_s == 2 / 30
    assert load.batch_p99 is not None
    assert 4 < load.batch_p99 <= 8

    # a minute later with nothing new: the model drops out of the field
    later = json.loads(minute.field(95.0, model_totals(metrics)))
    assert "panel-m" not in later["models"]


def worker_info(worker_id: str, **fields: Any) -> WorkerInfo:
    return WorkerInfo(worker_id, "host", 1, ("m",), ("m",), 0, 0, 0.0, 0.0, 1.0, 0.1, 3.0, **fields)


def test_an_older_workers_heartbeat_parses_without_the_new_fields() -> None:
    old = {
        "s": 60,
        "le": [0.1, 1.0],
        "models": {"m": {"calls": 6, "errors": 1, "counts": [3, 3, 0]}},
    }
    parsed = parse_last_minute(old)
    assert parsed == ParsedMinute(60.0, (0.1, 1.0), {"m": ModelMinute(6, 1, (3, 3, 0))})
    load = model_load(Snapshot("p", 0.0, (), (worker_info("w", last_minute=parsed),), ()))["m"]
    assert (load.calls_per_s, load.errors) == (0.1, 1)
    assert load.wait_p50_s is load.run_p99_s is load.batch_mean is load.batches_per_s is None
    malformed = {
        **old,
        "models": {"m": {"calls": 6, "errors": 1, "counts": [3, 3, 0], "wait": "x"}},
    }
    assert parse_last_minute(malformed) == parsed  # a malformed new list is dropped


def test_the_model_document_shows_settings_and_the_newest_errors_first() -> None:
    settings = parse_settings(json.loads(settings_field([(secretive_settings(), 2)])))
    errors = parse_recent_errors(
        {
            "panel": [
                {
                    "t": 90.0,
                    "id": "r1",
                    "kind": "model_error",
                    "type": "ValueError",
                    "message": "negative input",
                }
            ]
        }
    )
    later = parse_recent_errors(
        {
            "panel": [
                {
                    "t": 95.0,
                    "id": "r2",
                    "kind": "deadline",
                    "type": "DeadlineExceeded",
                    "message": "ran past",
                }
            ]
        }
    )
    workers = (
        worker_info("w1", settings=settings, recent_errors=errors),
        worker_info("w2", settings=settings, recent_errors=later),
        worker_info("old"),  # an older worker: says neither
    )
    from conveyor.broker.ops.fleet_report import ModelInfo

    shot = Snapshot("p", 100.0, (ModelInfo("panel", (), "p:dead", 0),), workers, ())
    doc = model_doc(shot, "panel")
    assert doc is not None
    [loaded] = cast(list[dict[str, Any]], doc["settings"])
    assert loaded["workers"] == ["w1", "w2"]
    assert loaded["version"] == "v3"
    shown = cast(list[dict[str, Any]], doc["recent_errors"])
    assert [(e["request_id"], e["worker"], e["age_s"]) for e in shown] == [
        ("r2", "w2", 5.0),
        ("r1", "w1", 10.0),
    ]
    for secret in SECRETS:
        assert secret not in json.dumps(doc)


class _Link:
    def __init__(self) -> None:
        self.fields: list[dict[str, str | int]] = []

    def time(self) -> tuple[int, int]:
        return (1000, 0)

    def beat(self, fields: dict[str, str | int], *_: object) -> Beat:
        self.fields.append(dict(fields))
        return Beat([], [])


def test_each_beat_carries_the_settings_and_the_errors_serialised_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.worker import heartbeat as module

    store = RecentErrors()
    monkeypatch.setattr(module, "RECENT_ERRORS", store)
    serialised: list[float] = []
    field = store.field

    def counted(offset: float = 0.0) -> str:
        serialised.append(offset)
        return field(offset)

    monkeypatch.setattr(store, "field", counted)
    stats = WorkerStats(models=["m"], settings='[{"name":"m"}]')
    link = _Link()
    beat = Heartbeat(lambda: cast(HeartbeatLink, link), "w", stats, 3.0)
    beat.beat_once(cast(HeartbeatLink, link))
    store.record("m", "r1", "model_error", "ValueError", "boom")
    beat.beat_once(cast(HeartbeatLink, link))
    beat.beat_once(cast(HeartbeatLink, link))
    assert len(serialised) == 2  # at the first beat, and once after the error
    first, _, last = link.fields
    assert first["settings"] == last["settings"] == '[{"name":"m"}]'
    assert first["recent_errors"] == "{}"
    [error] = parse_recent_errors(json.loads(str(last["recent_errors"])))["m"]
    assert error.message == "boom"
    assert 900 < error.time < 1100
