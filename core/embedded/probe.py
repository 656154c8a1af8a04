"""The loopback network a private server lives on: a free port, and a PING that says whether
the server serves commands yet."""

from __future__ import annotations

import socket
import ssl

from conveyor.embedded.tls import TLSFiles

__all__ = ("LOOPBACK", "answers_ping", "free_port")

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the OS picks it; it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int, tls: TLSFiles | None) -> bool:
    """Whether the server on ``port`` replies to PING with anything but ``-LOADING`` (a reply
    such as ``-NOAUTH`` still means it serves commands)."""
    try:
        # A short timeout: the port may be somebody else's listener that never answers.
        with socket.create_connection((LOOPBACK, port), timeout=0.25) as raw:
            if tls is None:
                return _ping(raw)
            context = ssl.create_default_context(cafile=str(tls.ca_file))
            context.check_hostname = False  # a liveness probe: any answer will do
            context.verify_mode = ssl.CERT_NONE
            with context.wrap_socket(raw) as wrapped:
                return _ping(wrapped)
    except OSError:
        return False


def _ping(sock: socket.socket) -> bool:
    sock.sendall(b"*1\r\n$4\r\nPING\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(256)
        if not chunk:
            return False
        reply += chunk
    return not reply.startswith(b"-LOADING")
