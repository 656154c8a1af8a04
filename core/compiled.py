"""Which of the package's modules run compiled: a ``CONVEYOR_COMPILE=1`` build (setup.py)
puts mypyc's C extensions beside their sources, and Python imports an extension first."""

from __future__ import annotations

import importlib.machinery
from functools import cache
from pathlib import Path
from typing import TypeVar

__all__ = ("caused_by", "compiled_modules", "describe_build")

_Error = TypeVar("_Error", bound=BaseException)


@cache
def compiled_modules() -> tuple[str, ...]:
    """The dotted names of the package's modules installed as C extensions, sorted; empty for
    a pure-Python install (``pip install -e``, or a build without ``CONVEYOR_COMPILE=1``)."""
    root = Path(__file__).parent
    # the longest first: "x.cpython-311-x86_64-linux-gnu.so" also ends in ".so"
    suffixes = sorted(importlib.machinery.EXTENSION_SUFFIXES, key=len, reverse=True)
    found: set[str] = set()
    for path in root.rglob("*.*"):
        suffix = next((end for end in suffixes if path.name.endswith(end)), None)
        if suffix is not None:
            parts = path.relative_to(root).with_name(path.name[: -len(suffix)]).parts
            found.add(".".join(("conveyor", *parts)))
    return tuple(sorted(found))


def describe_build() -> str:
    """How this install runs, in a few words (``conveyor --version``, ``worker.started``)."""
    count = len(compiled_modules())
    return f"compiled ({count} modules, mypyc)" if count else "pure Python"


def caused_by(error: _Error, cause: BaseException | None) -> _Error:
    """``error`` with ``cause`` as its ``__cause__`` (and its context suppressed), as ``raise
    error from cause`` makes it: a compiled module's ``raise ... from`` leaves both unset (mypyc
    2.4), so the modules setup.py compiles raise ``caused_by(error, cause) from cause``."""
    error.__cause__ = cause
    return error
