"""The QMAILQUEUE program as a thin client of ``qqfilter serve`` (QQF_SOCKET).

It hands its fd 0 and fd 1 (the message and the envelope, as qmail-smtpd gave them) and its
environment to the resident server over a unix socket (SCM_RIGHTS), gets back what to do,
and does it itself: exec qmail-queue on the descriptors the server prepared (so qmail-queue
runs as this process, and its exit status reaches qmail-smtpd unchanged), or exit with the
code. The packets are wire.py's; the exec is handoff's, the one the one-shot program uses.

A server that is stopped (SIGSTOP), swamped or hung must not hang qmail-smtpd with it: the
client waits for the answer at most QQF_SOCKETTIMEOUT seconds (DEADLINE) once the whole
message has arrived (a slow SMTP client's time is qmail-smtpd's to limit, not ours), and for
room in a full listen backlog as long; then it answers 71.

Its own failures get one line like any tempfail's (``verdict=tempfail code=71``, ``ip``): when
the server never had the descriptors (unreachable, a full backlog), the client reads the
message and the envelope itself for ``size``, ``msgid``, ``from``, ``rcpts`` and ``to``; when
the server had them (no answer, died, an answer that makes no sense) it may have read any part
of them (the descriptors share their offsets), so the line says only what the client knows.

It imports C modules and small modules of the project's that import nothing else (wire and
replypipe; handoff to exec; logline, exitcodes and envelope only to say it failed; select, a
C module, to wait): every module counts, about 0.2 ms each here, since its start-up is paid
by every message.

This module is the reference; client.c is the same client compiled (no Python start-up at
all), speaking wire.py's packets and waiting as ``run`` waits. It leaves every word and every
fallback to this module: on a failure of its own it execs the Python wrapper with FAILED set,
and ``resume`` carries on from there as ``run`` would have.
"""

import _socket
import errno
import os
import stat
import time

from qqfilter import replypipe
from qqfilter.resident import wire

DEADLINE = 300.0
"""Seconds the server may take to answer once the message is in, unless QQF_SOCKETTIMEOUT
says otherwise: its own limits (QQF_SCANTIMEOUT 120, QQF_SPFTIMEOUT 20, --wait 10) fit in it,
and an SMTP client waits 10 minutes for the answer to its DATA."""
TOO_BIG = (errno.EMSGSIZE, errno.ENOBUFS)
"""sendmsg's errors for a request past the socket's buffer (an environment of ~212 KB)."""
FAILED = "QQF_CLIENTFAILED"
"""What the compiled client (client.c) tells the Python wrapper it execs when it cannot carry
on: ``state`` or ``state:detail`` (``resume``). cli.main takes it out of the environment
before anything else reads it; it is no setting, and it chooses no program, path or server."""


def run(environ: dict[str, str]) -> int | str:
    """Filter through the server: the exit code; or, when it cannot be reached (or cannot be
    told this message) and the caller should do the work itself (QQF_SOCKETFALLBACK=inprocess,
    the default), why not (``path: problem``), for the caller's log line."""
    path = environ.get("QQF_SOCKET", "")
    deadline = _seconds(environ.get("QQF_SOCKETTIMEOUT", ""))
    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    connection.settimeout(deadline)
    try:
        try:
            problem = _connect(connection, path, deadline)
        except TimeoutError:
            return _busy(environ, deadline)
        if problem is None:
            problem = _send(connection, environ)
        if problem is not None:
            return _unreachable(environ, path, problem)
        if not _wait(connection, deadline):
            return _no_answer(environ, deadline)
        try:
            received = _receive(connection)
        except OSError as exc:
            return _mid_message(environ, exc)
        return _carry_out(environ, *received)
    finally:
        connection.close()


def resume(environ: dict[str, str], failed: str) -> int | str:
    """Carry on where the compiled client stopped (FAILED's value ``failed``, taken out of
    ``environ``), as ``run`` would have from that point, without trying the socket again: the
    exit code, or why the server could not be used when the caller should do the work itself.

    Whoever sets the variable by hand changes no more than these words: a server that never
    had the message (``unreachable``, ``toobig``, ``busy``) means the work in-process or 71,
    as QQF_SOCKETFALLBACK says; any other state, known or not, is 71. No program is run,
    no file named, and the message is never queued unchecked."""
    path = environ.get("QQF_SOCKET", "")
    deadline = _seconds(environ.get("QQF_SOCKETTIMEOUT", ""))
    state, _, detail = failed.partition(":")
    number, _, program = detail.partition(":")
    known = _digits(number) and int(number) < 4096  # an errno
    error = OSError(int(number), os.strerror(int(number))) if known else OSError()
    if state == "unreachable":
        return _unreachable(environ, path, _words(error))
    if state == "toobig" and _digits(detail):
        return _unreachable(environ, path, _too_big(int(detail)))
    if state == "busy":
        return _busy(environ, deadline)
    if state == "noanswer":
        return _no_answer(environ, deadline)
    if state == "midmessage":
        return _mid_message(environ, error)
    if state == "exec":  # the server's accept line is out: handoff.execute's words follow it
        why = f"qmail-queue: cannot run {program}: {_words(error)}"
        return _fail(why, environ, verdict="error")
    answers = {"ended": b"", "nonsense": wire.MAGIC + b"\0?\0\0\0\0\0"}
    if state in answers:
        try:  # wire's own words for such an answer
            wire.unpack_answer(answers[state])
        except ValueError as exc:
            return _fail(f"resident server {exc}", environ)
    return _fail(f"the compiled client failed: {failed}", environ)


def _digits(text: str) -> bool:
    return 0 < len(text) <= wire.MAX_DIGITS and text.isascii() and text.isdigit()


def _unreachable(environ: dict[str, str], path: str, problem: str) -> int | str:
    """The server never had the message: why, for the caller's in-process work; or 71."""
    if environ.get("QQF_SOCKETFALLBACK") == "tempfail":
        return _fail(f"resident server {path} unreachable: {problem}", environ, unread=True)
    return f"{path}: {problem}"


def _too_big(size: int) -> str:
    return f"a request of {size} bytes is too big for it"


def _busy(environ: dict[str, str], deadline: float) -> int:
    why = f"resident server busy: no room in its backlog for {deadline:g} s"
    return _fail(why, environ, unread=True)


def _no_answer(environ: dict[str, str], deadline: float) -> int:
    return _fail(f"resident server gave no answer within {deadline:g} s", environ)


def _mid_message(environ: dict[str, str], exc: OSError) -> int:
    return _fail(f"resident server failed mid-message: {_words(exc)}", environ)


def _send(connection: _socket.socket, environ: dict[str, str]) -> str | None:
    """Send the request with fds 0 and 1; None when sent (or when the send failed: the
    answer's read says why, and a server that refuses this peer has answered before
    closing), else why this server cannot be told this message."""
    pipes = [fd for fd in replypipe.CANDIDATES if replypipe.usable(fd)]
    request = wire.pack_request(os.getpid(), pipes, environ)
    try:
        connection.sendmsg([request], wire.rights((0, 1)))
    except OSError as exc:
        if exc.errno in TOO_BIG:
            return _too_big(len(request))
    return None


def _seconds(text: str) -> float:
    """QQF_SOCKETTIMEOUT's value, DEADLINE when it is unset or not a positive number."""
    try:
        value = float(text)
    except ValueError:
        return DEADLINE
    return value if 0 < value <= 86400 else DEADLINE


def _connect(connection: _socket.socket, path: str, deadline: float) -> str | None:
    """Connect; None when connected, else why the server is unreachable. Raises
    TimeoutError when its listen backlog stays full (a server swamped or stopped) past
    ``deadline``."""
    give_up = time.monotonic() + deadline
    while True:
        try:
            connection.connect(path)
            return None
        except BlockingIOError:  # EAGAIN: the backlog is full; room comes as it accepts
            if time.monotonic() > give_up:
                raise TimeoutError from None
            time.sleep(0.05)
        except OSError as exc:
            return _words(exc)


def _wait(connection: _socket.socket, deadline: float) -> bool:
    """True once the answer (or the server's end) is there to read; False when ``deadline``
    seconds have passed since the message was all in (fd 0 a pipe no one writes any more)
    and there is none."""
    import select  # a C module; _socket's timeout alone cannot also watch fd 0

    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    due: float | None = time.monotonic() + deadline
    if _arriving():
        poller.register(0, 0)  # no events asked: POLLHUP comes when the writer is done
        due = None
    while True:
        wait = None if due is None else max(0.0, due - time.monotonic()) * 1000
        events = poller.poll(wait)
        if not events:
            return False
        if any(fd != 0 for fd, _ in events):
            return True
        poller.unregister(0)  # the message is in: the server's time starts now
        due = time.monotonic() + deadline


def _arriving() -> bool:
    """Is the message a pipe, perhaps still being written (qmail-smtpd writes it as the SMTP
    client sends it)? A file is all there."""
    try:
        return stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        return False


def _receive(
    connection: _socket.socket, flags: int = 0
) -> tuple[bytes, list[tuple[int, int, bytes]]]:
    """The answer packet and its ancillary data. A server that closes with our request unread
    (it refuses a peer before reading) leaves ECONNRESET in front of its answer: the answer is
    read after it."""
    try:
        data, ancillary, _, _ = connection.recvmsg(
            wire.MAX_ANSWER, wire.FDS_SPACE, _socket.MSG_CMSG_CLOEXEC | flags
        )
    except ConnectionResetError as reset:
        try:
            data, ancillary, _, _ = connection.recvmsg(
                wire.MAX_ANSWER, wire.FDS_SPACE, _socket.MSG_CMSG_CLOEXEC | _socket.MSG_DONTWAIT
            )
        except OSError:
            raise reset from None
    return data, ancillary


def _carry_out(
    environ: dict[str, str], data: bytes, ancillary: list[tuple[int, int, bytes]]
) -> int:
    """Write the answer's log line and do what it says: exec qmail-queue, or the exit code."""
    received = wire.descriptors(ancillary)
    try:
        answer = wire.unpack_answer(data)
    except ValueError as exc:
        for fd in received:
            os.close(fd)
        return _fail(f"resident server {exc}", environ)
    _write_line(answer.line)
    if answer.kind == wire.EXEC and len(received) == 2:
        from qqfilter import handoff  # accepted mail only: a refusal need not load it

        reason = handoff.execute(answer.program, received[0], received[1])
        # the accept line is out; this second line says the hand-off failed, as the
        # one-shot program's does (qmailqueue.perform)
        return _fail(reason, environ, verdict="error")
    for fd in received:
        os.close(fd)
    if answer.reply and answer.errfd in replypipe.CANDIDATES and replypipe.usable(answer.errfd):
        replypipe.write(answer.errfd, answer.reply)  # only a pipe the request named
    return answer.code


def _words(exc: OSError) -> str:
    """exitcodes.describe's words, that module imported only on this failure path."""
    from qqfilter.exitcodes import describe

    return describe(exc)


def _fail(
    reason: str, environ: dict[str, str], *, unread: bool = False, verdict: str = "tempfail"
) -> int:
    """The one log line for a failure of the client's own, and 71: the sender retries.

    A tempfail's line has the fields of any tempfail's that the client can vouch for: the
    client's address always; with ``unread`` (the server never had fds 0 and 1) what the
    message and the envelope say, read here. ``verdict="error"`` is the exec of qmail-queue
    failing after the accept line: the pid and the reason, as the one-shot program says it.
    """
    from qqfilter import logline
    from qqfilter.exitcodes import TEMPFAILED

    fields: dict[str, object] = {"pid": os.getpid(), "verdict": verdict, "code": TEMPFAILED}
    fields["reason"] = reason
    if verdict == "tempfail":
        fields["ip"] = environ.get("TCPREMOTEIP", "")
        if unread:
            fields.update(_unread())
    style = "json" if environ.get("QQF_LOG") == "json" else "text"
    _write_line(logline.format_line(fields, style).encode("ascii", "backslashreplace"))
    return TEMPFAILED


def _unread() -> dict[str, object]:
    """What the message on fd 0 and the envelope on fd 1 say for the log line, read to their
    ends as the one-shot program reads them (fd 0 first: qmail-smtpd writes the envelope once
    the message is all written): ``size`` and ``msgid`` once fd 0 is read, then ``from``,
    ``rcpts`` and ``to`` if the envelope is one. Only for descriptors the server never had."""
    from qqfilter import envelope, logline
    from qqfilter.exitcodes import QueueError

    head = b""
    size = 0
    try:
        while chunk := os.read(0, 262144):
            size += len(chunk)
            if len(head) < logline.HEAD:
                head += chunk[: logline.HEAD - len(head)]
    except OSError:
        return {}  # the envelope comes after the message: it cannot be read either
    facts: dict[str, object] = {"size": size, "msgid": logline.message_id(head)}
    try:
        parsed = envelope.read(1)
    except QueueError:
        return facts
    facts["from"] = logline.address(parsed.sender)
    facts["rcpts"] = len(parsed.recipients)
    facts["to"] = logline.recipients(parsed.recipients)
    return facts


def _write_line(line: bytes) -> None:
    """The server's log line (or ours) on stderr; a closed stderr loses it, not the message."""
    try:  # noqa: SIM105 (contextlib is an import the client does without)
        os.write(2, line + b"\n")
    except OSError:
        pass
