"""The ``conveyor`` command line. Errors print as one readable line, not a traceback.

Any :class:`~conveyor.errors.ConveyorError` a command raises becomes ``error: <message>`` on
stderr and exit code 1 (:func:`main`). Everything heavy (numpy, pydantic, redis, rich) is
imported inside the commands: ``conveyor --help`` answers in ~0.1 s.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.broker.keys import DEFAULT_PREFIX
from conveyor.cli.dlq import dlq_app
from conveyor.cli.logs import LogFormat, setup_logging
from conveyor.errors import ConveyorError

if TYPE_CHECKING:
    from conveyor.settings import ModelSettings
    from conveyor.worker.registry import ModelLoadFailed

__all__ = ("app", "main")

logger = logging.getLogger("conveyor.cli")


def _version(value: bool) -> None:
    if value:
        import conveyor
        from conveyor.compiled import describe_build

        typer.echo(f"conveyor {conveyor.__version__}, {describe_build()}")
        raise typer.Exit()


app = typer.Typer(
    name="conveyor",
    help="Serve MLServer-style models from a fleet of workers over Redis Streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: flags read `--stream`, not `--stream <bool>`, and no rich import
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_version, help="Print the version."),
    ] = False,
) -> None:
    """Serve MLServer-style models from a fleet of workers over Redis Streams."""


RedisOption = Annotated[
    str | None,
    typer.Option("--redis", help="Redis URL (default: $CONVEYOR_REDIS_URL or local Redis)."),
]
PrefixOption = Annotated[str, typer.Option("--prefix", help="Key prefix in Redis.")]
# `conveyor gateway --host` and `conveyor dashboard --host`: loopback unless told otherwise
HostOption = Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error.")]
# `conveyor dashboard --token` and `conveyor gateway --dashboard-token`: one setting, one variable
DashboardTokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="CONVEYOR_DASHBOARD_TOKEN",
        show_envvar=True,
        help="Token the dashboard's actions need: retry and delete dead letters, load and unload "
        "models (without one, the page only looks).",
    ),
]


def _trusted_origins(values: list[str] | None) -> list[str]:
    """The trusted origins given (repeated, or comma- or space-separated in the variable),
    each checked and written as browsers send an Origin."""
    from conveyor.dashboard.guard import trusted_origin

    origins = []
    for value in values or []:
        for origin in value.replace(",", " ").split():
            try:
                origins.append(trusted_origin(origin))
            except ValueError as error:
                raise typer.BadParameter(str(error)) from None
    return origins


# `conveyor dashboard --trusted-origin` and `conveyor gateway --dashboard-trusted-origin`
TrustedOriginOption = Annotated[
    list[str] | None,
    typer.Option(
        envvar="CONVEYOR_DASHBOARD_TRUSTED_ORIGINS",
        show_envvar=True,
        callback=_trusted_origins,
        metavar="ORIGIN",
        help="A reverse proxy's public address (https://ops.example.com; repeatable): the "
        "dashboard's Host and same-site checks accept it, as for a proxy that rewrites Host. "
        "Actions still need the token.",
    ),
]
LogFormatOption = Annotated[
    LogFormat, typer.Option("--log-format", help="text, or json (one object per line).")
]


def _fail(error: BaseException) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


def _find_models(model_dirs: list[Path]) -> list[ModelSettings]:
    """The models of ``model_dirs``, each implementation imported: a bad folder fails here,
    in one line, before any process or server starts."""
    from conveyor.repository import find_model_settings

    models = find_model_settings(model_dirs)
    for model in models:
        model.implementation  # noqa: B018 - import now, so a bad folder fails at once
    if not models:
        raise _fail(
            ValueError(f"no model-settings.json found in {', '.join(map(str, model_dirs))}")
        )
    return models


def _report_load_failure(error: ModelLoadFailed, report: Path | None) -> typer.Exit:
    """A model's load() raised: its traceback once, then one line. Under a supervisor
    (``report``), the supervisor prints them, once for all its processes."""
    import traceback

    cause = error.__cause__ or error
    text = "".join(traceback.format_exception(cause))
    if report is not None:
        document = {"model": error.name, "version": error.version, "error": str(error)}
        report.write_text(json.dumps({**document, "traceback": text}))
        return typer.Exit(code=1)
    logger.error(  # the traceback under the line (text), or in its "exception" key (json)
        "model.load_failed model=%s version=%s error=%s",
        error.name,
        error.version,
        error.reason,
        exc_info=cause,
    )
    return _fail(error)


@app.command()
def worker(
    model_dirs: Annotated[
        list[Path],
        typer.Argument(metavar="MODEL_DIRS", help="Model folders, or folders of them."),
    ],
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    processes: Annotated[int, typer.Option(min=1, help="Worker processes to run.")] = 1,
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once per process.")] = 16,
    name: Annotated[str | None, typer.Option(help="Consumer name (unique in the fleet).")] = None,
    heartbeat_ttl: Annotated[
        float, typer.Option(help="Seconds before a silent worker is dead.")
    ] = 10.0,
    grace_period: Annotated[float, typer.Option(help="Seconds to drain on SIGTERM.")] = 30.0,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on this port (one for all --processes; "
            "0: a free one, logged as metrics.serving)."
        ),
    ] = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    failure_report: Annotated[
        Path | None,
        typer.Option(hidden=True, help="Where a supervised worker reports a model's failed load."),
    ] = None,
    metrics_dir: Annotated[
        Path | None,
        typer.Option(hidden=True, help="Where a supervised worker writes its metrics."),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            help="Serve /live and /ready on this port (one for all --processes; "
            "0: a free one, logged as health.serving)."
        ),
    ] = None,
    health_file: Annotated[
        Path | None,
        typer.Option(hidden=True, help="Where a supervised worker writes its readiness."),
    ] = None,
) -> None:
    """Serve the models of MODEL_DIRS until SIGTERM or Ctrl-C."""
    setup_logging(log_level, log_format)
    from conveyor.broker import default_redis_url
    from conveyor.worker.supervisor import supervise, worker_argv, worker_env

    url = redis or default_redis_url()
    models = _find_models(model_dirs)
    if processes > 1:
        args = [str(p) for p in model_dirs]
        args += ["--prefix", prefix, "--concurrency", str(concurrency)]
        args += ["--heartbeat-ttl", str(heartbeat_ttl), "--grace-period", str(grace_period)]
        args += ["--log-level", log_level, "--log-format", log_format]
        code = supervise(
            worker_argv(args),
            processes,
            grace_period,
            env=worker_env(url, processes),
            metrics_port=metrics_port,  # one endpoint, every child's metrics summed
            health_port=health_port,  # ready when every child is
            heartbeat_ttl=heartbeat_ttl,
        )
        raise typer.Exit(code)

    import anyio

    from conveyor.worker import Worker, WorkerSettings
    from conveyor.worker.registry import ModelLoadFailed

    settings = WorkerSettings(
        redis_url=url,
        prefix=prefix,
        concurrency=concurrency,
        heartbeat_ttl=heartbeat_ttl,
        grace_period=grace_period,
        metrics_port=metrics_port,
        metrics_dir=str(metrics_dir) if metrics_dir is not None else None,
        health_port=health_port,
        health_file=str(health_file) if health_file is not None else None,
    )
    if name:
        settings.name = name
    from conveyor.collector import tune_collector

    tune_collector()  # rarer young collections: the job path's objects die young
    try:
        anyio.run(lambda: Worker(settings, models).run(handle_signals=True))
    except ModelLoadFailed as error:
        raise _report_load_failure(error, failure_report) from None


def _read_data(data: str) -> object:
    try:
        text = Path(data[1:]).read_text() if data.startswith("@") else data
    except OSError as error:
        raise _fail(ValueError(f"cannot read --data {data}: {error.strerror or error}")) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _fail(ValueError(f"--data is not valid JSON: {error}")) from None


@app.command()
def infer(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model name.")],
    data: Annotated[str, typer.Option("--data", help="V2 request JSON, or @file.")],
    version: Annotated[str | None, typer.Option(help="Model version.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Call predict_stream.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 30.0,
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Send a V2 inference request (as for MLServer) and print the V2 JSON response.

    With --stream, --data may be one request or a JSON list of them; each response is
    printed on its own line as it arrives.
    """
    import anyio
    from pydantic import ValidationError

    from conveyor.broker import default_redis_url
    from conveyor.client import Client
    from conveyor.types import InferenceRequest

    raw = _read_data(data)
    items = raw if stream and isinstance(raw, list) else [raw]
    try:
        requests = [InferenceRequest.model_validate(item) for item in items]
    except ValidationError as error:
        # pydantic's message spans lines; the CLI's error is one line
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in error.errors()
        )
        raise _fail(ValueError(f"--data is not a V2 inference request: {problems}")) from None

    async def run() -> None:
        async with Client(redis or default_redis_url(), prefix=prefix) as client:
            parallel = client.model(model, version)
            if not stream:
                response = await parallel.predict(requests[0], timeout=timeout)
                typer.echo(response.model_dump_json())
                return

            async def feed() -> AsyncIterator[InferenceRequest]:
                for request in requests:
                    yield request

            async for chunk in parallel.predict_stream(feed(), timeout=timeout):
                typer.echo(chunk.model_dump_json())

    anyio.run(run)


@app.command()
def up(
    model_dirs: Annotated[
        list[Path] | None,
        typer.Argument(metavar="MODEL_DIRS", help="Model folders (default: examples/models)."),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes to start.")] = 2,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            help="Use this Redis instead of starting one ($CONVEYOR_REDIS_URL is not read: "
            "it may name the Redis of an earlier `conveyor up`, gone with it).",
        ),
    ] = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    http_port: Annotated[int, typer.Option(help="The gateway's REST port (0: a free one).")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="The gateway's gRPC port (0: a free one).")] = 8081,
    log_level: LogLevelOption = "warning",
) -> None:
    """Run the whole thing: Redis (embedded unless --redis), workers and a V2 gateway (REST
    and gRPC), until Ctrl-C."""
    setup_logging(log_level)
    from conveyor.cli.up import run_up

    dirs = model_dirs or [Path("examples/models")]
    _find_models(dirs)
    code = run_up(
        dirs,
        workers=workers,
        redis_url=redis,
        prefix=prefix,
        log_level=log_level,
        http_port=http_port,
        grpc_port=grpc_port,
    )
    raise typer.Exit(code)


@app.command()
def gateway(
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    host: HostOption = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="REST port (V2 over HTTP; 0: a free one).")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (-1: no gRPC server).")] = 8081,
    timeout: Annotated[
        float, typer.Option(help="Seconds a call may take when its client sets no deadline.")
    ] = 60.0,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Gateway processes on these ports (they share nothing but Redis)."
        ),
    ] = 1,
    max_request_bytes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Largest REST body or gRPC message taken (larger: 413 / RESOURCE_EXHAUSTED).",
        ),
    ] = 64 * 1024 * 1024,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics on this port (of all --workers, summed; "
            "0: a free one, logged as metrics.serving)."
        ),
    ] = None,
    record_metrics: Annotated[
        bool, typer.Option(hidden=True, help="Record metrics for the parent (--workers N).")
    ] = False,
    dashboard: Annotated[
        bool, typer.Option(help="Serve the dashboard's page at /dashboard/ on the REST port.")
    ] = False,
    dashboard_token: DashboardTokenOption = None,
    dashboard_trusted_origin: TrustedOriginOption = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
) -> None:
    """Serve the fleet's models over V2 REST and gRPC (Open Inference Protocol)."""
    setup_logging(log_level, log_format)
    from conveyor.broker import default_redis_url

    url = redis or default_redis_url()
    if workers > 1:
        if dashboard_token:  # to the children through the environment, never argv (ps shows it)
            import os

            os.environ["CONVEYOR_DASHBOARD_TOKEN"] = dashboard_token
        raise typer.Exit(
            _gateways(
                url,
                prefix,
                host,
                http_port,
                grpc_port,
                timeout,
                workers,
                log_level,
                log_format,
                ["--max-request-bytes", str(max_request_bytes)]
                + (["--dashboard"] if dashboard else [])
                + [f"--dashboard-trusted-origin={o}" for o in dashboard_trusted_origin or []],
                metrics_port,
            )
        )
    import anyio

    from conveyor.gateway import GatewaySettings
    from conveyor.gateway.server import serve

    settings = GatewaySettings(
        redis_url=url,
        prefix=prefix,
        host=host,
        http_port=http_port,
        grpc_port=None if grpc_port < 0 else grpc_port,
        timeout=timeout,
        max_request_bytes=max_request_bytes,
        metrics_port=metrics_port,
        record_metrics=record_metrics,
        dashboard=dashboard,
        dashboard_token=dashboard_token,
        dashboard_trusted_origins=tuple(dashboard_trusted_origin or ()),
    )

    from conveyor.collector import freeze_survivors, tune_collector

    def ready(http: int, grpc: int | None) -> None:
        # What is alive once it serves (imports, servers, routes) lives as long as it does
        freeze_survivors()
        grpc_text = f", gRPC on {host}:{grpc}" if grpc is not None else ""
        typer.echo(f"conveyor gateway: REST on http://{host}:{http}{grpc_text}", err=True)

    tune_collector()  # rarer young collections: a call's objects die young (conveyor.collector)
    anyio.run(lambda: serve(settings, on_ready=ready))


def _gateways(
    url: str,
    prefix: str,
    host: str,
    http_port: int,
    grpc_port: int,
    timeout: float,
    processes: int,
    log_level: str,
    log_format: str,
    options: list[str],
    metrics_port: int | None,
) -> int:
    """``processes`` gateway processes on the same ports (``SO_REUSEPORT``: the kernel
    spreads connections), each restarted when it dies; the ports (0: one picked here) are
    held (bound, not listening) until they stop."""
    import contextlib
    import os
    import sys
    import tempfile

    from conveyor.gateway.processes import run_processes
    from conveyor.gateway.server import claim
    from conveyor.multiprocess_metrics import MULTIPROC_VARIABLE, serving

    env = {**os.environ, "CONVEYOR_REDIS_URL": url}
    with contextlib.ExitStack() as held:
        on_exit = None
        if metrics_port is not None:
            # each process records in the folder's files; we serve them summed
            folder = held.enter_context(tempfile.TemporaryDirectory(prefix="conveyor-gateway-"))
            env[MULTIPROC_VARIABLE] = folder
            options = [*options, "--record-metrics"]
            on_exit = held.enter_context(serving(metrics_port, host, folder=Path(folder)))
        # held while they run: a taken port fails here, in one line, not in N restarting children
        http_port = held.enter_context(claim(host, http_port, "--http-port")).getsockname()[1]
        if grpc_port >= 0:
            grpc_port = held.enter_context(claim(host, grpc_port, "--grpc-port")).getsockname()[1]
        argv = [sys.executable, "-P", "-m", "conveyor.cli", "gateway", "--prefix", prefix]
        argv += ["--host", host, "--http-port", str(http_port), "--grpc-port", str(grpc_port)]
        argv += ["--timeout", str(timeout), "--log-level", log_level, "--log-format", log_format]
        argv += options
        # the Redis URL goes in the environment, never on a command line (ps shows it)
        return run_processes(argv, processes, env, on_exit=on_exit)


@app.command("inspect")
def inspect_(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes (--watch).")
    ] = 2.0,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON (with --watch: one line per refresh).")
    ] = False,
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
) -> None:
    """Show each model's job streams (backlog, lag, pending, dead letters), its calls/s,
    p50/p99 job time and errors over the last minute, and the workers."""
    from conveyor.cli.fleet_report import inspect_fleet

    inspect_fleet(watch, interval, json_output, redis, prefix)


@app.command()
def dashboard(
    redis: RedisOption = None,
    prefix: PrefixOption = DEFAULT_PREFIX,
    host: HostOption = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, help="HTTP port (0: a free one).")] = 8088,
    token: DashboardTokenOption = None,
    trusted_origin: TrustedOriginOption = None,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
) -> None:
    """Serve a live web page of the fleet: models, workers, dead letters; with --token, retry
    and delete dead letters, load and unload models."""
    setup_logging(log_level, log_format)
    from conveyor.broker import default_redis_url
    from conveyor.dashboard import DashboardSettings
    from conveyor.dashboard.server import serve

    settings = DashboardSettings(
        redis_url=redis or default_redis_url(),
        prefix=prefix,
        host=host,
        port=port,
        token=token,
        trusted_origins=tuple(trusted_origin or ()),
    )
    try:
        serve(settings)
    except (ValueError, OSError) as error:
        raise _fail(error) from None


app.add_typer(dlq_app, name="dlq")


def main() -> None:
    """The ``conveyor`` command. The top-level handler: any Conveyor error a command raises
    ends it in one line (``error: ...`` on stderr), exit code 1, never a traceback."""
    try:
        app()
    except ConveyorError as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(1) from None
