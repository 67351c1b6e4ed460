"""A spamd client: SPAMC/1.5 ``SYMBOLS``, the message streamed from the spool, under
deadlines, with failover.

Written here rather than run as ``spamc`` because spamc is one more process per message, and
its failures are a single exit code (and with -x, a message it cannot scan is passed as it
was, silently); and rather than taken from a Python package because none bounds connect,
stall and the whole scan, nor streams from a file without a copy in memory. The protocol is
small: a request ``SYMBOLS SPAMC/1.5``, ``Content-length``, an optional ``User``, a blank
line, then exactly that many bytes of message; spamd answers ``SPAMD/1.1 0 EX_OK``, a header
``Spam: True ; 15.0 / 5.0``, a blank line and the names of the rules that fired, comma
separated, and closes. Every line of the answer is bounded and checked: anything else (an
``EX_*`` code, a cut answer, garbage) fails that server, and the next is tried.
"""

from __future__ import annotations

import _socket

from qqfilter.checks.spam import Score
from qqfilter.checks.spam.spamd import endpoint
from qqfilter.shared.scanclient import ScanFailed, exchange, first_answer, printable, within

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.spool import Spool

WINDOW = 262144
"""Bytes of message read from the spool and sent at a time."""
MAX_ANSWER = 65536
"""The largest answer taken: a status line, a few header lines and the rule names."""
MAX_LINE = 1024
"""The longest status or header line taken."""
MAX_RULE = 128
"""The longest rule name taken (SpamAssassin's are words of a few dozen characters)."""
RULE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
"""What a rule name is made of."""


class Answer:
    """What spamd said: its ``score`` (None when no server could answer), from ``server``.

    ``why`` lists the servers that failed before this answer (all of them when none did).
    """

    __slots__ = ("score", "server", "why")

    def __init__(self, score: Score | None, server: str, why: str = "") -> None:
        self.score = score
        self.server = server
        self.why = why


def scan(
    spool: Spool,
    size: int,
    servers: tuple[str, ...],
    *,
    user: str,
    connect_timeout: float,
    timeout: float,
    deadline: float,
) -> Answer:
    """Score the first ``size`` bytes of ``spool`` with the first of ``servers`` that answers.

    ``user`` is sent as spamd's ``User`` (whose preferences apply) when it is one printable
    word; ``connect_timeout`` bounds each connection attempt, ``timeout`` each wait for spamd
    after that (to take data, or to answer), and ``deadline`` (a ``time.monotonic()`` value)
    the whole scan, failover included.
    """
    head = request(size, user)

    def attempt(server: str) -> Score:
        data = exchange(
            endpoint(server),
            connect_timeout=connect_timeout,
            timeout=timeout,
            deadline=deadline,
            send=lambda sock: _send(sock, spool, size, head, timeout, deadline),
            receive=lambda sock: _receive(sock, timeout, deadline),
            early=_early_answer,
        )
        return parse(data)

    score, server, why = first_answer(servers, attempt, deadline)
    return Answer(score, server, why)


def request(size: int, user: str) -> bytes:
    """The request's head for a message of ``size`` bytes. A ``user`` that is not one word of
    printable ASCII (a recipient may be anything but NUL) is left out rather than let it break
    the request: spamd then applies its default user's preferences."""
    lines = f"SYMBOLS SPAMC/1.5\r\nContent-length: {size}\r\n"
    if user and len(user) <= 255 and all("!" <= c <= "~" for c in user):
        lines += f"User: {user}\r\n"
    return (lines + "\r\n").encode("ascii")


def _send(
    sock: _socket.socket, spool: Spool, size: int, head: bytes, timeout: float, deadline: float
) -> None:
    """The request head, then exactly ``size`` bytes of the spool (spamd reads
    Content-length bytes, no more: a short message would leave it waiting), then the end of
    our side of the stream, as spamc does."""
    sock.settimeout(within(timeout, deadline))
    sock.sendall(head)
    offset = 0
    while offset < size:
        window = spool.read(offset, min(WINDOW, size - offset))
        if not window:
            raise ScanFailed(f"the spool ended at {offset} of {size} bytes")
        sock.settimeout(within(timeout, deadline))
        sock.sendall(window)
        offset += len(window)
    sock.shutdown(_socket.SHUT_WR)


def _early_answer(sock: _socket.socket) -> str:
    """What the server said before it closed the stream on us (spamd's own error line), or
    ""."""
    try:
        sock.settimeout(0.5)
        data = sock.recv(MAX_LINE)
    except OSError:
        return ""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    return f"spamd stopped the stream: {printable(line)!r}" if line else ""


def _receive(sock: _socket.socket, timeout: float, deadline: float) -> bytes:
    """The answer: up to the end of the body its Content-length announces, or to the end of
    the stream; at most MAX_ANSWER bytes."""
    data = b""
    while len(data) <= MAX_ANSWER:
        sock.settimeout(within(timeout, deadline))
        chunk = sock.recv(MAX_ANSWER + 1 - len(data))
        if not chunk:
            break
        data += chunk
        if _complete(data):
            break
    if not data:
        raise ScanFailed("closed the connection without an answer")
    if len(data) > MAX_ANSWER:
        raise ScanFailed(f"answer longer than {MAX_ANSWER} bytes")
    return data


def _complete(data: bytes) -> bool:
    """Has ``data`` its whole head and the body its Content-length announces?"""
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


def parse(data: bytes) -> Score:
    """The Score in spamd's whole answer to SYMBOLS; ScanFailed for anything else."""
    head, blank, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if any(len(line) > MAX_LINE for line in lines):
        raise ScanFailed(f"answer line longer than {MAX_LINE} bytes: {printable(data)!r}")
    status = lines[0].decode("ascii", "replace")
    protocol, _, rest = status.partition(" ")
    code, _, words = rest.partition(" ")
    if not protocol.startswith("SPAMD/") or not code.isdigit() or not code.isascii():
        raise ScanFailed(f"unexpected answer {printable(data)!r}")
    if code != "0":
        raise ScanFailed(f"spamd error {code} {printable(words.encode())}")
    if not blank:
        raise ScanFailed(f"incomplete answer {printable(data)!r}")
    spam = length = None
    for line in lines[1:]:
        name, colon, value = line.decode("ascii", "replace").partition(":")
        if not colon:
            raise ScanFailed(f"unexpected header line {printable(line)!r}")
        name = name.strip().lower()
        if name == "spam":
            spam = value.strip()
        elif name == "content-length":
            if not value.strip().isdigit() or not value.strip().isascii():
                raise ScanFailed(f"bad Content-length {printable(line)!r}")
            length = int(value)
    if length is not None and len(body) != length:
        raise ScanFailed(f"answer cut at {len(body)} of {length} bytes of rule names")
    if spam is None:
        raise ScanFailed(f"answer without a Spam header {printable(data)!r}")
    score, required = _spam_header(spam)
    return Score(score, required, _rules(body))


def _spam_header(value: str) -> tuple[float, float]:
    """(score, required) from ``True ; 15.0 / 5.0``."""
    verdict, _, numbers = value.partition(";")
    score, slash, required = numbers.partition("/")
    if verdict.strip() not in ("True", "False", "Yes", "No") or not slash:
        raise ScanFailed(f"bad Spam header {value[:200]!r}")
    return _number(score, value), _number(required, value)


def _number(text: str, header: str) -> float:
    """A score as spamd writes one: digits, a sign, a point; nothing float() also takes
    (nan, inf, 1e9, 1_0)."""
    text = text.strip()
    digits = text.removeprefix("-").replace(".", "", 1)
    if not digits.isdigit() or not digits.isascii() or len(text) > 20:
        raise ScanFailed(f"bad Spam header {header[:200]!r}")
    return float(text)


def _rules(body: bytes) -> tuple[str, ...]:
    """The rule names of SYMBOLS' body: comma separated words."""
    names = tuple(name.strip() for name in body.decode("ascii", "replace").split(","))
    names = tuple(name for name in names if name)
    for name in names:
        if len(name) > MAX_RULE or not RULE_CHARS.issuperset(name):
            raise ScanFailed(f"bad rule name {printable(name.encode())!r}")
    return names
