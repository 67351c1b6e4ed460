"""The QMAILQUEUE program: qmail-queue's contract on the outside, the pipeline inside.

Reads the message on fd 0 (first: qmail-smtpd writes all of it before the envelope) and the
envelope on fd 1, asks the pipeline for a verdict, then either becomes the next queue program
or exits with qmail's code. Whatever happens, exactly one log line is written and the exit
status is one qmail-smtpd understands; nothing is left on disk.
"""

import os
import signal
import time

from qqfilter import envelope as envelope_reader
from qqfilter import exitcodes, handoff, logline
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.message import Connection, Message
from qqfilter.outcome import exit_code, send_custom_reply
from qqfilter.pipeline import evaluate
from qqfilter.policy import ACCEPT, DROP
from qqfilter.settings import Settings, load
from qqfilter.spool import Spool


def run(environ: dict[str, str]) -> int:
    """Filter one message; returns the exit code, or does not return (handed on).

    Never raises: an unexpected exception is 81 (memory exhaustion 51), with one log line.
    """
    started = time.monotonic()
    connection = Connection.from_environ(environ)
    fields: dict[str, object] = {"pid": os.getpid(), "ip": connection.remote_ip}
    style = "json" if environ.get("QQF_LOG") == "json" else "text"
    try:
        settings, errors = load(environ)
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise QueueError(exitcodes.CONFIG_ERROR, f"{errors[0]}{more}")
        style = settings.log
        code = _filter(connection, settings, fields, started, style)
    except QueueError as exc:
        code = exc.code
        fields.update(verdict="error", reason=exc.reason)
    except MemoryError:
        code = exitcodes.OUT_OF_MEMORY
        fields.update(verdict="error", reason="out of memory")
    except Exception as exc:
        code = exitcodes.INTERNAL_BUG
        fields.update(verdict="error", reason=f"internal error: {type(exc).__name__}: {exc}")
    fields.update(code=code, ms=_elapsed(started))
    logline.write(fields, style)
    return code


def _filter(
    connection: Connection,
    settings: Settings,
    fields: dict[str, object],
    started: float,
    style: str,
) -> int:
    """Spool, parse, evaluate, then hand on or answer. Raises QueueError on contract failures."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file size limit becomes EFBIG: 53
    spool = Spool.receive(0, settings.spooldir)
    fields["size"] = spool.size
    envelope = envelope_reader.read(1)
    fields.update({"from": logline.address(envelope.sender), "rcpts": len(envelope.recipients)})
    verdict = evaluate(Message(spool, envelope, connection), settings)
    fields.update(
        verdict=verdict.action,
        check=verdict.check,
        tag=verdict.tag,
        reason=verdict.reason,
        detail=verdict.detail,
        notes="; ".join(verdict.notes),
    )
    if verdict.action != ACCEPT:
        code = exit_code(verdict, settings)
        if verdict.action != DROP and settings.errfd and send_custom_reply(settings.errfd, verdict):
            code = exitcodes.CUSTOM_REPLY
        return code
    program = settings.qmailqueue
    if not os.path.isfile(program) or not os.access(program, os.X_OK):
        raise QueueError(exitcodes.TEMPFAILED, f"qmail-queue: cannot run {program}: not executable")
    message_fd = handoff.message_fd(spool, render(verdict.headers), settings.spooldir)
    envelope_fd = handoff.envelope_fd(envelope.raw)
    fields["ms"] = _elapsed(started)
    logline.write(fields, style)
    handoff.execute(program, message_fd, envelope_fd)
    raise AssertionError("execute() returns only by raising")  # its failure gets a 2nd line


def _elapsed(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
