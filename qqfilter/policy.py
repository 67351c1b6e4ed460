"""Policy: the findings of all checks in, one verdict out.

The order of precedence is fixed and documented: a refusal wins (a permanent answer is better
for everyone than a retry), then "could not decide" (tempfail: the client keeps the message and
tries again), then accept with every header the checks asked for. Exit codes are not chosen
here: that is the contract's business (qqfilter.outcome).
"""

from qqfilter.checks import Finding
from qqfilter.settings import Settings

ACCEPT = "accept"
REJECT = "reject"
TEMPFAIL = "tempfail"
DROP = "drop"


class Verdict:
    """The one decision about a message, with what explains it."""

    __slots__ = ("action", "category", "check", "headers", "reason", "status", "tag")

    def __init__(
        self,
        action: str,
        *,
        check: str = "",
        category: str = "policy",
        tag: str = "",
        reason: str = "",
        status: str = "",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.action = action
        self.check = check
        self.category = category
        self.tag = tag
        self.reason = reason
        self.status = status
        self.headers = headers

    @classmethod
    def from_finding(cls, action: str, finding: Finding) -> "Verdict":
        """A refusal, drop or tempfail explained by ``finding``."""
        default_status = "5.7.1" if action != TEMPFAIL else "4.3.0"
        return cls(
            action,
            check=finding.check,
            category=finding.category,
            tag=finding.tag,
            reason=finding.reason,
            status=finding.status or default_status,
        )


def decide(findings: list[Finding], settings: Settings) -> Verdict:
    """The verdict for ``findings``; ``settings.drop`` turns refusals of a category into drops."""
    for finding in findings:
        if finding.outcome == Finding.REFUSE:
            action = DROP if finding.category in settings.drop else REJECT
            return Verdict.from_finding(action, finding)
    for finding in findings:
        if finding.outcome == Finding.UNKNOWN:
            return Verdict.from_finding(TEMPFAIL, finding)
    headers = tuple(field for finding in findings for field in finding.headers)
    return Verdict(ACCEPT, headers=headers)
