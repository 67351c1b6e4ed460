"""What the scanner clients share: clamd's INSTREAM (checks/virus/clamd/instream.py),
spamd's SPAMC (checks/spam/spamd/spamc.py) and rspamd's HTTP (checks/spam/rspamd/checkv2.py).

Each asks one server after another until one answers (``first_answer``), and each exchange
(``exchange``) is bounded three ways: the connection by its own timeout, every later wait
(the server taking data, or answering) by the stall timeout, and all of it by the whole
scan's deadline, failover included. What failed, and why, is said in the same words for
every scanner. A client says only its protocol: what it sends, how it reads the answer.

C modules only (``_socket``, ``time``): a client is imported on the queue path when its
check is on, and the ``socket`` module costs about 3 ms of start-up (and enum).
"""

from __future__ import annotations

import _socket
import time

from qqfilter.exitcodes import describe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")


class ScanFailed(Exception):
    """One server could not give an answer; the text says why, for the log."""


def first_answer(
    servers: tuple[str, ...], attempt: Callable[[str], T], deadline: float
) -> tuple[T | None, str, str]:
    """(what ``attempt(server)`` returned, that server, why the servers before it failed)
    for the first server that answers; (None, the last server, why each failed) when none
    does. A server not reached before ``deadline`` (``time.monotonic()``) is not tried."""
    failures = []
    for server in servers:
        if deadline <= time.monotonic():
            failures.append(f"{server}: not tried, scan deadline passed")
            continue
        try:
            return attempt(server), server, "; ".join(failures)
        except ScanFailed as exc:
            failures.append(f"{server}: {exc}")
    return None, servers[-1], "; ".join(failures)


def exchange(
    address: str | tuple[str, int],
    *,
    connect_timeout: float,
    timeout: float,
    deadline: float,
    send: Callable[[_socket.socket], None],
    receive: Callable[[_socket.socket], bytes],
    early: Callable[[_socket.socket], str] | None = None,
) -> bytes:
    """Connect to ``address``, ``send(sock)``, return ``receive(sock)``; every failure is
    ScanFailed in the shared words. ``send`` and ``receive`` set the socket's timeout with
    ``within`` before each wait; ``early(sock)``, when given, reads what the server said if
    it closed the stream while we were sending (its own error line)."""
    try:
        sock = connect(address, within(connect_timeout, deadline))
    except TimeoutError:
        raise ScanFailed(f"no connection within {connect_timeout:g} s") from None
    except OSError as exc:
        raise ScanFailed(f"cannot connect: {describe(exc)}") from None
    try:
        try:
            send(sock)
        except TimeoutError:
            raise ScanFailed(_stalled("took no data", f"for {timeout:g} s", deadline)) from None
        except OSError as exc:
            said = early(sock) if early is not None else ""
            raise ScanFailed(said or f"connection lost mid-stream: {describe(exc)}") from None
        try:
            return receive(sock)
        except TimeoutError:
            raise ScanFailed(_stalled("no answer", f"within {timeout:g} s", deadline)) from None
        except OSError as exc:
            raise ScanFailed(f"connection lost awaiting the answer: {describe(exc)}") from None
    finally:
        sock.close()


def connect(address: str | tuple[str, int], timeout: float) -> _socket.socket:
    """A stream socket connected to ``address`` (a unix socket's path, or host and port)
    within ``timeout``; each address of a host name is tried (the name is looked up by the
    system resolver)."""
    if isinstance(address, str):
        return _open(_socket.AF_UNIX, 0, address, timeout)
    host, port = address
    failure: OSError = OSError("the name has no address")
    for family, _, proto, _, where in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM):
        try:
            return _open(family, proto, where, timeout)
        except OSError as exc:
            failure = exc
    raise failure


def _open(family: int, proto: int, address: str | tuple, timeout: float) -> _socket.socket:
    sock = _socket.socket(family, _socket.SOCK_STREAM, proto)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def within(timeout: float, deadline: float) -> float:
    """``timeout``, shortened so as not to pass ``deadline``; raises TimeoutError if passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return min(timeout, remaining)


def _stalled(what: str, how_long: str, deadline: float) -> str:
    """Why a wait ended: the stall timeout (``how_long``), or the whole scan's deadline."""
    if deadline <= time.monotonic():
        return f"{what} before the scan deadline"
    return f"{what} {how_long}"


def printable(data: bytes, limit: int = 200) -> str:
    """``data`` as printable ASCII, anything else as ``?``: a server's words go into logs."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in data[:limit])
