"""The QMAILQUEUE program: qmail-queue's contract on the outside, the pipeline inside.

``decide`` reads the message (fd 0 first: qmail-smtpd writes all of it before the envelope)
and the envelope, asks the pipeline for a verdict, and says what is to be done: exit with a
code, or hand the message on. ``perform`` does it. The two are apart because the resident
server (qqfilter.resident.server) decides for a client process that then performs. Whatever
happens, exactly one log line is written and the exit status is one qmail-smtpd understands;
nothing is left on disk.
"""

from __future__ import annotations

import os
import time

from qqfilter import envelope, exitcodes, handoff, logline, replypipe
from qqfilter.checks.size import spool_limit
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.message import Connection, Message
from qqfilter.outcome import answer
from qqfilter.pipeline import evaluate
from qqfilter.policy import ACCEPT, Verdict
from qqfilter.settings import (
    ERRFD,
    LOG,
    NOTIFY,
    NOTIFY_DIGEST,
    QMAILHOME,
    QMAILQUEUE,
    QUARANTINE,
    QUARANTINE_CATEGORIES,
    SPOOLDIR,
    Settings,
    load,
)
from qqfilter.spool import Spool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractContextManager


class Action:
    """What to do: exit with ``code`` after writing ``reply`` (if any) to descriptor
    ``errfd``, or, with a ``program``, exec it on ``message_fd`` and ``envelope_fd``.
    Hand-written ``__slots__`` records here, as on the whole queue path: dataclasses costs
    ~10 ms of start-up."""

    __slots__ = ("code", "envelope_fd", "errfd", "message_fd", "program", "reply")

    def __init__(
        self,
        code: int,
        *,
        reply: bytes = b"",
        errfd: int = 0,
        program: str = "",
        message_fd: int = -1,
        envelope_fd: int = -1,
    ) -> None:
        self.code = code
        self.reply = reply
        self.errfd = errfd
        self.program = program
        self.message_fd = message_fd
        self.envelope_fd = envelope_fd


class Decision:
    """The Action and the log line to write before it is carried out (in ``style``, for the
    line a failed exec adds, naming ``pid``)."""

    __slots__ = ("action", "line", "pid", "style")

    def __init__(self, action: Action, line: str, style: str, pid: int) -> None:
        self.action = action
        self.line = line
        self.style = style
        self.pid = pid


def run(environ: dict[str, str], fallback: str = "") -> int:
    """Filter one message; returns the exit code, or does not return (handed on).
    ``fallback`` says why the resident server (QQF_SOCKET) could not do it, when it could
    not: the line says so (``fallback``)."""
    return perform(decide(environ, 0, 1, replypipe.usable, fallback=fallback))


def decide(
    environ: dict[str, str],
    message_fd: int,
    envelope_fd: int,
    reply_usable: Callable[[int], bool],
    pid: int = 0,
    gate: AbstractContextManager[None] | None = None,
    ignored: tuple[str, ...] = (),
    fallback: str = "",
) -> Decision:
    """The Decision for the message on descriptor ``message_fd`` and the envelope on
    ``envelope_fd``; ``reply_usable(fd)`` says whether a custom-reply pipe is there, ``pid``
    is the process the log line names (the one qmail-smtpd started; by default this one),
    ``gate``, a context manager the resident server gives, is held while checks run,
    ``ignored`` names the variables the resident server did not take from its peer, and
    ``fallback`` why the resident server could not be used (the client's words), if so.

    Never raises: an unexpected exception is 81 (memory exhaustion 51), with its log line.
    """
    started = time.monotonic()
    connection = Connection.from_environ(environ)
    pid = pid or os.getpid()
    fields: dict[str, object] = {
        "pid": pid,
        "ip": connection.remote_ip,
        "ignored": ",".join(ignored),
        "fallback": f"{logline.FALLBACK}: {fallback}" if fallback else "",
    }
    style = "json" if environ.get("QQF_LOG") == "json" else "text"
    action = None
    try:
        settings, errors = load(environ)
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise QueueError(exitcodes.CONFIG_ERROR, f"{errors[0]}{more}")
        style = settings[LOG]
        action = _filter(connection, settings, fields, message_fd, envelope_fd, reply_usable, gate)
    except QueueError as exc:
        # the contract failed; or the resident server's turn was not had in time, which
        # _judge names a tempfail, as a check's (no class for it: ~15 us of start-up)
        fields["verdict"] = "tempfail" if fields.get("verdict") == "tempfail" else "error"
        fields["reason"] = exc.reason
        action = Action(exc.code)
    except MemoryError:
        fields.update(verdict="error", reason="out of memory")
        action = Action(exitcodes.OUT_OF_MEMORY)
    except Exception as exc:
        fields.update(verdict="error", reason=f"internal error: {type(exc).__name__}: {exc}")
        action = Action(exitcodes.INTERNAL_BUG)
    if not action.program:
        fields["code"] = action.code
    fields["ms"] = round((time.monotonic() - started) * 1000)
    return Decision(action, logline.format_line(fields, style), style, pid)


def _filter(
    connection: Connection,
    settings: Settings,
    fields: dict[str, object],
    message_fd: int,
    envelope_fd: int,
    reply_usable: Callable[[int], bool],
    gate: AbstractContextManager[None] | None,
) -> Action:
    """Spool, then judge; the spool is closed unless it is what is handed on (a resident
    server lives on: every descriptor it keeps is a file it keeps on disk)."""
    spool = Spool.receive(message_fd, settings[SPOOLDIR], keep=spool_limit(settings))
    action = None
    try:
        action = _judge(spool, connection, settings, fields, envelope_fd, reply_usable, gate)
    finally:
        if action is None or action.message_fd != spool.fd:
            spool.close()
    return action


def _judge(
    spool: Spool,
    connection: Connection,
    settings: Settings,
    fields: dict[str, object],
    envelope_fd: int,
    reply_usable: Callable[[int], bool],
    gate: AbstractContextManager[None] | None,
) -> Action:
    """Parse the envelope, evaluate, conclude. Raises QueueError on contract failures."""
    fields["size"] = spool.received
    fields["msgid"] = logline.message_id(spool.read(0, logline.HEAD))
    parsed = envelope.read(envelope_fd)
    fields["from"] = logline.address(parsed.sender)
    fields["rcpts"] = len(parsed.recipients)
    fields["to"] = logline.recipients(parsed.recipients)
    if gate is None:
        verdict = _timed(Message(spool, parsed, connection), settings, fields)
    else:
        try:  # the resident server's limit: taken once the message is spooled
            gate.__enter__()
        except QueueError:
            fields["verdict"] = "tempfail"
            raise
        try:
            verdict = _timed(Message(spool, parsed, connection), settings, fields)
        finally:
            gate.__exit__(None, None, None)
    fields.update(
        verdict=verdict.action,
        check=verdict.check,
        tag=verdict.tag,
        reason=verdict.reason,
        detail=verdict.detail,
        notes="; ".join(verdict.notes),
    )
    if verdict.action != ACCEPT:
        if settings[QUARANTINE] and verdict.category in settings[QUARANTINE_CATEGORIES]:
            fields["quarantine"] = _kept(spool, parsed, connection, verdict, settings, fields)
        code, reply = answer(verdict, settings, reply_usable)
        return Action(code, reply=reply, errfd=settings[ERRFD] if reply else 0)
    if spool.received != spool.size:  # only the size check's refusal may follow a cut
        raise QueueError(exitcodes.INTERNAL_BUG, "a message cut at QQF_MAXSIZE was accepted")
    program = settings[QMAILQUEUE]
    if not os.path.isfile(program) or not os.access(program, os.X_OK):
        raise QueueError(exitcodes.TEMPFAILED, f"qmail-queue: cannot run {program}: not executable")
    message_fd = handoff.message_fd(
        spool, render(verdict.headers), settings[SPOOLDIR], verdict.edits
    )
    return Action(
        exitcodes.QUEUED,
        program=program,
        message_fd=message_fd,
        envelope_fd=handoff.envelope_fd(parsed.raw),
    )


def _kept(
    spool: Spool,
    parsed: envelope.Envelope,
    connection: Connection,
    verdict: Verdict,
    settings: Settings,
    fields: dict[str, object],
) -> str:
    """Keep a refused (or dropped) message in QQF_QUARANTINE and tell QQF_NOTIFY: its ID for
    the log line (and why no notice went, if none did), or why it could not be kept. The
    answer stays the refusal either way."""
    from qqfilter import quarantine

    try:
        ident, record = quarantine.keep(
            settings[QUARANTINE], spool, parsed, connection, verdict, int(str(fields["pid"]))
        )
    except Exception as exc:  # whatever failed, it costs the copy, never the refusal
        return quarantine.failure(exc)
    if not settings[NOTIFY] or settings[NOTIFY_DIGEST] != "off":
        return ident
    problem = quarantine.notify(settings[NOTIFY], record, settings[QMAILHOME])
    return f"{ident} ({problem})" if problem else ident


def _timed(message: Message, settings: Settings, fields: dict[str, object]) -> Verdict:
    """The checks' verdict on ``message``, and their own time in ``fields`` (``checkms``):
    ``ms`` also counts the SMTP client sending the message and a resident server's queue, so
    a slow client and slow checks can be told apart."""
    started = time.monotonic()
    try:
        return evaluate(message, settings)
    finally:
        fields["checkms"] = round((time.monotonic() - started) * 1000)


def perform(decision: Decision) -> int:
    """Write the log line and the reply, then exec the program or return the exit code."""
    logline.write_line(decision.line)
    action = decision.action
    if not action.program:
        if action.reply:
            replypipe.write(action.errfd, action.reply)
        return action.code
    reason = handoff.execute(action.program, action.message_fd, action.envelope_fd)
    # the accept line is out; this second line says the hand-off failed
    code = exitcodes.TEMPFAILED
    failed = {"pid": decision.pid, "verdict": "error", "code": code, "reason": reason}
    logline.write_line(logline.format_line(failed, decision.style))
    return code
