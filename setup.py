"""The package's build: pyproject.toml describes it; this file only adds the optional compiled
modules. With ``CONVEYOR_COMPILE=1`` in the environment of ``pip install .`` (or ``pip wheel``),
mypyc compiles the modules a job and a call run through (below) into C extensions, beside
their sources: the worker spends about a quarter less CPU a job (bench/README.md, "Compiled
with mypyc"). Without it, or with ``pip install -e``, the package is pure Python, as before.

A compiled build needs a C compiler and Python's headers; mypy (which holds mypyc) is added to
the build's own requirements. ``conveyor --version`` says how many modules are compiled.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

from setuptools import setup

# The hot path's modules (repository paths). Left out: modules with async generators (mypyc
# cannot compile them: client/client.py, worker/execution.py, worker/model_calls.py), classes
# built on redis-py's (broker/fastpath.py, broker/fastpipe.py), and classes the tests patch
# (client/waiter.py, broker/client_streams.py): a compiled class cannot be patched.
COMPILED = (
    "core/laid_requests.py",
    "core/batch_rows.py",
    "core/batching.py",
    "broker/wire/layout.py",
    "broker/wire/layout_inputs.py",
    "broker/wire/jobs.py",
    "broker/wire/payloads.py",
    "broker/wire/envelope.py",
    "broker/wire/messages.py",
    "broker/wire/arrays.py",
    "broker/wire/doorbell.py",
    "broker/wire/rows.py",
    "broker/wire/readable.py",
    "broker/keys.py",
    "broker/entries.py",
    "broker/claims.py",
    "broker/replies.py",
    "broker/writes.py",
    "broker/pipelining.py",
    "broker/worker_streams.py",
    "broker/worker_broker.py",
    "broker/waiting_jobs.py",
    "broker/client_broker.py",
    "worker/runner.py",
    "worker/answers.py",
    "worker/admission.py",
    "worker/cancellation.py",
    "worker/slots.py",
    "worker/metrics.py",
    "worker/histograms.py",
    "worker/consumer.py",
    "worker/clock.py",
    "worker/registry.py",
    "worker/batch_jobs.py",
    "worker/batcher.py",
    "worker/call_limit.py",
    "worker/inline_calls.py",
    "client/reader.py",
    "client/sender.py",
    "client/results.py",
    "client/backoff.py",
    "client/metrics.py",
)
_STAGE = Path("build/mypyc-src")
# mypy's settings for the compile: only the package's own types count, whatever is installed
# where it builds (numpy's, pydantic's or redis-py's values are Any: compiled code checks them
# least, and the build is the same everywhere).
_MYPY_CONFIG = "[mypy]\nno_site_packages = True\nignore_missing_imports = True\n"


def _compiling() -> bool:
    return os.environ.get("CONVEYOR_COMPILE", "").strip().lower() in {"1", "true", "yes"}


def _staged() -> list[str]:
    """The sources copied under build/mypyc-src as their package's folders: mypyc names a module
    by its path, so that broker/keys.py compiles as conveyor.broker.keys."""
    # repository folder -> package folder, from pyproject.toml's package-dir
    setuptools_table = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        folder: package.replace(".", "/")
        for package, folder in setuptools_table["package-dir"].items()
    }
    shutil.rmtree(_STAGE, ignore_errors=True)
    for folder, package in folders.items():
        shutil.copytree(folder, _STAGE / package, ignore=shutil.ignore_patterns("__pycache__"))
    (_STAGE / "mypy.ini").write_text(_MYPY_CONFIG)
    staged = []
    for path in COMPILED:
        if not Path(path).is_file():
            raise SystemExit(f"setup.py: {path} is listed in COMPILED but does not exist")
        top, rest = path.split("/", 1)
        staged.append(str(_STAGE / folders[top] / rest))
    return staged


def _extensions() -> list[object]:
    if not _compiling():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # the build's requirements are being asked for (setup_requires below)
        return []
    sources = _staged()
    config = ["--config-file", str(_STAGE / "mypy.ini")]
    return list(mypycify([*config, *sources], opt_level="3", group_name="conveyor"))


setup(
    ext_modules=_extensions(),
    # only for a compiled build: PEP 517 front ends install it before building
    setup_requires=["mypy>=1.11"] if _compiling() else [],
)
