"""A layout kept from read to read (``JobDecoder.next_read``, the per-job path's decoder):
every job still decodes as it does alone, and a layout that stops serving is let go."""

from __future__ import annotations

from typing import Any

from conveyor.broker.wire import decode_job
from conveyor.broker.wire.layout import JobDecoder
from tests.unit.test_wire_layout import _entry, _outcome, _request


def _reads(decoder: JobDecoder, reads: list[list[Any]]) -> JobDecoder:
    for read in reads:
        decoder = decoder.next_read()
        for fields in read:
            assert _outcome(decoder.decode, fields) == _outcome(decode_job, fields)
    return decoder


def test_a_layout_serves_later_reads() -> None:
    decoder = _reads(JobDecoder(), [[_entry(0)], [], [_entry(1), _entry(2)]])
    layout = decoder._layout
    assert layout is not None
    decoder = decoder.next_read()
    assert decoder._layout is layout  # proven once, not once a read
    decoder.decode(_entry(3))
    assert decoder.laid_out  # built from it without a full decode


def test_a_layout_that_serves_no_job_of_a_read_is_let_go() -> None:
    other = _request(9.0, extra=1)
    decoder = _reads(JobDecoder(), [[_entry(0)], [_entry(1, request=other)]])
    assert decoder._layout is not None
    decoder = decoder.next_read()
    assert decoder._layout is None
    decoder = _reads(decoder, [[_entry(2, request=other), _entry(3, request=other)]])
    assert decoder.laid_out  # the new client's layout, found in its read


def test_finding_a_layout_is_tried_again_now_and_then() -> None:
    bad = _entry(0)
    del bad[b"envelope"]
    decoder = JobDecoder()
    for _ in range(3):  # entries with no layout spend the tries
        decoder = _reads(decoder, [[_entry(1, request=[1, 2])]])
    assert decoder._tries == 0
    decoder = _reads(decoder, [[_entry(2)], [_entry(3)]])
    assert decoder._layout is None  # no try left: decoded alone, correctly
    for _ in range(64):
        decoder = _reads(decoder, [[bad]])
    decoder = _reads(decoder, [[_entry(4)], [_entry(5)]])
    assert decoder.laid_out
