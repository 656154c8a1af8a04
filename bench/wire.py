"""How much a tensor costs on the wire, against copying it once and against msgpack of a list.

Run from the repository root::

    python -m bench.wire [--repeat N] [--threshold]

For float32 tensors of 1 KiB, 1 MiB and 100 MiB: the time to ``encode_job`` a predict job that
holds an ``InferenceRequest`` with the tensor, plus the time to ``decode_job`` the fields as Redis
returns them (bytes values; building that dict, i.e. Redis's own copy, is not timed), against
``np.copy`` of the same array in the same run; and msgpack of ``arr.tolist()`` (pack, then unpack
and ``np.asarray``). Each figure is the best of ``--repeat`` runs. msgpack of a list at 100 MiB
needs ~1 GB of Python floats, so it is measured on a 1/16 slice and scaled by 16 (marked ``*``).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from importlib.metadata import version

import msgpack
import numpy as np

from conveyor.broker import wire
from conveyor.broker.wire import FieldValue, Job, decode_job, encode_job
from conveyor.types import InferenceRequest, RequestInput

_SIZES = (("1 KiB", 1 << 10), ("1 MiB", 1 << 20), ("100 MiB", 100 << 20))
_TOLIST_MAX_BYTES = 8 << 20  # above this, msgpack of a list is timed on a slice and scaled


def _best(run: Callable[[], object], repeat: int, budget_s: float = 2.0) -> float:
    """Seconds of the fastest of ``repeat`` batches; a batch repeats ``run`` for ~1 ms."""
    start = time.perf_counter()
    run()
    once = time.perf_counter() - start
    number = max(1, int(1e-3 / max(once, 1e-9)))
    best = once
    deadline = time.perf_counter() + budget_s
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            run()
        best = min(best, (time.perf_counter() - start) / number)
        if time.perf_counter() > deadline:
            break
    return best


def _job(arr: np.ndarray) -> Job:
    request = InferenceRequest(
        inputs=[RequestInput(name="x", shape=list(arr.shape), datatype="FP32", data=arr)]
    )
    now = time.time()
    return Job(
        id="bench",
        method="predict",
        model="bench",
        version=None,
        reply="bench:reply",
        bell="bench:bell",
        deadline=now + 60,
        sent_at=now,
        args=(request,),
    )


def _as_redis(fields: Mapping[str, object]) -> dict[bytes, bytes]:
    """What XRANGE returns for the entry: bytes keys and values (this copy is Redis's)."""
    out: dict[bytes, bytes] = {}
    for key, value in fields.items():
        if isinstance(value, str):
            out[key.encode()] = value.encode()
        elif isinstance(value, bytes | memoryview):
            out[key.encode()] = bytes(value)
        else:
            out[key.encode()] = repr(value).encode()
    return out


def _tolist_roundtrip(arr: np.ndarray) -> Callable[[], object]:
    def run() -> object:
        packed = msgpack.packb(arr.tolist())
        return np.asarray(msgpack.unpackb(packed), dtype=arr.dtype)

    return run


def _machine() -> list[str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"date:    {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
        f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
        f"{platform.system()} {platform.machine()}",
        f"python:  {sys.version.split()[0]}; numpy {np.__version__}; msgpack {version('msgpack')}; "
        f"pydantic {version('pydantic')}; redis-py {version('redis')}",
    ]


def _threshold(repeat: int) -> None:
    """Inline in the envelope vs a field of its own, for tensors around the threshold.

    Each figure: ``encode_job`` + redis-py's packing of the XADD (``redis.asyncio``'s Python
    packer, no socket) + ``decode_job``, for a one-tensor request.
    """
    from redis.asyncio.connection import Connection

    connection = Connection()

    def roundtrip(job: Job, raw: dict[bytes, bytes]) -> None:
        fields = encode_job(job)
        args: list[FieldValue] = ["XADD", "key", "*"]
        for name, value in fields.items():
            args += [name, value]
        connection.pack_command(*args)
        decode_job(raw)  # what Redis returned, built once: its copy is the same either way

    def batch(job: Job, raw: dict[bytes, bytes], inline_max: int) -> float:
        wire.INLINE_MAX_BYTES = inline_max
        start = time.perf_counter()
        for _ in range(200):
            roundtrip(job, raw)
        return (time.perf_counter() - start) / 200

    saved = wire.INLINE_MAX_BYTES
    rows = []
    try:
        for kib in (1, 2, 4, 8, 16, 32):
            job = _job(np.ones(kib * 256, dtype=np.float32))
            configs = []
            for inline_max in (1 << 40, 1):
                wire.INLINE_MAX_BYTES = inline_max
                configs.append((_as_redis(encode_job(job)), inline_max))
            # Interleaved, best of `repeat` batches each: the machine is shared.
            best = [math.inf, math.inf]
            for _ in range(repeat):
                for i, (raw, inline_max) in enumerate(configs):
                    best[i] = min(best[i], batch(job, raw, inline_max))
            rows.append(
                (f"{kib} KiB", _fmt(best[0]), _fmt(best[1]), f"{(best[1] - best[0]) * 1e6:+.1f} us")
            )
    finally:
        wire.INLINE_MAX_BYTES = saved
    for line in _machine():
        print(line)
    print()
    _print_table(("tensor", "inline", "own field", "own field - inline"), rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wire", description=__doc__)
    parser.add_argument("--repeat", type=int, default=15, help="runs per figure (best is kept)")
    parser.add_argument(
        "--threshold",
        action="store_true",
        help="instead: compare inline vs own-field tensors of 1-32 KiB (INLINE_MAX_BYTES)",
    )
    args = parser.parse_args(argv)
    if args.threshold:
        _threshold(args.repeat)
        return
    rng = np.random.default_rng(0)
    rows: list[tuple[str, ...]] = []
    for label, nbytes in _SIZES:
        arr = rng.standard_normal(nbytes // 4, dtype=np.float32)
        job = _job(arr)
        raw = _as_redis(encode_job(job))
        copy_s = _best(partial(np.copy, arr), args.repeat)
        encode_s = _best(partial(encode_job, job), args.repeat)
        decode_s = _best(partial(decode_job, raw), args.repeat)
        wire_s = encode_s + decode_s
        scale, mark = 1, ""
        sample = arr
        if nbytes > _TOLIST_MAX_BYTES:
            scale, mark = 16, "*"
            sample = arr[: arr.size // 16]
        tolist_s = _best(_tolist_roundtrip(sample), max(1, args.repeat // 3)) * scale
        rows.append(
            (
                label,
                _fmt(copy_s),
                _fmt(encode_s),
                _fmt(decode_s),
                _ratio(wire_s / copy_s),
                _fmt(tolist_s) + mark,
                _ratio(tolist_s / wire_s),
            )
        )
        del arr, job, raw, sample
    header = (
        "tensor",
        "np.copy",
        "encode",
        "decode",
        "(enc+dec)/copy",
        "msgpack tolist",
        "tolist/(enc+dec)",
    )
    for line in _machine():
        print(line)
    print()
    _print_table(header, rows)
    print()
    print("* msgpack of tolist at 100 MiB: measured on a 1/16 slice (6.25 MiB), times 16")
    print("goals: (enc+dec)/copy <= 2x at 1 MiB and above; tolist/(enc+dec) >= 20x")


def _ratio(value: float) -> str:
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2g}x"


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _print_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")


if __name__ == "__main__":
    main()
