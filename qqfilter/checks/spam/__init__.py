"""Spam scoring: a family of two check units, SpamAssassin's spamd (QQF_SPAMD) and rspamd
(QQF_RSPAMD), and what they share: the policy on a score, the headers, the skips.

A scanner reports a ``Score`` (score, required score, rule names, and for rspamd its action
and its milter header changes); ``judge`` turns it into a finding: a refusal at or above
QQF_SPAMREJECT (or rspamd's "reject"), a tempfail for rspamd's "soft reject"/"greylist", else
clean with SpamAssassin's headers (X-Spam-Status, X-Spam-Score, X-Spam-Flag over
QQF_SPAMTAG). A scanner that cannot answer is ``undecided``: QQF_SPAMERROR=accept (the
default: spam scores are advisory) lets the message through marked ``X-Spam-Status:
Unscanned``; tempfail answers 451. QQF_SPAMSKIP and QQF_SPAMMAXSIZE skip the scan, noted.

This package declares no NAME: it is a family, not a unit (qqfilter.checks): its units are
spamd/ and rspamd/ (each its own check, ORDER after the virus scans); each lists SHARED in its
SETTINGS, the same row objects, so settings.load reads each once.
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, byte_count, choice, seconds, subset, text

TYPE_CHECKING = False
if TYPE_CHECKING:
    Edits = tuple[tuple[int, int, bytes], ...]

TAG = "Reject::DATA::Spam_Message"
STATUS = "5.7.1"


def score_limit(value: object) -> float | None:
    """A score (a number, negative allowed), or None for "off" (or empty in TOML)."""
    if value in ("off", "", None):
        return None
    if isinstance(value, bool):
        raise ValueError("must be a score or off")
    try:
        number = float(value)  # type: ignore[arg-type]  # str, int or float: checked below
    except (TypeError, ValueError):
        raise ValueError("must be a score (e.g. 10 or 7.5) or off") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError("must be a finite score")
    return number


SPAMREJECT: Setting[float | None] = Setting(
    "spamreject",
    "QQF_SPAMREJECT",
    None,
    score_limit,
    "refuse mail that scores at or above this (spam category); off = mark only",
)
SPAMTAG: Setting[float | None] = Setting(
    "spamtag",
    "QQF_SPAMTAG",
    None,
    score_limit,
    "score at or above which X-Spam-Flag: YES is added; off = the scanner's required score",
)
SPAMMAXSIZE = Setting(
    "spammaxsize",
    "QQF_SPAMMAXSIZE",
    512_000,
    byte_count,
    "larger messages are not scanned for spam (noted), as spamc; 0 = scan all",
)
SPAMSKIP = Setting(
    "spamskip",
    "QQF_SPAMSKIP",
    frozenset[str](),
    subset("relayclient", "local"),
    "skip spam scans (noted) for: relayclient (RELAYCLIENT set), local (no TCPREMOTEIP)",
)
SPAMERROR = Setting(
    "spamerror",
    "QQF_SPAMERROR",
    "accept",
    choice("accept", "tempfail"),
    "when the spam scanner cannot answer: accept (marked X-Spam-Status: Unscanned) or "
    "tempfail (451)",
)
SPAMUSER = Setting(
    "spamuser",
    "QQF_SPAMUSER",
    "",
    text,
    "the user whose preferences the scanner applies (spamd's User, rspamd's Deliver-To); "
    "recipient = the recipient when there is exactly one; empty = the scanner's default",
)
SPAMTIMEOUT = Setting(
    "spamtimeout",
    "QQF_SPAMTIMEOUT",
    120.0,
    seconds,
    "seconds the spam scan of one message may take in all, failover included",
)
SPAMSUBJECT = Setting(
    "spamsubject",
    "QQF_SPAMSUBJECT",
    "",
    text,
    'text put before the Subject of mail flagged as spam (e.g. "[SPAM] "); empty = '
    "the Subject is left alone",
)
SHARED = (
    SPAMREJECT,
    SPAMTAG,
    SPAMMAXSIZE,
    SPAMSKIP,
    SPAMERROR,
    SPAMUSER,
    SPAMSUBJECT,
    SPAMTIMEOUT,
)
"""The rows both units own (the same objects, so settings.load reads each once)."""


class Score:
    """What a scanner said of a message: its ``score``, the ``required`` score it calls spam
    at, the ``tests`` (rule names) that fired, and for rspamd its ``action`` ("reject", "soft
    reject", "greylist", "add header", "rewrite subject", "no action") and the header fields
    its milter block asks to add (``add_headers``) and to remove (``remove_headers``). A
    hand-written ``__slots__`` record, as on the whole queue path."""

    __slots__ = ("action", "add_headers", "remove_headers", "required", "score", "tests")

    def __init__(
        self,
        score: float,
        required: float,
        tests: tuple[str, ...] = (),
        *,
        action: str = "",
        add_headers: tuple[tuple[str, str], ...] = (),
        remove_headers: tuple[str, ...] = (),
    ) -> None:
        self.score = score
        self.required = required
        self.tests = tests
        self.action = action
        self.add_headers = add_headers
        self.remove_headers = remove_headers


def skip_reason(message: Message, settings: Settings) -> str:
    """Why the spam scan is skipped for this message (QQF_SPAMSKIP, QQF_SPAMMAXSIZE), or ""."""
    skip = settings[SPAMSKIP]
    if "relayclient" in skip and message.connection.relayclient:
        return "skipped: RELAYCLIENT"
    if "local" in skip and not message.connection.remote_ip:
        return "skipped: local injection"
    maxsize = settings[SPAMMAXSIZE]
    if maxsize and message.size > maxsize:
        return f"skipped: larger than {maxsize} bytes"
    return ""


def user(message: Message, settings: Settings) -> str:
    """The user whose preferences apply (QQF_SPAMUSER; "recipient" with exactly one), or ""."""
    wanted = settings[SPAMUSER]
    if wanted != "recipient":
        return wanted
    recipients = message.envelope.recipients
    if len(recipients) != 1:
        return ""
    return recipients[0].decode("utf-8", "replace")


def judge(
    check: str,
    score: Score,
    settings: Settings,
    detail: str = "",
    message: Message | None = None,
) -> Finding:
    """The finding for ``score``: refused at or above QQF_SPAMREJECT (or on rspamd's
    "reject"), tempfailed on rspamd's "soft reject"/"greylist", else clean, with the
    headers and a note (score, required score, action) for the log line, and, given the
    ``message``, its edits: QQF_SPAMSUBJECT before the Subject of flagged mail, the fields
    rspamd's milter block removes."""
    limit = settings[SPAMREJECT]
    shown = _number(score.score)
    if score.action == "reject" or (limit is not None and score.score >= limit):
        words = f"limit {_number(limit)}" if limit is not None else "the scanner's reject"
        return Finding(
            check,
            Finding.REFUSE,
            f"message scored {shown} ({words})",
            category="spam",
            tag=TAG,
            status=STATUS,
            detail=detail or _summary(score),
        )
    if score.action in ("soft reject", "greylist"):
        return Finding(
            check,
            Finding.UNKNOWN,
            "message held for a later try (spam scanner's "
            + ("greylisting" if score.action == "greylist" else "soft reject")
            + ")",
            category="spam",
            status="4.7.1",
            detail=detail or _summary(score),
        )
    edits = _edits(message, score, settings) if message is not None else ()
    return Finding(
        check,
        Finding.CLEAN,
        _summary(score),
        headers=headers(score, settings),
        edits=edits,
    )


def flagged(score: Score, settings: Settings) -> bool:
    """Is the message spam by QQF_SPAMTAG (default: the scanner's required score)?"""
    tag = settings[SPAMTAG]
    return score.score >= (score.required if tag is None else tag)


def headers(score: Score, settings: Settings) -> tuple[tuple[str, str], ...]:
    """SpamAssassin's header fields for ``score`` (and rspamd's action, and what its milter
    block adds)."""
    is_spam = flagged(score, settings)
    status = (
        f"{'Yes' if is_spam else 'No'}, score={_number(score.score)} "
        f"required={_number(score.required)} tests={', '.join(score.tests) or 'none'}"
    )
    fields = [("X-Spam-Status", status), ("X-Spam-Score", _number(score.score))]
    if is_spam:
        fields.append(("X-Spam-Flag", "YES"))
    if score.action:
        fields.append(("X-Spam-Action", score.action))
    fields.extend(score.add_headers)
    return tuple(fields)


def undecided(check: str, why: str, settings: Settings) -> Finding:
    """A scan that could not decide: with QQF_SPAMERROR=accept, clean and marked Unscanned
    (noted); else a tempfail whose reply says only that, the log says why."""
    if settings[SPAMERROR] == "accept":
        return Finding(
            check,
            Finding.CLEAN,
            f"unscanned: {why}",
            headers=(("X-Spam-Status", f"Unscanned ({check} could not decide)"),),
        )
    return Finding(
        check,
        Finding.UNKNOWN,
        "spam scan not possible now, try again later",
        category="spam",
        detail=why,
    )


def _edits(
    message: Message, score: Score, settings: Settings
) -> tuple[tuple[int, int, bytes], ...]:
    """The Subject prefixed (QQF_SPAMSUBJECT, flagged mail or rspamd's "rewrite subject"),
    and the fields rspamd's milter block removes, as spool edits; the rest of the message
    keeps its bytes."""
    prefix = settings[SPAMSUBJECT]
    rewrite = bool(prefix) and (flagged(score, settings) or score.action == "rewrite subject")
    removed = {name.lower() for name in score.remove_headers}
    if not (rewrite or removed):
        return ()
    edits = []
    subject_done = False
    from qqfilter.headers import fields

    for name, start, value_at, end in fields(message.spool):
        lowered = name.lower()
        if lowered in removed:
            edits.append((start, end, b""))
        elif rewrite and not subject_done and lowered == "subject":
            edits.append((value_at, value_at, prefix.encode("utf-8", "replace")))
            subject_done = True
    return tuple(edits)


def _summary(score: Score) -> str:
    words = f"score={_number(score.score)} required={_number(score.required)}"
    return f"{words} action={score.action.replace(' ', '_')}" if score.action else words


def _number(value: float) -> str:
    """A score as SpamAssassin writes it: one decimal."""
    return f"{value:.1f}"
