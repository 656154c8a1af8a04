"""``conveyor inspect``: the models' job streams and the workers, as a table or as JSON.

The figures come from :func:`conveyor.broker.ops.fleet_report.snapshot`; each one is what a plain
``redis-cli`` command returns (README.md). ``--watch`` refreshes every ``--interval`` seconds
until Ctrl-C (exit 0) and adds each stream's delivery rate (jobs/s, from the group's
``entries-read`` between two refreshes). Beside each model: its calls/s, errors and p50/p99
job time (taken -> answer stored) over the last minute, summed from the live workers'
heartbeats (their ``last_minute`` field: ``conveyor.broker.fleet``); JSON has them under
``load``, by model. Errors print as one ``error: ...`` line on stderr and
exit 1, as in ``cli/app.py``; while watching, a failed refresh is shown and retried instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
from datetime import UTC, datetime

import anyio
import typer
from redis.asyncio import Redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from conveyor.broker import (
    RedisSettings,
    create_client,
    default_redis_url,
    translate_errors,
)
from conveyor.broker.keys import Keys
from conveyor.broker.ops.fleet_report import ModelLoad, Snapshot, delivery_rates, model_load
from conveyor.broker.ops.fleet_snapshot import snapshot
from conveyor.errors import ConveyorError

__all__ = ("inspect_fleet",)


def _fail(error: BaseException | str) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


# -- text ------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (an ESC in a crafted key or heartbeat
    field could drive the terminal) are shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def _number(value: int | None) -> str:
    return "-" if value is None else str(value)


def _table(*columns: str, title: str) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, title=title, title_justify="left")
    for name in columns:
        numeric = name in (
            *("backlog", "lag", "pending", "read", "jobs/s", "dead", "pid", "done"),
            *("calls/s", "p50", "p99", "errors"),
        )
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    return table


def _row(table: Table, *cells: str) -> None:
    table.add_row(*(Text(_printable(cell)) for cell in cells))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.2f}s"


def _load_cells(load: ModelLoad | None) -> list[str]:
    """calls/s, p50, p99, errors (last minute) of a model's first row."""
    if load is None:
        return ["0.0", "-", "-", "0"]
    return [f"{load.calls_per_s:.1f}", _seconds(load.p50_s), _seconds(load.p99_s), str(load.errors)]


def render(shot: Snapshot, rates: dict[str, float] | None = None) -> RenderableType:
    """The snapshot as tables: models (one row per job stream), the jobs in flight by
    consumer, then workers. ``rates`` (watch mode) replaces the entries-read column."""
    when = datetime.fromtimestamp(shot.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts: list[RenderableType] = [Text(f"prefix {_printable(shot.prefix)!r} at {when}")]
    alive = {worker.id for worker in shot.workers}
    loads = model_load(shot)

    if shot.models:
        last = "jobs/s" if rates is not None else "read"
        heads = ("model", "stream", "backlog", "lag", "pending", "oldest pending", "workers")
        minute = ("calls/s", "p50", "p99", "errors")  # the last minute's
        models = _table(*heads, last, "dead", *minute, title="models")
        for model in shot.models:
            dead = str(model.dead_letters)
            load = _load_cells(loads.get(model.name))
            # The live workers serving the model, from their heartbeats. Not XINFO's consumer
            # count: Redis (7.0) adds a consumer only once it has read an entry, so an idle
            # model served by three workers would show 0.
            serving = str(sum(model.name in worker.ready for worker in shot.workers))
            if not model.streams:
                _row(models, model.name, "-", "-", "-", "-", "-", serving, "-", dead, *load)
            for stream in model.streams:
                where = "jobs" if stream.version is None else f"v:{stream.version}"
                group = stream.group
                if rates is not None:
                    rate = rates.get(stream.key)
                    figure = "-" if rate is None else f"{rate:.1f}"
                else:
                    figure = _number(group.entries_read if group else None)
                if group is None:  # no worker ever read it
                    cells = ["-", "0", "-", serving]
                else:
                    cells = [
                        _number(group.lag),
                        str(group.pending),
                        _duration(group.oldest_pending_age_s),
                        serving,
                    ]
                _row(models, model.name, where, str(stream.backlog), *cells, figure, dead, *load)
                dead, load = "", ["", "", "", ""]  # once per model
        parts.append(models)
    else:
        parts.append(Text(f"no job streams under {shot.prefix}:{{*}}"))

    busy = [
        (stream.key, consumer)
        for model in shot.models
        for stream in model.streams
        if stream.group is not None
        for consumer in stream.group.consumers
        if consumer.pending
    ]
    if busy:
        table = _table("stream", "consumer", "pending", "idle", "worker", title="jobs in flight")
        for key, consumer in busy:
            state = "alive" if consumer.name in alive else "gone"
            idle = _duration(consumer.idle_ms / 1000)
            _row(table, key, consumer.name, str(consumer.pending), idle, state)
        parts.append(table)

    if shot.workers:
        columns = ("worker", "host", "pid", "models", "in flight", "done", "up", "last beat")
        workers = _table(*columns, title="workers")
        for worker in shot.workers:
            _row(
                workers,
                worker.id,
                worker.host,
                _number(worker.pid),
                ",".join(worker.models),
                _number(worker.in_flight),
                _number(worker.done),
                _duration(worker.uptime_s),
                f"{_duration(worker.heartbeat_age_s)} ago",
            )
        parts.append(workers)
    else:
        parts.append(Text("no workers registered"))
    for gone in shot.gone:
        line = (
            f"gone: {gone.id} (last heartbeat {_duration(gone.heartbeat_age_s)} ago; "
            "its heartbeat expired without it unregistering)"
        )
        parts.append(Text(_printable(line)))
    return Group(*parts)


def _document(shot: Snapshot, rates: dict[str, float] | None = None) -> dict[str, object]:
    document: dict[str, object] = dataclasses.asdict(shot)
    document["load"] = {name: dataclasses.asdict(one) for name, one in model_load(shot).items()}
    if rates is not None:
        document["rates"] = rates
    return document


# -- the command -----------------------------------------------------------------------------


async def _watch(
    client: Redis,
    settings: RedisSettings,
    keys: Keys,
    first: Snapshot,
    interval: float,
    json_output: bool,
) -> None:
    """Refreshes every ``interval`` seconds until cancelled (Ctrl-C)."""
    console = Console(highlight=False)
    live = console.is_terminal and not json_output
    previous = first
    rates: dict[str, float] = {}

    def show(frame: RenderableType, document: dict[str, object]) -> None:
        if json_output:
            typer.echo(json.dumps(document, separators=(",", ":")))
        elif not live:
            console.print(frame)
            console.print()

    frame = render(first, rates)
    show(frame, _document(first, rates))
    with contextlib.ExitStack() as stack:
        live_frame = Live(frame, console=console, auto_refresh=False)
        display = stack.enter_context(live_frame) if live else None
        while True:
            await anyio.sleep(interval)
            try:
                with translate_errors(settings):
                    shot = await snapshot(client, keys)
            except ConveyorError as error:
                message = f"error: {error} (retrying every {interval:g}s)"
                if live:
                    console.print(Text(_printable(message)))
                else:
                    typer.echo(message, err=True)
                continue
            rates = delivery_rates(previous, shot)
            previous = shot
            frame = render(shot, rates)
            if display is not None:
                display.update(frame, refresh=True)
            show(frame, _document(shot, rates))


def inspect_fleet(
    watch: bool, interval: float, json_output: bool, redis: str | None, prefix: str
) -> None:
    """``conveyor inspect`` (its options are in ``cli/app.py``, which imports this module
    only when the command runs)."""
    try:
        settings = RedisSettings.from_url(redis or default_redis_url())
    except ValueError as error:
        raise _fail(error) from None
    keys = Keys(prefix)

    async def main() -> Snapshot:
        client = create_client(settings, max_connections=1)
        try:
            with translate_errors(settings):
                first = await snapshot(client, keys)
            if watch:
                await _watch(client, settings, keys, first, interval, json_output)
            return first
        finally:
            with anyio.move_on_after(2, shield=True):  # runs even if the caller was cancelled
                await client.aclose()

    if watch:
        # Ctrl-C stops --watch, even when this process was started with SIGINT ignored (as
        # a background job of a non-interactive shell is): put Python's handler back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        shot = anyio.run(main)
    except KeyboardInterrupt:  # Ctrl-C ends --watch: that is how it stops, not a failure
        sys.stderr.flush()
        raise typer.Exit(0) from None
    except (ConveyorError, ValueError, NotImplementedError) as error:  # not: ?cluster=true
        raise _fail(error) from None
    if json_output:
        typer.echo(json.dumps(_document(shot), indent=2))
    else:
        Console(highlight=False).print(render(shot))
