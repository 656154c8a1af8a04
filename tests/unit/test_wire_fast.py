"""The decoders' fast path for the common job gives what the general path gives, on valid
entries and on every mutation of one field: the same job, or no answer (the general path then
decodes it or refuses it with its reason)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import msgpack
import numpy as np

from conveyor.broker.wire import Job, decode_job, encode_job, jobs
from conveyor.errors import WireError
from conveyor.types import InferenceRequest, Parameters, RequestInput
from tests.unit.test_wire import assert_same


def _raw(job: Job) -> dict[bytes, bytes]:
    return {
        key.encode(): value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        for key, value in encode_job(job).items()
    }


def _job(*args: Any, **kwargs: Any) -> Job:
    now = time.time()
    return Job(
        "req-1",
        "predict",
        "model",
        None,
        "p:reply:{c}:req-1",
        "p:bell:{c}",
        now + 30,
        now,
        args=args,
        kwargs=kwargs,
        inline_reply=True,
    )


def _entries() -> list[dict[bytes, bytes]]:
    small = np.arange(25, dtype="<f4").reshape(25, 1)
    request = InferenceRequest(
        id="r",
        inputs=[RequestInput(name="x", shape=[25, 1], datatype="FP32", data=small)],
        parameters=Parameters(content_type="np", extra=1),
    )
    big = np.arange(4096, dtype=">i8")
    return [
        _raw(_job(request)),
        _raw(_job(request, big, flag=True, text="t")),
        _raw(_job()),
        _raw(_job(None, [1, 2.5, "x", b"y", {"k": [small]}])),
        _raw(_job(np.float32(1.5), np.array(["a", "bc"], dtype=object))),
    ]


_TEXTS = [
    None,  # the field is removed
    b"",
    "str",
    12,
    b"\xff\xfe",
    b"x",
    bytearray(b"x"),
    memoryview(b"x"),
]
_NUMBERS = [
    b"nan",
    b"inf",
    b"-inf",
    b" 1.5 ",
    b"1_0",
    "١٢".encode(),
    b"-1",
    b"0",
    b"00001",
    b"1e3",
    b"1" * 18,
    b"1" * 19,
    b"1.0",
    b"+1",
    b"0x10",
    b"1\x00",
]


def _envelopes(original: bytes) -> list[Any]:
    envelope = msgpack.unpackb(original, raw=False, strict_map_key=False)
    packs = [
        {**envelope, "args": "x"},
        {**envelope, "kwargs": []},
        {**envelope, "kwargs": {1: ["plain", 1]}},
        {**envelope, "args": [["plain"]]},
        {**envelope, "args": [["Nope", {}]]},
        {**envelope, "args": [["InferenceRequest", {"inputs": 1}]]},
        {**envelope, "inline": 1},
        {**envelope, "v": 2},
        {**envelope, "v": True},
        {k: v for k, v in envelope.items() if k != "args"},
    ]
    out: list[Any] = [msgpack.packb(p, use_bin_type=True) for p in packs]
    return [*out, None, b"", b"\xc1", "text", original[:-1]]


def _cases() -> list[dict[Any, Any]]:
    cases: list[dict[Any, Any]] = []
    for raw in _entries():
        cases.append(raw)
        for name, value in itertools.chain(
            ((name, value) for name in jobs._JOB_TEXT for value in _TEXTS),
            ((name, value) for name in (b"deadline", b"sent_at", b"attempt") for value in _NUMBERS),
            ((name, value) for name in (b"deadline", b"sent_at", b"attempt") for value in _TEXTS),
            ((b"envelope", value) for value in _envelopes(raw[b"envelope"])),
            (
                (name, value)
                for name in (b"inputs", b"credit", b"window", b"t0", b"t5", b"other")
                for value in (b"x", b"", b"3", None)
            ),
        ):
            mutated: dict[Any, Any] = dict(raw)
            if value is None:
                mutated.pop(name, None)
            else:
                mutated[name] = value
            cases.append(mutated)
    return cases


def _fields(job: Job) -> dict[str, Any]:
    """A job's fields (a Job's == would compare arrays ambiguously)."""
    return job._asdict()


def _general(raw: dict[Any, Any]) -> Job | str:
    try:
        return jobs._decode_any_job(raw)
    except WireError as error:
        return f"WireError: {error.reason}"
    except Exception as error:  # decode_job turns these into a WireError
        return f"{type(error).__name__}"


def test_fast_path_agrees_with_the_general_path() -> None:
    taken = 0
    cases = _cases()
    for case, raw in enumerate(cases):
        taken += _check(raw, case)
    assert 0 < taken < len(cases) / 2  # it took some, and left the odd ones to the other path


def _check(raw: dict[Any, Any], case: int) -> bool:
    """Whether the fast path took the entry; fails if it disagrees with the general path."""
    want = _general(raw)
    fast: Job | str | None
    try:
        fast = jobs._decode_common_job(raw)
    except WireError as error:  # raised by the envelope or a payload: the general path's too
        fast = f"WireError: {error.reason}"
    if isinstance(fast, str):
        assert fast == want, case
    elif fast is not None:
        assert isinstance(want, Job), (case, want)
        assert_same(_fields(fast), _fields(want), f"case {case}")
    try:
        got: Job | str = decode_job(raw)
    except WireError as error:
        got = f"WireError: {error.reason}"
    if isinstance(want, Job):
        assert isinstance(got, Job), case
        assert_same(_fields(got), _fields(want), f"case {case}")
    elif want.startswith("WireError"):
        assert got == want, case
    else:
        assert isinstance(got, str), case
        assert got.startswith("WireError: malformed job entry"), case
    return isinstance(fast, Job)


def test_the_fast_path_takes_the_common_jobs() -> None:
    for raw in _entries():
        assert jobs._decode_common_job(raw) is not None
