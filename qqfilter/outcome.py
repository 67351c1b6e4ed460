"""From a verdict to what qmail-smtpd sees: an exit code, and for patched qmails a reply text.

The contract side of the pipeline: it knows verdicts and qmail's codes, never which check
spoke. A patched qmail-smtpd reads ``D<text>`` or ``Z<text>`` from an extra pipe when the
queue program exits 82; an unpatched one would turn 82 into "qq temporary problem", so the
text is only written when QQF_ERRFD names a descriptor that really is a pipe open for writing
(qqfilter.replypipe).
"""

from __future__ import annotations

from qqfilter import exitcodes
from qqfilter.headers import clean
from qqfilter.policy import ACCEPT, DROP, REJECT, TEMPFAIL, Verdict
from qqfilter.settings import CODES, ERRFD, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SQMAIL_CODES = {
    "virus": exitcodes.SQMAIL_VIRUS,
    "spam": exitcodes.SQMAIL_SPAM,
    "attachment": exitcodes.SQMAIL_ATTACHMENT,
}
REPLY_MAX = 255
"""Bytes a patched qmail-smtpd reads from the custom-reply pipe, the D or Z included."""


def exit_code(verdict: Verdict, settings: Settings) -> int:
    """The plain exit code for a verdict that is not handed on to qmail-queue."""
    if verdict.action in (ACCEPT, DROP):
        return exitcodes.QUEUED
    if verdict.action == TEMPFAIL:
        return exitcodes.TEMPFAILED
    if settings[CODES] == "sqmail":
        return SQMAIL_CODES.get(verdict.category, exitcodes.REJECTED)
    return exitcodes.REJECTED


def answer(
    verdict: Verdict, settings: Settings, reply_usable: Callable[[int], bool]
) -> tuple[int, bytes]:
    """The exit code and the custom-reply line (b"" for none) for a verdict that is not
    handed on: the one place that turns a verdict into what qmail-smtpd sees. A refusal is 82
    with its text when QQF_ERRFD names a descriptor for which ``reply_usable`` is true."""
    code = exit_code(verdict, settings)
    errfd = settings[ERRFD]
    if verdict.action not in (ACCEPT, DROP) and errfd and reply_usable(errfd):
        return exitcodes.CUSTOM_REPLY, custom_reply(verdict)
    return code, b""


def custom_reply(verdict: Verdict) -> bytes:
    """The ``D<text>`` or ``Z<text>`` line for a refusal, within qmail's 255 bytes."""
    kind = "D" if verdict.action == REJECT else "Z"
    suffix = f" (#{verdict.status})" if verdict.status else ""
    text = clean(verdict.reason)[: REPLY_MAX - 1 - len(suffix)] + suffix
    return (kind + text).encode("ascii")


def smtp_reply(verdict: Verdict, code: int) -> str:
    """What qmail-smtpd answers the client for ``code`` (82: the custom text)."""
    if code == exitcodes.CUSTOM_REPLY:
        line = custom_reply(verdict).decode("ascii")
        return ("554 " if line[0] == "D" else "451 ") + line[1:]
    return exitcodes.reply_for(code)
