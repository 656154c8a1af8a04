"""``conveyor dlq``: look at, send again, or delete a model's dead letters.

Errors print as one ``error: ...`` line on stderr and exit 1, as in ``cli/app.py``. The work
is done by :mod:`conveyor.broker.ops.dead_letters`; this module parses options and prints.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Literal, TypeVar

import typer

from conveyor.broker.keys import DEFAULT_PREFIX, Keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from conveyor.broker.ops import dead_letters as admin

# redis, rich and the broker's admin are imported by the commands that use them: the help of
# `conveyor` (which builds this group) answers without them.

__all__ = ("dlq_app",)

_T = TypeVar("_T")

dlq_app = typer.Typer(
    name="dlq",
    help="Dead letters: jobs the workers gave up on (<prefix>:{MODEL}:dead).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # as `conveyor`'s own help (cli/app.py)
)

ModelArgument = Annotated[str, typer.Argument(help="Model name.")]
RedisOption = Annotated[
    str | None,
    typer.Option("--redis", help="Redis URL (default: $CONVEYOR_REDIS_URL or local Redis)."),
]
PrefixOption = Annotated[str, typer.Option("--prefix", help="Key prefix in Redis.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
IdsArgument = Annotated[
    list[str] | None, typer.Argument(help="Entry ids in the dead-letter stream (see `list`).")
]
AllOption = Annotated[bool, typer.Option("--all", help="Every dead letter of the model.")]


def _fail(error: BaseException | str) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


def _run(redis_url: str | None, prefix: str, work: Callable[[Redis, Keys], Awaitable[_T]]) -> _T:
    """Runs ``work`` with a one-connection client (closed afterwards) on asyncio."""
    import anyio

    from conveyor.broker import (
        RedisSettings,
        create_client,
        default_redis_url,
        translate_errors,
    )
    from conveyor.errors import ConveyorError

    try:
        settings = RedisSettings.from_url(redis_url or default_redis_url())
    except ValueError as error:
        raise _fail(error) from None

    async def main() -> _T:
        client = create_client(settings, max_connections=1)
        try:
            with translate_errors(settings):
                return await work(client, Keys(prefix))
        finally:
            with anyio.move_on_after(2, shield=True):  # runs even if the caller was cancelled
                await client.aclose()

    try:
        return anyio.run(main)
    except (ConveyorError, ValueError, NotImplementedError) as error:  # not: ?cluster=true
        raise _fail(error) from None


def _printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (an ESC from a crafted entry could
    drive the terminal) are shown as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _selection(
    ids: list[str] | None, everything: bool
) -> list[str] | Literal[admin.AllEntries.ALL]:
    from conveyor.broker.ops import dead_letters as admin

    if everything and ids:
        raise _fail("give entry ids or --all, not both")
    if everything:
        return admin.ALL
    if not ids:
        raise _fail("give the entry ids to act on (see `conveyor dlq list MODEL`), or --all")
    return ids


def _check_found(done: int, ids: list[str], key: str) -> None:
    wanted = len(dict.fromkeys(ids))
    if done < wanted:
        raise _fail(
            f"{wanted - done} of the {wanted} given entry ids are not in {key} "
            "(see `conveyor dlq list MODEL`)"
        )


@dlq_app.command("list")
def list_(
    model: ModelArgument,
    count: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 20,
    json_output: JsonOption = False,
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """List a model's dead letters, oldest first."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from conveyor.broker.ops import dead_letters as admin

    async def work(client: Redis, keys: Keys) -> tuple[int, list[admin.DeadLetter]]:
        total = await admin.count_dead(client, keys, model)
        return total, await admin.list_dead(client, keys, model, count) if total else []

    total, dead = _run(redis, prefix, work)
    key = Keys(prefix).dead(model)
    if json_output:
        entries = [dataclasses.asdict(letter) for letter in dead]
        document = {"model": model, "stream": key, "total": total, "entries": entries}
        typer.echo(json.dumps(document, indent=2))
        return
    if not dead:
        typer.echo(f"no dead letters for model {model!r} ({key})")
        return
    shown = f"showing the oldest {len(dead)}" if len(dead) < total else "oldest first"
    typer.echo(f"{total} dead letter{'s' if total != 1 else ''} in {key} ({shown})")
    # "from" only when some entry came from another stream than the model's (a version's)
    main = Keys(prefix).jobs(model)
    columns = ["entry", "request", "method", "tries", "dead at (UTC)", "consumer", "reason"]
    if any(letter.from_stream != main for letter in dead):
        columns.append("from")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in columns:
        fixed = name in ("entry", "tries", "dead at (UTC)")
        table.add_column(name, no_wrap=fixed, ratio=None if fixed else 1, overflow="fold")
    for letter in dead:
        cells = [
            letter.entry_id,
            letter.request_id or "-",
            letter.method or "-",
            str(letter.deliveries),
            _when(letter.dead_at),
            letter.consumer,
            letter.reason,
            letter.from_stream,
        ]
        table.add_row(*(Text(_printable(cell)) for cell in cells[: len(columns)]))
    Console(highlight=False).print(table)


@dlq_app.command()
def show(
    model: ModelArgument,
    entry_id: Annotated[str, typer.Argument(help="Entry id in the dead-letter stream.")],
    json_output: JsonOption = False,
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Show every field of one dead letter (binary ones by their size)."""
    from conveyor.broker.ops import dead_letters as admin

    async def work(client: Redis, keys: Keys) -> admin.DeadLetterDetail | None:
        return await admin.show_dead(client, keys, model, entry_id)

    detail = _run(redis, prefix, work)
    key = Keys(prefix).dead(model)
    if detail is None:
        raise _fail(f"no dead letter {entry_id} in {key} (see `conveyor dlq list {model}`)")
    if json_output:
        document = {"model": model, "stream": key, **dataclasses.asdict(detail)}
        typer.echo(json.dumps(document, indent=2))
        return
    rows = [("entry", detail.entry_id), ("stream", key), *detail.fields.items()]
    rows += [(name, f"<{size} bytes>") for name, size in detail.binary.items()]
    width = max(len(_printable(name)) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{_printable(name):<{width}}  {_printable(value)}")


@dlq_app.command()
def retry(
    model: ModelArgument,
    entry_ids: IdsArgument = None,
    everything: AllOption = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Seconds each job gets from now (default: its original timeout)."
        ),
    ] = None,
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Send dead letters again to the job stream they came from, with a fresh deadline."""
    from conveyor.broker.ops import dead_letters as admin

    selection = _selection(entry_ids, everything)

    async def work(client: Redis, keys: Keys) -> int:
        return await admin.retry_dead(client, keys, model, selection, timeout=timeout)

    sent = _run(redis, prefix, work)
    typer.echo(f"retried {sent} dead letter{'s' if sent != 1 else ''} of model {model!r}")
    if isinstance(selection, list):
        _check_found(sent, selection, Keys(prefix).dead(model))


@dlq_app.command()
def purge(
    model: ModelArgument,
    entry_ids: IdsArgument = None,
    everything: AllOption = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --all.")] = False,
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Delete dead letters for good (--all asks first, unless --yes)."""
    from conveyor.broker.ops import dead_letters as admin

    selection = _selection(entry_ids, everything)
    key = Keys(prefix).dead(model)
    if selection is admin.ALL and not yes:

        async def count(client: Redis, keys: Keys) -> int:
            return await admin.count_dead(client, keys, model)

        total = _run(redis, prefix, count)
        if not total:
            typer.echo(f"no dead letters for model {model!r} ({key})")
            return
        try:
            confirmed = typer.confirm(f"delete all {total} dead letters in {key}?")
        except typer.Abort:  # no answer: stdin closed, or Ctrl-C / Ctrl-D at the prompt
            confirmed = False
        if not confirmed:
            raise _fail("nothing deleted")

    async def work(client: Redis, keys: Keys) -> int:
        return await admin.purge_dead(client, keys, model, selection)

    deleted = _run(redis, prefix, work)
    typer.echo(f"deleted {deleted} dead letter{'s' if deleted != 1 else ''} of model {model!r}")
    if isinstance(selection, list):
        _check_found(deleted, selection, key)
