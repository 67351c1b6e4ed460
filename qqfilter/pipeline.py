"""The pipeline: run the registered checks over a message, and let policy decide."""

from qqfilter.checks import Finding, registry
from qqfilter.message import Message
from qqfilter.policy import Verdict, decide
from qqfilter.settings import Settings


def evaluate(message: Message, settings: Settings) -> Verdict:
    """Run the checks in registry order and return policy's verdict.

    Stops at the first refusal, since nothing can overturn it and later checks (a virus scan)
    may be expensive; a check that could not decide does not stop the others, because one of
    them may still refuse for good.
    """
    findings: list[Finding] = []
    for _name, check in registry():
        finding = check(message, settings)
        if finding is None:
            continue
        findings.append(finding)
        if finding.outcome == Finding.REFUSE:
            break
    return decide(findings, settings)
