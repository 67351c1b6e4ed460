"""The pipeline: run the check units over a message, in their order, and let policy judge."""

from qqfilter.checks import Finding, units
from qqfilter.message import Message
from qqfilter.policy import Verdict, judge
from qqfilter.settings import Settings


def evaluate(message: Message, settings: Settings) -> Verdict:
    """Run the checks in order and return policy's verdict.

    Stops at the first refusal, since nothing can overturn it and later checks (a virus scan)
    may be expensive; a check that could not decide does not stop the others, because one of
    them may still refuse for good.
    """
    findings: list[Finding] = []
    for unit in units():
        finding = unit.check(message, settings)
        if finding is None:
            continue
        findings.append(finding)
        if finding.outcome == Finding.REFUSE:
            break
    return judge(findings, settings)
