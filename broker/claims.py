"""One run per request, when one job's entry exists twice.

A job entry can be in its stream twice: redis-py re-sends a pipeline of XADDs whose reply was
lost with the connection, or a client re-sends a job it found missing after an outage. Both
copies carry one request id, each has its own entry id, and both start at delivery count 1.
Before it runs a job, a worker claims the request for its copy:

    SET <prefix>:claim:{<client>}:<request id> "<attempt> <entry id>" NX GET PX <ttl>

- no claim yet: this copy runs;
- the claim names this entry: a delivery of the same copy (a reclaim after its worker died),
  which runs;
- the claim names an earlier send attempt of the client (a re-send of a job the client found
  missing, say an answer lost with a connection): this copy takes the claim over and runs;
- else another copy of this send runs or ran: this one is a duplicate, acked without an answer.

The claim lives until the job's deadline (``entries.claim_ttl``): a copy read later is
skipped as expired anyway. A claim Redis cannot store (out of memory, say) lets the
copy run: the client's fencing (a reply names its entry and delivery) still keeps every caller
to one run's answer. Cost: one SET per job, pipelined with other jobs' commands; the claims of
one client that leave in one round trip go as one script that runs those SETs (``SoonClaims``).
A unary job claims while it runs (``claim_soon``: no round trip before the model, no task); a
stream before its first chunk (``claim``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from conveyor.broker.errors import refused_by_acl
from conveyor.broker.keys import hash_tag
from conveyor.broker.pipelining import PipelineBatcher, Settle
from conveyor.broker.wire import Job

__all__ = ("SoonClaims", "claim")

logger = logging.getLogger(__name__)


# A unary job's claim rides with the first pipeline that goes out (its answer's, for a quick
# job: no round trip of its own), at the latest this long after the job started: a copy that
# runs longer is stopped early; a quicker one may run twice, which costs little.
_CLAIM_DELAY_S = 0.01


def _value(job: Job, entry_id: bytes) -> str:
    return f"{job.attempt} {entry_id.decode()}"


def _holder(job: Job, entry_id: bytes, held: object) -> str | None:
    """What a claim's SET NX GET returned, as the copy holding the request (None: this one
    may run; it takes the claim over when it is a later send of the client's)."""
    if held is None:
        return None
    text = held.decode(errors="replace") if isinstance(held, bytes) else str(held)
    attempt, _, entry = text.partition(" ")
    if entry == entry_id.decode():
        return None  # this copy again: delivered anew after its worker stopped
    if attempt.isdigit() and int(attempt) < job.attempt:
        return None  # the client sent the job again, finding the earlier send lost
    return text


def _ttl_ms(ttl_s: float) -> int:
    return max(1000, int(ttl_s * 1000))


async def claim(
    batcher: PipelineBatcher, key: str, job: Job, entry_id: bytes, ttl_s: float
) -> str | None:
    """Claims ``key`` for this copy of ``job``; returns None if it may run, else the claim
    that another copy holds."""
    value, ttl_ms = _value(job, entry_id), _ttl_ms(ttl_s)
    try:
        (held,) = await batcher.run(lambda pipe: pipe.set(key, value, nx=True, get=True, px=ttl_ms))
    except Exception as error:  # cannot tell: run it, fencing keeps callers to one answer
        logger.info("job.claim_failed request=%s error=%s: running it", job.id, error)
        return None
    holder = _holder(job, entry_id, held)
    if holder is None and held is not None and held != value.encode():
        batcher.submit(_overwrite(key, value, ttl_ms))  # a later send takes the claim over
    return holder


# KEYS: claim keys of one hash tag (one Cluster slot). ARGV: each key's value, then each key's
# TTL in ms. Returns what each SET NX GET returned (nil: nobody held the key), in order.
_CLAIM_ALL = """
local n = #KEYS
local held = {}
for i = 1, n do
  held[i] = redis.call('SET', KEYS[i], ARGV[i], 'NX', 'GET', 'PX', ARGV[n + i])
end
return held
"""
_CLAIM_ALL_SHA = hashlib.sha1(_CLAIM_ALL.encode()).hexdigest()
_SCRIPT_MIN = 2  # claims of one hash tag in one pipeline that go as one script, not SETs

# (key, value, ttl in ms, job, entry id, callback) of a claim not yet in a pipeline
_Claim = tuple[str, str, int, Job, bytes, Callable[[str | None], None]]


class SoonClaims:
    """Unary jobs' claims (:meth:`claim_soon`), sent together: the claims made before a
    round trip leaves ride in it as one entry of the batcher's queue, with one timer for the
    latest they may wait (``_CLAIM_DELAY_S``), and one settle for their replies. The claims of
    one client (one hash tag: one Cluster slot) go as one script (``_CLAIM_ALL``: a SET NX GET
    each, as when sent alone); a lone claim, and all of them on Redis Cluster, as a SET each.

    The script is sent by its hash, loaded (SCRIPT LOAD, in the same pipeline) the first time
    and after Redis answers that it lacks it (a restart); the claims a script did not run then
    go again as SETs with the next round trip. A Redis user whose ACL refuses the script
    (EVALSHA, SCRIPT LOAD) makes the worker say so once and send SETs from then on. Measured
    (``python -m bench.batchpath``'s steps: a batch of 256 claims against a local Redis, the
    claiming process's CPU): a SET each 10.1-11.1 us a claim, one script 3.6-3.9 us."""

    def __init__(self, batcher: PipelineBatcher, *, scripted: bool = True) -> None:
        self._batcher = batcher
        self._waiting: list[_Claim] = []
        self._plain: list[_Claim] = []  # claims a script did not run: SETs, next round trip
        self._scripted = scripted  # False on Redis Cluster, or once the ACL refused the script
        self._loaded = False  # whether Redis was seen to hold the script

    def claim_soon(
        self,
        key: str,
        job: Job,
        entry_id: bytes,
        ttl_s: float,
        claimed: Callable[[str | None], None],
    ) -> None:
        """As :func:`claim`, without waiting: ``claimed`` gets the outcome once Redis answered
        (nothing if the worker stops first). Rides in the batcher's next pipeline."""
        if not (self._waiting or self._plain):
            self._batcher.submit(self._add, _CLAIM_DELAY_S)
        self._waiting.append((key, _value(job, entry_id), _ttl_ms(ttl_s), job, entry_id, claimed))

    def _add(self, pipe: Pipeline) -> Settle | None:
        claims, self._waiting = self._waiting, []
        plain, self._plain = self._plain, []
        if not (claims or plain):
            return None
        # each command's claims, in order: a SET's one, a script's many, a load's none
        sent: list[tuple[str, list[_Claim]]] = []
        groups: dict[str, list[_Claim]] = {}
        for claim in claims:
            groups.setdefault(hash_tag(claim[0]) if self._scripted else "", []).append(claim)
        for group in groups.values():
            if not self._scripted or len(group) < _SCRIPT_MIN:
                plain += group
                continue
            if not self._loaded and not any(kind == _LOAD for kind, _ in sent):
                pipe.execute_command("SCRIPT LOAD", _CLAIM_ALL)
                sent.append((_LOAD, []))
            count = len(group)
            args = [claim[0] for claim in group]
            args += [claim[1] for claim in group]
            args += [str(claim[2]) for claim in group]
            pipe.execute_command("EVALSHA", _CLAIM_ALL_SHA, str(count), *args)
            sent.append((_SCRIPT, group))
        for claim in plain:
            key, value, ttl_ms = claim[0], claim[1], claim[2]
            # pipe.set()'s own argument handling costs more than the command's packing; the
            # TTL as text: the packer's fast path takes only str and bytes (fastpath.py)
            pipe.execute_command("SET", key, value, "NX", "GET", "PX", str(ttl_ms), get=True)
            sent.append((_SET, [claim]))

        def settle(results: list[Any] | BaseException) -> None:
            for i, (kind, group) in enumerate(sent):
                result = results if isinstance(results, BaseException) else results[i]
                if kind == _LOAD:
                    self._script_loaded(result)
                    continue
                if kind == _SCRIPT and isinstance(result, BaseException):
                    if self._script_refused(result):
                        self._again(group)  # as SETs, with the next round trip
                        continue
                    held_all: list[Any] = [result] * len(group)
                elif kind == _SCRIPT:
                    held_all = list(result) if isinstance(result, list) else []
                    if len(held_all) != len(group):  # not what the script returns: cannot tell
                        held_all = [RuntimeError(f"claims script returned {result!r}")] * len(group)
                else:
                    held_all = [result]
                for claim, held in zip(group, held_all, strict=True):
                    self._settle(claim, held)

        return settle

    def _settle(self, claim: _Claim, held: object) -> None:
        key, value, ttl_ms, job, entry_id, claimed = claim
        if isinstance(held, BaseException):  # cannot tell: fencing keeps one answer
            logger.info("job.claim_failed request=%s error=%s: running it", job.id, held)
            held = None
        if held is None:
            claimed(None)  # the common case: nobody held it
            return
        holder = _holder(job, entry_id, held)
        if holder is None and held != value.encode():
            self._batcher.submit(_overwrite(key, value, ttl_ms))
        claimed(holder)

    def _script_loaded(self, result: object) -> None:
        if not isinstance(result, BaseException):
            self._loaded = True
        elif refused_by_acl(result):
            self._refuse(result)
        # else: loaded or not, the scripts after it say (NOSCRIPT: loaded again next time)

    def _script_refused(self, error: BaseException) -> bool:
        """Whether a script's claims did not run because of the script itself: Redis lacks it
        (NOSCRIPT: a restart; loaded again with the next claims) or the ACL refuses it."""
        if isinstance(error, NoScriptError):
            self._loaded = False
            return True
        if refused_by_acl(error):
            self._refuse(error)
            return True
        return False

    def _refuse(self, error: BaseException) -> None:
        if self._scripted:
            self._scripted = False
            logger.warning(
                "worker.claims_unbatched error=%s: the Redis user may not run the script that "
                "claims a read's requests together (add +evalsha +script|load to its ACL "
                "rules); each request is claimed with a SET",
                str(error).strip(),
            )

    def _again(self, claims: list[_Claim]) -> None:
        if not (self._waiting or self._plain):
            self._batcher.submit(self._add)
        self._plain += claims


_LOAD, _SCRIPT, _SET = "load", "script", "set"


def _overwrite(key: str, value: str, ttl_ms: int) -> Callable[[Pipeline], Settle | None]:
    def add(pipe: Pipeline) -> None:
        pipe.set(key, value, px=ttl_ms)

    return add
