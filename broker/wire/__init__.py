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

Two more entry formats build on these:

- a doorbell entry (``<p>:bell:{<client>}``, a list): a request id as text, or the byte
  ``\x00`` followed by a msgpack map of a final message's fields as in 1-3 (a small answer
  riding in the bell, for a job with ``inline``); see :mod:`.doorbell`;
- a dead letter (``<p>:{<model>}:dead``): the job entry as a worker received it, after the
  readable fields of :class:`DeadField` (``dead_reason dead_at dead_from dead_entry
  dead_deliveries dead_consumer``); see :mod:`.dead`.

Error messages carry an :class:`ErrorCode`; a control stream's jobs name a :class:`ControlVerb`
as their ``method``.

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

The package, one job a module: ``schema`` (the entry types, error codes, control verbs),
``readable`` (the plain-text fields), ``arrays`` (numpy arrays as ext types and raw fields),
``payloads`` (V2 types and plain values, bypassing pydantic's slow paths), ``envelope`` (the
msgpack map), ``jobs`` and ``messages`` (each entry type's encoder and decoder), ``layout`` (a
read's jobs decoded together), ``doorbell``
and ``dead`` (the two formats built on them).
"""

from __future__ import annotations

from conveyor.broker.wire.dead import DEAD_FIELDS, DeadField, dead_letter, job_fields
from conveyor.broker.wire.doorbell import INLINE_MARK, Rung, pack_inline, read_rung
from conveyor.broker.wire.jobs import decode_job, encode_job, trace_fields
from conveyor.broker.wire.layout import JobDecoder
from conveyor.broker.wire.messages import (
    decode_message,
    encode_message,
    encode_result,
    encode_rows,
)
from conveyor.broker.wire.readable import fields_size
from conveyor.broker.wire.rows import RowsEncoder
from conveyor.broker.wire.schema import (
    INLINE_MAX_BYTES,
    WIRE_VERSION,
    ControlVerb,
    ErrorCode,
    ErrorInfo,
    Fields,
    FieldValue,
    Job,
    Message,
    MessageType,
    Payload,
    Plain,
    RawFields,
)

__all__ = (
    "DEAD_FIELDS",
    "INLINE_MARK",
    "INLINE_MAX_BYTES",
    "WIRE_VERSION",
    "ControlVerb",
    "DeadField",
    "ErrorCode",
    "ErrorInfo",
    "FieldValue",
    "Fields",
    "Job",
    "JobDecoder",
    "Message",
    "MessageType",
    "Payload",
    "Plain",
    "RawFields",
    "RowsEncoder",
    "Rung",
    "dead_letter",
    "decode_job",
    "decode_message",
    "encode_job",
    "encode_message",
    "encode_result",
    "encode_rows",
    "fields_size",
    "job_fields",
    "pack_inline",
    "read_rung",
    "trace_fields",
)
