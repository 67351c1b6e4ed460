"""The pipeline: run the check units over a message, in their order, and let policy judge."""

from __future__ import annotations

from time import monotonic

from qqfilter.checks import Finding, units
from qqfilter.message import Message
from qqfilter.policy import Verdict, judge
from qqfilter.settings import Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Observer(Protocol):
        """What watches the pipeline (qqfilter.resident.metrics.Metrics)."""

        def checked(self, check: str, seconds: float) -> None: ...

        def judged(self, verdict: Verdict) -> None: ...


OBSERVER: Observer | None = None
"""Told each unit's time and the verdict, in the thread that evaluates: set once by ``qqfilter
serve --metrics``, None everywhere else (the one-shot program pays one test per unit)."""


def evaluate(message: Message, settings: Settings) -> Verdict:
    """Run the checks in order and return policy's verdict.

    Stops at the first refusal, since nothing can overturn it and later checks (a virus scan)
    may be expensive; a check that could not decide does not stop the others, because one of
    them may still refuse for good.
    """
    observer = OBSERVER
    findings: list[Finding] = []
    for unit in units():
        if observer is None:
            finding = unit.check(message, settings)
        else:
            started = monotonic()
            try:
                finding = unit.check(message, settings)
            finally:
                observer.checked(unit.name, monotonic() - started)
        if finding is None:
            continue
        findings.append(finding)
        if finding.outcome == Finding.REFUSE:
            break
    authserv_id = ""
    if any(finding.results for finding in findings):
        from qqfilter.shared import authres

        authserv_id = authres.authserv_id(settings, message)
    verdict = judge(findings, settings, authserv_id)
    if observer is not None:
        observer.judged(verdict)
    return verdict
