"""The loopback network a private server lives on: a free port, a PING that says whether
the server serves commands yet, and whether the listener that answered is our process's."""

from __future__ import annotations

import os
import socket
import ssl

from conveyor.embedded.tls import TLSFiles

__all__ = ("LOOPBACK", "answers_ping", "free_port", "holds_listener")

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


def holds_listener(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` holds the TCP listener on ``port``; None where ``/proc`` cannot
    tell (not Linux).

    A PING answered on the port proves nothing alone: a free port may be taken by another
    server between :func:`free_port` and our server's bind, and that one answers while ours
    fails to bind and exits.
    """
    if not os.path.isdir("/proc/self/fd"):
        return None  # no /proc: the PING alone has to do
    try:
        with open(f"/proc/{pid}/net/tcp", encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:  # the process is gone
        return False
    except OSError:  # /proc refuses to say
        return None
    # columns: sl local_address rem_address st ... inode (st 0A: LISTEN)
    inodes = {row[9] for row in rows if row[3] == "0A" and int(row[1].split(":")[1], 16) == port}
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since listdir
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False
