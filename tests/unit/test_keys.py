"""Keys builds every key and parses it back: each parser is the inverse of its builder, and
takes no other kind of key."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.broker.keys import Keys, hash_tag

_PLAIN = st.text(
    st.characters(codec="utf-8", exclude_characters="{}", exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
)
_CLIENT = st.text(
    st.characters(codec="ascii", categories=("L", "N", "P"), exclude_characters="{}"),
    min_size=1,
    max_size=20,
)
_KEYS = st.builds(Keys, st.sampled_from(["conveyor", "t", "a:b"]))


def _every_key(keys: Keys, model: str, client: str, request: str) -> dict[str, str]:
    return {
        "jobs": keys.jobs(model),
        "version": keys.jobs(model, "v1"),
        "dead": keys.dead(model),
        "control": keys.control(model),
        "limits": keys.limits(model),
        "reply": keys.reply(client, request),
        "inputs": keys.inputs(client, request),
        "credit": keys.credit(client, request),
        "claim": keys.claim(client, request),
        "bell": keys.bell(client),
        "worker": keys.worker(client),
        "workers": keys.workers(),
    }


@given(keys=_KEYS, model=_PLAIN, version=_PLAIN, client=_CLIENT, request=_PLAIN)
def test_every_parser_inverts_its_builder(
    keys: Keys, model: str, version: str, client: str, request: str
) -> None:
    assert keys.job_stream_of(keys.jobs(model)) == (model, None)
    assert keys.job_stream_of(keys.jobs(model, version)) == (model, version)
    assert keys.dead_stream_of(keys.dead(model)) == model
    assert keys.control_stream_of(keys.control(model)) == model
    assert keys.reply_of(keys.reply(client, request)) == (client, request)
    assert keys.client_of_reply(keys.reply(client, request).encode(), request.encode()) == client
    assert keys.bell_of(keys.bell(client)) == client
    assert keys.worker_of(keys.worker(client)) == client
    assert hash_tag(keys.jobs(model, version)) == model
    assert hash_tag(keys.reply(client, request)) == client


_PARSERS: dict[str, Callable[[Keys, str], object]] = {
    "jobs": Keys.job_stream_of,
    "dead": Keys.dead_stream_of,
    "control": Keys.control_stream_of,
    "reply": Keys.reply_of,
    "bell": Keys.bell_of,
    "worker": Keys.worker_of,
}
_TAKES = {"jobs": {"jobs", "version"}}


@pytest.mark.parametrize("parser", sorted(_PARSERS))
def test_a_parser_takes_only_its_own_kind_of_key(parser: str) -> None:
    keys = Keys("p")
    for kind, key in _every_key(keys, "m", "c", "r").items():
        taken = _PARSERS[parser](keys, key) is not None
        assert taken == (kind in _TAKES.get(parser, {parser})), (parser, kind, key)
        # nor the same key under another prefix
        assert _PARSERS[parser](Keys("q"), key) is None, (parser, key)


@pytest.mark.parametrize(
    "key",
    [
        "p:{m}:v::jobs",  # an empty version
        "p:{}:jobs",  # an empty model
        "p:{m:jobs",  # no closing brace
        "p:{m}:jobs:x",
        "p:{m}x:dead",
        "p:reply:{c}:",  # an empty request id
        "p:reply:{}:r",  # an empty client id
        "p:reply:{c d}:r",  # not a client id
        "p:bell:{c}:x",
        "p:worker:",
    ],
)
def test_look_alike_keys_are_not_taken(key: str) -> None:
    keys = Keys("p")
    assert all(parse(keys, key) is None for parse in _PARSERS.values()), key
