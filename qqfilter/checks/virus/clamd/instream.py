"""A clamd client: stream a file to clamd with INSTREAM, under deadlines, with failover.

Written here rather than taken from the ``clamd`` package because that package costs 100 ms
of start-up per message (it imports ``pkg_resources``), connects with no timeout (a remote
clamd that drops packets holds the message for the kernel's two minutes of SYN retries),
sends 1 KiB chunks, and loses clamd's own answer when clamd closes the stream early
("INSTREAM size limit exceeded"). The protocol is small: ``zINSTREAM\\0``, then chunks each
prefixed by its length as 4 bytes in network order, a zero length to end, and one answer
ending in NUL: ``stream: OK``, ``stream: <signature> FOUND`` or ``<text> ERROR``. The
failover and the deadlines are every scanner client's (qqfilter.shared.scanclient).
"""

from __future__ import annotations

import os
import struct

from qqfilter.checks.virus.clamd import endpoint
from qqfilter.shared.scanclient import (
    ScanFailed,
    exchange,
    first_answer,
    printable,
    within,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket

CHUNK = 262144
MAX_ANSWER = 4096

CLEAN = "clean"
INFECTED = "infected"
UNKNOWN = "unknown"


class Answer:
    """What clamd said: CLEAN, INFECTED with the signature ``name``, or UNKNOWN.

    ``why`` lists the servers that failed before this answer (all of them for UNKNOWN).
    """

    __slots__ = ("name", "result", "server", "why")

    def __init__(self, result: str, server: str, *, name: str = "", why: str = "") -> None:
        self.result = result
        self.server = server
        self.name = name
        self.why = why


def scan(
    fd: int,
    size: int,
    servers: tuple[str, ...],
    *,
    connect_timeout: float,
    timeout: float,
    deadline: float,
) -> Answer:
    """Scan the ``size`` bytes of ``fd`` with the first of ``servers`` that answers.

    ``connect_timeout`` bounds each connection attempt, ``timeout`` each wait for clamd
    after that (to take a chunk, or to answer), and ``deadline`` (a ``time.monotonic()``
    value) the whole scan, failover included. A server that cannot answer passes the
    message to the next; when none can, the answer is UNKNOWN with every server's reason.
    """

    def attempt(server: str) -> tuple[str, str]:
        data = exchange(
            endpoint(server),
            connect_timeout=connect_timeout,
            timeout=timeout,
            deadline=deadline,
            send=lambda sock: _send_stream(sock, fd, size, timeout, deadline),
            receive=lambda sock: _receive_answer(sock, timeout, deadline),
            early=_early_answer,
        )
        return _interpret(data)

    found, server, why = first_answer(servers, attempt, deadline)
    if found is None:
        return Answer(UNKNOWN, server, why=why)
    result, name = found
    return Answer(result, server, name=name, why=why)


def _send_stream(sock: socket, fd: int, size: int, timeout: float, deadline: float) -> None:
    sock.settimeout(within(timeout, deadline))
    sock.sendall(b"zINSTREAM\0")
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            break
        sock.settimeout(within(timeout, deadline))
        sock.sendall(struct.pack("!L", len(chunk)) + chunk)
        offset += len(chunk)
    sock.sendall(struct.pack("!L", 0))


def _early_answer(sock: socket) -> str:
    """What the server said before it closed the stream on us: clamd's own words (its size
    limit, an ``... ERROR``), or, from something that is not clamd, the unexpected answer."""
    try:
        sock.settimeout(0.5)
        data = sock.recv(MAX_ANSWER)
    except OSError:
        return ""
    text = printable(data.rstrip(b"\0\n"))
    if not text:
        return ""
    if text.endswith("ERROR"):
        return f"clamd stopped the stream: {text}"
    return f"unexpected answer {printable(data)!r}"


def _receive_answer(sock: socket, timeout: float, deadline: float) -> bytes:
    data = b""
    while not data.endswith(b"\0") and len(data) < MAX_ANSWER:
        sock.settimeout(within(timeout, deadline))
        chunk = sock.recv(MAX_ANSWER - len(data))
        if not chunk:
            break
        data += chunk
    if not data:
        raise ScanFailed("closed the connection without an answer")
    return data


def _interpret(data: bytes) -> tuple[str, str]:
    """(result, signature name) for clamd's reply to INSTREAM; anything unexpected is a
    failure."""
    text = data.rstrip(b"\0\n").decode("ascii", "replace")
    if not data.endswith(b"\0"):
        raise ScanFailed(f"incomplete answer {printable(data)!r}")
    if text == "stream: OK":
        return CLEAN, ""
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        name = printable(text[len("stream: ") : -len(" FOUND")].encode()).strip()
        if name:
            return INFECTED, name[:120]
    if text.endswith(" ERROR"):
        raise ScanFailed(f"clamd error: {printable(text[: -len(' ERROR')].encode())}")
    raise ScanFailed(f"unexpected answer {printable(data)!r}")
