"""Every ``conveyor`` command builds and shows its help, in process.

typer builds the click commands from the functions' annotations only when the app runs: a typer
too old for an annotation (before 0.19, ``Literal[...]`` options) broke every command at once,
"Type not yet supported", while imports still worked. The end-to-end tests run the commands as
subprocesses; this one is the quick check CI's lowest-versions install runs.
"""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from conveyor.cli.app import app


def _command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's path under ``group`` (typer's group: its own click, or a vendored one)."""
    paths: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if hasattr(command, "commands"):
            paths += _command_paths(command, (*prefix, name))
    return paths


def test_every_command_builds_and_shows_its_help() -> None:
    paths = _command_paths(typer.main.get_command(app))
    for expected in (("up",), ("worker",), ("infer",), ("dlq",), ("dlq", "list")):
        assert expected in paths, paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output, result.exception)
        assert "Usage:" in result.output, (path, result.output)
