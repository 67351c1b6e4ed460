"""The QMAILQUEUE program: qmail-queue's contract on the outside, the pipeline inside.

``decide`` reads the message (fd 0 first: qmail-smtpd writes all of it before the envelope)
and the envelope, asks the pipeline for a verdict, and says what is to be done: exit with a
code, or hand the message on. ``perform`` does it. The two are apart because the resident
server (qqfilter.server) decides for a client process that then performs. Whatever happens,
exactly one log line is written and the exit status is one qmail-smtpd understands; nothing is
left on disk.
"""

import os
import signal
import time

from qqfilter import envelope as envelope_reader
from qqfilter import exitcodes, handoff, logline, replypipe
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.message import Connection, Message
from qqfilter.outcome import custom_reply, exit_code
from qqfilter.pipeline import evaluate
from qqfilter.policy import ACCEPT, DROP
from qqfilter.settings import load


class Decision:
    """What to do: exit with ``code`` after writing ``reply`` (if any) to descriptor
    ``errfd``, or, with a ``program``, exec it on ``message_fd`` and ``envelope_fd``; and the
    log ``line`` to write first."""

    __slots__ = (
        "code",
        "envelope_fd",
        "errfd",
        "line",
        "message_fd",
        "pid",
        "program",
        "reply",
        "style",
    )

    def __init__(self, code: int, line: str = "") -> None:
        self.code = code
        self.line = line
        self.style = "text"
        self.pid = os.getpid()
        self.reply = b""
        self.errfd = 0
        self.program = ""
        self.message_fd = -1
        self.envelope_fd = -1


def run(environ: dict[str, str]) -> int:
    """Filter one message; returns the exit code, or does not return (handed on)."""
    return perform(decide(environ, 0, 1, replypipe.usable))


def decide(
    environ: dict[str, str],
    message: int,
    envelope: int,
    reply_usable,
    pid: int = 0,
    gate=None,
) -> Decision:
    """The Decision for the message on descriptor ``message`` and the envelope on
    ``envelope``; ``reply_usable(fd)`` says whether a custom-reply pipe is there, ``pid`` is
    the process the log line names (the one qmail-smtpd started; by default this one), and
    ``gate``, a context manager the resident server gives, is held while checks run.

    Never raises: an unexpected exception is 81 (memory exhaustion 51), with its log line.
    """
    started = time.monotonic()
    connection = Connection.from_environ(environ)
    pid = pid or os.getpid()
    fields: dict[str, object] = {"pid": pid, "ip": connection.remote_ip}
    style = "json" if environ.get("QQF_LOG") == "json" else "text"
    decision = None
    try:
        settings, errors = load(environ)
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise QueueError(exitcodes.CONFIG_ERROR, f"{errors[0]}{more}")
        style = settings.log
        decision = _filter(connection, settings, fields, message, envelope, reply_usable, gate)
        code = decision.code
    except QueueError as exc:
        code = exc.code
        fields.update(verdict="error", reason=exc.reason)
    except MemoryError:
        code = exitcodes.OUT_OF_MEMORY
        fields.update(verdict="error", reason="out of memory")
    except Exception as exc:
        code = exitcodes.INTERNAL_BUG
        fields.update(verdict="error", reason=f"internal error: {type(exc).__name__}: {exc}")
    if decision is None:
        decision = Decision(code)
    if not decision.program:
        fields["code"] = code
    fields["ms"] = round((time.monotonic() - started) * 1000)
    decision.style, decision.pid = style, pid
    decision.line = logline.format_line(fields, style)
    return decision


def _filter(
    connection, settings, fields, message: int, envelope: int, reply_usable, gate
) -> Decision:
    """Spool, then decide; the spool is closed unless it is what is handed on (a resident
    server lives on: every descriptor it keeps is a file it keeps on disk)."""
    if threading_main():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit becomes EFBIG: 53
    from qqfilter.spool import Spool

    spool = Spool.receive(message, settings.spooldir)
    decision = None
    try:
        decision = _judge(spool, connection, settings, fields, envelope, reply_usable, gate)
    finally:
        if decision is None or decision.message_fd != spool.fd:
            spool.close()
    return decision


def _judge(spool, connection, settings, fields, envelope: int, reply_usable, gate) -> Decision:
    """Parse the envelope, evaluate, decide. Raises QueueError on contract failures."""
    fields["size"] = spool.size
    parsed = envelope_reader.read(envelope)
    fields.update({"from": logline.address(parsed.sender), "rcpts": len(parsed.recipients)})
    if gate is None:
        verdict = evaluate(Message(spool, parsed, connection), settings)
    else:
        with gate:  # the resident server's limit: taken once the message is spooled
            verdict = evaluate(Message(spool, parsed, connection), settings)
    fields.update(
        verdict=verdict.action,
        check=verdict.check,
        tag=verdict.tag,
        reason=verdict.reason,
        detail=verdict.detail,
        notes="; ".join(verdict.notes),
    )
    if verdict.action != ACCEPT:
        decision = Decision(exit_code(verdict, settings))
        if verdict.action != DROP and settings.errfd and reply_usable(settings.errfd):
            decision.code = exitcodes.CUSTOM_REPLY
            decision.reply = custom_reply(verdict)
            decision.errfd = settings.errfd
        return decision
    program = settings.qmailqueue
    if not os.path.isfile(program) or not os.access(program, os.X_OK):
        raise QueueError(exitcodes.TEMPFAILED, f"qmail-queue: cannot run {program}: not executable")
    decision = Decision(exitcodes.QUEUED)
    decision.program = program
    decision.message_fd = handoff.message_fd(spool, render(verdict.headers), settings.spooldir)
    decision.envelope_fd = handoff.envelope_fd(parsed.raw)
    return decision


def threading_main() -> bool:
    """True in the main thread; the resident server decides in others (it ignores SIGXFSZ
    itself, and only the main thread may set signal handlers)."""
    import sys

    threading = sys.modules.get("threading")
    return threading is None or threading.current_thread() is threading.main_thread()


def perform(decision: Decision) -> int:
    """Write the log line and the reply, then exec the program or return the exit code."""
    logline.write_line(decision.line)
    if not decision.program:
        if decision.reply:
            replypipe.write(decision.errfd, decision.reply)
        return decision.code
    try:
        handoff.execute(decision.program, decision.message_fd, decision.envelope_fd)
    except QueueError as exc:  # the accept line is out; this second line says it failed
        failed = {"pid": decision.pid, "verdict": "error", "code": exc.code, "reason": exc.reason}
        logline.write_line(logline.format_line(failed, decision.style))
        return exc.code
    raise AssertionError("execute() returns only by raising")
