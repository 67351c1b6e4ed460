"""The QMAILQUEUE program as a thin client of ``qqfilter serve`` (QQF_SOCKET).

It hands its fd 0 and fd 1 (the message and the envelope, as qmail-smtpd gave them) and its
environment to the resident server over a unix socket (SCM_RIGHTS), gets back what to do,
and does it itself: exec qmail-queue on the descriptors the server prepared (so qmail-queue
runs as this process, and its exit status reaches qmail-smtpd unchanged), or exit with the
code. The packets are wire.py's; the exec is handoff's, the one the one-shot program uses.
It imports C modules and small modules of the project's that import nothing else (wire and
replypipe; handoff to exec; logline and exitcodes only to say it failed): every module counts,
about 0.2 ms each here, since its start-up is paid by every message.
"""

import _socket
import os

from qqfilter import replypipe
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
    _write_line(answer.line)
    if answer.kind == wire.EXEC and len(received) == 2:
        from qqfilter import handoff  # accepted mail only: a refusal need not load it

        return _fail(handoff.execute(answer.program, received[0], received[1]))
    for fd in received:
        os.close(fd)
    if answer.reply:
        replypipe.write(answer.errfd, answer.reply)
    return answer.code


def _fail(reason: str) -> int:
    """The one log line for a failure of the client's own, and 71: the sender retries."""
    from qqfilter import logline
    from qqfilter.exitcodes import TEMPFAILED

    fields = {"pid": os.getpid(), "verdict": "error", "code": TEMPFAILED, "reason": reason}
    _write_line(logline.format_text(fields).encode("ascii", "backslashreplace"))
    return TEMPFAILED


def _write_line(line: bytes) -> None:
    """The server's log line (or ours) on stderr; a closed stderr loses it, not the message."""
    try:  # noqa: SIM105 (contextlib is an import the client does without)
        os.write(2, line + b"\n")
    except OSError:
        pass
