"""The QMAILQUEUE program as a thin client of ``qqfilter serve`` (QQF_SOCKET).

It hands its fd 0 and fd 1 (the message and the envelope, as qmail-smtpd gave them) and its
environment to the resident server over a unix socket (SCM_RIGHTS), gets back what to do,
and does it itself: exec qmail-queue on the descriptors the server prepared (so qmail-queue
runs as this process, and its exit status reaches qmail-smtpd unchanged), or exit with the
code. It imports only C modules: its start-up is Python's floor.

Protocol (SOCK_SEQPACKET, one packet each way): the request is ``QQF1\\0<pid>\\0<usable
custom-reply fds, comma-separated>\\0`` and ``NAME=value\\0`` for each environment variable,
with fds 0 and 1 attached. The answer is ``QQF1\\0<exec|exit>\\0<code>\\0<errfd>\\0<program>\\0
<log line>\\0<custom reply>``, with the message and envelope descriptors attached for exec.
"""

import _socket
import os
import sys

from qqfilter import replypipe

MAGIC = b"QQF1"
MAX_ANSWER = 65536
TEMPFAILED = 71


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


def _ask(connection, environ: dict[str, str]) -> int:
    pipes = ",".join(str(fd) for fd in replypipe.CANDIDATES if replypipe.usable(fd))
    request = [MAGIC, str(os.getpid()).encode(), pipes.encode()]
    request += [os.fsencode(f"{k}={v}") for k, v in environ.items() if "\0" not in k + v]
    fds = (0).to_bytes(4, sys.byteorder) + (1).to_bytes(4, sys.byteorder)
    try:
        connection.sendmsg([b"\0".join(request)], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        data, ancillary, _flags, _ = connection.recvmsg(
            MAX_ANSWER, _socket.CMSG_SPACE(2 * 4), _socket.MSG_CMSG_CLOEXEC
        )
    except OSError as exc:
        return _fail(f"resident server failed mid-message: {exc.strerror}")
    received = [
        int.from_bytes(chunk[i : i + 4], sys.byteorder)
        for level, kind, chunk in ancillary
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
        for i in range(0, len(chunk) - len(chunk) % 4, 4)
    ]
    fields = data.split(b"\0", 6)
    if len(fields) != 7 or fields[0] != MAGIC:
        for fd in received:
            os.close(fd)
        return _fail("resident server ended without an answer (stopped or died mid-message)")
    _, kind, code, errfd, program, line, reply = fields
    if not (code.isdigit() and errfd.isdigit()):
        for fd in received:
            os.close(fd)
        return _fail("resident server sent an answer that makes no sense")
    _log(line)
    if kind == b"exec" and len(received) == 2:
        return _execute(os.fsdecode(program), received[0], received[1])
    for fd in received:
        os.close(fd)
    if reply:
        replypipe.write(int(errfd), reply)
    return int(code)


def _execute(program: str, message: int, envelope: int) -> int:
    """Become qmail-queue on the prepared descriptors, as the one-shot program does."""
    import _signal  # not signal: that one imports enum, 5 ms of start-up

    os.dup2(message, 0)
    os.dup2(envelope, 1)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    try:
        os.execv(program, [program])
    except OSError as exc:
        return _fail(f"qmail-queue: cannot run {program}: {exc.strerror}")
    return TEMPFAILED


def _fail(reason: str) -> int:
    """The one log line for a failure of the client's own, and 71: the sender retries."""
    text = reason.replace("\\", "\\\\").replace('"', '\\"')
    _log(f'qqfilter: pid={os.getpid()} verdict=error code={TEMPFAILED} reason="{text}"'.encode())
    return TEMPFAILED


def _log(line: bytes) -> None:
    try:  # noqa: SIM105 (contextlib is an import this client does without)
        os.write(2, line + b"\n")
    except OSError:
        pass
