"""The QMAILQUEUE pipeline without queuing: what the filter would do to one message.

Used by ``qqfilter test`` (and by anything else that replays mail): the same spool, envelope
parser, checks, policy and exit-code mapping as the real run, but nothing is handed on.
"""

from qqfilter import envelope as envelope_reader
from qqfilter import exitcodes
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.message import Connection, Message
from qqfilter.outcome import exit_code, smtp_reply
from qqfilter.pipeline import evaluate
from qqfilter.policy import ACCEPT, DROP, Verdict
from qqfilter.settings import Settings
from qqfilter.spool import Spool


class Result:
    """The outcome of a dry run: the verdict (None when the contract failed first), the exit
    code, the reply qmail-smtpd would give, the header bytes that would be added, and the
    reason for a contract failure."""

    __slots__ = ("code", "error", "headers", "reply", "verdict")

    def __init__(
        self, verdict: Verdict | None, code: int, reply: str, headers: bytes = b"", error: str = ""
    ) -> None:
        self.verdict = verdict
        self.code = code
        self.reply = reply
        self.headers = headers
        self.error = error


def run(message_fd: int, envelope: bytes, connection: Connection, settings: Settings) -> Result:
    """Spool ``message_fd``, parse ``envelope`` (raw bytes, as qmail writes them), evaluate."""
    try:
        spool = Spool.receive(message_fd, settings.spooldir)
    except QueueError as exc:
        return Result(None, exc.code, exitcodes.reply_for(exc.code), error=exc.reason)
    try:
        parsed = envelope_reader.parse(envelope)
        verdict = evaluate(Message(spool, parsed, connection), settings)
    except QueueError as exc:
        return Result(None, exc.code, exitcodes.reply_for(exc.code), error=exc.reason)
    finally:
        spool.close()
    if verdict.action == ACCEPT:
        return Result(verdict, exitcodes.QUEUED, exitcodes.reply_for(0), render(verdict.headers))
    code = exit_code(verdict, settings)
    if verdict.action != DROP and settings.errfd:
        code = exitcodes.CUSTOM_REPLY
    return Result(verdict, code, smtp_reply(verdict, code))
