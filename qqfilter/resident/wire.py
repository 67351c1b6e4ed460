"""What passes between the resident server and its client, written down once.

One SOCK_SEQPACKET packet each way. The request is ``QQF1\\0<pid>\\0<usable custom-reply fds,
comma-separated>\\0`` then ``NAME=value\\0`` for each environment variable, with the client's
fds 0 and 1 (message and envelope) attached (SCM_RIGHTS). The answer is ``QQF1\\0<exec|exit>\\0
<code>\\0<errfd>\\0<program>\\0<log line>\\0<custom reply>``, with the message and envelope
descriptors prepared for qmail-queue attached for exec.

The client imports this module, so it imports only C modules (os, sys, _socket): the
client's start-up is Python's floor.
"""

import _socket
import os
import sys

MAGIC = b"QQF1"
MAX_REQUEST = 1 << 20
MAX_ANSWER = 65536
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


def unpack_request(data: bytes) -> Request | None:
    """The Request in ``data``; None when it is not one."""
    fields = data.split(b"\0")
    if len(fields) < 3 or fields[0] != MAGIC:
        return None
    environ = {}
    for entry in fields[3:]:
        name, equals, value = entry.partition(b"=")
        if equals:
            environ[os.fsdecode(name)] = os.fsdecode(value)
    pipes = frozenset(int(p) for p in fields[2].split(b",") if p.isdigit())
    return Request(request_pid(data), pipes, environ)


def request_pid(data: bytes) -> int:
    """The pid a request names, 0 when it names none (for the log line of a refusal)."""
    fields = data.split(b"\0", 2)
    return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0


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
    if kind not in (EXEC, EXIT) or not (code.isdigit() and errfd.isdigit()):
        raise ValueError("sent an answer that makes no sense")
    return Answer(kind, int(code), int(errfd), os.fsdecode(program), line, reply)


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
