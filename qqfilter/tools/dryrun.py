"""The QMAILQUEUE pipeline without queuing: what the filter would do to one message.

Used by ``qqfilter test`` and ``qqfilter replay``: the same spool, envelope parser, checks,
policy and verdict-to-code mapping (qqfilter.outcome) as the real run, but nothing is handed
on. A module of its own, beside the tools, because both of them run it and neither owns it.
"""

import argparse
import os
import sys

from qqfilter import envelope, exitcodes
from qqfilter.checks.size import spool_limit
from qqfilter.exitcodes import QueueError
from qqfilter.headers import render
from qqfilter.message import Connection, Message
from qqfilter.outcome import answer, smtp_reply
from qqfilter.pipeline import evaluate
from qqfilter.policy import ACCEPT, Verdict
from qqfilter.settings import SPOOLDIR, Settings, load
from qqfilter.spool import Spool


class DryRun:
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


def run(message_fd: int, raw_envelope: bytes, connection: Connection, settings: Settings) -> DryRun:
    """Spool ``message_fd``, parse ``raw_envelope`` (as qmail writes it), evaluate.

    A refusal is told as the real run would tell it with the custom-reply pipe there whenever
    QQF_ERRFD is set: no pipe is open here to look at, so it is taken to be usable."""
    try:
        spool = Spool.receive(message_fd, settings[SPOOLDIR], keep=spool_limit(settings))
    except QueueError as exc:
        return DryRun(None, exc.code, exitcodes.reply_for(exc.code), error=exc.reason)
    try:
        parsed = envelope.parse(raw_envelope)
        verdict = evaluate(Message(spool, parsed, connection), settings)
    except QueueError as exc:
        return DryRun(None, exc.code, exitcodes.reply_for(exc.code), error=exc.reason)
    finally:
        spool.close()
    if verdict.action == ACCEPT:
        return DryRun(verdict, exitcodes.QUEUED, exitcodes.reply_for(0), render(verdict.headers))
    code, _line = answer(verdict, settings, lambda fd: True)
    return DryRun(verdict, code, smtp_reply(verdict, code))


def settings_or_say() -> Settings | None:
    """The settings this process's environment gives; None, each error said on stderr, when
    any is invalid (the QMAILQUEUE program would exit 55 on them)."""
    settings, errors = load(dict(os.environ))
    for error in errors:
        print(f"qqfilter: {error}", file=sys.stderr)
    return None if errors else settings


def add_client_options(parser: argparse.ArgumentParser, *, every: str = "") -> None:
    """--from, --to, --ip, --helo and --relayclient: the envelope and the SMTP client of a dry
    run (``every`` says, for a tool that runs many messages, that they apply to all)."""
    parser.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help=f"envelope sender{every} (empty for a bounce)",
    )
    parser.add_argument(
        "--to",
        dest="recipients",
        metavar="ADDRESS",
        action="append",
        default=[],
        help=f"envelope recipient{every} (repeat for more)",
    )
    parser.add_argument("--ip", help=f"the client address{every} (TCPREMOTEIP)")
    parser.add_argument("--helo", help=f"the HELO name the client gave{every}")
    parser.add_argument(
        "--relayclient",
        action="store_true",
        help="as if RELAYCLIENT were set (authenticated or trusted client)",
    )
