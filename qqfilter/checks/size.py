"""Size: refuse a message larger than the administrator allows.

The limit is QQF_MAXSIZE when it is set (the variable or the TOML file, even to 0); otherwise
qmail's own, read as qmail-smtpd reads it: the DATABYTES variable when it is set (even empty),
else the first line of control/databytes, 0 or absent meaning no limit. qmail's limit is
counted as qmail-smtpd counts it, without the Received line it writes above the message
(``counted``). ``limit`` is the one place that decides it: the check and the spool (which
keeps only what proves a message too large) both ask it.

The smallest check unit, and the example docs/architecture.md walks through: a name, an order,
the rows it owns, and ``check``.
"""

from __future__ import annotations

import os

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import QMAILHOME, Setting, Settings, byte_count

NAME = "size"
ORDER = 10
TAG = "Reject::DATA::Invalid_Size"
STATUS = "5.3.4"


def _databytes(value: object) -> str:
    """DATABYTES as it was given: qmail-smtpd reads any text (see ``qmail_number``), so
    nothing is refused; a whole number in the TOML file is taken as its digits."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be a whole number of bytes")
    return value


MAXSIZE = Setting(
    "maxsize",
    "QQF_MAXSIZE",
    0,
    byte_count,
    "refuse messages larger than this many bytes; 0 = no limit; "
    "unset: qmail's limit (DATABYTES, else control/databytes)",
)
DATABYTES = Setting(
    "databytes",
    "DATABYTES",
    "",
    _databytes,
    "qmail-smtpd's DATABYTES, read as qmail-smtpd reads it (its leading digits; empty = 0 = "
    "no limit), used when maxsize is unset; unset: control/databytes",
    empty_means_set=True,
    empty_as="0",  # qmail-smtpd: DATABYTES="" is set, scan_ulong("") is 0, no limit
)
SETTINGS = (MAXSIZE, DATABYTES)
PRELOAD = ()

RECEIVED_ROOM = 4096
"""How much of the message's head qmail's limit leaves out at most (``counted``): the
Received line qmail-smtpd writes (two lines, the client's HELO in the first) and what a
patched qmail-smtpd writes above it (Received-SPF). The spool keeps this much more."""


class Limit:
    """The size limit for this message: ``most`` bytes (0 = none), where it came from
    (``origin``: QQF_MAXSIZE, DATABYTES or control/databytes), and a ``note`` for the log line
    when qmail's value is not a number, or is read as another (``qmail_number``)."""

    __slots__ = ("most", "note", "origin")

    def __init__(self, most: int, origin: str, note: str = "") -> None:
        self.most = most
        self.origin = origin
        self.note = note

    @property
    def qmails(self) -> bool:
        """Is it qmail's limit (counted as qmail-smtpd counts)?"""
        return self.origin != MAXSIZE.env


def qmail_number(text: str) -> tuple[int, str]:
    """(limit, digits) for a DATABYTES value or control/databytes line, as qmail-smtpd reads
    it: scan_ulong takes the leading ASCII digits (none: 0, no limit; "100k" is 100), the
    result is stored in an unsigned int (mod 2**32 on every platform qmail runs on: 2**32 is
    no limit), and 2**32-1 is lowered by one. ``digits`` is what was read ("" for none)."""
    digits = text[: len(text) - len(text.lstrip("0123456789"))]
    if not digits:
        return 0, ""
    number = 0
    for at in range(0, len(digits), 18):  # int() of all of them may be too long to convert
        piece = digits[at : at + 18]
        number = (number * 10 ** len(piece) + int(piece)) % (1 << 32)
    return (number - 1 if number == (1 << 32) - 1 else number), digits


_LAST: tuple[Settings, Limit] | None = None
"""The last settings asked about and their limit: the spool asks before the message is read
and the check after, with the same settings, and control/databytes is read once for both
(a tuple, replaced whole: threads of a resident server at worst read the file again)."""


def limit(settings: Settings) -> Limit:
    """The limit this message is judged by. Reads control/databytes (the first line, as
    qmail's control_readint) only when neither QQF_MAXSIZE nor DATABYTES is set; a file that
    exists and cannot be read (or is not trusted) is exit 55, as qmail-smtpd's "unable to
    read controls"."""
    global _LAST
    last = _LAST
    if last is not None and last[0] is settings:
        return last[1]
    found = _limit(settings)
    _LAST = (settings, found)
    return found


def _limit(settings: Settings) -> Limit:
    if settings.sources[MAXSIZE.name] != "default":
        return Limit(settings[MAXSIZE], MAXSIZE.env)
    given = settings[DATABYTES]
    origin = DATABYTES.env
    if not given:  # unset ("" from the variable is "0": see the row's empty_as)
        origin = "control/databytes"
        path = os.path.join(settings[QMAILHOME], "control", "databytes")
        data = control.read_trusted(path, origin)
        if data is None:
            return Limit(0, origin)
        given = data.split(b"\n", 1)[0].decode("latin-1")
    most, digits = qmail_number(given)
    shown = given.rstrip()
    note = ""
    if not digits and shown:
        note = f"{origin} {shown[:40]!r} is not a number: no limit, as in qmail-smtpd"
    elif digits and (shown != digits or digits.lstrip("0") != str(most or "")):
        note = f"{origin} {shown[:40]!r} is read as {most}, as in qmail-smtpd"
    return Limit(most, origin, note)


def spool_limit(settings: Settings) -> int:
    """How much of a message the spool keeps (0 = all): one byte past the limit proves a
    message over it, and the rest need not fill the spool's disk (the QMAILQUEUE program and
    the dry run both receive with it). qmail's limit keeps RECEIVED_ROOM more, as it does
    not count the head qmail-smtpd writes."""
    found = limit(settings)
    if not found.most:
        return 0
    return found.most + 1 + (RECEIVED_ROOM if found.qmails else 0)


def counted(message: Message) -> int:
    """The message's size as qmail-smtpd counts it against databytes: without the header
    fields up to and including the first Received field when that ends in the first
    RECEIVED_ROOM bytes (qmail-smtpd's own line, and what a patched one writes above it);
    the whole message otherwise."""
    head = message.spool.read(0, RECEIVED_ROOM)
    start = 0
    while start < len(head):
        end = head.find(b"\n", start)
        while end != -1 and head[end + 1 : end + 2] in (b" ", b"\t"):
            end = head.find(b"\n", end + 1)  # a continuation line: the same field
        if end == -1:
            break
        line = head[start:end]
        if not line.strip() or b":" not in line:
            break  # the end of the header, or not a header field: nothing left out
        if line[:9].lower() == b"received:":
            return message.size - (end + 1)
        start = end + 1
    return message.size


def check(message: Message, settings: Settings) -> Finding | None:
    """Refuse when the message is over the limit (``limit``; 0 = none), or when the spool
    stopped keeping it (the limit it was received under proved it too large, even if
    control/databytes changed since)."""
    found = limit(settings)
    spool = message.spool
    cut = spool.received > spool.size
    size = counted(message) if found.qmails and found.most else message.size
    if not cut and (not found.most or size <= found.most):
        return Finding(NAME, Finding.CLEAN, found.note) if found.note else None
    which = "the databytes limit" if found.qmails else "the limit"
    reason = (
        f"message is {size} bytes, over {which} of {found.most}"
        if found.most and size > found.most
        else f"message is {message.size} bytes, over the size limit it was received under"
    )
    detail = found.origin if found.qmails else ""  # where qmail's limit came from
    return Finding(NAME, Finding.REFUSE, reason, tag=TAG, status=STATUS, detail=detail)
