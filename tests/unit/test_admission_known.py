"""Admission's known clients (a reply stream head found valid is not parsed again): an
admission that has passed a client's jobs decides every entry as a fresh one does."""

from __future__ import annotations

import pytest

from conveyor.worker.admission import Admission
from tests.unit.test_admission import CLIENT, KEYS, REQUEST, admission, fields


def _unary(**changes: str) -> dict[bytes, bytes]:
    entry = fields(method="predict", **changes)
    del entry[b"credit"], entry[b"inputs"], entry[b"window"]
    return entry


def _warm() -> Admission:
    warm = admission()
    for request in ("c0ffee-1", REQUEST, "c0ffee-70"):
        entry = _unary(id=request, reply=KEYS.reply(CLIENT, request))
        assert warm.check_entry(KEYS.jobs("echo"), entry) is None
    assert warm._clients  # the client is known now
    return warm


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"id": "c0ffee-8"},  # a new request of the known client
        {"id": "c0ffee-8", "reply": KEYS.reply(CLIENT, REQUEST)},  # another request's stream
        {"id": "7", "reply": KEYS.reply(CLIENT, REQUEST)},  # its stream ends with the id
        {"id": "-7", "reply": KEYS.reply(CLIENT, REQUEST)},
        {"bell": KEYS.bell("someone-else")},
        {"bell": "victim:newlist"},
        {"credit": "victim:queue"},
        {"inputs": KEYS.inputs("someone-else", REQUEST)},
        {"credit": KEYS.credit(CLIENT, REQUEST), "inputs": KEYS.inputs(CLIENT, REQUEST)},
        {"id": "x" * 5000, "reply": KEYS.reply(CLIENT, "x" * 5000)},  # over the text limit
        {"reply": KEYS.reply("someone-else", REQUEST)},
        {"reply": "x" + KEYS.reply(CLIENT, REQUEST)},
        {"model": "counter"},
    ],
)
def test_a_known_client_s_entries_are_decided_as_a_fresh_admission_does(
    changes: dict[str, str],
) -> None:
    entry = _unary(**changes)
    fresh = admission().check_entry(KEYS.jobs("echo"), entry)
    assert _warm().check_entry(KEYS.jobs("echo"), entry) == fresh


def test_no_bell_is_decided_as_a_fresh_admission_does() -> None:
    entry = _unary()
    del entry[b"bell"]
    assert _warm().check_entry(KEYS.jobs("echo"), entry) == admission().check_entry(
        KEYS.jobs("echo"), entry
    )
