"""broker.errors.refused_by_acl: an ACL refusal is told apart in the words each server uses.

The texts are the servers' own (the e2e security tests get them from a live server: Redis
7.0 on CI's PATH, Valkey 9 in .ci/valkey)."""

from __future__ import annotations

import pytest
from redis import exceptions as rex

from conveyor.broker.entries import is_nogroup
from conveyor.broker.errors import refused_by_acl, translate_every_error
from conveyor.errors import BrokerCommandError, BrokerConnectionError

URL = "redis://cache:6379/0"


@pytest.mark.parametrize(
    "error",
    [
        rex.NoPermissionError(
            "this user has no permissions to run the 'evalsha' command or its subcommand"
        ),
        # Redis 7.0, a command inside a script
        rex.ResponseError(
            "The user executing the script can't run this command or subcommand script: "
            "f_5ea8e7a1, on @user_script:17."
        ),
        # Redis >= 7.2 and Valkey, a command inside a script
        rex.ResponseError(
            "ACL failure in script: User conveyor has no permissions to run the "
            "'xinfo|consumers' command script: on @user_script:17."
        ),
    ],
)
def test_refusals_of_each_server_are_refusals(error: Exception) -> None:
    assert refused_by_acl(error)


@pytest.mark.parametrize(
    "error",
    [
        rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rex.ResponseError("NOGROUP No such key 'jobs' or consumer group 'workers'"),
        rex.ConnectionError("no permissions to run: not a reply of Redis at all"),
        ValueError("ACL failure"),
    ],
)
def test_other_errors_are_not(error: Exception) -> None:
    assert not refused_by_acl(error)


def test_a_group_gone_is_told_from_a_failover() -> None:
    assert is_nogroup(rex.ResponseError("NOGROUP No such key 'jobs' or consumer group"))
    assert is_nogroup(rex.ResponseError("UNBLOCKED the stream key no longer exists"))
    failover = "UNBLOCKED force unblock from blocking operation, instance state changed "
    assert not is_nogroup(rex.ResponseError(failover + "(master -> replica?)"))


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (rex.ReadOnlyError("You can't write against a read only replica."), "read-only replica"),
        (
            rex.ResponseError(
                "UNBLOCKED force unblock from blocking operation, instance state changed "
                "(master -> replica?)"
            ),
            "ended a blocking read",
        ),
    ],
)
def test_a_failover_passes_as_an_outage(error: Exception, words: str) -> None:
    with pytest.raises(BrokerConnectionError, match=words), translate_every_error(URL):
        raise error


def test_a_command_the_server_lacks_names_the_version_conveyor_needs() -> None:
    lacked = rex.ResponseError("unknown command `BLMPOP`, with args beginning with: `1.0`")
    with pytest.raises(BrokerCommandError, match=r"needs Redis 7\.0"), translate_every_error(URL):
        raise lacked
