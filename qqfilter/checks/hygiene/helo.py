"""The HELO name: s/qmail's HELOCHECK with control/badhelo, and this server's own names.

s/qmail's qmail-smtpd (``dohelo``, ``bhelocheck``, ``dnsq``), followed exactly, at DATA time:

| HELOCHECK       | badhelo | also refused                                 | tag, cond    |
|-----------------|---------|----------------------------------------------|--------------|
| any other value | yes     |                                              | Bad_Helo . * |
| ``.``           | yes     | an empty HELO                                | Bad_Helo !   |
| ``!``           | no      | an empty HELO                                | Bad_Helo !   |
| ``=``           | yes     | a HELO that is not TCPREMOTEHOST ("unknown") | DNS_Helo =   |
| ``A``           | yes     | a HELO name without an address (A or AAAA)   | DNS_Helo A   |
| ``M``           | yes     | one without a mail exchanger (dns_mxip)      | DNS_Helo M   |

control/badhelo: a line equal to ``helo!`` lets that HELO through (and skips the A/M lookup,
as in s/qmail); a line equal to the HELO refuses it (cond ``.``); else the lines are wildmat
patterns in order, a ``!`` line an exception to those above it (cond ``*``). NOBADHELO (a
qregex name) ignores the file. Names and lines are compared without regard to case (qmail's
constmap already does for the exact lines; its wildmat does not).

The split horizon (every mode but ``!``, a badhelo match in all but name, so a ``helo!`` line
overrides it and NOBADHELO does not): what no outside client can honestly say. One of this
server's names (control/me, control/locals, rcpthosts) or addresses (TCPLOCALIP, loopback),
cond ``@``; a name containing "localhost" (``L``); a bare address (``#``: RFC 5321 wants the
literal ``[192.0.2.1]``); an address literal that is not the client's own, or that is no
address at all (``[``). A client on this machine (loopback, or TCPLOCALIP itself) may use
this machine's names and addresses.

The HELO text is hostile (HELOHOST may hold anything, kilobytes of it): wildmat runs in time
linear in the HELO per star-free piece of a pattern (no backtracking), names too long for DNS
are never asked, and the log shows at most SHOWN characters of it.
"""

from __future__ import annotations

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.checks.hygiene import (
    DNS_LATER,
    SHARED,
    Client,
    Undecided,
    judged,
    lookups_for,
    our_name,
    qmailhome,
)
from qqfilter.message import Message
from qqfilter.settings import Setting, Settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    import re

    Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NAME = "helo"
ORDER = 24

MODES = ("=", "A", "M", ".", "!")
"""s/qmail's one-character values of HELOCHECK."""


def _helocheck(value: object) -> str:
    """s/qmail's reading, by presence: any value is on ("" is off here only because the
    environment's "" arrives as ``empty_as``); one character picks a mode. ``-`` and ``off``
    are off, so a tcp rule can turn off what the TOML file turns on."""
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be text: one of = A M . ! or any other value (badhelo only)")
    if value in ("-", "off"):
        return ""
    if len(value) == 1:
        mode = value.upper()
        if mode not in MODES:
            raise ValueError("one character must be one of = A M . ! (- is off)")
        return mode
    return value


def _presence(value: object) -> str:
    """Set, even empty, is on ("on"); ``-``, ``off`` and TOML's false are off ("")."""
    if isinstance(value, bool):
        return "on" if value else ""
    if not isinstance(value, str):
        raise ValueError("must be set (any text) or true/false")
    return "" if value in ("", "-", "off") else "on"


HELOCHECK = Setting(
    "helocheck",
    "HELOCHECK",
    "",
    _helocheck,
    "s/qmail HELOCHECK: set (even empty) refuses HELO names in control/badhelo and this "
    "server's own names; = also a HELO that is not the client's host name, A one without an "
    "address, M one without a mail exchanger, . an empty one; ! an empty one only; - off",
    empty_means_set=True,
    empty_as="on",  # HELOCHECK="": on, control/badhelo only (s/qmail tests for presence)
)
NOBADHELO = Setting(
    "nobadhelo",
    "NOBADHELO",
    "",
    _presence,
    "set (even empty): control/badhelo is not read (qregex); this server's own names are "
    "still refused",
    empty_means_set=True,
    empty_as="on",
)
SETTINGS = (HELOCHECK, NOBADHELO, *SHARED)
PRELOAD = (
    "dns.resolver",
    "dns.name",
    "dns.exception",
    "ipaddress",
    "re",
    "cdblib",
    "qqfilter.shared.resolver",
    "qqfilter.shared.received",
)

BAD = "Reject::SNDR::Bad_Helo"
DNS_HELO = "Reject::SNDR::DNS_Helo"
SHOWN = 255
"""Characters of the HELO name the log line's detail shows."""
SAID = 64
"""Characters of it a reason (shown to the client, and noted) repeats."""
NAME_MAX = 255
"""Longer than this, a HELO is not a DNS name: neither ours nor looked up."""


def check(message: Message, settings: Settings) -> Finding | None:
    """Judge the HELO name of a client that is not RELAYCLIENT, when HELOCHECK is set."""
    mode = settings[HELOCHECK]
    if not mode:
        return None
    found = judged(NAME, message, settings)
    if isinstance(found, Finding):
        return found
    if not found.helo_said and not found.helo:
        # stock qmail-smtpd: the HELO equalled "unknown", or there was none (s/qmail's
        # cond "0"); neither can be told from the other, so nothing is refused on it
        return Finding(NAME, Finding.CLEAN, "no HELO name seen")
    helo = _restored(found.helo, message)
    one = len(mode) == 1
    cond, why, excepted = "", "", False
    if mode != "!":
        cond, why, excepted = _bad(helo, found, message, settings)
    if one and mode in ".!" and not helo:
        cond, why = "!", "an empty HELO is refused here"
    if cond:
        return _refusal(BAD, cond, why, helo)
    if mode == "=":
        host = message.connection.remote_host or "unknown"
        if helo.lower() != host.lower():
            return _refusal(DNS_HELO, "=", f"HELO {_said(helo)} is not your host name", helo)
    if mode in ("A", "M") and not excepted:
        try:
            answered = _answers(helo, mode, settings)
        except Undecided as exc:
            return Finding(
                NAME,
                Finding.UNKNOWN,
                "cannot check the HELO name now, try again later",
                status=DNS_LATER,
                detail=f"H:{_shown(helo)} {exc}",
            )
        if not answered:
            words = "has no address" if mode == "A" else "has no mail exchanger"
            return _refusal(DNS_HELO, mode, f"HELO {_said(helo)} {words}", helo)
    return Finding(NAME, Finding.CLEAN, f"HELO {_said(helo)} ok")


def _refusal(tag: str, cond: str, reason: str, helo: str) -> Finding:
    return Finding(
        NAME,
        Finding.REFUSE,
        reason,
        tag=tag,
        status="5.7.1",
        detail=f"H:{_shown(helo)} '{cond}'",
    )


def _shown(helo: str) -> str:
    return helo if len(helo) <= SHOWN else helo[:SHOWN] + "..."


def _said(helo: str) -> str:
    return (helo if len(helo) <= SAID else helo[:SAID] + "...") or '""'


def _restored(helo: str, message: Message) -> str:
    """The HELO, with an address literal from qmail-smtpd's Received line given back its
    brackets: qmail's safeput writes ``[192.0.2.1]`` as ``?192.0.2.1?``."""
    connection = message.connection
    from_line = connection.helo is None and "HELOHOST" not in (connection.environ or {})
    if from_line and len(helo) > 2 and helo[0] == "?" == helo[-1]:
        inner = helo[1:-1]
        digits = inner[5:] if inner[:5].lower() == "ipv6:" else inner
        if digits and all(c in "0123456789abcdefABCDEF.:" for c in digits):
            return f"[{inner}]"
    return helo


def _bad(helo: str, found: Client, message: Message, settings: Settings) -> tuple[str, str, bool]:
    """(cond, reason, excepted) for s/qmail's bhelocheck, with the split horizon counted
    as a badhelo match: cond "" when nothing matched; excepted when a ``helo!`` line
    matched (which also skips the A/M lookup, as s/qmail's -3 does)."""
    home = qmailhome(settings)
    key = helo.lower()
    lines = None if settings[NOBADHELO] else control.lines(home, "badhelo")
    if lines:
        entries = [line.lower() for line in lines]
        exact = set(entries)
        if key + "!" in exact:
            return "", "", True
        if key in exact:
            return ".", f"HELO {_said(helo)} is refused here", False
        if _wildmat_lines(key, entries):
            return "*", f"HELO {_said(helo)} is refused here", False
    cond, why = _split_horizon(helo, found, message, home)
    return cond, why, False


def _wildmat_lines(key: str, entries: list[str]) -> bool:
    """s/qmail's loop: each line a pattern, a ``!`` line an exception; later lines win."""
    listed = False
    for entry in entries:
        positive = not entry.startswith("!")
        pattern = entry if positive else entry[1:]
        if listed != positive and wildmat(key, pattern):
            listed = positive
    return listed


# The split horizon.


def _split_horizon(helo: str, found: Client, message: Message, home: str) -> tuple[str, str]:
    """(cond, reason) for a HELO no outside client can honestly give; ("", "") if none."""
    key, said = helo.lower(), _said(helo)
    environ = message.connection.environ or {}
    local = _address(environ.get("TCPLOCALIP") or "")
    peer = _address(found.ip)
    itself = peer is not None and (peer.is_loopback or peer == local)
    literal = key.startswith("[")
    address = None
    if literal:
        address = _literal(key)
        if address is None:
            return "[", f"HELO {said} is not a valid address literal"
    else:
        address = _address(key)
    if address is not None:
        if not itself and (address.is_loopback or address == local):
            return "@", f"HELO {said} is an address of this server"
        if not literal:
            spelled = f"IPv6:{address}" if address.version == 6 else str(address)
            return "#", f"HELO {said} is an address: RFC 5321 wants [{spelled}]"
        if address != peer and not (itself and (address.is_loopback or address == local)):
            return "[", f"HELO {said} is not your address"
        return "", ""
    if itself:
        return "", ""
    if "localhost" in key:  # before control/locals, which often lists localhost
        return "L", f"HELO {said} is refused from outside"
    if len(key) <= NAME_MAX and our_name(home, key):
        return "@", f"HELO {said} is a name of this server"
    return "", ""


def _address(text: str) -> Address | None:
    """``text`` as an address (an IPv4-mapped IPv6 address as IPv4); None if it is not one."""
    import ipaddress

    if not text or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _literal(key: str) -> Address | None:
    """The address of an RFC 5321 address literal, ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``
    (the tag may be left out: the address is plain either way); None when it is broken."""
    if len(key) < 3 or not key.endswith("]"):
        return None
    inner = key[1:-1]
    tagged = inner.startswith("ipv6:")  # key is lowercased
    if tagged:
        inner = inner[5:]
    if "%" in inner or (tagged and ":" not in inner):  # no scope; the tag is for IPv6
        return None
    return _address(inner)


# DNS: s/qmail's dnsq.


def _answers(helo: str, mode: str, settings: Settings) -> bool:
    """Whether the HELO name has an address (mode A) or a mail exchanger (M), as s/qmail's
    dnsq asks: a trailing blank dropped, the part after an ``@``, an address (literal or not)
    being its own answer. Raises Undecided."""
    name = helo[:-1] if helo.endswith(" ") else helo
    name = name.rpartition("@")[2]
    if not name:
        return False
    if _address(name) is not None or (name.startswith("[") and _literal(name.lower())):
        return True
    if len(name) > NAME_MAX or not _dns_name(name):
        return False
    lookups = lookups_for(settings)
    if mode == "A":
        return lookups.has_address(name)
    return lookups.exchanger(name)[0] in ("mx", "address")


def _dns_name(name: str) -> bool:
    """Whether ``name`` can be asked at all (dnspython's syntax: label lengths, escapes)."""
    from qqfilter.shared import dnsimport

    dnsimport.prepare()
    import dns.exception
    import dns.name

    try:
        dns.name.from_text(name)
    except (dns.exception.DNSException, ValueError):
        return False
    return True


# wildmat: the INN / qregex pattern language of control/badhelo.


def wildmat(text: str, pattern: str) -> bool:
    """Whether ``text`` matches ``pattern``: ``*`` any run, ``?`` any one character,
    ``[set]`` one of a set (``a-z`` ranges, ``^`` or ``!`` first negates, ``]`` or ``-``
    first is literal), ``\\x`` the character x. As Rich Salz's wildmat, which s/qmail uses,
    reads a pattern; a broken one (an unclosed ``[``, a trailing ``\\``) matches nothing.

    The pieces between stars have a fixed length, so each is found leftmost in one pass
    (str.find, or a regular expression without repetition): no backtracking, whatever the
    text and pattern."""
    compiled = _compiled(pattern)
    return compiled is not None and compiled.match(text)


class _Pattern:
    """A wildmat pattern cut at its stars: ``pieces`` (each a fixed-length literal str or
    a compiled expression without repetition, with its length), ``starred`` whether it had
    any star (then the first piece is anchored at the start, the last at the end)."""

    __slots__ = ("pieces", "starred")

    def __init__(self, pieces: list[tuple[str | re.Pattern[str], int]], starred: bool) -> None:
        self.pieces = pieces
        self.starred = starred

    def match(self, text: str) -> bool:
        pieces = self.pieces
        if not self.starred:
            ((piece, length),) = pieces
            return len(text) == length and _at(piece, text, 0)
        first, first_length = pieces[0]
        last, last_length = pieces[-1]
        end = len(text) - last_length
        if end < first_length or not _at(first, text, 0) or not _at(last, text, end):
            return False
        position = first_length
        for piece, length in pieces[1:-1]:
            if isinstance(piece, str):
                found = text.find(piece, position, end)
            else:
                hit = piece.search(text, position, end)
                found = hit.start() if hit else -1
            if found < 0:
                return False
            position = found + length
        return True


def _at(piece: str | re.Pattern[str], text: str, position: int) -> bool:
    if isinstance(piece, str):
        return text.startswith(piece, position)
    return piece.match(text, position) is not None


_CACHE: dict[str, _Pattern | None] = {}
CACHE_PATTERNS = 4096
"""Compiled patterns a process keeps (a resident server reads control/badhelo per message)."""


def _compiled(pattern: str) -> _Pattern | None:
    if pattern in _CACHE:
        return _CACHE[pattern]
    if len(_CACHE) >= CACHE_PATTERNS:
        _CACHE.clear()
    compiled = _CACHE[pattern] = _compile(pattern)
    return compiled


def _compile(pattern: str) -> _Pattern | None:
    """The pattern's pieces, or None when it can match nothing."""
    import re

    pieces: list[list[str]] = [[]]  # each piece: one regular expression per character
    plain: list[bool] = [True]
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pieces[-1] or len(pieces) == 1:
                pieces.append([])
                plain.append(True)
            i += 1
            continue
        if c == "\\":
            if i + 1 >= n:
                return None
            i += 1
            pieces[-1].append(re.escape(pattern[i]))
        elif c == "?":
            pieces[-1].append(".")
            plain[-1] = False
        elif c == "[":
            parsed = _bracket(pattern, i)
            if parsed is None:
                return None
            expression, i = parsed
            if expression is None:
                return None
            pieces[-1].append(expression)
            plain[-1] = False
        else:
            pieces[-1].append(re.escape(c))
        i += 1
    built: list[tuple[str | re.Pattern[str], int]] = []
    for expressions, literal in zip(pieces, plain, strict=True):
        if literal:
            text = "".join(_unescape(e) for e in expressions)
            built.append((text, len(text)))
        else:
            built.append((re.compile("".join(expressions), re.DOTALL), len(expressions)))
    return _Pattern(built, len(built) > 1)


def _unescape(expression: str) -> str:
    """The character a re.escape'd one-character expression stands for."""
    return expression[-1]


def _bracket(pattern: str, start: int) -> tuple[str | None, int] | None:
    """The set at ``pattern[start] == "["`` as wildmat reads it: (the expression for one
    character, None if nothing can match; the index of its ``]``); None if unclosed."""
    import re

    n = len(pattern)
    p = start
    negated = p + 1 < n and pattern[p + 1] in "^!"
    if negated:
        p += 1
    ranges: list[tuple[str, str]] = []
    if p + 1 < n and pattern[p + 1] in "]-":
        p += 1
        ranges.append((pattern[p], pattern[p]))
    last = pattern[p]
    while True:
        p += 1
        if p >= n:
            return None
        c = pattern[p]
        if c == "]":
            break
        if c == "-" and p + 1 < n and pattern[p + 1] != "]":
            p += 1
            ranges.append((last, pattern[p]))
        else:
            ranges.append((c, c))
        last = pattern[p]
    members = "".join(
        re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}"
        for low, high in ranges
        if low <= high
    )
    if not members:
        return ("." if negated else None), p
    return f"[{'^' if negated else ''}{members}]", p
