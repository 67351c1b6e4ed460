"""Virus checks: clamd (QQF_CLAMD) and s/qmail's QHPSI scanner program (QHPSI).

Each scanner is its own check, so both may run. A scanner that finds a virus refuses the
message with the signature name; one that cannot decide says so (UNKNOWN), and policy
tempfails the message, or, with QQF_SCANERROR=accept, lets it through with the header below.
A scan skipped by a size limit or a QQF_SCANSKIP rule leaves a note in the log line.
"""

import time

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Settings

TAG = "Reject::DATA::Virus_Infected"
STATUS = "5.7.1"
UNSCANNED_HEADER = "X-Virus-Status"


def clamd(message: Message, settings: Settings) -> Finding | None:
    """Stream the message to the first clamd of QQF_CLAMD that answers."""
    if not settings.clamd:
        return None
    skipped = _skip_reason(message, settings, 0, settings.clamdmaxsize)
    if skipped:
        return Finding("clamd", Finding.CLEAN, skipped)
    from qqfilter import clamd as client

    answer = client.scan(
        message.spool.fd,
        message.size,
        settings.clamd,
        connect_timeout=settings.clamdconnect,
        timeout=settings.clamdtimeout,
        deadline=time.monotonic() + settings.scantimeout,
    )
    if answer.result == client.INFECTED:
        failed_over = f" after {answer.why}" if answer.why else ""
        return _infected("clamd", answer.name, f"found by {answer.server}{failed_over}")
    if answer.result == client.UNKNOWN:
        return _undecided("clamd", answer.why)
    if answer.why:
        return Finding("clamd", Finding.CLEAN, f"clean by {answer.server} after {answer.why}")
    return None


def qhpsi(message: Message, settings: Settings) -> Finding | None:
    """Run the QHPSI scanner program on the message file."""
    if not settings.qhpsi:
        return None
    skipped = _skip_reason(message, settings, settings.qhpsiminsize, settings.qhpsimaxsize)
    if skipped:
        return Finding("qhpsi", Finding.CLEAN, skipped)
    from qqfilter import qhpsi as scanner

    result = scanner.scan(
        message.spool.fd,
        settings.spooldir,
        settings.qhpsi,
        (settings.qhpsiarg1, settings.qhpsiarg2, settings.qhpsiarg3),
        infected=settings.qhpsirc,
        clean=settings.qhpsirn,
        timeout=settings.scantimeout,
        environ=message.connection.environ,
    )
    if result.result == scanner.INFECTED:
        return _infected("qhpsi", result.name, f"exit code {settings.qhpsirc}")
    if result.result == scanner.UNKNOWN:
        return _undecided("qhpsi", result.why)
    return None


def _skip_reason(message: Message, settings: Settings, minsize: int, maxsize: int) -> str:
    """Why this scan is skipped for this message, or "" to scan it."""
    if "relayclient" in settings.scanskip and message.connection.relayclient:
        return "skipped: RELAYCLIENT"
    if "local" in settings.scanskip and not message.connection.remote_ip:
        return "skipped: local injection"
    if minsize and message.size < minsize:
        return f"skipped: smaller than {minsize} bytes"
    if maxsize and message.size > maxsize:
        return f"skipped: larger than {maxsize} bytes"
    return ""


def _infected(check: str, name: str, detail: str) -> Finding:
    return Finding(
        check,
        Finding.REFUSE,
        f"virus found: {name}" if name else "virus found",
        category="virus",
        tag=TAG,
        status=STATUS,
        detail=detail,
    )


def _undecided(check: str, why: str) -> Finding:
    """A scan that could not decide: the reply says only that, the log says why."""
    return Finding(
        check,
        Finding.UNKNOWN,
        "virus scan not possible now, try again later",
        category="virus",
        detail=why,
        headers=((UNSCANNED_HEADER, f"Unscanned ({check} could not decide)"),),
    )
