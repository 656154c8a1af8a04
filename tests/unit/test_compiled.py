"""conveyor.compiled: which modules a build compiled (setup.py, CONVEYOR_COMPILE=1).

.ci/compiled runs part of the suite against a compiled build with CONVEYOR_EXPECT_COMPILED=1:
there the hot path must be the C extensions, not their sources beside them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os

import pytest

from conveyor.compiled import compiled_modules, describe_build

_EXTENSION = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def test_each_listed_module_imports_as_its_extension() -> None:
    for name in compiled_modules():
        module = importlib.import_module(name)
        assert (module.__file__ or "").endswith(_EXTENSION), (name, module.__file__)
    assert ("compiled" in describe_build()) == bool(compiled_modules())


def test_a_module_not_listed_runs_from_its_source() -> None:
    import conveyor.client.client as client  # an async generator: never compiled

    assert "conveyor.client.client" not in compiled_modules()
    assert (client.__file__ or "").endswith(".py")


@pytest.mark.skipif(
    os.environ.get("CONVEYOR_EXPECT_COMPILED") != "1", reason="a pure-Python install"
)
def test_a_compiled_build_runs_the_hot_path_compiled() -> None:
    hot = {"conveyor.worker.runner", "conveyor.broker.wire.layout", "conveyor.broker.replies"}
    assert hot <= set(compiled_modules()), compiled_modules()


def test_errors_raised_from_others_keep_their_cause() -> None:
    """A compiled `raise ... from` sets no cause (see caused_by): a decoder's WireError must
    still say what it came from, compiled or not."""
    from conveyor.broker.wire import decode_message
    from conveyor.errors import WireError

    fields = {b"type": b"result", b"id": b"\xff", b"attempt": b"1", b"seq": b"0"}
    with pytest.raises(WireError, match="not UTF-8") as raised:
        decode_message(fields)
    assert isinstance(raised.value.__cause__, UnicodeDecodeError)
    assert raised.value.__suppress_context__
