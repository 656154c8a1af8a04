"""What a worker checks of a job entry before it decodes it, or writes anywhere for it.

Anyone who can write to a job stream writes every field of its entries, so a worker takes
none of them on trust:

- **keys**: the worker writes to, expires and pops only keys that the job's own client id and
  request id name under the prefix: ``reply`` must be ``<p>:reply:{<client>}:<id>``, and
  ``bell``, ``credit`` and ``inputs`` the keys :class:`~conveyor.broker.keys.Keys` builds from
  that client id and request id. Else a producer could make the worker ``EXPIRE``, ``LPUSH``
  into, ``BLMPOP`` from or ``XREAD`` any key its ACL reaches (another model's job stream,
  another application's list). Such an entry is dead-lettered, and nobody is answered: its
  reply keys are the ones not to trust.
- **model**: the stream decides. A job in ``{echo}``'s stream naming model ``counter`` would
  run another model's code under the echo stream's ACL and limits; a job in a version's
  stream must name that version.
- **size**: the entry's length against the model's ``max_payload_bytes`` before any msgpack
  decode (a 300 MB envelope decoded first drove a worker to 2.2 GB).

A field missing or not text is left to the decoder, which refuses the entry with its reason;
the caller of an entry refused there is only told through keys this check has passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from conveyor.broker.keys import Keys
from conveyor.broker.wire import RawFields

__all__ = ("Refusal", "check_entry", "check_keys")

# No client writes a request id, model name or key this long; a longer one is not decoded.
_TEXT_MAX = 4096


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an entry is not run: an error ``code`` and ``type`` for its caller, the reason."""

    code: str
    type: str
    reason: str
    answer: bool  # whether the caller may be told, through the entry's own (checked) keys


def _text(fields: RawFields, name: bytes) -> str | None:
    """A field's text; None when it is missing or not UTF-8 (the decoder says why)."""
    value = fields.get(name)
    if type(value) is not bytes:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _long_field(fields: RawFields) -> str | None:
    for name in (b"id", b"model", b"version", b"reply", b"bell", b"credit", b"inputs"):
        value = fields.get(name)
        if value is not None and len(value) > _TEXT_MAX:
            return f"field {name.decode()!r} is {len(value)} bytes long (at most {_TEXT_MAX})"
    return None


def check_keys(keys: Keys, fields: RawFields) -> Refusal | None:
    """Refuses an entry naming a key that is not its own client's and request's."""
    long_field = _long_field(fields)
    if long_field is not None:
        return Refusal("bad_entry", "WireError", f"bad entry: {long_field}", answer=False)
    request_id = _text(fields, b"id")
    reply = _text(fields, b"reply")
    if not request_id or reply is None:
        return None  # the decoder refuses it ("missing field 'id'"), and nobody is answered
    client_id = keys.client_of_reply(reply, request_id)
    if client_id is None:
        expected = keys.reply("<client id>", request_id)
        return _foreign("reply", reply, f"not the reply stream {expected} of its request")
    for name, own in (
        ("bell", keys.bell(client_id)),
        ("credit", keys.credit(client_id, request_id)),
        ("inputs", keys.inputs(client_id, request_id)),
    ):
        value = _text(fields, name.encode())
        if value is not None and value != own:
            return _foreign(name, value, f"not {own}, which its client and request id name")
    return None


def _foreign(name: str, value: str, why: str) -> Refusal:
    reason = (
        f"field {name!r} names {value!r}, {why}: refused, a worker writes only to the keys "
        "of the job's own client and request"
    )
    return Refusal("bad_entry", "WireError", reason, answer=False)


def check_entry(
    keys: Keys,
    stream: str,
    fields: RawFields,
    payload_limit: Callable[[str, str | None], int],
) -> Refusal | None:
    """Checks a job stream's entry before it is decoded: its keys, that its model (and
    version) are the stream's, and its size against ``payload_limit(model, version)``."""
    refusal = check_keys(keys, fields)
    if refusal is not None:
        return refusal
    owner = keys.job_stream_of(stream)
    model = _text(fields, b"model")
    version = _text(fields, b"version") or None
    if owner is not None and model:
        stream_model, stream_version = owner
        if model != stream_model:
            reason = (
                f"the job names model {model!r} but was sent to {stream}, the job stream of "
                f"model {stream_model!r}: refused, a stream's jobs run only on its own model"
            )
            return Refusal("bad_entry", "WireError", reason, answer=True)
        if stream_version is not None and version != stream_version:
            reason = (
                f"the job names version {version!r} but was sent to {stream}, the job stream "
                f"of version {stream_version!r} of model {stream_model!r}: refused"
            )
            return Refusal("bad_entry", "WireError", reason, answer=True)
    name = model or (owner[0] if owner is not None else "")
    size = sum(map(len, fields.values()))
    limit = payload_limit(name, version)
    if size > limit:
        reason = (
            f"payload of {size} bytes is over the limit of {limit} bytes "
            f"(max_payload_bytes of model {name!r})"
        )
        return Refusal("payload_too_large", "PayloadTooLarge", reason, answer=True)
    return None
