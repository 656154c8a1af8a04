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
the caller of an entry refused there is only told through keys this check has passed. The
checks compare the raw bytes (no decoding, ~1 us a job); reasons are built only on refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from conveyor.broker.keys import Keys
from conveyor.broker.wire import ErrorCode, RawFields

__all__ = ("CONTROL_MAX_BYTES", "Admission", "Refusal")

# No client writes a reply key this long; a longer one is refused, never decoded.
_TEXT_MAX = 4096
# A control request (load, unload, cancel) carries no payload: every worker reads each one.
CONTROL_MAX_BYTES = 64 * 1024
# Reply stream heads (``<p>:reply:{<client>}:``) already found valid, kept with their client's
# bell: a worker's jobs come from a few clients, whose keys are then parsed once, not per job.
_KNOWN_CLIENTS_MAX = 1024


@dataclass(frozen=True)
class Refusal:
    """Why an entry is not run: an error ``code`` and ``type`` for its caller, the reason."""

    code: str
    type: str
    reason: str
    answer: bool  # whether the caller may be told, through the entry's own (checked) keys


class Admission:
    """Checks entries of the job streams and control streams under one prefix.

    ``payload_limit(model, version)`` is the ``max_payload_bytes`` that applies to a job;
    ``smallest_limit(model)`` the least of them for the model (below it, no lookup).
    """

    def __init__(
        self,
        keys: Keys,
        payload_limit: Callable[[str, str | None], int],
        smallest_limit: Callable[[str], int],
    ) -> None:
        self._keys = keys
        self._payload_limit = payload_limit
        self._smallest_limit = smallest_limit
        # job stream -> (model, version, smallest limit), as bytes where compared with fields
        self._streams: dict[str, tuple[bytes, bytes, int] | None] = {}
        self._clients: dict[bytes, bytes] = {}  # see _KNOWN_CLIENTS_MAX

    def check_keys(self, fields: RawFields) -> Refusal | None:
        """Refuses an entry naming a key that is not its own client's and request's."""
        get = fields.get
        request_id, reply = get(b"id"), get(b"reply")
        if type(request_id) is not bytes or type(reply) is not bytes or not request_id:
            return None  # the decoder refuses it ("missing field 'id'"); nobody is answered
        # A known client's unary job: its reply stream's head is one found valid, with the
        # request id after it, and its bell that client's (what the full check finds of it).
        if (
            len(reply) <= _TEXT_MAX
            and reply.endswith(request_id)
            and get(b"credit") is None
            and get(b"inputs") is None
        ):
            bell = self._clients.get(reply[: len(reply) - len(request_id)])
            if bell is not None and get(b"bell") in (None, bell):
                return None
        keys = self._keys
        client = keys.client_of_reply(reply, request_id) if len(reply) <= _TEXT_MAX else None
        if client is None:
            expected = keys.reply("<client id>", _show(request_id))
            return _foreign("reply", reply, f"not the reply stream {expected} of its request")
        own_bell = keys.bell(client).encode()
        bell = get(b"bell")
        if bell is not None and bell != own_bell:
            return _foreign("bell", bell, _own(keys.bell(client)))
        if len(self._clients) >= _KNOWN_CLIENTS_MAX:
            self._clients.clear()
        self._clients[reply[: len(reply) - len(request_id)]] = own_bell
        credit, inputs = get(b"credit"), get(b"inputs")
        if credit is not None or inputs is not None:  # a predict_stream's
            rid = request_id.decode()  # UTF-8: it ends a key that decoded
            if credit is not None and credit != keys.credit(client, rid).encode():
                return _foreign("credit", credit, _own(keys.credit(client, rid)))
            if inputs is not None and inputs != keys.inputs(client, rid).encode():
                return _foreign("inputs", inputs, _own(keys.inputs(client, rid)))
        return None

    def check_control(self, fields: RawFields) -> Refusal | None:
        """Checks a control stream's entry before it is decoded: its keys, and its size."""
        size = sum(map(len, fields.values()))
        if size > CONTROL_MAX_BYTES:
            reason = f"a control request of {size} bytes (at most {CONTROL_MAX_BYTES})"
            return Refusal(ErrorCode.PAYLOAD_TOO_LARGE, "PayloadTooLarge", reason, answer=False)
        return self.check_keys(fields)

    def check_entry(self, stream: str, fields: RawFields) -> Refusal | None:
        """Checks a job stream's entry before it is decoded: its keys, that its model (and
        version) are the stream's, and its size against the model's payload limit."""
        refusal = self.check_keys(fields)
        if refusal is not None:
            return refusal
        try:
            owner = self._streams[stream]
        except KeyError:
            owner = self._streams[stream] = self._owner(stream)
        model, version = fields.get(b"model"), fields.get(b"version")
        if owner is not None and type(model) is bytes and model:
            stream_model, stream_version, smallest = owner
            if model != stream_model:
                reason = (
                    f"the job names model {_show(model)!r} but was sent to {stream}, the job "
                    f"stream of model {_show(stream_model)!r}: refused, a stream's jobs run "
                    "only on its own model"
                )
                return Refusal(ErrorCode.BAD_ENTRY, "WireError", reason, answer=True)
            if stream_version and version != stream_version:
                reason = (
                    f"the job names version {_show(version or b'')!r} but was sent to "
                    f"{stream}, the job stream of version {_show(stream_version)!r} of model "
                    f"{_show(stream_model)!r}: refused"
                )
                return Refusal(ErrorCode.BAD_ENTRY, "WireError", reason, answer=True)
            size = sum(map(len, fields.values()))
            if size <= smallest:
                return None
        else:
            size = sum(map(len, fields.values()))
        if type(model) is not bytes or not model:
            model = owner[0] if owner is not None else b""
        name = _show(model)
        wanted = _show(version) if type(version) is bytes and version else None
        limit = self._payload_limit(name, wanted)
        if size > limit:
            reason = (
                f"payload of {size} bytes is over the limit of {limit} bytes "
                f"(max_payload_bytes of model {name!r})"
            )
            return Refusal(ErrorCode.PAYLOAD_TOO_LARGE, "PayloadTooLarge", reason, answer=True)
        return None

    def _owner(self, stream: str) -> tuple[bytes, bytes, int] | None:
        owner = self._keys.job_stream_of(stream)
        if owner is None:
            return None
        model, version = owner
        return model.encode(), (version or "").encode(), self._smallest_limit(model)


def _show(value: bytes) -> str:
    """A field for a reason: text, cut short (a crafted field may be megabytes)."""
    text = value[:_TEXT_MAX].decode(errors="backslashreplace")
    return text if len(value) <= _TEXT_MAX else f"{text}... ({len(value)} bytes)"


def _own(key: str) -> str:
    return f"not {key}, which its client and request id name"


def _foreign(name: str, value: bytes, why: str) -> Refusal:
    reason = (
        f"field {name!r} names {_show(value)!r}, {why}: refused, a worker writes only to the "
        "keys of the job's own client and request"
    )
    return Refusal(ErrorCode.BAD_ENTRY, "WireError", reason, answer=False)
