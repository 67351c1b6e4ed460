"""A clamd client: stream a file to clamd with INSTREAM, under deadlines, with failover.

Written here rather than taken from the ``clamd`` package because that package costs 100 ms
of start-up per message (it imports ``pkg_resources``), connects with no timeout (a remote
clamd that drops packets holds the message for the kernel's two minutes of SYN retries),
sends 1 KiB chunks, and loses clamd's own answer when clamd closes the stream early
("INSTREAM size limit exceeded"). The protocol is small: ``zINSTREAM\\0``, then chunks each
prefixed by its length as 4 bytes in network order, a zero length to end, and one answer
ending in NUL: ``stream: OK``, ``stream: <signature> FOUND`` or ``<text> ERROR``.
"""

import os
import socket
import struct
import time

from qqfilter.checks.virus.clamd import endpoint
from qqfilter.exitcodes import describe

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


class ScanFailed(Exception):
    """One server could not give an answer; the text says why, for the log."""


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
    failures = []
    for server in servers:
        if deadline <= time.monotonic():
            failures.append(f"{server}: not tried, scan deadline passed")
            continue
        try:
            result, name = _scan_one(fd, size, server, connect_timeout, timeout, deadline)
        except ScanFailed as exc:
            failures.append(f"{server}: {exc}")
            continue
        return Answer(result, server, name=name, why="; ".join(failures))
    return Answer(UNKNOWN, servers[-1], why="; ".join(failures))


def _scan_one(
    fd: int, size: int, server: str, connect_timeout: float, timeout: float, deadline: float
) -> tuple[str, str]:
    """(CLEAN or INFECTED, the signature name) from ``server``; raises ScanFailed."""
    try:
        sock = _connect(server, _within(connect_timeout, deadline))
    except TimeoutError:
        raise ScanFailed(f"no connection within {connect_timeout:g} s") from None
    except OSError as exc:
        raise ScanFailed(f"cannot connect: {describe(exc)}") from None
    try:
        try:
            _send_stream(sock, fd, size, timeout, deadline)
        except TimeoutError:
            raise ScanFailed(f"took no data for {timeout:g} s") from None
        except OSError as exc:
            early = _early_answer(sock)
            raise ScanFailed(early or f"connection lost mid-stream: {describe(exc)}") from None
        try:
            text = _receive_answer(sock, timeout, deadline)
        except TimeoutError:
            raise ScanFailed(f"no answer within {timeout:g} s") from None
        except OSError as exc:
            raise ScanFailed(f"connection lost awaiting the answer: {describe(exc)}") from None
    finally:
        sock.close()
    return _interpret(text)


def _connect(server: str, timeout: float) -> socket.socket:
    """A socket connected to ``server`` within ``timeout``; a host name may have several
    addresses, each tried (the name itself is looked up by the system resolver)."""
    address = endpoint(server)
    if not isinstance(address, str):
        return socket.create_connection(address, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _within(timeout: float, deadline: float) -> float:
    """``timeout``, shortened so as not to pass ``deadline``; raises TimeoutError if passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return min(timeout, remaining)


def _send_stream(sock: socket.socket, fd: int, size: int, timeout: float, deadline: float) -> None:
    sock.settimeout(_within(timeout, deadline))
    sock.sendall(b"zINSTREAM\0")
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(CHUNK, size - offset), offset)
        if not chunk:
            break
        sock.settimeout(_within(timeout, deadline))
        sock.sendall(struct.pack("!L", len(chunk)) + chunk)
        offset += len(chunk)
    sock.sendall(struct.pack("!L", 0))


def _early_answer(sock: socket.socket) -> str:
    """What the server said before it closed the stream on us: clamd's own words (its size
    limit, an ``... ERROR``), or, from something that is not clamd, the unexpected answer."""
    try:
        sock.settimeout(0.5)
        data = sock.recv(MAX_ANSWER)
    except OSError:
        return ""
    text = _printable(data.rstrip(b"\0\n"))
    if not text:
        return ""
    if text.endswith("ERROR"):
        return f"clamd stopped the stream: {text}"
    return f"unexpected answer {_printable(data)!r}"


def _receive_answer(sock: socket.socket, timeout: float, deadline: float) -> bytes:
    data = b""
    while not data.endswith(b"\0") and len(data) < MAX_ANSWER:
        sock.settimeout(_within(timeout, deadline))
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
        raise ScanFailed(f"incomplete answer {_printable(data)!r}")
    if text == "stream: OK":
        return CLEAN, ""
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        name = _printable(text[len("stream: ") : -len(" FOUND")].encode()).strip()
        if name:
            return INFECTED, name[:120]
    if text.endswith(" ERROR"):
        raise ScanFailed(f"clamd error: {_printable(text[: -len(' ERROR')].encode())}")
    raise ScanFailed(f"unexpected answer {_printable(data)!r}")


def _printable(data: bytes) -> str:
    """``data`` as printable ASCII, anything else as ``?``: clamd's text goes into logs."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in data[:200])
