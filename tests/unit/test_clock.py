"""worker/clock.py on its own: deadlines from Redis's clock, whatever the client's says (the
end-to-end checks, with real processes whose clocks are off, are in
test_time_and_identity.py)."""

from __future__ import annotations

import time

import pytest

from conveyor.worker.clock import RedisClock, remaining_fields


def test_redis_clock_offset_and_entry_times() -> None:
    clock = RedisClock()
    now = time.time()
    redis_now = int(now) + 100.25  # Redis's clock is ~100 s ahead of ours
    clock.observe((int(now) + 100, 250_000), now - 0.01, now + 0.01)
    assert abs(clock.offset - (redis_now - now)) < 1e-6
    stored_ms = int(redis_now * 1000)  # an entry Redis stored just now, by its clock
    assert abs(clock.stored_at(f"{stored_ms}-3".encode()) - now) < 0.002


def test_a_deadline_is_the_clients_timeout_from_when_redis_stored_the_job() -> None:
    clock = RedisClock()  # Redis and this host agree
    stored = time.time() - 2.0  # stored 2 s ago
    entry = f"{int(stored * 1000)}-0".encode()
    for client_skew in (-3600.0, -5.0, 0.0, 60.0):  # the client's clock is what it is
        sent_at = stored + client_skew
        deadline = clock.deadline(entry, sent_at + 3.0, sent_at)
        assert abs(deadline - (stored + 3.0)) < 0.002  # 1 s left, whatever the skew


def test_a_requeued_job_keeps_only_the_time_it_has_left() -> None:
    now = time.time()
    fields = {b"id": b"r1", b"deadline": b"1.0", b"sent_at": b"0.0", b"envelope": b"\x80"}
    again = remaining_fields(fields, now + 1.5)
    assert again[b"id"] == b"r1"
    assert again[b"envelope"] == b"\x80"
    # the same deadline, and a sent_at of when it was requeued: budget = what is left
    assert float(again[b"deadline"]) == pytest.approx(now + 1.5, abs=1e-6)
    assert float(again[b"sent_at"]) >= now
    past = remaining_fields(fields, now - 10)
    assert float(past[b"deadline"]) == float(past[b"sent_at"])  # no time left: skipped
