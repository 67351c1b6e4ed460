"""Policy: the findings of all checks in, one verdict out.

The order of precedence is fixed and documented: a refusal wins (a permanent answer is better
for everyone than a retry), then "could not decide" (tempfail: the client keeps the message and
tries again; for a virus scan, QQF_SCANERROR=accept lets it through, marked and logged), then
accept with every header the checks asked for. Exit codes are not chosen here: that is the
contract's business (qqfilter.outcome).
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.settings import DROP_CATEGORIES, SCANERROR, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

ACCEPT = "accept"
REJECT = "reject"
TEMPFAIL = "tempfail"
DROP = "drop"


class Verdict:
    """The one decision about a message, with what explains it (a hand-written ``__slots__``
    record, as everywhere on the queue path: dataclasses costs ~10 ms of start-up)."""

    __slots__ = (
        "action",
        "category",
        "check",
        "detail",
        "edits",
        "headers",
        "notes",
        "reason",
        "status",
        "tag",
    )

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
        detail: str = "",
        notes: tuple[str, ...] = (),
        edits: tuple[tuple[int, int, bytes], ...] = (),
    ) -> None:
        self.action = action
        self.check = check
        self.category = category
        self.tag = tag
        self.reason = reason
        self.status = status
        self.headers = headers
        self.detail = detail
        self.notes = notes
        self.edits = edits

    @classmethod
    def from_finding(
        cls,
        action: str,
        finding: Finding,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        notes: tuple[str, ...] = (),
        edits: tuple[tuple[int, int, bytes], ...] = (),
    ) -> Verdict:
        """A verdict explained by ``finding``."""
        default_status = "4.3.0" if action == TEMPFAIL else "5.7.1"
        return cls(
            action,
            check=finding.check,
            category=finding.category,
            tag=finding.tag,
            reason=finding.reason,
            status=finding.status or default_status,
            headers=headers,
            detail=finding.detail,
            notes=notes,
            edits=edits,
        )


def judge(findings: list[Finding], settings: Settings, authserv_id: str = "") -> Verdict:
    """The verdict for ``findings``.

    QQF_DROP turns refusals of its categories into drops; QQF_SCANERROR =
    "accept" lets a virus scan that could not decide through (its finding explains the
    accept, and its headers mark the message). Clean findings with a reason become notes.
    The findings' ``results`` make one Authentication-Results field for ``authserv_id``,
    where the first finding with results put its headers.
    """
    notes = tuple(
        f"{f.check}: {f.reason}" for f in findings if f.outcome == Finding.CLEAN and f.reason
    )
    for finding in findings:
        if finding.outcome == Finding.REFUSE:
            action = DROP if finding.category in settings[DROP_CATEGORIES] else REJECT
            return Verdict.from_finding(action, finding, notes=notes)
    unknown = [f for f in findings if f.outcome == Finding.UNKNOWN]
    for finding in unknown:
        if not (finding.category == "virus" and settings[SCANERROR] == "accept"):
            return Verdict.from_finding(TEMPFAIL, finding, notes=notes)
    headers = _headers(findings, authserv_id)
    edits = _apart(edit for finding in findings for edit in finding.edits)
    if unknown:
        return Verdict.from_finding(ACCEPT, unknown[0], headers=headers, notes=notes, edits=edits)
    return Verdict(ACCEPT, headers=headers, notes=notes, edits=edits)


def _headers(findings: list[Finding], authserv_id: str) -> tuple[tuple[str, str], ...]:
    """Every finding's header fields in order, and the one Authentication-Results field
    after the fields of the first finding with results."""
    results = tuple(result for finding in findings for result in finding.results)
    headers: list[tuple[str, str]] = []
    for finding in findings:
        headers += finding.headers
        if finding.results and results:
            from qqfilter.shared import authres

            headers.append(authres.field(authserv_id, results))
            results = ()
    return tuple(headers)


def _apart(edits: Iterable[tuple[int, int, bytes]]) -> tuple[tuple[int, int, bytes], ...]:
    """The edits in order, each once, and none that reaches into one before it: two checks
    asking for the same change (spamd and rspamd both prefixing the Subject) make it once,
    and handoff's copy around them never goes backwards."""
    kept: list[tuple[int, int, bytes]] = []
    for edit in sorted(set(edits)):
        if kept and (edit[0] < kept[-1][1] or edit[0] == kept[-1][0]):
            continue
        kept.append(edit)
    return tuple(kept)
