"""DKIM, ARC and DMARC: a family of three check units, and what they share.

- ``dkim`` (verify/, QQF_DKIM=verify): every DKIM signature of inbound mail (RFC 6376) and
  its ARC chain (RFC 8617), into the Authentication-Results field (``dkim=``, ``arc=``);
- ``dmarc`` (dmarc/, QQF_DMARC=stamp|enforce): the From domain's DMARC policy (RFC 7489),
  aligned with SPF's result and the DKIM signatures; at enforce, p=reject refuses
  (Reject::DATA::DMARC) and p=quarantine marks the message;
- ``dkimsign`` (sign/, QQF_DKIMSIGN=relayclient): signs outbound mail from relay clients and
  authenticated senders with the From domain's key, in qmail-dkim's layout.

This package declares no NAME: it is a family (qqfilter.checks). What the units share is
here: the deadline for the DNS questions of each unit for one message (QQF_DKIMTIMEOUT,
through shared/lookups and the project's resolver), the message's header section and its From
domains, who counts as authenticated (``authenticated``: inbound checks skip such mail, the
signer signs it), and the signatures verified once per message (``verified``: DMARC aligns
with them whether or not QQF_DKIM is on). dkimpy (and with it PyNaCl for ed25519) is imported
only for a message that carries a signature or is to be signed: mail without any pays nothing
for it.
"""

from __future__ import annotations

from qqfilter.message import Message
from qqfilter.settings import Setting, Settings, seconds
from qqfilter.shared.resolver import DNS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qqfilter.checks.dkim.verify.signatures import Signature

DKIMTIMEOUT = Setting(
    "dkimtimeout",
    "QQF_DKIMTIMEOUT",
    10.0,
    seconds,
    "seconds the DNS lookups of one message's DKIM and ARC check may take, and those of its "
    "DMARC check; then the result is temperror",
)
SHARED = (DNS, DKIMTIMEOUT)
"""The rows all three units own (the same objects, so settings.load reads each once)."""

HEAD_LIMIT = 1 << 20
"""Bytes of the header section read for From fields and signatures: past that, none."""
# Patterns, compiled where they are used (re's own cache keeps them): ``re`` imports enum,
# about 11 ms of start-up that a message no DKIM setting is on for must not pay.
_FROM = rb"(?mi)^From[ \t]*:(.*(?:\r?\n[ \t].*)*)"
_DKIM = rb"(?mi)^DKIM-Signature[ \t]*:"
_ARC = rb"(?mi)^ARC-(?:Seal|Message-Signature)[ \t]*:"
_DOMAIN = r"(?=.{1,253}$)(?:(?!-)[a-z0-9_-]{1,63}(?<!-)\.)+[a-z0-9-]{1,63}"
MAX_FROM_DOMAINS = 4
"""Distinct From domains judged: a message with more is judged on the first ones."""
FROM_LIMIT = 16384
"""Characters of one From field read (a real one is under a few hundred)."""
_SEPARATORS = r"[\s<>,;:]+"


def head(message: Message) -> bytes:
    """The message's header section (without the blank line), at most HEAD_LIMIT bytes."""
    data = message.spool.read(0, HEAD_LIMIT)
    if data.startswith((b"\n", b"\r\n")):
        return b""
    end = data.find(b"\n\n")
    crlf = data.find(b"\r\n\r\n")
    if crlf >= 0 and (end < 0 or crlf < end):
        end = crlf
    return data if end < 0 else data[:end]


def has_signature(header: bytes) -> bool:
    """Whether the header section holds a DKIM-Signature or an ARC set."""
    import re

    return re.search(_DKIM, header) is not None or re.search(_ARC, header) is not None


def has_arc(header: bytes) -> bool:
    """Whether the header section holds an ARC seal or message signature."""
    import re

    return re.search(_ARC, header) is not None


def from_domains(header: bytes) -> list[str]:
    """The domains of the addresses in the From fields (RFC 5322.From), lower case, in ASCII
    (IDNA), each once, at most MAX_FROM_DOMAINS: what a mail client shows as the author. A
    name that is no domain is left out."""
    import re

    found: list[str] = []
    for match in re.finditer(_FROM, header):
        value = match.group(1)[:FROM_LIMIT].decode("utf-8", "replace")
        for address in _addresses(value):
            domain = address.rpartition("@")[2].strip().rstrip(".").lower()
            try:
                domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                continue
            if re.fullmatch(_DOMAIN, domain) and domain not in found:
                found.append(domain)
        if len(found) >= MAX_FROM_DOMAINS:
            break
    return found[:MAX_FROM_DOMAINS]


def _addresses(value: str) -> list[str]:
    """The addresses in a From field's ``value``, read the lenient way mail clients read it,
    in one pass (email.utils.getaddresses takes quadratic time, and recurses without bound
    on nested comments: both a sender's to choose): comments are dropped and quoted strings
    (display names, quoted local parts) become one letter, then each comma-separated part
    gives the address in its angle brackets if it has any, else its words with an ``@``
    after their first character (``@route:`` is no address)."""
    kept: list[str] = []
    depth = 0
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
            if not quoted:
                kept.append("q")  # a quoted local part is still a local part
        elif depth:
            depth += {"(": 1, ")": -1}.get(char, 0)
        elif char == '"':
            quoted = True
        elif char == "(":
            depth = 1
        else:
            kept.append(char)
    import re

    addresses = []
    for part in "".join(kept).split(","):
        if "<" in part:
            part = part.split("<", 1)[1].split(">", 1)[0]
        addresses += [word for word in re.split(_SEPARATORS, part) if "@" in word[1:]]
    return addresses


def valid_domain(name: str) -> bool:
    """Whether ``name`` is a domain as from_domains gives them (lower case ASCII, no empty
    label, within DNS limits): also a safe name for a directory."""
    import re

    return bool(re.fullmatch(_DOMAIN, name))


def authenticated(message: Message) -> str:
    """Why this message counts as sent by one of ours ("" when it does not): RELAYCLIENT;
    an SMTP AUTH user, as SMTPAUTHUSER says or qmail-smtpd's own Received line (``with
    ESMTPA``: the AUTH patches that set only TCPREMOTEINFO, which alone may be the client's
    own ident answer); or local injection (no TCPREMOTEIP)."""
    connection = message.connection
    environ = connection.environ or {}
    if connection.relayclient:
        return "RELAYCLIENT"
    if environ.get("SMTPAUTHUSER"):
        return "SMTP AUTH"
    if not connection.remote_ip:
        return "local injection"
    from qqfilter.shared.received import authenticated_session

    if authenticated_session(message.spool, connection.remote_ip):
        return "SMTP AUTH"
    return ""


def verified(message: Message, settings: Settings) -> list[Signature]:
    """Every DKIM signature of ``message``, verified (once per message: kept in its facts)."""
    found = message.facts.get("dkim")
    if found is None:
        from qqfilter.checks.dkim.verify import signatures

        header = head(message)
        import re

        if re.search(_DKIM, header) is None:
            found = []
        else:
            data = message.spool.read(0, message.spool.size)
            found = signatures.verify(data, settings[DNS], settings[DKIMTIMEOUT])
        message.facts["dkim"] = found
    return found  # type: ignore[return-value]
