"""Regenerates the Python modules of ``inference.proto`` beside it (a developer's tool: it
needs the dev extra's ``grpcio-tools`` and ``mypy-protobuf``, pinned there, since their
versions show in the output)::

    python -m conveyor.gateway.grpc._codegen

Four files: ``inference_pb2.py`` (the messages), ``inference_pb2_grpc.py`` (stub, servicer
base, registration) and their ``.pyi`` stubs for mypy. One edit to protoc's output: the
messages are built in a descriptor pool of their own, not protobuf's default pool, because
tritonclient's generated code defines the same proto package (``inference``) there, and both
in one default pool fail to import (duplicate symbols). Message names are not on the wire,
so either side's messages parse the other's bytes. That holds with protobuf's default (upb)
backend; the pure-Python one (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``) also
registers generated classes in the default pool, so there the two still collide.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ("GENERATED", "PROTO", "generate", "main")

HERE = Path(__file__).parent
PROTO = HERE / "inference.proto"
GENERATED = (
    "inference_pb2.py",
    "inference_pb2.pyi",
    "inference_pb2_grpc.py",
    "inference_pb2_grpc.pyi",
)
# where the proto sits under protoc's include root: makes the imports in the generated code
# `from conveyor.gateway.grpc import inference_pb2`, and names the file in the pool
_PACKAGE_PATH = Path("conveyor", "gateway", "grpc")

_DEFAULT_POOL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = (
    "# conveyor: a descriptor pool of this module's own, not the default one, where\n"
    "# tritonclient's generated code defines the same proto package (see _codegen.py)\n"
    "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("
)


def _plugin(name: str) -> str:
    """The protoc plugin's executable: beside this interpreter (a venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate(proto: Path = PROTO) -> dict[str, str]:
    """The generated files' names and texts, from ``proto``; writes nothing here."""
    from grpc_tools import protoc  # the dev extra's; never imported when serving

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / _PACKAGE_PATH).mkdir(parents=True)
        shutil.copyfile(proto, root / _PACKAGE_PATH / "inference.proto")
        out = root / "out"
        out.mkdir()
        argv = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            str(root / _PACKAGE_PATH / "inference.proto"),
        ]
        if protoc.main(argv) != 0:
            raise RuntimeError(f"protoc failed on {proto} (its messages are above)")
        texts = {name: (out / _PACKAGE_PATH / name).read_text() for name in GENERATED}
    messages = texts["inference_pb2.py"]
    if messages.count(_DEFAULT_POOL) != 1:
        raise RuntimeError("protoc's output changed: no single default-pool line to replace")
    texts["inference_pb2.py"] = messages.replace(_DEFAULT_POOL, _PRIVATE_POOL)
    return texts


def main() -> None:
    for name, text in generate().items():
        (HERE / name).write_text(text)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
