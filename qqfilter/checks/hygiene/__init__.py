"""Sender hygiene: a family of check units about the client and the envelope sender, judged
before the content, as s/qmail's qmail-smtpd, rblsmtpd and rhost-check judge them in the SMTP
dialogue (stock qmail and netqmail have none of it without patches).

Its units, each off by default and set per connection like every setting:

- ``helo``: s/qmail's HELOCHECK with control/badhelo (Reject::SNDR::Bad_Helo, DNS_Helo);
- ``sender``: s/qmail's MFDNSCHECK and LOCALMFCHECK (Reject::ORIG::DNS_MF, Invalid_Mailfrom);
- ``rdns``: QQF_RDNS, the client's reverse DNS (Reject::SNDR::DNS_Rhost);
- ``dnsbl``: QQF_DNSBL with QQF_DNSBLSCORE, and rblsmtpd's RBLSMTPD (Reject::SNDR::DNSBL,
  Reject::SNDR::RBLSMTPD).

This package declares no NAME: it is a family (qqfilter.checks). What the units share is here:
who the client is (``client``: its address, HELO name and host name, read once the way SPF
reads them), when a unit does not judge at all (``judged``: RELAYCLIENT, local injection, a
client on a QQF_DNSWL allow list), the DNS questions (``lookups_for``: shared/lookups under
one deadline, QQF_DNSTIMEOUT, for all the lookups of one unit; every failure is ``Undecided``,
never an answer), the reversed names of the DNS lists, and whether a domain is one of ours
(``ours``, as qmail's rcpthosts and morercpthosts.cdb say). Each unit lists SHARED in its
SETTINGS, the same row objects, so settings.load reads each once.

A lookup that cannot be done never refuses: helo, sender and rdns make it "could not decide"
(451, the client tries again, as s/qmail answers "451 DNS temporary failure"); dnsbl accepts
and notes it, as every DNS list client does (a list that does not answer lists nobody).
"""

from __future__ import annotations

import os

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.message import Message
from qqfilter.settings import QMAILHOME, Setting, Settings, seconds
from qqfilter.shared.lookups import Lookups, Undecided
from qqfilter.shared.resolver import DNS


class Zone:
    """One DNS list: its ``zone``, the answers that count (``codes``: empty = any answer in
    127.0.0.0/8) and its ``weight``. A hand-written ``__slots__`` record, as on the whole
    queue path."""

    __slots__ = ("codes", "spelled", "weight", "zone")

    def __init__(self, zone: str, codes: frozenset[str], weight: float, spelled: str) -> None:
        self.zone = zone
        self.codes = codes
        self.weight = weight
        self.spelled = spelled


def zone_list(value: object) -> tuple[Zone, ...]:
    """A comma list (a TOML array) of DNS lists in Postfix postscreen's spelling:
    ``zone[=filter[;filter...]][*weight]``. A filter is an address whose numbers may each be
    a pattern in brackets, postscreen's ``[2..11]`` or ``[2;4;10..11]``: ``127.0.0.2``,
    ``127.0.0.[2..11]``, ``127.0.[2..15].[0..3]``. Several filters after ``=`` are
    separated by ``;`` outside the brackets:
    ``zen.spamhaus.org=127.0.0.[2..11]*3,bl.spamcop.net``."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        raise ValueError("must be a comma list of zone[=127.0.0.x][*weight]")
    found = []
    for item in value.split(","):
        item = item.strip()
        if item:
            found.append(_zone(item))
    if len(found) > MAX_ZONES:
        raise ValueError(f"names more than {MAX_ZONES} lists")
    return tuple(found)


MAX_ZONES = 20
"""Lists one setting may name: each is a lookup for every message."""
MAX_CODES = 4096
"""Answers the filters of one list may name in all (``127.0.[0..15].[0..255]``)."""
MAX_WEIGHT = 1000000.0
"""The largest weight, either way: twenty of them still add up to an exact number."""


def _zone(item: str) -> Zone:
    spelled = item
    weight = 1.0
    if "*" in item:
        item, _, number = item.rpartition("*")
        try:
            weight = float(number)
        except ValueError:
            raise ValueError(f"{spelled!r}: the weight after * must be a number") from None
        if not abs(weight) <= MAX_WEIGHT:  # also NaN
            raise ValueError(
                f"{spelled!r}: the weight must be a number from {-MAX_WEIGHT:.0f} "
                f"to {MAX_WEIGHT:.0f}"
            )
    zone, equals, filters = item.partition("=")
    zone = zone.strip().rstrip(".").lower()
    labels = zone.split(".")
    if len(labels) < 2 or len(zone) > 200 or not all(_label(label) for label in labels):
        raise ValueError(f"{spelled!r}: {zone!r} is not a DNS zone")
    if equals and not filters.strip():
        raise ValueError(f"{spelled!r}: no answer after =")
    codes: set[str] = set()
    for code in _outside_brackets(filters, ";") if filters else ():
        codes.update(_codes(code.strip(), spelled))
        if len(codes) > MAX_CODES:
            raise ValueError(f"{spelled!r}: the filters name more than {MAX_CODES} answers")
    return Zone(zone, frozenset(codes), weight, spelled)


def _label(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)


def _codes(code: str, spelled: str) -> list[str]:
    """The answers one filter names, as addresses: ``127.0.0.2``, or with postscreen's
    patterns for any of its numbers, ``127.0.0.[2..11]``, ``127.0.[2..15].[0;1;3]``."""
    parts = _outside_brackets(code, ".")
    wrong = f"{spelled!r}: {code!r} is not an answer like 127.0.0.2 or 127.0.0.[2..11]"
    if len(parts) != 4:
        raise ValueError(wrong)
    choices: list[list[int]] = []
    size = 1
    for part in parts:
        numbers = _octet(part)
        if not numbers:
            raise ValueError(wrong)
        choices.append(numbers)
        size *= len(numbers)
    if size > MAX_CODES:
        raise ValueError(f"{spelled!r}: {code!r} names more than {MAX_CODES} answers")
    found = [""]
    for numbers in choices:
        found = [f"{head}.{n}" if head else str(n) for head in found for n in numbers]
    return found


def _octet(part: str) -> list[int]:
    """The numbers one part of a filter names (``2``, ``[2..11]``, ``[2;4;10..11]``); [] when
    it is not one."""
    if part.startswith("[") and part.endswith("]"):
        numbers: list[int] = []
        for piece in part[1:-1].split(";"):
            low, dots, high = piece.strip().partition("..")
            first, last = _number(low), _number(high) if dots else _number(low)
            if first is None or last is None or first > last:
                return []
            numbers += range(first, last + 1)
        return sorted(set(numbers))
    number = _number(part)
    return [] if number is None else [number]


def _number(text: str) -> int | None:
    text = text.strip()
    if text.isascii() and text.isdigit() and len(text) <= 3 and int(text) <= 255:
        return int(text)
    return None


def _outside_brackets(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` where it is not inside ``[...]``."""
    parts, depth, start = [], 0, 0
    for at, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


DNSTIMEOUT = Setting(
    "dnstimeout",
    "QQF_DNSTIMEOUT",
    10.0,
    seconds,
    "seconds the DNS lookups of one sender hygiene check (HELO, sender, reverse DNS, DNS "
    "lists) may take in all; then it could not decide",
)
DNSWL: Setting[tuple[Zone, ...]] = Setting(
    "dnswl",
    "QQF_DNSWL",
    (),
    zone_list,
    "DNS allow lists (zone[=127.0.0.x][*weight], comma list): a listed client skips the "
    "sender hygiene checks (HELO, sender, reverse DNS, DNS block lists)",
)
SHARED = (DNS, DNSTIMEOUT, DNSWL)
"""The rows every unit of the family owns (the same objects, so settings.load reads each once)."""


DNS_LATER = "4.4.3"
"""The enhanced status of "could not decide" for a DNS lookup that could not be done (RFC 3463:
directory server failure); s/qmail answers ``451 DNS temporary failure``."""


def lookups_for(settings: Settings) -> Lookups:
    """The DNS questions of one unit for one message, under QQF_DNSTIMEOUT (raises
    Undecided when there is no resolver to ask)."""
    return Lookups(settings[DNS], settings[DNSTIMEOUT])


class Client:
    """Who the SMTP client is: ``ip`` (an IPv4-mapped IPv6 address as IPv4), the ``helo`` name
    (HELOHOST from a patched qmail-smtpd, else qmail-smtpd's Received line, else the host name
    it equalled; "" when none could be found), ``helo_said`` (whether a HELO name was seen,
    not inferred) and ``host`` (TCPREMOTEHOST, as tcpserver -h found it; None when unknown).
    A hand-written ``__slots__`` record."""

    __slots__ = ("helo", "helo_said", "host", "ip")

    def __init__(self, ip: str, helo: str, helo_said: bool, host: str | None) -> None:
        self.ip = ip
        self.helo = helo
        self.helo_said = helo_said
        self.host = host


def client(message: Message) -> Client | None:
    """The client of ``message``; None for mail injected locally (no TCPREMOTEIP)."""
    connection = message.connection
    raw = connection.remote_ip
    if not raw:
        return None
    ip = raw
    if ip.lower().startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    host = connection.remote_host
    if host and host.lower() == "unknown":
        host = None
    helo, said = connection.helo, connection.helo is not None
    if helo is None and connection.environ is not None and "HELOHOST" in connection.environ:
        helo, said = connection.environ["HELOHOST"], True  # set but empty: an empty HELO
    if helo is None:
        from qqfilter.shared.received import helo_from_message

        helo = helo_from_message(message.spool, raw)  # as qmail-smtpd wrote it
        said = helo is not None
        if helo is None or helo == (connection.remote_host or "unknown"):
            helo = host or ""  # qmail-smtpd leaves "(HELO ...)" out when it equalled the host
            said = False
    return Client(ip, helo, said, host)


def judged(name: str, message: Message, settings: Settings) -> Client | Finding:
    """The client a unit judges, or the note it gives instead: mail from RELAYCLIENT
    (s/qmail's "split horizon": these checks are for outside clients), mail injected
    locally, a client on a QQF_DNSWL list."""
    if message.connection.relayclient:
        return Finding(name, Finding.CLEAN, "skipped: RELAYCLIENT")
    found = client(message)
    if found is None:
        return Finding(name, Finding.CLEAN, "skipped: local injection")
    zone = allowlisted(found.ip, settings)
    if zone:
        return Finding(name, Finding.CLEAN, f"skipped: {found.ip} is listed in {zone}")
    return found


def allowlisted(ip: str, settings: Settings) -> str:
    """The first QQF_DNSWL zone that lists ``ip``, or "" (a list that cannot be asked
    allows nobody; the next one is asked all the same). Every unit asks; the resolver's cache
    answers all but the first."""
    zones = settings[DNSWL]
    if not zones:
        return ""
    try:
        asker = lookups_for(settings)
    except Undecided:
        return ""
    for zone in zones:
        try:
            if listing(asker, ip, zone):
                return zone.zone
        except Undecided:
            continue
    return ""


def listing(lookups: Lookups, ip: str, zone: Zone) -> list[str]:
    """The answers of ``zone`` for ``ip`` that count: its codes, else any 127.0.0.0/8 address
    but the ones lists answer when they refuse to answer (ERROR_ANSWERS). Anything outside
    127.0.0.0/8 is a list's error or a wildcard, not a listing. Raises Undecided."""
    name = reversed_name(ip)
    if name is None:
        return []
    answers = lookups.ask(f"{name}.{zone.zone}", "A")
    if zone.codes:
        return [a for a in answers if a in zone.codes]
    return [
        a
        for a in answers
        if a.startswith("127.") and a not in ERROR_ANSWERS and not a.startswith("127.255.255.")
    ]


ERROR_ANSWERS = frozenset({"127.0.0.1", "127.0.0.255"})
"""Answers that say "your query was refused", not "listed" (with 127.255.255.0/24, Spamhaus's
error codes): 127.0.0.1 (URIBL, SURBL; RFC 5782 keeps it out of the lists), 127.0.0.255
(dnswl.org over its query limit). A list given codes counts them if they are among its codes."""


def reversed_name(ip: str) -> str | None:
    """``ip`` as DNS lists (and in-addr.arpa/ip6.arpa) spell it, without the zone:
    ``2.0.0.192`` for 192.0.0.2, 32 nibbles for IPv6 (an IPv4-mapped one as its IPv4
    address; a scope, ``%eth0``, left out); None for what is not an address."""
    import ipaddress

    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    pointer = address.reverse_pointer  # 2.0.0.192.in-addr.arpa / ...ip6.arpa
    return pointer.rsplit(".", 2)[0]


def ours(qmailhome: str, domain: str) -> bool:
    """Whether qmail takes mail for ``domain`` from anyone (qmail-smtpd's rcpthosts check):
    a line of control/rcpthosts equal to it or ``.parent`` for any of its parents (so
    ``.example.com`` takes every host under example.com, not example.com itself), or a key
    of control/morercpthosts.cdb in the same two forms."""
    domain = domain.lower().rstrip(".")
    if not domain:
        return False
    labels = domain.split(".")
    candidates = [domain] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
    hosts = {line.strip().lower() for line in control.lines(qmailhome, "rcpthosts") or ()}
    if any(name in hosts for name in candidates):
        return True
    path = os.path.join(qmailhome, "control", "morercpthosts.cdb")
    data = control.read_trusted(path, "control/morercpthosts.cdb", 1 << 26)
    if not data:
        return False
    import cdblib

    try:
        reader = cdblib.Reader(data)
        return any(reader.get(name.encode("utf-8", "replace")) is not None for name in candidates)
    except Exception:  # a damaged cdb: qmail-smtpd would fail "unable to read controls"
        from qqfilter.exitcodes import CONFIG_ERROR, QueueError

        raise QueueError(CONFIG_ERROR, f"control/morercpthosts.cdb: {path} is damaged") from None


def our_name(qmailhome: str, name: str) -> bool:
    """Whether ``name`` is one of this server's own: control/me, a line of control/locals, or
    a domain qmail takes mail for (``ours``)."""
    name = name.lower().rstrip(".")
    if not name:
        return False
    me = control.first_line(qmailhome, "me")
    if me and me.strip().lower().rstrip(".") == name:
        return True
    if any(
        line.strip().lower().rstrip(".") == name
        for line in control.lines(qmailhome, "locals") or ()
    ):
        return True
    return ours(qmailhome, name)


def qmailhome(settings: Settings) -> str:
    """QQF_QMAILHOME: where the control files are."""
    return settings[QMAILHOME]
