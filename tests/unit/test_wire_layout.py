"""A read's jobs decoded together (``wire.layout.JobDecoder``) are what ``decode_job`` gives
each alone: the same jobs and requests, or the same refusal, on the common read, on every
mutation of one byte of an entry's envelope, and on reads that mix layouts and bad entries."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
import pydantic
import pytest

from conveyor.broker.wire import Job, decode_job, encode_job
from conveyor.broker.wire.layout import JobDecoder
from conveyor.errors import WireError
from conveyor.laid_requests import LaidRequest
from conveyor.types import InferenceRequest, Parameters, RequestInput


def _state(model: pydantic.BaseModel) -> object:
    """Everything pydantic keeps of a model, nested models included, arrays by value."""

    def value(item: object) -> object:
        if isinstance(item, pydantic.BaseModel):
            return _state(item)
        if isinstance(item, list):
            return [value(x) for x in item]
        if isinstance(item, np.ndarray):
            return ("array", item.dtype.str, item.shape, item.tobytes())
        return (type(item), item)

    return (
        type(model),
        {name: value(item) for name, item in model.__dict__.items()},
        sorted(model.__pydantic_fields_set__),
        model.__pydantic_extra__,
        model.__pydantic_private__,
    )


def _request(value: float, **parameters: Any) -> InferenceRequest:
    return InferenceRequest(
        inputs=[
            RequestInput(
                name="x",
                shape=[1, 25],
                datatype="FP32",
                data=np.full((1, 25), value, dtype=np.float32),
                parameters=Parameters(content_type="np", **parameters),
            ),
            RequestInput(name="n", shape=[3], datatype="INT64", data=np.arange(3) + int(value)),
        ]
    )


def _entry(index: int, request: Any = None, **job: Any) -> dict[bytes, bytes]:
    now = time.time()
    fields = encode_job(
        Job(
            f"req-{index}",
            job.pop("method", "predict"),
            "m",
            None,
            f"p:reply:{{c}}:req-{index}",
            "p:bell:{c}",
            now + 30,
            now,
            args=(_request(float(index)) if request is None else request,),
            inline_reply=True,
            **job,
        )
    )
    return {
        key.encode(): value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        for key, value in fields.items()
    }


def _outcome(decode: Any, fields: Any) -> object:
    try:
        job = decode(fields)
    except WireError as error:
        return f"WireError: {error}"
    request = job.args[0] if job.args else None
    arrays = []
    if isinstance(request, InferenceRequest):
        arrays = [
            (part.data.root.flags.writeable, part.data.root.flags.c_contiguous)
            for part in request.inputs
            if isinstance(part.data.root, np.ndarray)
        ]
    return (
        [getattr(job, name) for name in Job._fields if name != "args"],
        [_state(arg) if isinstance(arg, InferenceRequest) else arg for arg in job.args],
        arrays,
    )


def _same_read(entries: list[Any]) -> None:
    decoder = JobDecoder()
    for fields in entries:
        assert _outcome(decoder.decode, fields) == _outcome(decode_job, fields)


def test_a_read_s_jobs_are_those_decoded_alone() -> None:
    entries = [_entry(i) for i in range(8)]
    _same_read(entries)
    decoder = JobDecoder()
    jobs = [decoder.decode(fields) for fields in entries]
    assert decoder._layout is not None  # the later ones came from the layout
    requests = [job.args[0] for job in jobs]
    values = [r.inputs[0].data.root[0, 0] for r in requests if isinstance(r, InferenceRequest)]
    assert values == [float(i) for i in range(8)]
    assert decoder.laid_out  # the last one was built from the layout


def test_each_request_is_its_own() -> None:
    decoder = JobDecoder()
    first, second, third = (decoder.decode(_entry(i)) for i in range(3))
    one, two, three = (job.args[0] for job in (first, second, third))
    assert isinstance(one, InferenceRequest)
    assert isinstance(two, InferenceRequest)
    assert isinstance(three, InferenceRequest)
    one.id = "changed after the layout was taken"
    two.id = "r-2"
    two.inputs[0].shape.append(1)
    assert two.inputs[0].parameters is not None
    two.inputs[0].parameters.content_type = "other"
    assert three.id is None
    assert three.inputs[0].shape == [1, 25]
    assert three.inputs[0].parameters == Parameters(content_type="np")
    assert three.inputs[0].data.root is not two.inputs[0].data.root


@pytest.mark.parametrize("ids", [(None, None), ("r-1", "r-22")])  # ids: a layout's own part
@pytest.mark.parametrize("kind", ["flip", "truncate", "extend"])
def test_every_byte_of_an_envelope_decodes_as_alone(
    kind: str, ids: tuple[str | None, str | None]
) -> None:
    first, second = (
        _entry(i, request=None if request_id is None else _with_id(float(i), request_id))
        for i, request_id in zip((1, 2), ids, strict=True)
    )
    every_mutation_decodes_as_alone(first, second, kind)


def every_mutation_decodes_as_alone(
    first: dict[bytes, bytes], second: dict[bytes, bytes], kind: str
) -> None:
    """Each byte of ``second``'s envelope changed by ``kind`` (flipped, the envelope cut short
    there, or a byte put in there), read after ``first`` (the layout): decoded as alone."""
    envelope = second[b"envelope"]
    for at in range(len(envelope)):
        if kind == "flip":
            mutated = envelope[:at] + bytes([envelope[at] ^ 0x41]) + envelope[at + 1 :]
        elif kind == "truncate":
            mutated = envelope[:at]
        else:
            mutated = envelope[:at] + b"\x00" + envelope[at:]
        _same_read([first, {**second, b"envelope": mutated}])


def test_reads_that_mix_layouts_and_bad_entries() -> None:
    bad = _entry(3)
    del bad[b"envelope"]
    entries = [
        _entry(0, method="metadata"),
        {b"id": b"x"},
        _entry(1),
        bad,
        _entry(2, request=_request(2.0, extra=1)),  # another layout
        _entry(4),
        _entry(5, request=_request(5.0, extra=1)),
        _entry(6, request=[1, 2]),
        {**_entry(7), b"attempt": b"0"},
        {**_entry(8), b"inputs": b"p:in:{c}:8"},
        {**_entry(9), b"t0": b"ignored"},
        _entry(10),
    ]
    _same_read(entries)


def test_odd_first_entries_give_no_layout() -> None:
    same = np.zeros((1, 4), dtype=np.float32)
    twice = InferenceRequest(
        inputs=[
            RequestInput(name="a", shape=[1, 4], datatype="FP32", data=same),
            RequestInput(name="b", shape=[1, 4], datatype="FP32", data=same),
        ]
    )
    listed = InferenceRequest(
        inputs=[RequestInput(name="a", shape=[2], datatype="FP32", data=[1, 2])]
    )
    big = InferenceRequest(
        inputs=[RequestInput(name="a", shape=[4096], datatype="FP32", data=np.zeros(4096, "f4"))]
    )
    for request in (twice, listed, big):
        decoder = JobDecoder()
        _same_read([_entry(0, request=request), _entry(1, request=request)])
        decoder.decode(_entry(0, request=request))
        assert decoder._layout is None


def _with_id(value: float, request_id: str) -> InferenceRequest:
    request = _request(value)
    request.id = request_id
    return request


# Ids of every msgpack str header (fixstr, str 8, str 16) and of non-ASCII text.
_IDS = ["r-1", "r-22", "", "x" * 31, "y" * 32, "z" * 300, "é-ß-✓", "r-4444"]


def test_requests_with_ids_of_any_length_are_those_decoded_alone_and_laid_out() -> None:
    entries = [
        _entry(i, request=_with_id(float(i), request_id)) for i, request_id in enumerate(_IDS)
    ]
    _same_read(entries)
    decoder = JobDecoder()
    ids, laid = [], []
    for fields in entries:
        request = decoder.decode(fields).args[0]
        assert isinstance(request, InferenceRequest)
        ids.append(request.id)
        laid.append(decoder.laid_out)
    assert ids == _IDS
    assert laid == [False] + [True] * (len(_IDS) - 1)  # the later ones: the first one's layout


def test_a_lazy_read_keeps_each_request_s_own_id_and_data() -> None:
    entries = [
        _entry(i, request=_with_id(float(i), request_id)) for i, request_id in enumerate(_IDS)
    ]
    decoder = JobDecoder(lazy=True)
    for fields, request_id in zip(entries, _IDS, strict=True):
        laid = decoder.decode(fields).args[0]
        assert isinstance(laid, LaidRequest)
        alone = decode_job(fields).args[0]
        assert isinstance(alone, InferenceRequest)
        assert laid.id == request_id
        assert bytes(laid.data(0)) == alone.inputs[0].data.root.tobytes()
        assert bytes(laid.data(1)) == alone.inputs[1].data.root.tobytes()
        assert _state(laid.build()) == _state(alone)


def test_a_request_without_an_id_and_one_with_have_two_layouts() -> None:
    _same_read([_entry(0), _entry(1, request=_with_id(1.0, "r-1")), _entry(2)])
    _same_read(
        [
            _entry(0, request=_with_id(0.0, "r-0")),
            _entry(1),
            _entry(2, request=_with_id(2.0, "r-22")),
        ]
    )


def _args_last(fields: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """The entry with its envelope's keys in another order, its arrays last: as another
    client's msgpack may write them."""
    envelope = msgpack.unpackb(
        fields[b"envelope"], raw=False, ext_hook=lambda code, data: msgpack.ExtType(code, data)
    )
    reordered = {key: envelope[key] for key in sorted(envelope, key=lambda key: key == "args")}
    return {**fields, b"envelope": msgpack.packb(reordered, use_bin_type=True)}


def test_an_envelope_ending_in_an_array_cut_short_decodes_as_alone() -> None:
    array_last = InferenceRequest(
        inputs=[RequestInput(name="x", shape=[4], datatype="FP32", data=np.ones(4, "f4"))]
    )
    first, second = (_args_last(_entry(i, request=array_last)) for i in range(2))
    envelope = second[b"envelope"]
    assert envelope.endswith(np.ones(4, "f4").tobytes())  # the array's bytes end it
    decoder = JobDecoder()
    decoder.decode(first)
    assert decoder._layout is not None
    for at in range(len(envelope) - 16, len(envelope) + 1):
        _same_read([first, {**second, b"envelope": envelope[:at]}])
