"""The check interface and the registry of checks the pipeline runs.

A check is a function ``check(message, settings) -> Finding | None``: it looks, and says what
it found. It never decides the SMTP answer or the exit code: that is policy's job. A check that
cannot decide (scanner down, DNS timeout) says so with ``Finding.UNKNOWN`` instead of guessing.
Checks import heavy libraries inside the function, so start-up pays only for what runs.
"""

from collections.abc import Callable

from qqfilter.message import Message
from qqfilter.settings import Settings


class Finding:
    """What one check found.

    ``outcome`` is CLEAN (nothing against the message; may still add ``headers``), REFUSE
    (the message should not be accepted) or UNKNOWN (the check could not decide).
    ``category`` (see settings.CATEGORIES) chooses s/qmail exit codes and drop rules;
    ``tag`` is the s/qmail log tag where one exists; ``reason`` is shown in the log and, for
    patched qmails, to the client, so it holds nothing private; ``detail`` goes to the log
    only (which server, what failed); ``status`` is the enhanced status code for the reply.
    A CLEAN finding with a ``reason`` is a note for the log ("skipped: ...").
    """

    CLEAN = "clean"
    REFUSE = "refuse"
    UNKNOWN = "unknown"

    __slots__ = ("category", "check", "detail", "headers", "outcome", "reason", "status", "tag")

    def __init__(
        self,
        check: str,
        outcome: str,
        reason: str = "",
        *,
        category: str = "policy",
        tag: str = "",
        status: str = "",
        headers: tuple[tuple[str, str], ...] = (),
        detail: str = "",
    ) -> None:
        self.check = check
        self.outcome = outcome
        self.reason = reason
        self.detail = detail
        self.category = category
        self.tag = tag
        self.status = status
        self.headers = headers


Check = Callable[[Message, Settings], "Finding | None"]


def registry() -> tuple[tuple[str, Check], ...]:
    """The checks, in the order they run: cheap ones first, so a refusal stops early."""
    from qqfilter.checks import attachments, recipients, size, spf, virus

    return (
        ("size", size.check),
        ("recipients", recipients.check),
        ("mime", attachments.check),
        ("spf", spf.check),
        ("clamd", virus.clamd),
        ("qhpsi", virus.qhpsi),
    )
