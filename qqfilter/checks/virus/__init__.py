"""Virus scanning: a family of two check units, clamd (QQF_CLAMD) and s/qmail's QHPSI scanner
program (QHPSI), and what they share.

Each scanner is its own check, so both may run. A scanner that finds a virus refuses the
message with the signature name; one that cannot decide says so (UNKNOWN), and policy
tempfails the message, or, with QQF_SCANERROR=accept, lets it through with the header below.
A scan skipped by a size limit or a QQF_SCANSKIP rule leaves a note in the log line.

This package declares no NAME: it is a family, not a unit (qqfilter.checks): its units are
clamd/ and qhpsi/, and it holds the settings both own (listed in each one's SETTINGS) and the
findings both make.
"""

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Setting, seconds, subset

TAG = "Reject::DATA::Virus_Infected"
STATUS = "5.7.1"
UNSCANNED_HEADER = "X-Virus-Status"

SCANTIMEOUT = Setting(
    "scantimeout",
    "QQF_SCANTIMEOUT",
    120.0,
    seconds,
    "seconds the virus scan of one message may take in all, clamd failover included",
)
SCANSKIP = Setting(
    "scanskip",
    "QQF_SCANSKIP",
    frozenset[str](),
    subset("relayclient", "local"),
    "skip virus scans (logged) for: relayclient (RELAYCLIENT set), local (no TCPREMOTEIP)",
)
SHARED = (SCANTIMEOUT, SCANSKIP)
"""The rows both units own (the same objects, so settings.load reads each once)."""


def skip_reason(message: Message, skip: frozenset[str], minsize: int, maxsize: int) -> str:
    """Why this scan is skipped for this message (QQF_SCANSKIP ``skip``, the scanner's size
    limits), or "" to scan it."""
    if "relayclient" in skip and message.connection.relayclient:
        return "skipped: RELAYCLIENT"
    if "local" in skip and not message.connection.remote_ip:
        return "skipped: local injection"
    if minsize and message.size < minsize:
        return f"skipped: smaller than {minsize} bytes"
    if maxsize and message.size > maxsize:
        return f"skipped: larger than {maxsize} bytes"
    return ""


def infected(check: str, name: str, detail: str) -> Finding:
    """The refusal for a virus found by ``check``; ``name`` is the signature, if known."""
    return Finding(
        check,
        Finding.REFUSE,
        f"virus found: {name}" if name else "virus found",
        category="virus",
        tag=TAG,
        status=STATUS,
        detail=detail,
    )


def undecided(check: str, why: str) -> Finding:
    """A scan that could not decide: the reply says only that, the log says why."""
    return Finding(
        check,
        Finding.UNKNOWN,
        "virus scan not possible now, try again later",
        category="virus",
        detail=why,
        headers=((UNSCANNED_HEADER, f"Unscanned ({check} could not decide)"),),
    )
