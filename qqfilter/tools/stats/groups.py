"""Refusals by group, the way s/qmail's qmail-mrtg draws them: which tag belongs where.

qmail-mrtg counts qmail-smtpd's log tags into pairs, one MRTG graph each (``-c`` rejected
MTA, ``-d`` originator, ``-e`` recipient, ``-f`` WarLord, ``-g`` infected/spam). ``GROUPS``
is that table for qqfilter's tags, the one place that says which tag (and, for a line without
a tag, which check) counts in which group and series. Everything else (the text block, JSON,
``--mrtg GROUP``, the plot by group) is read off it.

A group's first two series are the two values qmail-mrtg prints for its letter, in its order;
further series are counted and shown, never given to MRTG. A refusal is placed by:

1. its tag, exactly (``Reject::SNDR::Bad_Helo``); a series may own a whole tag family
   (``Reject::SPF::``);
2. else the tag's family (``Reject::SNDR::`` is the sender group): the group's ``other``;
3. else (no tag, or a family none of the groups has) its check's name (``helo``, ``clamd``);
4. else the group ``other``, under the tag (or check, or ``untagged``) as it was logged.

Only refusals count: verdict ``reject``, and ``drop`` (a refusal QQF_DROP turned silent: the
message was refused in effect, the sender is just not told). A tempfail is not a refusal (the
client tries again; the retry is counted when it ends), nor is an error or an accept.
"""

from typing import NamedTuple

REFUSED = ("reject", "drop")
"""The verdicts that count as refusals."""

OTHER = "other"
"""The series of a group for an unknown tag of its family; and the group of what no group has."""


class Series(NamedTuple):
    """One line of a graph: its name, the tags it counts (one ending ``::`` is a whole
    family), and the checks whose lines without a tag it counts."""

    name: str
    tags: tuple[str, ...]
    checks: tuple[str, ...] = ()


class Group(NamedTuple):
    """One graph: its name, qmail-mrtg's letter for it, what it is about, the tag families
    that are its (an unknown tag of one counts as its ``other``), and its series."""

    name: str
    letter: str
    about: str
    families: tuple[str, ...]
    series: tuple[Series, ...]


GROUPS: tuple[Group, ...] = (
    Group(
        "sender",
        "c",
        "the client: HELO, reverse DNS, DNS lists, relaying (qmail-mrtg -c)",
        ("Reject::SNDR::",),
        (
            Series(
                "client",
                (
                    "Reject::SNDR::Invalid_Relay",
                    "Reject::SNDR::DNS_Rhost",
                    "Reject::SNDR::DNSBL",
                    "Reject::SNDR::RBLSMTPD",
                ),
                ("rdns", "dnsbl"),
            ),
            Series("helo", ("Reject::SNDR::Bad_Helo", "Reject::SNDR::DNS_Helo"), ("helo",)),
        ),
    ),
    Group(
        "originator",
        "d",
        "the envelope sender, MAIL FROM, SPF for its domain, DMARC for the From domain "
        "(qmail-mrtg -d)",
        ("Reject::ORIG::",),
        (
            Series(
                "bad",
                (
                    "Reject::ORIG::Bad_Mailfrom",
                    "Reject::ORIG::Invalid_Mailfrom",
                    "Reject::ORIG::Local_Mailfrom",
                ),
                ("sender",),
            ),
            Series("dns", ("Reject::ORIG::DNS_MF",)),
            Series("spf", ("Reject::SPF::",), ("spf",)),
            Series("dmarc", ("Reject::DATA::DMARC",), ("dmarc",)),
        ),
    ),
    Group(
        "recipient",
        "e",
        "the envelope recipients (qmail-mrtg -e)",
        ("Reject::RCPT::",),
        (
            Series("bad", ("Reject::RCPT::Bad_Rcptto", "Reject::RCPT::Toomany_Rcptto")),
            Series("failed", ("Reject::RCPT::Failed_Rcptto",), ("recipients",)),
        ),
    ),
    Group(
        "base64",
        "f",
        "s/qmail's WarLord tests of base64 parts (qmail-mrtg -f)",
        (),
        (
            Series("mime", ("Reject::DATA::Bad_MIME",)),
            Series("loader", ("Reject::DATA::Bad_Loader",)),
        ),
    ),
    Group(
        "data",
        "g",
        "the content: viruses, spam, attachments, size (qmail-mrtg -g)",
        ("Reject::DATA::",),
        (
            Series("virus", ("Reject::DATA::Virus_Infected",), ("clamd", "qhpsi")),
            Series("spam", ("Reject::DATA::Spam_Message",), ("spamd", "rspamd")),
            Series("attachment", ("Reject::DATA::MIME_Attach",), ("mime",)),
            Series("size", ("Reject::DATA::Invalid_Size",), ("size",)),
        ),
    ),
)
"""The groups, in the order they are shown; each tag, family and check in one place only."""

BY_NAME = {group.name: group for group in GROUPS}
BY_LETTER = {group.letter: group for group in GROUPS}

_TAGS = {
    tag: (group.name, series.name)
    for group in GROUPS
    for series in group.series
    for tag in series.tags
    if not tag.endswith("::")
}
_FAMILIES = {
    tag: (group.name, series.name)
    for group in GROUPS
    for series in group.series
    for tag in series.tags
    if tag.endswith("::")
} | {family: (group.name, OTHER) for group in GROUPS for family in group.families}
_CHECKS = {
    check: (group.name, series.name)
    for group in GROUPS
    for series in group.series
    for check in series.checks
}


def refused(verdict: str) -> bool:
    """Does a line with ``verdict`` count as a refusal?"""
    return verdict in REFUSED


def place(tag: str, check: str) -> tuple[str, str]:
    """The (group, series) a refusal with ``tag`` and ``check`` counts in (see above)."""
    if tag in _TAGS:
        return _TAGS[tag]
    family = tag[: tag.rfind("::") + 2] if "::" in tag else ""
    if family in _FAMILIES:
        return _FAMILIES[family]
    if check in _CHECKS:
        return _CHECKS[check]
    return OTHER, tag or check or "untagged"


def find(name: str) -> Group | None:
    """The group called ``name``, or by qmail-mrtg's letter (``c``, ``-c``); None if none."""
    if name in BY_NAME:
        return BY_NAME[name]
    letter = name[1:] if name.startswith("-") else name
    return BY_LETTER.get(letter)


def empty() -> dict[str, dict[str, int]]:
    """Every group with every series at 0, in order (``other`` groups and series are added
    only when something is counted there)."""
    return {group.name: {series.name: 0 for series in group.series} for group in GROUPS}
