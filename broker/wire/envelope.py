"""The envelope: one msgpack map per entry, ``v`` first; numpy arrays in it as ext types.

Packing runs on one reused ``msgpack.Packer`` per thread; an array met on the way becomes an
ext type (``arrays``) and a large one's bytes go to the entry's ``t<i>`` fields, uncopied.
Unpacking trusts nothing: ``raw=False``, ``strict_map_key=True``, size limits bounded by the
input, only the array ext types, and a format version no newer than this one.
"""

from __future__ import annotations

import threading
from enum import Enum
from typing import cast

import msgpack
import numpy as np

from conveyor.broker.wire.arrays import EXT_NDARRAY, EXT_SCALAR, array_body, read_array
from conveyor.broker.wire.readable import missing
from conveyor.broker.wire.schema import WIRE_VERSION, AsRead, RawFields
from conveyor.compiled import caused_by
from conveyor.errors import WireError

__all__ = ("pack_envelope", "unpack_envelope")

# A per-thread Packer whose buffer grew past this is dropped, so one huge plain payload does not
# pin its buffer for the life of the thread (msgpack never shrinks a Packer's buffer).
_PACKER_KEEP_MAX = 1 << 20


class _Encoder:
    """Packs one envelope at a time; one per thread, reused (msgpack Packers are not reentrant)."""

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
            text = f"cannot send this payload: {exc} (msgpack holds 64-bit ints)"
            raise caused_by(ValueError(text), exc) from exc
        finally:
            tensors, self._tensors = self._tensors, []
        if len(data) > _PACKER_KEEP_MAX:
            self._packer = msgpack.Packer(default=self._default, use_bin_type=True)
        return data, tensors

    def _default(self, obj: object) -> object:
        # msgpack calls this for any value it cannot pack itself.
        if isinstance(obj, np.ndarray):
            return _ext(EXT_NDARRAY, self._array_body(obj))
        if isinstance(obj, np.generic):
            return _ext(EXT_SCALAR, self._array_body(np.asarray(obj)))
        if isinstance(obj, Enum):  # Datatype members in a model built with model_construct
            return obj.value
        if isinstance(obj, int):  # msgpack hands over ints it cannot pack
            raise ValueError(f"cannot send the int {obj}: msgpack holds 64-bit ints")
        raise TypeError(
            f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} on the wire: "
            "payloads hold V2 types, numpy arrays, and None/bool/int/float/str/bytes/list/dict"
        )

    def _array_body(self, arr: np.ndarray) -> bytes:
        packed = cast(bytes, self._inner.pack(array_body(arr, self._tensors)))
        if len(packed) > _PACKER_KEEP_MAX:
            self._inner = msgpack.Packer(use_bin_type=True)
        return packed


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


def pack_envelope(envelope: object) -> tuple[bytes, list[memoryview]]:
    """The envelope's bytes, and the big arrays' bytes that go in ``t0``, ``t1``, ...

    Raises ``TypeError`` for a value that cannot travel, ``ValueError`` for an int msgpack
    cannot hold.
    """
    return _encoder().pack(envelope)


def unpack_envelope(fields: RawFields, reader: str) -> dict[str, object]:
    """The envelope of an entry read from Redis, arrays rebuilt; ``reader`` ("worker" or
    "client") is who to upgrade when a newer Conveyor wrote it. Raises WireError."""
    return _Decoder(fields).unpack(fields, reader)


class _Decoder:
    """Decodes one entry's envelope; ``ext_hook`` turns arrays' ext types back into arrays.

    An error inside ``ext_hook`` is kept for later rather than raised, so that an envelope of a
    newer format is reported as such, not as whatever its ext types look like now.
    """

    def __init__(self, fields: RawFields) -> None:
        self.fields = fields
        self.error: WireError | None = None

    def unpack(self, fields: RawFields, reader: str) -> dict[str, object]:
        data = cast(AsRead, fields).get(b"envelope")
        if data is None:
            raise missing(fields, "envelope")
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
            raise caused_by(
                WireError(f"field 'envelope' is not valid msgpack: {reason}"), exc
            ) from exc
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
            if code == EXT_NDARRAY:
                return read_array(data, self.fields)
            if code == EXT_SCALAR:
                arr = read_array(data, self.fields)
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
