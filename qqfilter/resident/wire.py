"""What passes between the resident server and its client, written down once.

One SOCK_SEQPACKET packet each way. The request is ``QQF1\\0<pid>\\0<usable custom-reply fds,
comma-separated>\\0`` then ``NAME=value\\0`` for each environment variable, with the client's
fds 0 and 1 (message and envelope) attached (SCM_RIGHTS). The answer is ``QQF1\\0<exec|exit>\\0
<code>\\0<errfd>\\0<program>\\0<log line>\\0<custom reply>``, with the message and envelope
descriptors prepared for qmail-queue attached for exec.

Whoever can connect chooses the bytes of a request, so every field's length is checked before
it is read (a number of at most so many digits, so many descriptors, so many variables): a
malformed packet is a ValueError saying why, never another exception.

The client imports this module, so it imports only C modules (os, sys, _socket): the
client's start-up is Python's floor.
"""

import _socket
import os
import sys

MAGIC = b"QQF1"
MAX_REQUEST = 1 << 20
"""The server reads up to this much; a client's kernel refuses to send more than its socket
buffer (about 212 KB by default) anyway, and the client then works without the server."""
MAX_ANSWER = 65536
MAX_DIGITS = 10
"""Digits a number in a packet may have: a pid, a descriptor, an exit code (int() of thousands
of digits is slow, and past 4,300 it raises)."""
MAX_PIPES = 4
"""Custom-reply descriptors a request may name (replypipe.CANDIDATES has two)."""
MAX_VARIABLES = 4096
"""Environment variables a request may carry (qmail-smtpd's child has a few dozen)."""
FDS_SPACE = _socket.CMSG_SPACE(2 * 4)
"""Ancillary room for the two descriptors a packet carries."""
EXEC = b"exec"
EXIT = b"exit"


class Request:
    """A client's request: the pid qmail-smtpd started, the custom-reply descriptors that
    are usable there, and its environment."""

    __slots__ = ("environ", "pid", "pipes")

    def __init__(self, pid: int, pipes: frozenset[int], environ: dict[str, str]) -> None:
        self.pid = pid
        self.pipes = pipes
        self.environ = environ


class Answer:
    """The server's answer: EXEC ``program`` or EXIT with ``code`` (and ``reply`` written to
    ``errfd``), and the log ``line`` the client writes first."""

    __slots__ = ("code", "errfd", "kind", "line", "program", "reply")

    def __init__(
        self, kind: bytes, code: int, errfd: int, program: str, line: bytes, reply: bytes
    ) -> None:
        self.kind = kind
        self.code = code
        self.errfd = errfd
        self.program = program
        self.line = line
        self.reply = reply


def pack_request(pid: int, pipes: list[int], environ: dict[str, str]) -> bytes:
    fields = [MAGIC, str(pid).encode(), ",".join(str(fd) for fd in pipes).encode()]
    fields += [os.fsencode(f"{k}={v}") for k, v in environ.items() if "\0" not in k + v]
    return b"\0".join(fields)


def unpack_request(data: bytes) -> Request:
    """The Request in ``data``; raises ValueError, saying what is wrong, when it is not one."""
    fields = data.split(b"\0", MAX_VARIABLES + 3)
    if len(fields) < 3 or fields[0] != MAGIC:
        raise ValueError("not a request")
    if len(fields) > MAX_VARIABLES + 3:
        raise ValueError(f"more than {MAX_VARIABLES} variables")
    pid = number(fields[1], "pid")
    pipes = fields[2].split(b",", MAX_PIPES) if fields[2] else []
    if len(pipes) > MAX_PIPES:
        raise ValueError(f"more than {MAX_PIPES} reply descriptors")
    environ = {}
    for entry in fields[3:]:
        name, equals, value = entry.partition(b"=")
        if equals:
            environ[os.fsdecode(name)] = os.fsdecode(value)
    return Request(pid, frozenset(number(p, "descriptor") for p in pipes), environ)


def number(field: bytes, what: str) -> int:
    """The decimal number in ``field``; ValueError when it is not one of at most MAX_DIGITS
    ASCII digits."""
    if not _short_number(field):
        raise ValueError(f"{what} is not a number of at most {MAX_DIGITS} digits")
    return int(field)


def pack_answer(answer: Answer) -> bytes:
    return b"\0".join(
        [
            MAGIC,
            answer.kind,
            str(answer.code).encode(),
            str(answer.errfd).encode(),
            os.fsencode(answer.program),
            answer.line,
            answer.reply,
        ]
    )


def unpack_answer(data: bytes) -> Answer:
    """The Answer in ``data``; raises ValueError, saying what the server did, when it is not
    one."""
    fields = data.split(b"\0", 6)
    if len(fields) != 7 or fields[0] != MAGIC:
        raise ValueError("ended without an answer (stopped or died mid-message)")
    _, kind, code, errfd, program, line, reply = fields
    if kind not in (EXEC, EXIT) or not (_short_number(code) and _short_number(errfd)):
        raise ValueError("sent an answer that makes no sense")
    return Answer(kind, int(code), int(errfd), os.fsdecode(program), line, reply)


def _short_number(field: bytes) -> bool:
    return 0 < len(field) <= MAX_DIGITS and field.isdigit()


def rights(fds: tuple[int, int]) -> list[tuple[int, int, bytes]]:
    """The ancillary data that passes ``fds``."""
    data = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, data)]


def descriptors(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors received in ``ancillary`` (recvmsg's), in order."""
    return [
        int.from_bytes(chunk[i : i + 4], sys.byteorder)
        for level, kind, chunk in ancillary
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for i in range(0, len(chunk) - len(chunk) % 4, 4)
    ]
