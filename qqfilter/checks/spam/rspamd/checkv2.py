"""An rspamd client: POST the message to /checkv2 under deadlines, with failover, and read
rspamd's JSON answer into the family's Score.

HTTP/1.1 is spoken here over a plain socket rather than through ``http.client``: importing
http.client costs 25-40 ms per message (it pulls in the email package's parser and ssl),
against about 3 ms for json (the socket is the C module's, through qqfilter.shared.scanclient),
and a qmail server pays it for every message it runs one-shot. The exchange is one request and
one answer: a POST with the envelope and connection facts as the header fields rspamd defines
(IP, Helo, Hostname, From, one Rcpt per recipient, Queue-Id, User, Deliver-To, Settings-ID),
the message streamed from the spool in windows with its Content-Length, then ``Connection:
close``: the answer's body is read up to its Content-Length (or the close), at most MAX_ANSWER
bytes.

Deadlines and failover are every scanner client's (qqfilter.shared.scanclient):
``connect_timeout`` per connection, ``timeout`` per stall (rspamd taking no data, or not
answering), ``deadline`` over the whole scan, failover included. Anything but a 200 with a
well-formed answer is that server's failure; the next is tried.
"""

from __future__ import annotations

import json
import os

from qqfilter.checks.spam import Score
from qqfilter.checks.spam.rspamd import endpoint
from qqfilter.shared.scanclient import ScanFailed, exchange, first_answer, printable, within

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _socket import socket

    from qqfilter.message import Message
    from qqfilter.spool import Spool

CHUNK = 262144
"""Bytes of the message read from the spool and sent at a time."""
MAX_HEAD = 16384
"""The most an answer's status line and header fields may take."""
MAX_ANSWER = 4 << 20
"""The most an answer's body may take: rspamd lists each symbol's options (URLs, names),
so the answer for a message with many links runs to hundreds of KB."""
MAX_RCPTS = 1024
"""Rcpt fields sent at most: rspamd's own max_recipients default."""
MAX_ADDED = 50
"""Header fields taken at most from the milter block."""
OURS = frozenset(("x-spam-status", "x-spam-score", "x-spam-flag", "x-spam-action"))
"""Fields the family writes itself: the milter block's copies of them are left out."""


class Answer:
    """What rspamd said: its ``score`` (None when no server could answer), which ``server``
    answered, its ``message`` (the smtp_message it would give a client), and ``why`` the
    servers before it failed (all of them, when ``score`` is None)."""

    __slots__ = ("message", "score", "server", "time_real", "why")

    def __init__(
        self,
        score: Score | None,
        server: str,
        *,
        message: str = "",
        time_real: float = 0.0,
        why: str = "",
    ) -> None:
        self.score = score
        self.server = server
        self.message = message
        self.time_real = time_real
        self.why = why


def request_headers(
    message: Message, settings_id: str, deliver_to: str
) -> list[tuple[bytes, bytes]]:
    """The header fields rspamd reads the envelope and the connection from."""
    connection = message.connection
    fields: list[tuple[bytes, bytes]] = []
    if connection.remote_ip:
        fields.append((b"IP", _value(connection.remote_ip)))
        helo = connection.helo
        if not helo:
            from qqfilter.shared.received import helo_from_message

            helo = helo_from_message(message.spool, connection.remote_ip)
        if helo:
            fields.append((b"Helo", _value(helo)))
    if connection.remote_host:
        fields.append((b"Hostname", _value(connection.remote_host)))
    sender = message.envelope.sender
    fields.append((b"From", _value(sender) if sender else b"<>"))
    fields.extend((b"Rcpt", _value(r)) for r in message.envelope.recipients[:MAX_RCPTS])
    fields.append((b"Queue-Id", str(os.getpid()).encode()))
    authenticated = _authenticated(connection.environ or {}, connection.relayclient)
    if authenticated:
        fields.append((b"User", _value(authenticated)))
    if deliver_to:
        fields.append((b"Deliver-To", _value(deliver_to)))
    if settings_id:
        fields.append((b"Settings-ID", settings_id.encode("ascii")))
    return fields


def _authenticated(environ: dict[str, str], relayclient: bool) -> str:
    """The SMTP AUTH user: SMTPAUTHUSER, or TCPREMOTEINFO when RELAYCLIENT is set (the
    smtp-auth patches put the user there); plain tcpserver's TCPREMOTEINFO is an ident
    answer, the client's own claim, so it counts only for a relay client."""
    if environ.get("SMTPAUTHUSER"):
        return environ["SMTPAUTHUSER"]
    if relayclient and environ.get("TCPREMOTEINFO"):
        return environ["TCPREMOTEINFO"]
    return ""


def _value(value: str | bytes) -> bytes:
    """A field value that cannot end the field: control bytes become ``?``; at most 998."""
    data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return bytes(b if 0x20 <= b != 0x7F else 0x3F for b in data[:998])


def scan(
    spool: Spool,
    servers: tuple[str, ...],
    fields: list[tuple[bytes, bytes]],
    *,
    connect_timeout: float,
    timeout: float,
    deadline: float,
) -> Answer:
    """Score the message in ``spool`` with the first of ``servers`` that answers.

    ``connect_timeout`` bounds each connection attempt, ``timeout`` each wait for rspamd
    after that (to take data, or to answer), and ``deadline`` (a ``time.monotonic()`` value)
    the whole scan, failover included. A server that cannot answer passes the message to the
    next; when none can, the answer has no score and every server's reason.
    """

    def attempt(server: str) -> tuple[Score, str, float]:
        return interpret(_exchange(spool, server, fields, connect_timeout, timeout, deadline))

    found, server, why = first_answer(servers, attempt, deadline)
    if found is None:
        return Answer(None, server, why=why)
    score, said, took = found
    return Answer(score, server, message=said, time_real=took, why=why)


def _exchange(
    spool: Spool,
    server: str,
    fields: list[tuple[bytes, bytes]],
    connect_timeout: float,
    timeout: float,
    deadline: float,
) -> bytes:
    """The body of ``server``'s 200 answer to the POST; raises ScanFailed."""
    host, port = endpoint(server)
    head = _head(host, port, fields, spool.size)
    return exchange(
        (host, port),
        connect_timeout=connect_timeout,
        timeout=timeout,
        deadline=deadline,
        send=lambda sock: _send(sock, spool, head, timeout, deadline),
        receive=lambda sock: _receive(sock, timeout, deadline),
    )


def _head(host: str, port: int, fields: list[tuple[bytes, bytes]], size: int) -> bytes:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [
        b"POST /checkv2 HTTP/1.1",
        b"Host: " + where.encode("idna" if not host.isascii() else "ascii"),
        b"Connection: close",
        b"Content-Length: " + str(size).encode(),
    ]
    lines.extend(name + b": " + value for name, value in fields)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _send(sock: socket, spool: Spool, head: bytes, timeout: float, deadline: float) -> None:
    sock.settimeout(within(timeout, deadline))
    sock.sendall(head)
    offset = 0
    while offset < spool.size:
        chunk = spool.read(offset, min(CHUNK, spool.size - offset))
        if not chunk:
            break
        sock.settimeout(within(timeout, deadline))
        sock.sendall(chunk)
        offset += len(chunk)


def _receive(sock: socket, timeout: float, deadline: float) -> bytes:
    """The body of a 200 answer, read within the limits; raises ScanFailed otherwise."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise ScanFailed("answer's header is too long")
        chunk = _recv(sock, timeout, deadline)
        if not chunk:
            if not data:
                raise ScanFailed("closed the connection without an answer")
            raise ScanFailed(f"answer cut short: {printable(data[:80])!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    parts = status.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ScanFailed(f"not an HTTP answer: {printable(status)!r}")
    if parts[1] != b"200":
        raise ScanFailed(f"HTTP status {printable(status.partition(b' ')[2])!r}")
    length = -1
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding" and value.strip().lower() != b"identity":
            raise ScanFailed(f"unsupported transfer encoding {printable(value.strip())!r}")
        if name == b"content-encoding" and value.strip().lower() != b"identity":
            raise ScanFailed(f"unsupported content encoding {printable(value.strip())!r}")
        if name == b"content-length":
            if not value.strip().isdigit():
                raise ScanFailed(f"bad Content-Length {printable(value.strip())!r}")
            length = int(value)
    if length > MAX_ANSWER:
        raise ScanFailed(f"answer of {length} bytes, over the limit of {MAX_ANSWER}")
    while length < 0 or len(body) < length:
        if len(body) > MAX_ANSWER:
            raise ScanFailed(f"answer over the limit of {MAX_ANSWER} bytes")
        chunk = _recv(sock, timeout, deadline)
        if not chunk:
            if length < 0:
                break  # no Content-Length: the close ends the body
            raise ScanFailed(f"answer cut short after {len(body)} of {length} bytes")
        body += chunk
    return body[:length] if length >= 0 else body


def _recv(sock: socket, timeout: float, deadline: float) -> bytes:
    sock.settimeout(within(timeout, deadline))
    return sock.recv(65536)


def interpret(body: bytes) -> tuple[Score, str, float]:
    """(the Score, rspamd's smtp_message, its time_real) from a /checkv2 answer; anything
    malformed is ScanFailed."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        raise ScanFailed(f"answer is not JSON: {printable(body[:80])!r}") from None
    if not isinstance(answer, dict):
        raise ScanFailed("answer is not a JSON object")
    if "error" in answer and "score" not in answer:
        raise ScanFailed(f"rspamd error: {printable(str(answer['error']).encode()[:200])}")
    score = _number(answer, "score")
    required = _number(answer, "required_score")
    action = answer.get("action")
    if not isinstance(action, str) or not action or len(action) > 40:
        raise ScanFailed("answer has no action")
    symbols = answer.get("symbols", {})
    if not isinstance(symbols, dict):
        raise ScanFailed("answer's symbols are not an object")
    tests = tuple(sorted(printable(str(name).encode()) for name in symbols))
    added, removed = _milter(answer.get("milter"))
    messages = answer.get("messages")
    said = messages.get("smtp_message", "") if isinstance(messages, dict) else ""
    took = answer.get("time_real", 0.0)
    return (
        Score(
            score,
            required,
            tests,
            action=printable(action.encode()),
            add_headers=added,
            remove_headers=removed,
        ),
        printable(said.encode()) if isinstance(said, str) else "",
        took if isinstance(took, int | float) and not isinstance(took, bool) else 0.0,
    )


def _number(answer: dict[str, object], key: str) -> float:
    value = answer.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ScanFailed(f"answer has no {key}")
    number = float(value)
    if number != number or number in (float("inf"), float("-inf")):
        raise ScanFailed(f"answer's {key} is not a finite number")
    return number


def _milter(block: object) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The milter block's header fields to add (name, value; each value unfolded, the
    family's own fields left out) and the names of those to remove."""
    if not isinstance(block, dict):
        return (), ()
    added: list[tuple[str, str]] = []
    adds = block.get("add_headers")
    if isinstance(adds, dict):
        for name, spec in adds.items():
            if not _field_name(name) or name.lower() in OURS:
                continue
            for item in spec if isinstance(spec, list) else [spec]:
                value = item.get("value") if isinstance(item, dict) else item
                if isinstance(value, str) and len(added) < MAX_ADDED:
                    added.append((name, " ".join(value.split())[:4000]))
    removes = block.get("remove_headers")
    removed = tuple(
        name for name in (removes if isinstance(removes, dict) else ()) if _field_name(name)
    )
    return tuple(added), removed[:MAX_ADDED]


def _field_name(name: object) -> bool:
    """A header field name as RFC 5322 has it: printable ASCII but colon, at most 76."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 76
        and all("!" <= c <= "~" and c != ":" for c in name)
    )
