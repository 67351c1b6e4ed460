"""DNS block lists (QQF_DNSBL, QQF_DNSBLSCORE) and rblsmtpd's verdict (RBLSMTPD).

**RBLSMTPD**, rblsmtpd's variable, set by a tcp rules line or by an rblsmtpd in front of
qmail-smtpd (read the s/qmail way: set, even empty, is set), comes first and applies to every
client, RELAYCLIENT or not (rblsmtpd blocks before SMTP; a rules line that sets both is the
administrator's own choice):

- empty: the client is allowed; the DNS lists are not asked (noted when QQF_DNSBL is set);
- ``-text``: refused for good (rblsmtpd's 553), the text as the reason,
  Reject::SNDR::RBLSMTPD;
- any other text: refused for now (rblsmtpd's 451), the text as the reason.

QQF_RBLSMTPD chooses: ``enforce`` (the default) as above; ``stamp`` refuses nothing for it and
stamps the text (without rblsmtpd's leading ``-``) as ``X-RBL-Info:``, as s/qmail's
qmail-smtpd does when rblsmtpd passes a listed client on; ``off`` ignores the variable.

**QQF_DNSBL** names lists in postscreen's spelling (the family's ``zone_list``). The client's
address is looked up in each (the family's ``listing``: its codes, else 127.0.0.0/8), all
under one deadline (QQF_DNSTIMEOUT); the weights of the lists that list it are added, and the
message is refused (Reject::SNDR::DNSBL, 5.7.1) when the total reaches QQF_DNSBLSCORE, or,
with QQF_DNSBLSCORE unset, when it is over 0 (a list of weight 0 only notes; a negative weight
makes a list an allow list inside the score, as in postscreen). The reason names the list and
its answers, with its TXT record when it publishes one, as rblsmtpd shows it.

A list that does not answer (timeout, SERVFAIL, the deadline passed) lists nobody: the others
are asked all the same, and the log line notes the silent one. It never tempfails a message.
RELAYCLIENT, local injection and a client on a QQF_DNSWL list are not looked up (the
family's ``judged``).
"""

from __future__ import annotations

from qqfilter.checks import Finding
from qqfilter.checks.hygiene import (
    SHARED,
    Lookups,
    Undecided,
    Zone,
    judged,
    listing,
    lookups_for,
    reversed_name,
    zone_list,
)
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, choice

NAME = "dnsbl"
ORDER = 22


def _score(value: object) -> float | None:
    if value == "off":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError("must be off or a number over 0")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be off or a number over 0") from None
    if not 0 < number <= 1e9:  # also NaN, infinity
        raise ValueError("must be off or a number over 0")
    return number


def _given(value: object) -> tuple[str, ...]:
    """RBLSMTPD: ``()`` unset, ``(text,)`` set (``("",)`` set and empty). A one-element
    array in the TOML file (``qqfilter config`` writes it so) or a string."""
    if isinstance(value, list | tuple) and len(value) <= 1:
        if not value:
            return ()
        value = value[0]
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be text without NUL")
    return (value,)


DNSBL: Setting[tuple[Zone, ...]] = Setting(
    "dnsbl",
    "QQF_DNSBL",
    (),
    zone_list,
    "DNS block lists (zone[=127.0.0.x][*weight], comma list): a client they list is refused "
    "(with QQF_DNSBLSCORE: when the weights of the lists that list it add up to it)",
)
DNSBLSCORE: Setting[float | None] = Setting(
    "dnsblscore",
    "QQF_DNSBLSCORE",
    None,
    _score,
    "the total weight of the QQF_DNSBL lists listing a client at which it is refused; "
    "off = any listing with a total over 0",
)
RBLSMTPD_MODE = Setting(
    "rblsmtpd",
    "QQF_RBLSMTPD",
    "enforce",
    choice("enforce", "stamp", "off"),
    "what RBLSMTPD does: enforce (rblsmtpd's reading: -text refuses, other text tempfails); "
    "stamp = refuse nothing, add X-RBL-Info; off = ignore it",
)
RBLSMTPD: Setting[tuple[str, ...]] = Setting(
    "rblsmtpdtext",
    "RBLSMTPD",
    (),
    _given,
    "rblsmtpd's verdict, as its RBLSMTPD (set, even empty, is set): empty = allowed, the "
    "DNS lists are not asked; -text = refused; other text = refused for now",
    empty_means_set=True,
)
SETTINGS = (DNSBL, DNSBLSCORE, RBLSMTPD_MODE, RBLSMTPD, *SHARED)
PRELOAD = (
    "ipaddress",
    "threading",
    "dns.exception",
    "dns.name",
    "dns.resolver",
    "qqfilter.shared.resolver",
    "qqfilter.shared.received",
)

TAG = "Reject::SNDR::DNSBL"
TAG_RBLSMTPD = "Reject::SNDR::RBLSMTPD"
STATUS = "5.7.1"
STATUS_LATER = "4.7.1"
TXT_MAX = 200
"""Characters of a list's TXT record a reason shows."""
TEXT_MAX = 200
"""Characters of RBLSMTPD's text a reason shows (a patched qmail-smtpd's reply holds 255)."""
HEADER_MAX = 500
"""Characters of RBLSMTPD's text the X-RBL-Info field holds."""
SILENT_SHOWN = 3
"""Lists that did not answer a note names one by one."""


def check(message: Message, settings: Settings) -> Finding | None:
    """RBLSMTPD first, then the lists."""
    zones = settings[DNSBL]
    headers: tuple[tuple[str, str], ...] = ()
    stamped = ""
    given = settings[RBLSMTPD] if settings[RBLSMTPD_MODE] != "off" else ()
    if given:
        text = given[0]
        if not text:
            return Finding(NAME, Finding.CLEAN, "RBLSMTPD empty: allowed") if zones else None
        if settings[RBLSMTPD_MODE] == "enforce":
            return _rblsmtpd(text)
        info = printable(text[1:] if text[0] == "-" else text, HEADER_MAX)
        if info:  # "-" alone says nothing to stamp
            headers = (("X-RBL-Info", info),)
            stamped = "RBLSMTPD stamped as X-RBL-Info"
    if not zones:
        return Finding(NAME, Finding.CLEAN, stamped, headers=headers) if headers else None
    found = judged(NAME, message, settings)
    if isinstance(found, Finding):
        found.reason = _join(stamped, found.reason)
        found.headers = headers
        return found
    if reversed_name(found.ip) is None:
        reason = f"not looked up: TCPREMOTEIP {printable(found.ip, 60)!r} is not an IP address"
        return Finding(NAME, Finding.CLEAN, _join(stamped, reason), headers=headers)
    finding = _lists(found.ip, zones, settings)
    finding.headers = headers
    if finding.outcome == Finding.CLEAN:
        finding.reason = _join(stamped, finding.reason)
    return finding


def _rblsmtpd(text: str) -> Finding:
    """rblsmtpd's verdict: ``-text`` for good, any other text for now."""
    if text[0] == "-":
        reason = printable(text[1:], TEXT_MAX) or "refused by RBLSMTPD"
        return Finding(
            NAME,
            Finding.REFUSE,
            reason,
            tag=TAG_RBLSMTPD,
            status=STATUS,
            detail="RBLSMTPD: refused for good",
        )
    return Finding(
        NAME,
        Finding.UNKNOWN,
        printable(text, TEXT_MAX) or "refused for now by RBLSMTPD",
        tag=TAG_RBLSMTPD,
        status=STATUS_LATER,
        detail="RBLSMTPD: refused for now",
    )


def _lists(ip: str, zones: tuple[Zone, ...], settings: Settings) -> Finding:
    """Ask every list; refuse at the threshold, else note what listed the client and which
    lists did not answer."""
    hits: list[tuple[Zone, list[str]]] = []
    silent: list[tuple[Zone, str]] = []
    lookups: Lookups | None = None
    try:
        lookups = lookups_for(settings)
    except Undecided as exc:
        silent = [(zone, str(exc)) for zone in zones]
    if lookups is not None:
        for zone, answer in zip(zones, _ask_all(lookups, ip, zones), strict=True):
            if isinstance(answer, Undecided):
                silent.append((zone, str(answer)))
            elif answer:
                hits.append((zone, answer))
    total = round(sum(zone.weight for zone, _ in hits), 6)
    threshold = settings[DNSBLSCORE]
    refused = total >= threshold if threshold is not None else total > 0
    listed = ", ".join(f"{zone.zone}={'/'.join(a)}*{zone.weight:g}" for zone, a in hits)
    unanswered = _silent(silent)
    if not refused:
        if not hits:
            return Finding(NAME, Finding.CLEAN, unanswered)
        under = f"under {threshold:g}" if threshold is not None else "not over 0"
        return Finding(
            NAME, Finding.CLEAN, _join(f"listed in {listed}, total {total:g} {under}", unanswered)
        )
    assert lookups is not None  # a total over 0 needs an answer
    zone, answers, text = _shown(lookups, ip, [hit for hit in hits if hit[0].weight > 0])
    reason = f"client {ip} is listed in {zone.zone} ({', '.join(answers)})"
    at = f">= {threshold:g}" if threshold is not None else "> 0"
    return Finding(
        NAME,
        Finding.REFUSE,
        f"{reason}: {text}" if text else reason,
        tag=TAG,
        status=STATUS,
        detail=_join(f"listed in {listed}; total {total:g} {at}", unanswered),
    )


def _ask_all(lookups: Lookups, ip: str, zones: tuple[Zone, ...]) -> list[list[str] | Undecided]:
    """Each list's answers (or why it gave none), all lists asked at once, each in a thread of
    its own, under the one deadline: a list that does not answer costs its own wait, never
    the answers of the lists after it (rblsmtpd asks in turn; a dead first list would then
    spend the whole deadline and leave the others unasked)."""

    def ask(zone: Zone) -> list[str] | Undecided:
        try:
            return listing(lookups, ip, zone)
        except Undecided as exc:
            return exc

    if len(zones) == 1:
        return [ask(zones[0])]
    import threading
    import time

    answers: list[list[str] | Undecided | None] = [None] * len(zones)

    def run(index: int) -> None:
        answers[index] = ask(zones[index])

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(zones))]
    for thread in threads:
        thread.start()
    for thread in threads:  # every lookup ends by the deadline; a second more is slack
        thread.join(max(0.0, lookups.deadline - time.monotonic()) + 1.0)
    late = Undecided("no answer by the deadline")
    return [late if answer is None else answer for answer in answers]


def _shown(
    lookups: Lookups, ip: str, hits: list[tuple[Zone, list[str]]]
) -> tuple[Zone, list[str], str]:
    """The listing the reason shows: the first list (of positive weight) that publishes a
    TXT record for the client, with its text, else the first list."""
    name = reversed_name(ip)
    for zone, answers in hits:
        try:
            records = lookups.ask(f"{name}.{zone.zone}", "TXT")
        except Undecided:
            continue  # no text from this one (once the deadline is spent, from none)
        text = printable(" ".join(records), TXT_MAX)
        if text:
            return zone, answers, text
    return hits[0][0], hits[0][1], ""


def printable(text: str, limit: int) -> str:
    """``text`` as one line of printable ASCII, at most ``limit`` characters: controls (CR,
    LF, tabs) become spaces, runs of spaces one, other characters ``?``."""
    cleaned = "".join(
        c if " " <= c <= "~" else " " if c < " " or c == "\x7f" else "?" for c in text
    )
    words = " ".join(cleaned.split())
    return words if len(words) <= limit else words[: limit - 3].rstrip() + "..."


def _silent(silent: list[tuple[Zone, str]]) -> str:
    """The note for the lists that did not answer: "zone x not answered (why)"."""
    if not silent:
        return ""
    if len(silent) == 1:
        zone, why = silent[0]
        return f"zone {zone.zone} not answered ({why})"
    names = [zone.zone for zone, _ in silent[:SILENT_SHOWN]]
    more = f" and {len(silent) - SILENT_SHOWN} more" if len(silent) > SILENT_SHOWN else ""
    return f"zones {', '.join(names)}{more} not answered ({silent[0][1]})"


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)
