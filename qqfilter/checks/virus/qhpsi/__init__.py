"""QHPSI: run s/qmail's scanner program (QHPSI) on the message file; its exit code decides.

Running the program (a name for the nameless spool, the deadline, the process group) is
scanner.py; what a refusal or an undecided scan looks like is shared with clamd
(qqfilter.checks.virus).
"""

from qqfilter.checks import Finding
from qqfilter.checks.virus import SCANSKIP, SCANTIMEOUT, SHARED, infected, skip_reason, undecided
from qqfilter.message import Message
from qqfilter.settings import (
    SPOOLDIR,
    Setting,
    SettingError,
    Settings,
    byte_count,
    exit_status,
    program,
    text,
)

NAME = "qhpsi"
ORDER = 60
QHPSI = Setting(
    "qhpsi",
    "QHPSI",
    "",
    program,
    "s/qmail QHPSI scanner program, run on the message file; %s marks the file's place",
    empty_means_set=True,  # QHPSI="": no program to run, off (as in s/qmail)
    server_only=True,
)
QHPSIARG1 = Setting(
    "qhpsiarg1",
    "QHPSIARG1",
    "",
    text,
    "first extra argument for the QHPSI scanner",
    empty_means_set=True,  # QHPSIARG1="": no argument (s/qmail would pass an empty one)
    server_only=True,
)
QHPSIARG2 = Setting(
    "qhpsiarg2",
    "QHPSIARG2",
    "",
    text,
    "second extra argument for the QHPSI scanner",
    empty_means_set=True,
    server_only=True,
)
QHPSIARG3 = Setting(
    "qhpsiarg3",
    "QHPSIARG3",
    "",
    text,
    "third extra argument for the QHPSI scanner",
    empty_means_set=True,
    server_only=True,
)
QHPSIRC = Setting(
    "qhpsirc",
    "QHPSIRC",
    1,
    exit_status,
    "the QHPSI scanner's exit code for infected",
    empty_means_set=True,
    empty_as="1",  # not s/qmail's 0 (scan_ulong of ""), which calls every clean scan infected
    server_only=True,
)
QHPSIRN = Setting(
    "qhpsirn",
    "QHPSIRN",
    0,
    exit_status,
    "the QHPSI scanner's exit code for clean; any other code means it could not decide",
    empty_means_set=True,
    empty_as="0",  # indimail's scan_ulong of "": 0, the default
    server_only=True,
)
QHPSIMINSIZE = Setting(
    "qhpsiminsize",
    "QHPSIMINSIZE",
    0,
    byte_count,
    "skip the QHPSI scanner (logged) for messages smaller than this; 0 = no lower limit",
    empty_means_set=True,
    empty_as="0",  # s/qmail's scan_ulong of "": 0, no limit
)
QHPSIMAXSIZE = Setting(
    "qhpsimaxsize",
    "QHPSIMAXSIZE",
    0,
    byte_count,
    "skip the QHPSI scanner (logged) for messages larger than this; 0 = no upper limit",
    empty_means_set=True,
    empty_as="0",
)
SETTINGS = (
    QHPSI,
    QHPSIARG1,
    QHPSIARG2,
    QHPSIARG3,
    QHPSIRC,
    QHPSIRN,
    QHPSIMINSIZE,
    QHPSIMAXSIZE,
    *SHARED,
)
PRELOAD = ("select", "subprocess", "qqfilter.checks.virus.qhpsi.scanner")


def validate(settings: Settings) -> list[SettingError]:
    """Infected and clean cannot be the same exit code."""
    if settings[QHPSIRC] == settings[QHPSIRN]:
        return [SettingError("qhpsirn", settings.sources["qhpsirn"], "must differ from QHPSIRC")]
    return []


def check(message: Message, settings: Settings) -> Finding | None:
    """Run the QHPSI scanner program on the message file."""
    command = settings[QHPSI]
    if not command:
        return None
    skipped = skip_reason(
        message, settings[SCANSKIP], settings[QHPSIMINSIZE], settings[QHPSIMAXSIZE]
    )
    if skipped:
        return Finding(NAME, Finding.CLEAN, skipped)
    from qqfilter.checks.virus.qhpsi import scanner

    report = scanner.scan(
        message.spool.fd,
        settings[SPOOLDIR],
        command,
        (settings[QHPSIARG1], settings[QHPSIARG2], settings[QHPSIARG3]),
        infected=settings[QHPSIRC],
        clean=settings[QHPSIRN],
        timeout=settings[SCANTIMEOUT],
        environ=message.connection.environ,
    )
    if report.result == scanner.INFECTED:
        return infected(NAME, report.name, f"exit code {settings[QHPSIRC]}")
    if report.result == scanner.UNKNOWN:
        return undecided(NAME, report.why)
    return None
