"""conveyor.broker's settings, clients and errors modules: one URL parsed once, pinned
clients, and errors that name the server without its password, against real private servers
(password, ACL, TLS, unix socket)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from redis import exceptions as rex

from conveyor.broker import (
    DEFAULT_REDIS_URL,
    RedisSettings,
    create_client,
    create_sync_client,
    default_redis_url,
    ping,
    redact_url,
    translate_errors,
)
from conveyor.broker.errors import is_out_of_memory, out_of_memory
from conveyor.embedded import RedisServer, RedisStartError, TLSFiles
from conveyor.errors import BrokerConnectionError, BrokerOutOfMemory, ConveyorError, InvalidRedisURL
from tests.support.tls import openssl_tls_files

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-Zq"
ServerFactory = Callable[..., RedisServer]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only; trio has its own transport


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://example.com", {"scheme": "redis", "host": "example.com", "port": 6379, "db": 0}),
        ("redis://example.com:7000/3", {"host": "example.com", "port": 7000, "db": 3}),
        ("redis://[::1]:7000/1", {"host": "::1", "port": 7000, "db": 1}),
        ("redis://alice:pw@cache/5", {"username": "alice", "db": 5}),
        ("redis://:pw@cache", {"username": None, "host": "cache"}),
        ("redis://us%40er:p%40ss@cache", {"username": "us@er"}),
        (
            "rediss://cache.internal:6380/2?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required",
            {
                "scheme": "rediss",
                "port": 6380,
                "db": 2,
                "ssl_ca_certs": "/etc/ca.pem",
                "ssl_cert_reqs": "required",
            },
        ),
        (
            "rediss://cache?ssl_cert_reqs=none&ssl_check_hostname=false",
            {"ssl_cert_reqs": "none", "ssl_check_hostname": False},
        ),
        ("unix:///run/redis/redis.sock?db=4", {"scheme": "unix", "path": "/run/redis/redis.sock"}),
        ("unix://bob:pw@/tmp/r.sock", {"path": "/tmp/r.sock", "username": "bob", "db": 0}),
        (
            "redis://h?socket_timeout=2.5&max_connections=7&retries=0&client_name=c1",
            {"socket_timeout": 2.5, "max_connections": 7, "retries": 0, "client_name": "c1"},
        ),
    ],
)
def test_from_url(url: str, expected: dict[str, object]) -> None:
    settings = RedisSettings.from_url(url)
    assert {name: getattr(settings, name) for name in expected} == expected
    assert RedisSettings.from_url(settings.to_url()) == settings


def test_unix_db_comes_from_the_query() -> None:
    assert RedisSettings.from_url("unix:///tmp/r.sock?db=4").db == 4


def test_password_is_parsed_and_percent_decoded() -> None:
    settings = RedisSettings.from_url("redis://u:p%40ss%3Aw%2Frd@h")
    assert settings.password is not None
    assert settings.password.get_secret_value() == "p@ss:w/rd"
    assert RedisSettings.from_url(settings.to_url()) == settings


@pytest.mark.parametrize(
    "url",
    [
        f"redis://alice:{SECRET}@cache:6379/0",
        f"redis://:{SECRET}@cache",
        f"rediss://alice:{SECRET}@cache?ssl_cert_reqs=none",
        f"unix://:{SECRET}@/tmp/r.sock?db=1",
    ],
)
def test_the_password_never_shows(url: str) -> None:
    settings = RedisSettings.from_url(url)
    for shown in (repr(settings), str(settings), settings.redacted_url, settings.model_dump_json()):
        assert SECRET not in shown
    assert ":***@" in settings.redacted_url
    assert SECRET in settings.to_url()  # only the explicit call reveals it


def test_redacted_url_is_a_canonical_url() -> None:
    settings = RedisSettings.from_url(f"rediss://alice:{SECRET}@cache?ssl_ca_certs=/ca.pem")
    assert settings.redacted_url == "rediss://alice:***@cache:6379/0?ssl_ca_certs=/ca.pem"
    assert RedisSettings().redacted_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"http://:{SECRET}@cache", "scheme 'http'"),
        (f"redis://:{SECRET}@cache:99999", "out of range"),
        (f"redis://:{SECRET}@cache/zero", "db"),
        (f"redis://:{SECRET}@cache?sockettimeout=1", "unknown option 'sockettimeout'"),
        (f"redis://:{SECRET}@cache?db=1&db=2", "given twice"),
        (f"redis://:{SECRET}@cache?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
        (f"unix://:{SECRET}@", "needs a socket path"),
        (f"redis://:{SECRET}@cache?retries=-1", "retries"),
    ],
)
def test_a_bad_url_is_a_clear_error_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        RedisSettings.from_url(url)
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None or SECRET not in str(caught.value.__cause__)


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        ("redis://u@h", "redis://u@h"),
        ("redis://h:1/0", "redis://h:1/0"),
        ("unix://:pw@/tmp/s.sock?db=1", "unix://:***@/tmp/s.sock?db=1"),
        ("redis://:p@ss/w@h", "redis://:***@h"),  # an unencoded @: hide more, not less
        ("redis://h?password=pw&db=1", "redis://h?password=***&db=1"),
        ("not a url", "not a url"),
        # unencoded /, ? or # in a password end urllib's host part early: hide up to the "@"
        ("redis://u:Pw-7xQ?k9@host:6399/0", "redis://u:***@host:6399/0"),
        ("redis://u:a#b@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u:a/b@h:1/0", "redis://u:***@h:1/0"),
        ("redis://u:p@[::1:6379/0", "redis://u:***@[::1:6379/0"),  # urllib cannot parse it
        ("rediss://u:p@h/0?ssl_ca_certs=/ca.pem", "rediss://u:***@h/0?ssl_ca_certs=/ca.pem"),
        ("redis://h/0?client_name=a@b", "redis://h/0?client_name=a@b"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize(
    "url",
    [
        f"redis://u:{SECRET}?k9@host:6399/0",
        f"redis://u:{SECRET}#k9@host:6399/0",
        f"redis://u:{SECRET}/k9@host:6399/0",
        "redis://u:12/hunter2-Zq@host",  # parses as host u, port 12, path /hunter2...
    ],
)
def test_a_password_with_unencoded_characters_is_refused_without_showing_it(url: str) -> None:
    """Before the fix the password showed in the message (redact_url split at "?" first, and
    urllib's own message quoted it as a port)."""
    with pytest.raises(InvalidRedisURL, match="percent-encode") as caught:
        RedisSettings.from_url(url)
    assert SECRET not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_an_http_url_is_one_clear_conveyor_error() -> None:
    with pytest.raises(InvalidRedisURL, match="scheme 'http' is not one of") as caught:
        RedisSettings.from_url(f"http://u:{SECRET}@localhost:8080/")
    assert isinstance(caught.value, ConveyorError)
    assert isinstance(caught.value, ValueError)  # as before: `except ValueError` still works
    assert SECRET not in str(caught.value)


def test_default_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_REDIS_URL", raising=False)
    assert default_redis_url() == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://elsewhere:6380/2")
    assert default_redis_url() == "redis://elsewhere:6380/2"


# -- clients -------------------------------------------------------------------------------------


def test_create_client_pins_our_options() -> None:
    settings = RedisSettings.from_url("redis://h?socket_timeout=3")
    client = create_client(settings)
    blocking = create_client(settings, blocking=True, max_connections=2)
    options, blocking_options = (
        client.connection_pool.connection_kwargs,
        blocking.connection_pool.connection_kwargs,
    )
    assert options["protocol"] == blocking_options["protocol"] == 2
    assert options["decode_responses"] is blocking_options["decode_responses"] is False
    assert options["socket_timeout"] == 3
    # a blocking client's read timeout outlasts its longest BLOCK (5 s unless told)
    assert blocking_options["socket_timeout"] == 3 + 5
    assert (
        create_client(settings, blocking=True, max_block=1).connection_pool.connection_kwargs[
            "socket_timeout"
        ]
        == 3 + 1
    )
    assert client.connection_pool.max_connections == settings.max_connections
    assert blocking.connection_pool.max_connections == 2
    retry, blocking_retry = options["retry"], blocking_options["retry"]
    assert retry.get_retries() == blocking_retry.get_retries() == settings.retries
    assert rex.TimeoutError in retry._supported_errors
    assert rex.TimeoutError not in blocking_retry._supported_errors  # a BLOCK is never re-sent


def test_a_cluster_url_makes_cluster_clients() -> None:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

    settings = RedisSettings.from_url("redis://h:7000?cluster=true")
    assert settings.cluster
    # nothing connects until the first command (tests/test_cluster.py runs a real cluster)
    assert isinstance(create_client(settings), AsyncRedisCluster)
    with pytest.raises(ValueError, match="database 0"):
        create_client(RedisSettings.from_url("redis://h:7000/2?cluster=true"))


@pytest.mark.anyio
async def test_client_round_trip_on_the_session_redis(redis_url: str, prefix: str) -> None:
    settings = RedisSettings.from_url(redis_url)
    assert await ping(settings) >= 0
    client = create_client(settings)
    try:
        await client.set(f"{prefix}:k", b"\x00\xff")
        assert await client.get(f"{prefix}:k") == b"\x00\xff"  # bytes, never decoded
    finally:
        await client.delete(f"{prefix}:k")
        await client.aclose()


@pytest.mark.anyio
async def test_a_blocking_client_waits_past_the_command_timeout(
    redis_url: str, prefix: str
) -> None:
    settings = RedisSettings.from_url(redis_url).model_copy(update={"socket_timeout": 0.2})
    client = create_client(settings, blocking=True)
    try:
        started = time.monotonic()
        assert await client.blmpop(0.6, 1, f"{prefix}:empty", direction="RIGHT") is None
        assert time.monotonic() - started >= 0.55
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_a_blocking_read_that_times_out_is_not_silently_resent(
    redis_server_factory: ServerFactory,
) -> None:
    """DESIGN.md's pitfall: socket timeout + retry would re-send BLOCK (here 6 x 0.3 s)."""
    server = redis_server_factory()  # its own: the connections counted are this test's
    settings = RedisSettings.from_url(server.url).model_copy(
        update={"blocking_socket_timeout": 0.3, "retries": 5}
    )
    client = create_client(settings, blocking=True)
    try:
        with (
            _connections_made(server) as made,
            pytest.raises(BrokerConnectionError, match="timed out"),
            translate_errors(settings),
        ):
            await client.blmpop(5, 1, "empty", direction="RIGHT")
        assert made == [1]  # a re-send would come on a new connection (a timeout drops one)
    finally:
        await client.aclose()


@contextlib.contextmanager
def _connections_made(server: RedisServer) -> Iterator[list[int]]:
    """How many connections ``server`` accepted inside the block (counted by Redis, so a
    loaded machine's pauses change nothing), in the list yielded, once the block ends."""
    made: list[int] = []
    with redis.Redis.from_url(server.url, socket_timeout=10) as admin:

        def accepted() -> int:
            return int(admin.info("stats")["total_connections_received"])

        before = accepted()
        yield made
        made.append(accepted() - before)


@pytest.mark.anyio
async def test_an_exhausted_pool_waits_then_fails_clearly(redis_url: str) -> None:
    settings = RedisSettings.from_url(redis_url).model_copy(update={"pool_timeout": 0.2})
    client = create_client(settings, max_connections=1)
    try:
        held = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            with (
                pytest.raises(BrokerConnectionError, match="pool exhausted"),
                translate_errors(settings),
            ):
                await client.ping()
        finally:
            await client.connection_pool.release(held)
        assert await client.ping()
    finally:
        await client.aclose()


def test_sync_client(redis_url: str, prefix: str) -> None:
    settings = RedisSettings.from_url(redis_url)
    client = create_sync_client(settings)
    try:
        with translate_errors(settings):
            client.set(f"{prefix}:k", b"v", ex=60)
            assert client.get(f"{prefix}:k") == b"v"
            client.delete(f"{prefix}:k")
    finally:
        client.close()


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (rex.AuthenticationError("invalid username-password pair"), "authentication failed"),
        (rex.NoPermissionError("this user has no permissions"), "permission denied"),
        (rex.BusyLoadingError("loading"), "loading"),
        (rex.MaxConnectionsError("Too many connections"), "pool exhausted"),
        (rex.TimeoutError("Timeout reading from socket"), "timed out"),
        (rex.ConnectionError("Error 111 connecting"), "connection failed"),
        (ConnectionRefusedError(111, "refused"), "ConnectionRefusedError"),
    ],
)
def test_translate_errors_maps_connection_failures(error: Exception, reason: str) -> None:
    with (
        pytest.raises(BrokerConnectionError, match=reason) as caught,
        translate_errors(f"redis://u:{SECRET}@h:1/0"),
    ):
        raise error
    assert caught.value.__cause__ is error
    assert caught.value.url == "redis://u:***@h:1/0"
    assert SECRET not in str(caught.value)
    assert isinstance(caught.value, ConveyorError)
    assert isinstance(caught.value, ConnectionError)


@pytest.mark.parametrize(
    "error",
    [
        rex.ResponseError("BUSYGROUP Consumer Group name already exists"),
        TimeoutError("the caller's own deadline"),
        BrokerConnectionError("redis://h", "already translated"),
        ValueError("not ours"),
    ],
)
def test_translate_errors_leaves_other_errors_alone(error: Exception) -> None:
    with pytest.raises(type(error)) as caught, translate_errors(RedisSettings()):
        raise error
    assert caught.value is error


def test_translate_errors_turns_an_oom_refusal_into_broker_out_of_memory() -> None:
    """An OOM is a ResponseError to redis-py, but not one the broker handles: it is the
    server's state, and the error says what to do (was broker/memory.py's translate_oom)."""
    refusal = rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert is_out_of_memory(refusal)
    assert not is_out_of_memory(rex.ResponseError("WRONGTYPE"))
    with (
        pytest.raises(BrokerOutOfMemory, match="out of memory") as caught,
        translate_errors(f"redis://u:{SECRET}@h:1/0"),
    ):
        raise refusal
    assert caught.value.__cause__ is refusal
    assert caught.value.url == "redis://u:***@h:1/0"
    assert "(command not allowed when used memory > 'maxmemory')" in str(caught.value)
    assert SECRET not in str(caught.value)
    made = out_of_memory(RedisSettings(), refusal)
    assert str(made) == str(caught.value).replace("redis://u:***@h:1/0", made.url)


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_an_unreachable_server_fails_fast_without_the_password(refused_port: int) -> None:
    port = refused_port
    settings = RedisSettings.from_url(f"redis://alice:{SECRET}@127.0.0.1:{port}/0?retries=2")
    with pytest.raises(BrokerConnectionError) as caught:
        await ping(settings, timeout=5)
    message = str(caught.value)  # "connection failed", not the PING deadline: it failed fast
    assert f"redis://alice:***@127.0.0.1:{port}/0" in message
    assert "connection failed" in message
    assert SECRET not in message
    assert isinstance(caught.value.__cause__, rex.ConnectionError)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_a_silent_server_fails_at_the_ping_deadline(silent_port: int) -> None:
    settings = RedisSettings.from_url(f"redis://:{SECRET}@127.0.0.1:{silent_port}")
    with pytest.raises(BrokerConnectionError, match=r"no answer to PING within 0\.5s") as caught:
        await ping(settings, timeout=0.5)
    assert SECRET not in str(caught.value)


@pytest.mark.anyio
@pytest.mark.timeout(10)
async def test_a_silent_server_fails_at_the_socket_timeout(silent_port: int) -> None:
    url = f"redis://127.0.0.1:{silent_port}?socket_timeout=0.2&retries=1"
    # "timed out": the socket's timeout; the PING deadline says "no answer to PING within 5.0s"
    with pytest.raises(BrokerConnectionError, match="timed out"):
        await ping(RedisSettings.from_url(url), timeout=5)


# -- real servers: password, ACL, unix socket, TLS -----------------------------------------------


@pytest.mark.anyio
async def test_requirepass(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(password=SECRET)
    right = RedisSettings.from_url(server.url)
    assert await ping(right) >= 0

    for wrong_url in (server.url.replace(SECRET, "wrong"), f"redis://127.0.0.1:{server.port}"):
        wrong = RedisSettings.from_url(wrong_url)
        with (
            _connections_made(server) as made,
            pytest.raises(BrokerConnectionError, match="authentication failed") as caught,
        ):
            await ping(wrong, timeout=5)
        assert made == [1]  # not retried: it would fail again
        assert wrong.redacted_url in str(caught.value)
        assert SECRET not in str(caught.value)
        assert isinstance(caught.value.__cause__, rex.AuthenticationError)


@pytest.mark.anyio
async def test_acl_user_limited_to_a_key_pattern(
    redis_server_factory: ServerFactory, tmp_path: Path
) -> None:
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default off\nuser conveyor on >{SECRET} ~conveyor:* &* +@all\n")
    server = redis_server_factory(args=["--aclfile", str(acl)])
    settings = RedisSettings.from_url(f"redis://conveyor:{SECRET}@127.0.0.1:{server.port}/0")
    client = create_client(settings)
    try:
        with translate_errors(settings):
            await client.set("conveyor:x", b"1")
            assert await client.get("conveyor:x") == b"1"
        with (
            pytest.raises(BrokerConnectionError, match="permission denied") as caught,
            translate_errors(settings),
        ):
            await client.set("other:x", b"1")
        assert "redis://conveyor:***@" in str(caught.value)
    finally:
        await client.aclose()

    anonymous = RedisSettings.from_url(f"redis://127.0.0.1:{server.port}/0")
    with pytest.raises(BrokerConnectionError, match="authentication failed"):
        await ping(anonymous, timeout=5)
    wrong = RedisSettings.from_url(f"redis://conveyor:nope@127.0.0.1:{server.port}/0")
    with pytest.raises(BrokerConnectionError, match="authentication failed"):
        await ping(wrong, timeout=5)


@pytest.mark.anyio
async def test_unix_socket_with_db(redis_server_factory: ServerFactory) -> None:
    server = redis_server_factory(unix_socket=True, password=SECRET)
    db0 = RedisSettings.from_url(server.unix_url)
    db2 = RedisSettings.from_url(server.unix_url.replace("?db=0", "?db=2"))
    assert (db0.scheme, db0.db, db2.db) == ("unix", 0, 2)
    assert SECRET not in db0.redacted_url
    client0, client2 = create_client(db0), create_client(db2)
    try:
        await client2.set("k", b"in db 2")
        assert await client2.get("k") == b"in db 2"
        assert await client0.get("k") is None
    finally:
        await client0.aclose()
        await client2.aclose()


def _cryptography_tls_files(directory: Path) -> TLSFiles:
    # Optional: CI may lack it (then the openssl CLI is used, or the TLS tests skip).
    from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
        hashes,
        serialization,
    )
    from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found, unused-ignore]
        ec,
    )
    from cryptography.x509.oid import (  # type: ignore[import-not-found, unused-ignore]
        ExtendedKeyUsageOID,
        NameOID,
    )

    now = datetime.datetime.now(datetime.UTC)

    def builder(
        subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    def usage(*, sign: bool, certs: bool) -> x509.KeyUsage:
        return x509.KeyUsage(sign, False, False, False, False, certs, False, False, False)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "conveyor test CA")])
    ca = (
        builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage(sign=False, certs=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        builder(name, ca_name, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.crt").write_bytes(ca.public_bytes(pem))
    (directory / "server.crt").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return TLSFiles(directory / "server.crt", directory / "server.key", directory / "ca.crt")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made by openssl or cryptography."""
    directory = tmp_path_factory.mktemp("tls")
    openssl = shutil.which("openssl")
    if openssl is not None:
        return openssl_tls_files(directory, openssl)
    try:
        return _cryptography_tls_files(directory)
    except ImportError:
        pytest.skip("cannot make test certificates: no openssl CLI and no cryptography package")


@pytest.fixture
def tls_server(redis_server_factory: ServerFactory, tls_files: TLSFiles) -> RedisServer:
    try:
        return redis_server_factory(tls=tls_files, password=SECRET)
    except RedisStartError as exc:
        if "tls" in exc.log_tail.lower():
            pytest.skip(f"{exc.binary} cannot serve TLS: {exc.log_tail.splitlines()[-1]}")
        raise


@pytest.mark.anyio
async def test_rediss_with_our_ca(tls_server: RedisServer, prefix: str) -> None:
    assert tls_server.url.startswith("rediss://")
    settings = RedisSettings.from_url(tls_server.url)
    assert settings.ssl_ca_certs is not None
    assert await ping(settings) >= 0
    client = create_client(settings)
    try:
        await client.set(f"{prefix}:k", b"over tls")
        assert await client.get(f"{prefix}:k") == b"over tls"
    finally:
        await client.aclose()


@pytest.mark.anyio
async def test_rediss_without_the_ca_is_refused_unless_verification_is_off(
    tls_server: RedisServer,
) -> None:
    base = f"rediss://:{SECRET}@127.0.0.1:{tls_server.port}/0"
    untrusted = RedisSettings.from_url(f"{base}?retries=0")
    with pytest.raises(BrokerConnectionError, match=r"(?i)certificate") as caught:
        await ping(untrusted, timeout=5)
    assert SECRET not in str(caught.value)
    assert await ping(RedisSettings.from_url(f"{base}?ssl_cert_reqs=none")) >= 0


@pytest.mark.anyio
async def test_plain_redis_to_a_tls_port_fails_clearly(tls_server: RedisServer) -> None:
    settings = RedisSettings.from_url(
        f"redis://:{SECRET}@127.0.0.1:{tls_server.port}/0?retries=0&socket_timeout=2"
    )
    with pytest.raises(BrokerConnectionError):
        await ping(settings, timeout=5)


def test_sync_client_over_tls(tls_server: RedisServer) -> None:
    settings = RedisSettings.from_url(tls_server.url)
    client = create_sync_client(settings)
    try:
        with translate_errors(settings):
            assert client.ping()
    finally:
        client.close()


def test_sync_translation_of_an_unreachable_server(refused_port: int) -> None:
    settings = RedisSettings.from_url(f"redis://:{SECRET}@127.0.0.1:{refused_port}/0?retries=0")
    client = create_sync_client(settings)
    try:
        with (
            pytest.raises(BrokerConnectionError, match="connection failed") as caught,
            translate_errors(settings),
        ):
            client.ping()
        assert SECRET not in str(caught.value)
    finally:
        client.close()


def test_redis_exceptions_are_not_conveyor_errors() -> None:
    """The reason translate_errors exists: callers catch Conveyor's tree, never redis-py's."""
    assert not issubclass(redis.ConnectionError, ConveyorError)


def test_module_exports() -> None:
    import conveyor.broker as face
    from conveyor.broker import clients, errors, settings

    assert settings.__all__ == (
        "DEFAULT_REDIS_URL",
        "InvalidRedisURL",
        "RedisSettings",
        "default_redis_url",
        "redact_url",
    )
    assert clients.__all__ == (
        "DEFAULT_MAX_BLOCK_S",
        "PROTOCOL",
        "create_client",
        "create_sync_client",
        "ping",
        "server_url",
    )
    assert errors.__all__ == (
        "is_out_of_memory",
        "out_of_memory",
        "refused_by_acl",
        "translate_errors",
        "translate_every_error",
    )
    for name in (
        "DEFAULT_REDIS_URL",
        "RedisSettings",
        "create_client",
        "create_sync_client",
        "default_redis_url",
        "ping",
        "redact_url",
        "translate_errors",
    ):
        assert name in face.__all__
    for module in (face, settings, clients, errors):
        assert all(hasattr(module, name) for name in module.__all__)
