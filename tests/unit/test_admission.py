"""worker/admission.py on its own: which keys a job entry may name (no Redis needed; the end
to end checks against a real worker are in test_crafted_jobs.py)."""

from __future__ import annotations

import time

import pytest

from conveyor.broker.keys import Keys
from conveyor.broker.wire import FieldValue, Job, encode_job
from conveyor.worker.admission import CONTROL_MAX_BYTES, Admission

KEYS = Keys("conveyor")
CLIENT, REQUEST = "c0ffee", "c0ffee-7"


def fields(**changes: str) -> dict[bytes, bytes]:
    job = Job(
        id=REQUEST,
        method="predict_stream",
        model="echo",
        version=None,
        reply=KEYS.reply(CLIENT, REQUEST),
        bell=KEYS.bell(CLIENT),
        deadline=time.time() + 30,
        sent_at=time.time(),
        inputs=KEYS.inputs(CLIENT, REQUEST),
        credit=KEYS.credit(CLIENT, REQUEST),
        window=4,
    )
    encoded = {**encode_job(job), **changes}
    return {k.encode(): _stored(v) for k, v in encoded.items()}


def _stored(value: FieldValue) -> bytes:
    """The bytes Redis holds for a field value (as redis-py encodes it)."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return repr(value).encode()
    return bytes(value)


def admission(limit: int = 1 << 20) -> Admission:
    return Admission(KEYS, lambda model, version: limit, lambda model: limit)


def test_a_clients_own_keys_pass() -> None:
    assert admission().check_entry(KEYS.jobs("echo"), fields()) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reply", "victim:string"),
        ("reply", "conveyor:{other}:jobs"),
        ("reply", KEYS.reply(CLIENT, "c0ffee-8")),  # another request's reply stream
        ("reply", KEYS.reply("a}b", REQUEST)),  # a brace would move the hash tag
        ("reply", KEYS.reply("", REQUEST)),
        ("reply", "other-prefix:reply:{c0ffee}:c0ffee-7"),
        ("bell", KEYS.bell("someone-else")),
        ("bell", "victim:newlist"),
        ("credit", "victim:queue"),
        ("credit", KEYS.credit(CLIENT, "c0ffee-8")),
        ("inputs", KEYS.inputs("someone-else", REQUEST)),
    ],
)
def test_a_key_the_client_and_request_do_not_name_is_refused(field: str, value: str) -> None:
    refusal = admission().check_entry(KEYS.jobs("echo"), fields(**{field: value}))
    assert refusal is not None
    assert not refusal.answer  # nobody is answered through keys that are not trusted
    assert f"field {field!r} names {value!r}" in refusal.reason


def test_a_huge_reply_field_is_refused_without_being_decoded() -> None:
    refusal = admission().check_entry(KEYS.jobs("echo"), fields(reply="x" * 10_000_000))
    assert refusal is not None
    assert "(10000000 bytes)" in refusal.reason
    assert len(refusal.reason) < 5000


def test_the_stream_decides_the_model_and_the_version() -> None:
    refusal = admission().check_entry(KEYS.jobs("echo"), fields(model="counter"))
    assert refusal is not None
    assert refusal.answer
    assert "names model 'counter'" in refusal.reason
    refusal = admission().check_entry(KEYS.jobs("echo", "v1"), fields(version="v2"))
    assert refusal is not None
    assert "names version 'v2'" in refusal.reason
    assert admission().check_entry(KEYS.jobs("echo", "v1"), fields(version="v1")) is None


def test_the_size_is_checked_on_the_raw_fields() -> None:
    refusal = admission(limit=100).check_entry(KEYS.jobs("echo"), fields(envelope="\xc1" * 200))
    assert refusal is not None
    assert refusal.code == "payload_too_large"
    assert "over the limit of 100 bytes (max_payload_bytes of model 'echo')" in refusal.reason


def test_missing_fields_are_left_to_the_decoder() -> None:
    entry = fields()
    del entry[b"id"]
    assert admission().check_keys(entry) is None


def test_a_control_request_is_small() -> None:
    assert admission().check_control(fields()) is None
    refusal = admission().check_control(fields(envelope="x" * (CONTROL_MAX_BYTES + 1)))
    assert refusal is not None
    assert "control request of" in refusal.reason
    assert admission().check_control(fields(bell="victim:list")) is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reply", KEYS.reply(CLIENT, "c0ffee-8")),
        ("reply", KEYS.reply("someone-else", REQUEST)),
        ("reply", KEYS.reply(CLIENT, REQUEST) + "x"),
        ("bell", KEYS.bell("someone-else")),
        ("credit", "victim:queue"),
        ("inputs", KEYS.inputs("someone-else", REQUEST)),
        ("id", "c0ffee-8"),
    ],
)
def test_the_last_client_s_keys_kept_refuse_as_a_fresh_check(field: str, value: str) -> None:
    """A read's entries are mostly one client's: its keys are kept from the last entry that
    passed, and an entry naming other keys is still refused with the same reason."""
    unary = fields()
    del unary[b"inputs"], unary[b"credit"]
    checked = admission()
    assert checked.check_entry(KEYS.jobs("echo"), unary) is None
    assert checked.check_entry(KEYS.jobs("echo"), dict(unary)) is None  # kept: passes again
    bad = {**unary, field.encode(): value.encode()}
    assert checked.check_entry(KEYS.jobs("echo"), bad) == admission().check_entry(
        KEYS.jobs("echo"), bad
    )
    assert checked.check_entry(KEYS.jobs("echo"), bad) is not None
