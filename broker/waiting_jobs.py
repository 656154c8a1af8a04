"""Jobs nobody idle waits for: what a busy worker may take for the batch it forms next.

A worker with room waits on its model's job stream (a blocking XREADGROUP) and gets each job as
it arrives: Redis hands it to the reader that has waited longest. A busy worker may take jobs to
form its next batch while its model runs (``worker.call_limit`` says when), but only jobs no
worker with room would take: when every other consumer of the stream holds at least ``busy``
jobs (its batches' worth: none has room), or when the oldest waiting job has waited ``min_age``
(a worker with room would have read it by then, or its batch has started without it).
:meth:`WaitingJobs.take` does that in one round trip per stream, atomically: a script reads the
group's consumers and last delivered id, looks at the first entry after it, and takes up to
``count`` entries with XREADGROUP, as a blocking read would have. A consumer's count is its
pending entries: jobs read and not yet acked (so a batched model's worker sends its acks before
it reads: ``worker.consumer``). Redis >= 7.0 lists a consumer only once it got an entry or was
made (``XGROUP CREATECONSUMER``), so each worker makes its own at start
(``bookkeeping.join_groups``): otherwise a new worker between two blocking reads would not
count as having room, and a busy one would take the jobs meant for it. One key per script:
fine on Redis Cluster. TIME in a script needs Redis >= 7 (effects replication); BLMPOP does
anyway.

An ACL user set up from an older README may not run the script (EVALSHA, SCRIPT LOAD) or a
command in it (XINFO CONSUMERS, TIME): the worker then says what the user lacks, once, and
looks with a plain XREADGROUP from then on (it takes waiting jobs without the check, as
before the check existed), so it keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import Redis
from redis.exceptions import ResponseError

from conveyor.broker.entries import Delivery
from conveyor.broker.errors import refused_by_acl
from conveyor.broker.keys import GROUP
from conveyor.broker.wire import RawFields

__all__ = ("WaitingJobs",)

logger = logging.getLogger(__name__)

# KEYS[1]: a job stream. ARGV: group, consumer, count, min age in ms, busy. Returns
# XREADGROUP's reply, or nil when no job may be taken (or there is no such stream or group).
_TAKE_WAITING = """
local function fields(flat)
  local info = {}
  for i = 1, #flat, 2 do info[flat[i]] = flat[i + 1] end
  return info
end
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local last = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = fields(group)
  if info['name'] == ARGV[1] then last = info['last-delivered-id'] end
end
if last == nil then return nil end
local first = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1)[1]
if first == nil then return nil end
local busy = tonumber(ARGV[5])
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = fields(consumer)
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) < busy then
    -- another worker has room: only what it left waiting min_age
    local now = redis.call('TIME')
    local newest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    if tonumber(string.match(first[1], '^(%d+)')) > newest - tonumber(ARGV[4]) then
      return nil
    end
    break
  end
end
return redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                  'STREAMS', KEYS[1], '>')
"""


class WaitingJobs:
    """One worker's look at its job streams for jobs that waited (see the module head)."""

    def __init__(self, redis: Redis, consumer: str) -> None:
        self._consumer = consumer
        self._script = redis.register_script(_TAKE_WAITING)
        self.checked = True  # False once the ACL refused the script: plain reads instead

    async def take(
        self, streams: Sequence[str], count: int, min_age_s: float, busy: int
    ) -> list[Delivery] | None:
        """At most ``count`` jobs from ``streams`` (in the given order) that no worker with
        room would take (see the module head); never blocks. None when the ACL refuses the
        script (:attr:`checked` is then False): the caller reads plainly."""
        found: list[Delivery] = []
        min_age_ms = max(int(min_age_s * 1000), 1)
        for stream in streams:
            if len(found) >= count:
                break
            args: list[str | int] = [GROUP, self._consumer, count - len(found), min_age_ms, busy]
            try:
                reply = await self._script(keys=[stream], args=args)
            except ResponseError as error:
                if not refused_by_acl(error):
                    raise
                self.checked = False
                logger.warning(
                    "worker.look_unchecked error=%s: the Redis user may not run the script "
                    "that leaves waiting jobs to idle workers (add +evalsha +script|load "
                    "+xinfo|consumers +time to its ACL rules); a busy batched model takes "
                    "waiting jobs without that check",
                    str(error).strip(),
                )
                return found or None
            found += _deliveries(stream, reply)
        return found


def _deliveries(stream: str, reply: Any) -> list[Delivery]:
    """XREADGROUP's reply as a script returns it: [[key, [[id, [field, value, ...]], ...]]]."""
    if not reply:
        return []
    deliveries: list[Delivery] = []
    for _key, entries in reply:
        for entry_id, flat in entries:
            fields: RawFields = dict(zip(flat[::2], flat[1::2], strict=True))
            deliveries.append(Delivery(stream, entry_id, fields))
    return deliveries
