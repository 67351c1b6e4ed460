"""The QMAILQUEUE program as a thin client of ``qqfilter serve`` (QQF_SOCKET).

It hands its fd 0 and fd 1 (the message and the envelope, as qmail-smtpd gave them) and its
environment to the resident server over a unix socket (SCM_RIGHTS), gets back what to do,
and does it itself: exec qmail-queue on the descriptors the server prepared (so qmail-queue
runs as this process, and its exit status reaches qmail-smtpd unchanged), or exit with the
code. The packets are wire.py's; the exec is handoff's, the one the one-shot program uses.
It imports C modules and small modules of the project's that import nothing else (wire,
replypipe, handoff, exitcodes, logline): its start-up is Python's floor.
"""

import _socket
import os

from qqfilter import handoff, logline, replypipe
from qqfilter.exitcodes import TEMPFAILED, QueueError
from qqfilter.resident import wire


def run(environ: dict[str, str]) -> int | None:
    """Filter through the server; None when it cannot be reached and the caller should do
    the work itself (QQF_SOCKETFALLBACK=inprocess, the default)."""
    path = environ.get("QQF_SOCKET", "")
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    try:
        try:
            connection.connect(path)
        except OSError as exc:
            if environ.get("QQF_SOCKETFALLBACK") == "tempfail":
                return _fail(f"resident server {path} unreachable: {exc.strerror}")
            return None
        return _ask(connection, environ)
    finally:
        connection.close()


def _ask(connection: _socket.socket, environ: dict[str, str]) -> int:
    pipes = [fd for fd in replypipe.CANDIDATES if replypipe.usable(fd)]
    request = wire.pack_request(os.getpid(), pipes, environ)
    try:
        connection.sendmsg([request], wire.rights((0, 1)))
        data, ancillary, _flags, _ = connection.recvmsg(
            wire.MAX_ANSWER, wire.FDS_SPACE, _socket.MSG_CMSG_CLOEXEC
        )
    except OSError as exc:
        return _fail(f"resident server failed mid-message: {exc.strerror}")
    received = wire.descriptors(ancillary)
    try:
        answer = wire.unpack_answer(data)
    except ValueError as exc:
        for fd in received:
            os.close(fd)
        return _fail(f"resident server {exc}")
    logline.write_line(answer.line.decode("ascii", "backslashreplace"))
    if answer.kind == wire.EXEC and len(received) == 2:
        return _execute(answer.program, received[0], received[1])
    for fd in received:
        os.close(fd)
    if answer.reply:
        replypipe.write(answer.errfd, answer.reply)
    return answer.code


def _execute(program: str, message: int, envelope: int) -> int:
    """Become qmail-queue on the prepared descriptors, exactly as the one-shot program does."""
    try:
        handoff.execute(program, message, envelope)
    except QueueError as exc:
        return _fail(exc.reason)
    return TEMPFAILED


def _fail(reason: str) -> int:
    """The one log line for a failure of the client's own, and 71: the sender retries."""
    fields = {"pid": os.getpid(), "verdict": "error", "code": TEMPFAILED, "reason": reason}
    logline.write_line(logline.format_text(fields))
    return TEMPFAILED
