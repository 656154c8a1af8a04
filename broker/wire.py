"""The wire format: jobs and messages as Redis stream entries.

Every job, result, stream chunk, end marker, error and ``predict_stream`` input is ONE stream
entry with three kinds of fields, in this order:

1. Plain-text fields a person can read with ``redis-cli XRANGE`` (numbers as decimal text; times
   are unix seconds written with ``repr(float)``, which round-trips exactly):

   - a job: ``id method model version reply bell deadline sent_at attempt``, ``inputs`` when
     set, and ``credit window`` for a flow-controlled ``predict_stream`` (``version`` is ``""``
     when ``None``);
   - a message: ``type id attempt seq``, ``entry`` when a worker wrote it for a job entry (the
     entry's stream id: with ``attempt``, the delivery it belongs to; absent from older
     workers' messages, which then fence by ``attempt`` alone) and, for ``type=error``,
     ``code error_type error`` (a readable copy of the envelope's ``error``, which is what
     decoding uses; both must be there).

2. ``envelope``: one msgpack map. ``v`` (the format version, :data:`WIRE_VERSION`) always comes
   first and every later format keeps it there; new keys get defaults, and unknown keys are ignored.

   - a job: ``{"v": 1, "args": [payload, ...], "kwargs": {name: payload}}``, plus
     ``"inline": true`` when the client takes a small final answer in its doorbell (see
     :attr:`Job.inline_reply`)
   - a message: ``{"v": 1, "payload": payload, "error": None | {"code", "type", "message"}}``

   A payload is ``[tag, body]``: tag ``"plain"`` with any msgpack value as body, or
   ``"InferenceRequest"`` / ``"InferenceResponse"`` / ``"MetadataModelResponse"`` with the
   model's set, non-``None`` fields as a map (``model_dump(exclude_unset, exclude_none)``; extra
   fields of ``Parameters`` are kept as they are). Tensor data that is a list stays a list.

   A numpy array anywhere in a body (tensor data, a plain value, parameters) is msgpack ext type
   1 (ext type 2 for a numpy scalar, which decodes back to one) whose data is the msgpack array
   ``[dtype, shape, data]``:
   ``dtype`` is numpy's dtype string with byte order (``"<f4"``, ``">i8"``, ``"|b1"``), ``shape`` a
   list of ints, and ``data`` one of:

   - an int ``i``: the C-order bytes are the entry's field ``t<i>`` (arrays of
     :data:`INLINE_MAX_BYTES` bytes or more);
   - bin: the C-order bytes themselves (smaller arrays);
   - an array of str/bin, flattened in C order: BYTES tensors (dtype ``"|O"``, ``"|S<n>"``,
     ``"<U<n>"``).

3. ``t0``, ``t1``, ...: the raw bytes of each large tensor, sent as a ``memoryview`` of the
   C-contiguous array (a non-contiguous array is copied once, the one copy allowed on this side)
   and decoded with ``np.frombuffer(...).reshape(shape)``: a read-only view over the bytes Redis
   returned, never copied. A view keeps the whole field's bytes alive; an encoded entry keeps
   its arrays alive, so do not change them before the XADD is sent.

Nothing read from Redis is unpickled, evaluated or imported: msgpack runs with ``raw=False`` and
``strict_map_key=True``, its size limits default to the input's length, ext types other than 1 and
2 are refused, dtypes come from a fixed allowlist, and V2 types are rebuilt with pydantic's
``model_validate`` (measured faster than hand-built ``model_construct``: ~3 us for a small
request). Anything else raises :class:`conveyor.errors.WireError` with one reason.

redis-py and ``memoryview`` values (checked with redis-py 8.1, hiredis 3.5, Redis 7): XADD
accepts them and returns the same bytes. ``redis.asyncio`` always packs commands in Python and
hands a memoryview to the socket as its own chunk (no copy in redis-py; Python 3.11's asyncio
``writelines`` joins the chunks once, 3.12+ uses ``sendmsg``). The *sync* client with hiredis
uses ``HiredisRespSerializer``, which calls ``bytes(memoryview)`` and then
``hiredis.pack_command`` (two copies); pass ``command_packer=PythonRespSerializer(...)`` to its
connection pool to send memoryviews without copying.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TypeAlias, cast

import msgpack
import numpy as np
import pydantic

from conveyor.errors import WireError
from conveyor.types import InferenceRequest, InferenceResponse, MetadataModelResponse

__all__ = (
    "DEAD_FIELDS",
    "INLINE_MAX_BYTES",
    "WIRE_VERSION",
    "ControlVerb",
    "DeadField",
    "ErrorCode",
    "ErrorInfo",
    "FieldValue",
    "Fields",
    "Job",
    "Message",
    "MessageType",
    "Payload",
    "Plain",
    "RawFields",
    "decode_job",
    "decode_message",
    "encode_job",
    "encode_message",
    "fields_size",
)

WIRE_VERSION = 1

# Arrays smaller than this ride inside the envelope as msgpack bin; larger ones get a field of
# their own. Measured with `python -m bench.wire --threshold` (bench/README.md, "Wire format":
# encode + redis-py's packing of the XADD + decode, one-tensor request): a field of its own costs
# two more XADD arguments for redis-py's Python packer (~1 us each) and a lookup, inlining copies
# the bytes ~4 times (tobytes, into the envelope, out as ext data, out as bin). Inline won by
# 1-11 us at 1-2 KiB, the two were within noise at 4-8 KiB, a field of its own won from 16 KiB.
INLINE_MAX_BYTES = 8192

# What a payload may be: a V2 type, or a plain msgpack-able value (which may hold numpy arrays).
Plain: TypeAlias = (
    bool | int | float | str | bytes | np.ndarray | list["Plain"] | dict[str, "Plain"] | None
)
Payload: TypeAlias = InferenceRequest | InferenceResponse | MetadataModelResponse | Plain

# What we hand to XADD (str keys, values redis-py accepts) and what XREAD returns.
FieldValue: TypeAlias = bytes | str | int | float | memoryview
Fields: TypeAlias = dict[str, FieldValue]
RawFields: TypeAlias = Mapping[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Job:
    """One call of a model method, as it sits in ``<prefix>:{<model>}:jobs``."""

    id: str  # request id, chosen by the client, unique
    method: str  # "predict", "predict_stream", "metadata" or a custom method's name
    model: str
    version: str | None
    reply: str  # key of the reply stream the worker writes to
    bell: str  # key of the client's doorbell list the worker LPUSHes the request id to
    deadline: float  # unix time (seconds) after which the answer is of no use
    sent_at: float  # unix time (seconds)
    attempt: int = 1  # the client's send attempt; a resend under the same id gets the next one
    args: tuple[Payload, ...] = ()
    kwargs: Mapping[str, Payload] = field(default_factory=dict)
    inputs: str | None = None  # key of the input stream of a predict_stream
    # Flow control of a predict_stream: the worker writes at most `window` chunks the caller
    # has not taken; the caller LPUSHes how many it took to the `credit` list.
    credit: str | None = None
    window: int = 0
    # The client reads small final answers straight from its doorbell list (one round trip
    # less); workers that predate it ignore the flag and write the reply stream as always.
    inline_reply: bool = False


# Kept (str, Enum) rather than StrEnum: str()/format() of a member stay as the stub defined them.
class MessageType(str, Enum):  # noqa: UP042
    RESULT = "result"  # the one answer of a unary call
    CHUNK = "chunk"  # one response of a predict_stream, numbered by seq from 0
    END = "end"  # a predict_stream is complete; seq is the number of chunks sent
    ERROR = "error"  # the call failed; error says why
    INPUT = "input"  # one request of a predict_stream's input stream, numbered by seq


class ErrorCode(StrEnum):
    """Why a call failed: the ``code`` of an error message, stable and machine-readable.

    A ``StrEnum``: a member is equal to its text (``ErrorCode.DEADLINE == "deadline"``), so a
    code read from the wire (plain text: a newer worker may send one this list lacks) compares
    to a member as it is.
    """

    MODEL_ERROR = "model_error"  # the model's method raised; type and message are its exception's
    MODEL_NOT_FOUND = "model_not_found"  # the job names a model (or version) no worker serves
    METHOD_NOT_ALLOWED = "method_not_allowed"  # the model does not expose the method
    BAD_ENTRY = "bad_entry"  # the job entry could not be decoded (or its reply was not)
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the entry is over the model's payload limit
    DEADLINE = "deadline"  # the job ran past its deadline, or was read after it
    CANCELLED = "cancelled"  # its caller cancelled it (a control ``cancel``)
    STREAM_INTERRUPTED = "stream_interrupted"  # a predict_stream's input stream broke off
    DEAD_LETTER = "dead_letter"  # the job went to the dead-letter stream (too many deliveries)
    INPUT_ERROR = "input_error"  # the client's own: a predict_stream's input iterator raised


class ControlVerb(StrEnum):
    """The ``method`` of a job on a model's control stream (``<p>:{<model>}:control``)."""

    CANCEL = "cancel"  # stop the running job with this request id (the control job's ``id``)
    LOAD = "load"  # load the model; the answer's ``ready`` says whether it is loaded
    UNLOAD = "unload"  # unload the model


class DeadField(StrEnum):
    """The readable fields a worker puts in front of a job's own fields when it moves the
    entry to ``<p>:{<model>}:dead``; everything else in a dead letter is the job as sent."""

    REASON = "dead_reason"  # why a worker gave up on it
    AT = "dead_at"  # unix seconds, three decimals
    FROM = "dead_from"  # the job stream it was taken from (where a retry sends it)
    ENTRY = "dead_entry"  # its entry id in that stream
    DELIVERIES = "dead_deliveries"  # how many times it had been delivered
    CONSUMER = "dead_consumer"  # the worker (consumer name) that dead-lettered it


# The dead-letter fields as plain text, in the order a dead letter holds them.
DEAD_FIELDS: tuple[str, ...] = tuple(field.value for field in DeadField)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    code: str  # stable, machine-readable: an ErrorCode (or one a newer Conveyor added)
    type: str  # the exception class name, e.g. "ValueError"
    message: str


@dataclass(frozen=True, slots=True)
class Message:
    """One entry of a reply stream (worker → client) or of an input stream (client → worker)."""

    type: MessageType
    id: str  # the request id
    attempt: int = 0  # the delivery that wrote it (fencing); 0 for client-written inputs
    seq: int = 0
    payload: Payload = None
    error: ErrorInfo | None = None
    # The stream id of the job entry whose delivery wrote it: two copies of one job (an XADD
    # sent twice) have entries of their own, so (entry, attempt) names one run. "" if unknown.
    entry: str = ""


# --- constants --------------------------------------------------------------------------------

_EXT_NDARRAY = 1
_EXT_SCALAR = 2

_TAG_PLAIN = "plain"
_MODELS: dict[str, type[pydantic.BaseModel]] = {
    "InferenceRequest": InferenceRequest,
    "InferenceResponse": InferenceResponse,
    "MetadataModelResponse": MetadataModelResponse,
}
_TAGS: dict[type, str] = {cls: tag for tag, cls in _MODELS.items()}
# cls.model_validate(body), without its wrapper's ~1.5 us: the same validator, same arguments.
_VALIDATORS = {tag: cls.__pydantic_validator__.validate_python for tag, cls in _MODELS.items()}

# Fixed-size dtypes that travel as raw bytes, both byte orders, keyed by numpy's dtype string.
_RAW_DTYPES: dict[str, np.dtype] = {}
for _code in ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"):
    for _order in ("<", ">"):
        _dt = np.dtype(_code).newbyteorder(_order)
        _RAW_DTYPES[_dt.str] = _dt
del _code, _order, _dt
_RAW_DTYPE_STRS: dict[np.dtype, str] = {dtype: text for text, dtype in _RAW_DTYPES.items()}
_OBJECT_DTYPE = np.dtype(object)
_TEXT_DTYPE_RE = re.compile(r"(?:\|S|[<>]U)[1-9][0-9]{0,8}")
_MAX_NDIM = 64  # numpy 2's limit
_ENTRY_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# A per-thread Packer whose buffer grew past this is dropped, so one huge plain payload does not
# pin its buffer for the life of the thread (msgpack never shrinks a Packer's buffer).
_PACKER_KEEP_MAX = 1 << 20

_TENSOR_KEYS = tuple(f"t{i}" for i in range(64))
_TENSOR_RAW_KEYS = tuple(key.encode() for key in _TENSOR_KEYS)

_JOB_TEXT = (b"id", b"method", b"model", b"version", b"reply", b"bell")
_MESSAGE_TYPES = {t.value.encode(): t for t in MessageType}
_TYPE_TEXT = {t: t.value for t in MessageType}  # an Enum's .value is a Python property


def _tensor_key(index: int) -> str:
    return _TENSOR_KEYS[index] if index < len(_TENSOR_KEYS) else f"t{index}"


def _tensor_raw_key(index: int) -> bytes:
    return _TENSOR_RAW_KEYS[index] if index < len(_TENSOR_RAW_KEYS) else b"t%d" % index


# --- encoding ---------------------------------------------------------------------------------


class _Encoder:
    """Packs one envelope at a time; one per thread, reused (msgpack Packers are not reentrant)."""

    __slots__ = ("_inner", "_packer", "_tensors")

    def __init__(self) -> None:
        self._tensors: list[memoryview] = []
        self._packer = msgpack.Packer(default=self._default, use_bin_type=True)
        # Packs the body of an array's ext type while the outer Packer is mid-envelope.
        self._inner = msgpack.Packer(use_bin_type=True)

    def pack(self, envelope: object) -> tuple[bytes, list[memoryview]]:
        """The envelope's bytes, and the big arrays' bytes that go in ``t0``, ``t1``, ..."""
        self._tensors = []
        try:
            data = cast(bytes, self._packer.pack(envelope))
        except OverflowError as exc:
            raise ValueError(
                f"cannot send this payload: {exc} (msgpack holds 64-bit ints)"
            ) from exc
        finally:
            tensors, self._tensors = self._tensors, []
        if len(data) > _PACKER_KEEP_MAX:
            self._packer = msgpack.Packer(default=self._default, use_bin_type=True)
        return data, tensors

    def _default(self, obj: object) -> object:
        # msgpack calls this for any value it cannot pack itself.
        if isinstance(obj, np.ndarray):
            return _ext(_EXT_NDARRAY, self._array_body(obj))
        if isinstance(obj, np.generic):
            return _ext(_EXT_SCALAR, self._array_body(np.asarray(obj)))
        if isinstance(obj, Enum):  # Datatype members in a model built with model_construct
            return obj.value
        if isinstance(obj, int):  # msgpack hands over ints it cannot pack
            raise ValueError(f"cannot send the int {obj}: msgpack holds 64-bit ints")
        raise TypeError(
            f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} on the wire: "
            "payloads hold V2 types, numpy arrays, and None/bool/int/float/str/bytes/list/dict"
        )

    def _array_body(self, arr: np.ndarray) -> bytes:
        dtype_str = _RAW_DTYPE_STRS.get(arr.dtype)  # dtype.str costs 0.5 us; this 0.1 us
        body: tuple[object, ...]
        if dtype_str is not None:
            if arr.nbytes < INLINE_MAX_BYTES:
                body = (dtype_str, arr.shape, arr.tobytes())
            else:
                if not arr.flags.c_contiguous:
                    arr = np.ascontiguousarray(arr)  # the one copy we allow on this side
                self._tensors.append(arr.data.cast("B"))  # memoryview(arr).cast("B")
                body = (dtype_str, arr.shape, len(self._tensors) - 1)
        else:
            body = _text_array_body(arr)
        packed = cast(bytes, self._inner.pack(body))
        if len(packed) > _PACKER_KEEP_MAX:
            self._inner = msgpack.Packer(use_bin_type=True)
        return packed


def _text_array_body(arr: np.ndarray) -> tuple[object, ...]:
    """``[dtype, shape, items]`` of a BYTES tensor: object, fixed-width bytes or str arrays."""
    dtype = arr.dtype
    if dtype == _OBJECT_DTYPE:
        items = arr.ravel().tolist()
        for item in items:
            if not isinstance(item, str | bytes):
                raise TypeError(
                    "an object array on the wire must hold only str or bytes (a BYTES "
                    f"tensor), not {type(item).__name__}"
                )
        return ("|O", arr.shape, items)
    if dtype.kind in "SU":
        return (dtype.str, arr.shape, arr.ravel().tolist())
    raise TypeError(
        f"cannot send a numpy array of dtype {dtype.str!r} ({dtype}): supported are bool, "
        "(u)int8-64, float16/32/64, complex64/128, bytes and str (fixed-width or object)"
    )


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # ExtType's own __new__ re-checks its arguments in Python (~1 us); ours are known good.
    return tuple.__new__(msgpack.ExtType, (code, data))


_local = threading.local()


def _encoder() -> _Encoder:
    try:
        return cast(_Encoder, _local.encoder)
    except AttributeError:
        _local.encoder = encoder = _Encoder()
        return encoder


def _dump_model(model: pydantic.BaseModel) -> dict[str, object]:
    """``model_dump(exclude_unset=True, exclude_none=True)`` without pydantic's serializer.

    About 4x faster for a small request; numpy arrays stay where they are for the Packer.
    """
    out: dict[str, object] = {}
    fields_set = model.__pydantic_fields_set__
    kinds = _KINDS
    for name, value in model.__dict__.items():
        if value is not None and name in fields_set:
            # Most values are str/int leaves or lists of them (a shape): no call for those.
            kind = kinds.get(type(value))
            if kind == _LEAF:
                out[name] = value
            elif kind == _LIST:
                out[name] = [
                    item if kinds.get(type(item)) == _LEAF else _dump_value(item)
                    for item in cast("list[object]", value)
                ]
            else:
                out[name] = _dump_value(value)
    extra = model.__pydantic_extra__
    if extra:
        out.update(extra)
    return out


# How _dump_value treats a value, by its exact type: isinstance against pydantic's classes goes
# through ABCMeta (~0.3 us a check), a dict lookup does not.
_LEAF, _ROOT, _MODEL, _LIST = range(4)
_KINDS: dict[type, int] = dict.fromkeys((str, int, float, bool, bytes, dict, np.ndarray), _LEAF)
_KINDS[list] = _LIST


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, pydantic.RootModel):
            kind = _ROOT
        elif issubclass(cls, pydantic.BaseModel):
            kind = _MODEL
        else:
            kind = _LEAF  # left to the Packer: its default() handles or refuses it
        _KINDS[cls] = kind  # one entry per class: bounded by the program's classes
    return kind


def _dump_value(value: object) -> object:
    kind = _kind(type(value))
    if kind == _LEAF:
        return value
    if kind == _ROOT:  # TensorData: its list or array, as it is
        return cast("pydantic.RootModel[object]", value).root
    if kind == _MODEL:
        return _dump_model(cast(pydantic.BaseModel, value))
    return [_dump_value(item) for item in cast("list[object]", value)]


def _payload(value: Payload) -> list[object]:
    tag = _TAGS.get(type(value))
    if tag is not None:
        return [tag, _dump_model(cast(pydantic.BaseModel, value))]
    if isinstance(value, pydantic.BaseModel):
        for cls, tag in _TAGS.items():
            if isinstance(value, cls):  # a subclass travels as its V2 base type
                return [tag, _dump_model(value)]
        raise TypeError(
            f"cannot send a {type(value).__qualname__}: the V2 types on the wire are "
            f"{', '.join(_MODELS)}; send anything else as plain values"
        )
    return [_TAG_PLAIN, value]


def _number(value: float) -> str:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"time must be a finite number of seconds, not {value!r}")
    return repr(number)


def _count(name: str, value: int, minimum: int) -> str:
    if type(value) is not int or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return str(value)


def _add_tensors(fields: Fields, tensors: list[memoryview]) -> Fields:
    for index, view in enumerate(tensors):
        fields[_tensor_key(index)] = view
    return fields


def encode_job(job: Job) -> Fields:
    """The fields to XADD for ``job``, in the order ``redis-cli XRANGE`` shows them.

    Big arrays are not copied: their fields are memoryviews over the arrays, which must not
    change until the XADD is sent. Raises ``TypeError`` for a payload that cannot travel (an
    unknown object, an unsupported dtype) and ``ValueError`` for a bad field value.
    """
    for name in ("id", "method", "model", "reply", "bell"):
        if not getattr(job, name):
            raise ValueError(f"job field {name!r} must be a non-empty string")
    if job.inputs is not None and not job.inputs:
        raise ValueError("job field 'inputs' must be None or a non-empty string")
    fields: Fields = {
        "id": job.id,
        "method": job.method,
        "model": job.model,
        "version": job.version or "",
        "reply": job.reply,
        "bell": job.bell,
        "deadline": _number(job.deadline),
        "sent_at": _number(job.sent_at),
        "attempt": _count("attempt", job.attempt, 1),
    }
    if job.inputs is not None:
        fields["inputs"] = job.inputs
    if job.credit:
        fields["credit"] = job.credit
        fields["window"] = _count("window", job.window, 1)
    for name in job.kwargs:
        if type(name) is not str:
            raise TypeError(f"keyword argument names must be str, not {name!r}")
    envelope = {
        "v": WIRE_VERSION,
        "args": [_payload(arg) for arg in job.args],
        "kwargs": {name: _payload(value) for name, value in job.kwargs.items()},
    }
    if job.inline_reply:
        envelope["inline"] = True
    fields["envelope"], tensors = _encoder().pack(envelope)
    return _add_tensors(fields, tensors)


def encode_message(message: Message) -> Fields:
    """The fields to XADD for ``message``; see :func:`encode_job` for what it raises.

    ``error`` must be set exactly when ``type`` is ``MessageType.ERROR``.
    """
    kind = message.type
    if type(kind) is not MessageType:
        kind = MessageType(kind)
    if not message.id:
        raise ValueError("message field 'id' must be a non-empty string")
    if (kind is MessageType.ERROR) != (message.error is not None):
        raise ValueError(
            f"a {kind.value!r} message must {'' if kind is MessageType.ERROR else 'not '}"
            "carry an error"
        )
    attempt, seq = message.attempt, message.seq
    fields: Fields = {
        "type": _TYPE_TEXT[kind],
        "id": message.id,
        # _count(), inlined for the common case
        "attempt": str(attempt)
        if type(attempt) is int and attempt >= 0
        else _count("attempt", attempt, 0),
        "seq": str(seq) if type(seq) is int and seq >= 0 else _count("seq", seq, 0),
    }
    if message.entry:
        fields["entry"] = message.entry
    error = message.error
    wire_error: dict[str, str] | None = None
    if error is not None:
        fields["code"] = error.code
        fields["error_type"] = error.type
        fields["error"] = error.message
        wire_error = {"code": error.code, "type": error.type, "message": error.message}
    envelope = {"v": WIRE_VERSION, "payload": _payload(message.payload), "error": wire_error}
    fields["envelope"], tensors = _encoder().pack(envelope)
    return _add_tensors(fields, tensors)


def fields_size(fields: Fields) -> int:
    """Bytes the entry's values take on the wire (for the payload size limit).

    Counts values only (memoryview ``nbytes``, ``len`` of bytes, UTF-8 length of str, decimal
    length of numbers), as the payload size limit does; field names add a few bytes each.
    """
    size = 0
    for value in fields.values():
        if isinstance(value, bytes):
            size += len(value)
        elif isinstance(value, memoryview):
            size += value.nbytes
        elif isinstance(value, str):
            size += len(value) if value.isascii() else len(value.encode())
        else:  # int or float: redis-py sends repr()
            size += len(repr(value))
    return size


# --- decoding ---------------------------------------------------------------------------------


class _Decoder:
    """Decodes one entry's envelope; ``ext_hook`` turns arrays' ext types back into arrays.

    An error inside ``ext_hook`` is kept for later rather than raised, so that an envelope of a
    newer format is reported as such, not as whatever its ext types look like now.
    """

    __slots__ = ("error", "fields")

    def __init__(self, fields: RawFields) -> None:
        self.fields = fields
        self.error: WireError | None = None

    def unpack(self, fields: RawFields, reader: str) -> dict[str, object]:
        data = fields.get(b"envelope")
        if data is None:
            raise _missing(fields, "envelope")
        if type(data) is not bytes and not isinstance(data, bytes | bytearray | memoryview):
            raise WireError(f"field 'envelope' must be bytes, not {type(data).__name__}")
        try:
            # Sizes are bounded by the input: msgpack's max_*_len limits default to len(data).
            envelope = msgpack.unpackb(
                data, raw=False, strict_map_key=True, use_list=True, ext_hook=self.ext_hook
            )
        except WireError:
            raise
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            reason = str(exc) or type(exc).__name__
            raise WireError(f"field 'envelope' is not valid msgpack: {reason}") from exc
        if not isinstance(envelope, dict):
            raise WireError(f"envelope must be a msgpack map, not {type(envelope).__name__}")
        version = envelope.get("v")
        if type(version) is not int:
            raise WireError("envelope has no format version 'v'")
        if version > WIRE_VERSION:
            raise WireError(
                f"written by a newer Conveyor (format {version} > {WIRE_VERSION}); "
                f"upgrade this {reader}"
            )
        if version < 1:
            raise WireError(f"envelope has an unknown format version {version}")
        if self.error is not None:
            raise self.error
        return envelope

    def ext_hook(self, code: int, data: bytes) -> object:
        try:
            if code == _EXT_NDARRAY:
                return self._array(data)
            if code == _EXT_SCALAR:
                arr = self._array(data)
                if arr.ndim != 0:
                    raise WireError(f"numpy scalar has shape {list(arr.shape)}, not []")
                return arr[()]
            raise WireError(f"envelope holds msgpack ext type {code}, which is not an array")
        except WireError as exc:
            if self.error is None:
                self.error = exc
        except (ValueError, TypeError, MemoryError, msgpack.UnpackException) as exc:
            if self.error is None:
                self.error = WireError(f"array in the envelope is malformed: {exc}")
        return None

    def _array(self, data: bytes) -> np.ndarray:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        if type(body) is not list or len(body) != 3:
            raise WireError("array in the envelope is not [dtype, shape, data]")
        dtype_str, shape, content = body
        if type(shape) is not list or len(shape) > _MAX_NDIM:
            raise WireError(f"array shape must be a list of at most {_MAX_NDIM} ints")
        count = 1
        for dim in shape:
            if type(dim) is not int or not 0 <= dim < 1 << 62:
                raise WireError(f"array shape {shape!r} is not a list of non-negative ints")
            count *= dim
        if type(dtype_str) is not str:
            raise WireError("array dtype must be a string")
        dtype = _RAW_DTYPES.get(dtype_str)
        if dtype is not None:
            if type(content) is bytes and len(content) == count * dtype.itemsize:
                # an inline tensor, as _raw_array reads it (read-only: a view over bytes)
                return np.frombuffer(content, dtype=dtype).reshape(shape)
            return self._raw_array(dtype, shape, count, content)
        return _text_array(dtype_str, shape, count, content, len(data))

    def _raw_array(
        self, dtype: np.dtype, shape: list[int], count: int, content: object
    ) -> np.ndarray:
        if type(content) is int:
            if content < 0:
                raise WireError(f"tensor field index {content} is negative")
            name = _tensor_raw_key(content)
            buf = self.fields.get(name)
            if buf is None:
                raise WireError(f"tensor field {name.decode()!r} is missing")
            if not isinstance(buf, bytes | bytearray | memoryview):
                raise WireError(f"tensor field {name.decode()!r} must be bytes")
            where = f"tensor field {name.decode()!r}"
        elif type(content) is bytes:
            buf, where = content, "inline tensor"
        else:
            raise WireError(
                f"array data must be a field index or bytes, not {type(content).__name__}"
            )
        nbytes = buf.nbytes if isinstance(buf, memoryview) else len(buf)
        if nbytes != count * dtype.itemsize:
            raise WireError(
                f"{where} holds {nbytes} bytes, but dtype {dtype.str} and shape {shape} "
                f"need {count * dtype.itemsize}"
            )
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
        if type(buf) is not bytes:  # over bytes (what Redis returns) it is read-only already
            arr.flags.writeable = False
        return arr


def _text_array(
    dtype_str: str, shape: list[int], count: int, content: object, envelope_size: int
) -> np.ndarray:
    """A BYTES tensor (object, fixed-width bytes or str) from its flattened elements."""
    if dtype_str != "|O" and not _TEXT_DTYPE_RE.fullmatch(dtype_str):
        raise WireError(f"array dtype {dtype_str!r} is not one Conveyor sends")
    if type(content) is not list or len(content) != count:
        raise WireError(f"BYTES tensor of shape {shape} must carry a list of {count} elements")
    wanted: type = str if dtype_str[1] == "U" else bytes
    for item in content:
        if not (type(item) is str or type(item) is bytes) or (
            dtype_str != "|O" and type(item) is not wanted
        ):
            raise WireError(f"BYTES tensor of dtype {dtype_str} holds a {type(item).__name__}")
    if dtype_str == "|O":
        arr = np.empty(count, dtype=_OBJECT_DTYPE)
        arr[:] = content
        return arr.reshape(shape)
    dtype = np.dtype(dtype_str)
    # A wide dtype over short strings would let a small envelope allocate without bound.
    if count * dtype.itemsize > 64 * envelope_size + (1 << 16):
        raise WireError(
            f"BYTES tensor of dtype {dtype_str} and shape {shape} is out of proportion to "
            f"its {envelope_size}-byte description"
        )
    return np.array(content, dtype=dtype).reshape(shape)


def _missing(fields: RawFields, name: str) -> WireError:
    if name in fields:  # type: ignore[comparison-overlap]
        return WireError(f"field {name!r} has a str key: read entries with decode_responses=False")
    return WireError(f"missing field {name!r}")


def _text(fields: RawFields, name: bytes) -> str:
    value = fields.get(name)
    if value is None:
        raise _missing(fields, name.decode())
    if not isinstance(value, bytes):
        raise WireError(f"field {name.decode()!r} must be bytes, not {type(value).__name__}")
    try:
        return value.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"field {name.decode()!r} is not UTF-8 text") from exc


def _int(fields: RawFields, name: bytes, minimum: int) -> int:
    text = _text(fields, name)
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < minimum:
        raise WireError(f"field {name.decode()!r} must be an integer >= {minimum}, not {text!r}")
    return int(text)


def _time(fields: RawFields, name: bytes) -> float:
    text = _text(fields, name)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise WireError(f"field {name.decode()!r} must be a time in unix seconds, not {text!r}")
    return value


def _decode_payload(value: object, where: str) -> Payload:
    if type(value) is not list or len(value) != 2 or type(value[0]) is not str:
        raise WireError(f"{where} is not a [tag, body] pair")
    tag, body = value
    if tag == _TAG_PLAIN:
        return cast(Payload, body)
    validate = _VALIDATORS.get(tag)
    if validate is None:
        raise WireError(f"{where} has unknown payload tag {tag!r}")
    if type(body) is not dict:
        raise WireError(f"{where} ({tag}) must be a map of its fields")
    try:
        return cast(Payload, validate(body))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise WireError(
            f"{where} is not a valid {tag}: {loc}: {first['msg']} ({exc.error_count()} error(s))"
        ) from None


def decode_job(fields: RawFields) -> Job:
    """Raises ``conveyor.errors.WireError`` with a reason for anything that is not a job.

    Large arrays come back as read-only views over the bytes in ``fields``.
    """
    try:
        return _decode_job(fields)
    except WireError:
        raise
    except Exception as exc:  # the contract: nothing but WireError leaves a decoder
        raise WireError(f"malformed job entry: {type(exc).__name__}: {exc}") from exc


def _decode_job(fields: RawFields) -> Job:
    if type(fields) is dict:
        job = _decode_common_job(fields)
        if job is not None:
            return job
    return _decode_any_job(fields)


def _decode_common_job(fields: dict[bytes, bytes]) -> Job | None:
    """The common job (every readable field plain and valid, no ``inputs``/``credit``), with
    fewer calls; None for anything else, which :func:`_decode_any_job` decodes or refuses
    with its reason. What this returns is what ``_decode_any_job`` returns for the entry
    (``tests/test_wire_fast.py`` checks it on mutated entries)."""
    get = fields.get
    texts: list[str] = []
    for name in _JOB_TEXT:
        value = get(name)
        if type(value) is not bytes:
            return None
        try:
            texts.append(value.decode())
        except UnicodeDecodeError:
            return None
    job_id, method, model, version, reply, bell = texts
    if not (job_id and method and model and reply and bell):
        return None
    if b"inputs" in fields or b"credit" in fields:
        return None
    deadline = _common_time(get(b"deadline"))
    sent_at = _common_time(get(b"sent_at"))
    attempt = get(b"attempt")
    if (
        deadline is None
        or sent_at is None
        or type(attempt) is not bytes
        or not (attempt.isdigit() and len(attempt) <= 18)
        or int(attempt) < 1
    ):
        return None
    envelope = _Decoder(fields).unpack(fields, "worker")
    raw_args = envelope.get("args", [])
    raw_kwargs = envelope.get("kwargs", {})
    if type(raw_args) is not list or type(raw_kwargs) is not dict:
        return None
    args = tuple([_decode_payload(arg, f"argument {i}") for i, arg in enumerate(raw_args)])
    kwargs: dict[str, Payload] = {}
    for name, value in raw_kwargs.items():
        if type(name) is not str:
            return None
        kwargs[name] = _decode_payload(value, f"keyword argument {name!r}")
    return Job(
        job_id,
        method,
        model,
        version or None,
        reply,
        bell,
        deadline,
        sent_at,
        int(attempt),
        args,
        kwargs,
        None,
        None,
        0,
        envelope.get("inline") is True,
    )


def _common_time(value: object) -> float | None:
    """A time field as :func:`_time` reads it, or None if that needs a closer look."""
    if type(value) is not bytes:
        return None
    try:
        number = float(value)  # ASCII only: what parses here parses the same from str
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _decode_any_job(fields: RawFields) -> Job:
    """Any entry: a job, or a WireError with the reason it is not one."""
    if type(fields) is not dict and not isinstance(fields, Mapping):
        raise WireError(f"an entry's fields must be a mapping, not {type(fields).__name__}")
    job_id, method, model, version, reply, bell = (_text(fields, name) for name in _JOB_TEXT)
    for name, text in (
        ("id", job_id),
        ("method", method),
        ("model", model),
        ("reply", reply),
        ("bell", bell),
    ):
        if not text:
            raise WireError(f"field {name!r} is empty")
    inputs: str | None = None
    if b"inputs" in fields:
        inputs = _text(fields, b"inputs")
        if not inputs:
            raise WireError("field 'inputs' is empty")
    credit: str | None = None
    window = 0
    if b"credit" in fields:
        credit = _text(fields, b"credit")
        if not credit:
            raise WireError("field 'credit' is empty")
        window = _int(fields, b"window", 1)
    deadline = _time(fields, b"deadline")
    sent_at = _time(fields, b"sent_at")
    attempt = _int(fields, b"attempt", 1)
    envelope = _Decoder(fields).unpack(fields, "worker")
    raw_args = envelope.get("args", [])
    raw_kwargs = envelope.get("kwargs", {})
    if type(raw_args) is not list:
        raise WireError("envelope 'args' must be a list")
    if type(raw_kwargs) is not dict:
        raise WireError("envelope 'kwargs' must be a map")
    args = tuple(_decode_payload(arg, f"argument {i}") for i, arg in enumerate(raw_args))
    kwargs: dict[str, Payload] = {}
    for name, value in raw_kwargs.items():
        if type(name) is not str:
            raise WireError(f"keyword argument name {name!r} is not a string")
        kwargs[name] = _decode_payload(value, f"keyword argument {name!r}")
    return Job(
        id=job_id,
        method=method,
        model=model,
        version=version or None,
        reply=reply,
        bell=bell,
        deadline=deadline,
        sent_at=sent_at,
        attempt=attempt,
        args=args,
        kwargs=kwargs,
        inputs=inputs,
        credit=credit,
        window=window,
        inline_reply=envelope.get("inline") is True,
    )


def decode_message(fields: RawFields) -> Message:
    """Raises ``conveyor.errors.WireError`` with a reason for anything that is not a message.

    Large arrays come back as read-only views over the bytes in ``fields``.
    """
    try:
        return _decode_message(fields)
    except WireError:
        raise
    except Exception as exc:  # the contract: nothing but WireError leaves a decoder
        raise WireError(f"malformed message entry: {type(exc).__name__}: {exc}") from exc


def _decode_message(fields: RawFields) -> Message:
    if type(fields) is not dict and not isinstance(fields, Mapping):
        raise WireError(f"an entry's fields must be a mapping, not {type(fields).__name__}")
    raw_type = fields.get(b"type")
    if raw_type is None:
        raise _missing(fields, "type")
    kind = _MESSAGE_TYPES.get(raw_type) if isinstance(raw_type, bytes) else None
    if kind is None:
        raise WireError(
            f"field 'type' is {raw_type!r}, not one of {', '.join(t.value for t in MessageType)}"
        )
    message_id = _text(fields, b"id")
    if not message_id:
        raise WireError("field 'id' is empty")
    attempt = _int(fields, b"attempt", 0)
    seq = _int(fields, b"seq", 0)
    entry = ""
    if b"entry" in fields:
        entry = _text(fields, b"entry")
        if not _ENTRY_ID_RE.fullmatch(entry):
            raise WireError(f"field 'entry' must be a stream id such as '1-0', not {entry!r}")
    if kind is MessageType.ERROR:
        for name in (b"code", b"error_type", b"error"):
            _text(fields, name)  # the readable copy must be there too
    reader = "worker" if kind is MessageType.INPUT else "client"
    envelope = _Decoder(fields).unpack(fields, reader)
    payload = _decode_payload(envelope.get("payload", [_TAG_PLAIN, None]), "payload")
    raw_error = envelope.get("error")
    error: ErrorInfo | None = None
    if raw_error is not None:
        if type(raw_error) is not dict:
            raise WireError("envelope 'error' must be a map")
        parts = [raw_error.get(key) for key in ("code", "type", "message")]
        if not all(type(part) is str for part in parts):
            raise WireError("envelope 'error' must have str 'code', 'type' and 'message'")
        error = ErrorInfo(*cast("list[str]", parts))
    if (kind is MessageType.ERROR) != (error is not None):
        raise WireError(
            "an error entry without an error in its envelope"
            if kind is MessageType.ERROR
            else f"a {kind.value!r} entry carries an error"
        )
    return Message(kind, message_id, attempt, seq, payload, error, entry)
