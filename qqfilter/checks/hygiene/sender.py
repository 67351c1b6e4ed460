"""The MAIL FROM checks: s/qmail's MFDNSCHECK and LOCALMFCHECK, and QQF_LOCALSPOOF.

As s/qmail's qmail-smtpd has them (its ``dnsq``, ``localaddr`` and the split horizon of
``smtp_rcpt``):

- ``MFDNSCHECK`` (set, even empty, is on): for clients that are not RELAYCLIENT, the sender's
  domain (after its last ``@``; a sender without one is a domain as a whole, as dnsq reads
  it) must have a mail exchanger as djbdns's dns_mxip finds one: its MX hosts, of which one
  address (A or AAAA) suffices, or with no MX at all its own address. None, a null MX
  (RFC 7505, ``MX 0 .``), or MX hosts without an address: refused,
  ``Reject::ORIG::DNS_MF``. A lookup that fails is "could not decide" (451, as s/qmail's
  "451 DNS temporary failure"), never a refusal. A line ``?sender`` in control/badmailfrom
  skips it (s/qmail's "?" bypass). The bounce sender is not checked.
- ``LOCALMFCHECK`` (set, even empty, is on): for RELAYCLIENT clients only, the sender must be
  theirs to use: ``=`` the authenticated user (TCPREMOTEINFO), ``?`` the client
  certificate's address (SSL_CLIENT_S_DN_Email), otherwise (``!`` too: s/qmail's
  control/mailfromrules.cdb is not read) a domain of control/rcpthosts or
  morercpthosts.cdb, or the value itself when it is longer than one character. Refused:
  ``Reject::ORIG::Invalid_Mailfrom``. Outside clients are not looked at, as in s/qmail.
- ``QQF_LOCALSPOOF=refuse`` (qqfilter's own): the converse, a client that is not RELAYCLIENT
  using one of our domains (rcpthosts, morercpthosts.cdb, control/locals) as its sender:
  ``Reject::ORIG::Local_Mailfrom``.

The sender is the client's text: any bytes, up to about 1000 of them. A domain that cannot
be a DNS name (an empty or over-long label, characters no host name has, non-ASCII that is
not IDNA) is not asked about: it has no mail exchanger.
"""

from __future__ import annotations

from qqfilter import control
from qqfilter.checks import Finding
from qqfilter.checks.hygiene import (
    DNS_LATER,
    SHARED,
    Undecided,
    judged,
    lookups_for,
    our_name,
    ours,
)
from qqfilter.message import Message
from qqfilter.settings import QMAILHOME, Setting, Settings, choice

NAME = "sender"
ORDER = 28


def _presence(value: object) -> str | None:
    """s/qmail's MFDNSCHECK: set to any text (the environment gives "" as "on") is on; None
    is off (``off`` or false in the file, the word ``qqfilter config`` shows)."""
    if isinstance(value, bool):
        return "on" if value else None
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be true, false, off or text (any other text is on)")
    return None if value == "off" else value


def _localmf(value: object) -> str | None:
    """s/qmail's LOCALMFCHECK: ``=``, ``?``, ``!`` or any other text (a domain, or nothing);
    None is off (``off`` or false in the file, the word ``qqfilter config`` shows)."""
    if isinstance(value, bool):
        return "" if value else None
    if not isinstance(value, str) or "\0" in value:
        raise ValueError("must be =, ?, !, a domain, empty, or off")
    return None if value == "off" else value


MFDNSCHECK: Setting[str | None] = Setting(
    "mfdnscheck",
    "MFDNSCHECK",
    None,
    _presence,
    "s/qmail: set (even empty) refuses a sender domain without a mail exchanger (MX, or its "
    "own address) from clients that are not RELAYCLIENT; a DNS failure is 451",
    empty_means_set=True,
    empty_as="on",  # MFDNSCHECK="": on, as s/qmail tests it for presence
)
LOCALMFCHECK: Setting[str | None] = Setting(
    "localmfcheck",
    "LOCALMFCHECK",
    None,
    _localmf,
    "s/qmail: set (even empty), RELAYCLIENT clients must send from one of our domains "
    "(rcpthosts, or this value when it is a domain); = the AUTH user, ? the certificate's "
    "address",
    empty_means_set=True,
    empty_as="",  # LOCALMFCHECK="": on, plain mode (rcpthosts)
)
LOCALSPOOF = Setting(
    "localspoof",
    "QQF_LOCALSPOOF",
    "off",
    choice("off", "refuse"),
    "refuse: a client that is not RELAYCLIENT may not use one of our domains (rcpthosts, "
    "morercpthosts.cdb, locals) as its sender",
)
SETTINGS = (MFDNSCHECK, LOCALMFCHECK, LOCALSPOOF, *SHARED)
PRELOAD = (
    "ipaddress",
    "cdblib",
    "dns.exception",
    "dns.name",
    "dns.resolver",
    "qqfilter.shared.resolver",
)

DNS_MF = "Reject::ORIG::DNS_MF"
INVALID_MAILFROM = "Reject::ORIG::Invalid_Mailfrom"
LOCAL_MAILFROM = "Reject::ORIG::Local_Mailfrom"
SHOWN = 100
"""Characters of a domain shown in a reason or note: the log line keeps the whole sender."""
_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def check(message: Message, settings: Settings) -> Finding | None:
    """LOCALMFCHECK for RELAYCLIENT clients; for outside clients the family judges,
    QQF_LOCALSPOOF, then MFDNSCHECK. None when none of them is on for this client."""
    mfdns = settings[MFDNSCHECK] is not None
    localmf = settings[LOCALMFCHECK]
    spoof = settings[LOCALSPOOF] == "refuse"
    sender = message.envelope.sender.decode("utf-8", "replace")
    home = settings[QMAILHOME]
    if message.connection.relayclient and localmf is not None:
        return _local_sender(message, sender, localmf, home)
    if not (mfdns or spoof):
        return None  # LOCALMFCHECK alone does nothing for outside clients (as in s/qmail)
    if not sender:
        return None  # the bounce sender: neither check applies
    note = judged(NAME, message, settings)
    if isinstance(note, Finding):
        return note
    if spoof:
        refused = _spoofed(sender, home)
        if refused is not None:
            return refused
    if mfdns:
        return _mail_exchanger(sender, settings, home)
    return None


# LOCALMFCHECK: s/qmail's localaddr()


def _local_sender(message: Message, sender: str, mode: str, home: str) -> Finding | None:
    """s/qmail's localaddr for a RELAYCLIENT session: a CLEAN note when the sender may be
    used, a refusal when not; None for the bounce sender (localaddr returns 0 for it)."""
    if not sender:
        return None
    environ = message.connection.environ or {}
    if mode == "?":
        email = environ.get("SSL_CLIENT_S_DN_Email")
        if email is not None and email.lower() == sender.lower():
            return Finding(NAME, Finding.CLEAN, "local sender: the client certificate's address")
        got = "unset" if email is None else "another address"
        return _not_permitted(f"LOCALMFCHECK (?): SSL_CLIENT_S_DN_Email is {got}")
    if mode == "=":
        # s/qmail's remoteinfo: TCP6REMOTEINFO, else TCPREMOTEINFO (the AUTH user)
        user = environ.get("TCP6REMOTEINFO")
        if user is None:
            user = environ.get("TCPREMOTEINFO")
        if user is not None and user.lower() == sender.lower():
            return Finding(NAME, Finding.CLEAN, "local sender: the authenticated user")
        got = "unset" if user is None else "another user"
        return _not_permitted(f"LOCALMFCHECK (=): TCPREMOTEINFO is {got}")
    # the plain mode; "!" (s/qmail's control/mailfromrules.cdb) is read as the plain mode too
    if "@" not in sender:
        return Finding(NAME, Finding.CLEAN, "local sender: no domain")  # qmail's rcpthosts()
    domain = _bare(sender.rpartition("@")[2])
    if len(mode) > 1 and domain and domain == _bare(mode):
        return Finding(NAME, Finding.CLEAN, "local sender: the LOCALMFCHECK domain")
    if control.lines(home, "rcpthosts") is None:
        # qmail-smtpd's rcpthosts() allows every domain when control/rcpthosts is absent
        return Finding(NAME, Finding.CLEAN, "local sender: no control/rcpthosts")
    if ours(home, domain):
        return Finding(NAME, Finding.CLEAN, "local sender: rcpthosts")
    return _not_permitted(f"LOCALMFCHECK: {_shown(domain)} is not in rcpthosts")


def _not_permitted(detail: str) -> Finding:
    return Finding(
        NAME,
        Finding.REFUSE,
        "sender address not permitted for this client",
        tag=INVALID_MAILFROM,
        status="5.7.1",
        detail=detail,
    )


# QQF_LOCALSPOOF


def _spoofed(sender: str, home: str) -> Finding | None:
    """A refusal when the sender's domain is one of ours (rcpthosts, morercpthosts.cdb,
    control/locals, or control/me when locals is absent, as qmail-send reads it)."""
    if "@" not in sender:
        return None
    domain = _bare(sender.rpartition("@")[2])
    if not domain:
        return None
    if our_name(home, domain):
        return Finding(
            NAME,
            Finding.REFUSE,
            f"sender address in our own domain {_shown(domain)} from an outside client",
            tag=LOCAL_MAILFROM,
            status="5.7.1",
            detail="QQF_LOCALSPOOF: the client is not RELAYCLIENT",
        )
    return None


# MFDNSCHECK: s/qmail's dnsq(mailfrom, "M"), djbdns's dns_mxip


def _mail_exchanger(sender: str, settings: Settings, home: str) -> Finding:
    if _bypassed(sender, home):
        return Finding(NAME, Finding.CLEAN, "MFDNSCHECK skipped: ?sender in control/badmailfrom")
    if sender.endswith(" "):
        sender = sender[:-1]  # dnsq drops one trailing blank
    domain = sender.rpartition("@")[2].lower()
    if domain.endswith("."):
        domain = domain[:-1]
    shown = _shown(domain) or "(empty)"
    if _address_literal(domain):
        return Finding(NAME, Finding.CLEAN, f"{shown}: an address literal")
    name = _dns_name(domain)
    if name is None:
        return _no_exchanger(
            f"sender domain {shown} is not a valid domain name", "not a DNS name: not asked"
        )
    try:
        kind, host = lookups_for(settings).exchanger(name)
    except Undecided as exc:
        return Finding(
            NAME,
            Finding.UNKNOWN,
            f"DNS temporary failure looking up the sender domain {shown}",
            status=DNS_LATER,
            detail=str(exc),
        )
    if kind == "mx":
        return Finding(NAME, Finding.CLEAN, f"{shown}: MX {_shown(host)}")
    if kind == "address":
        return Finding(NAME, Finding.CLEAN, f"{shown}: no MX, an address")
    if kind == "null":
        return _no_exchanger(
            f"sender domain {shown} accepts no mail (RFC 7505 null MX)", "null MX", "5.7.27"
        )
    if kind == "mx without address":
        return _no_exchanger(
            f"sender domain {shown} has no mail exchanger (its MX hosts have no address)",
            "no MX host has an address",
        )
    return _no_exchanger(
        f"sender domain {shown} has no mail exchanger (MX or address)", "no MX, no address"
    )


def _no_exchanger(reason: str, detail: str, status: str = "5.1.8") -> Finding:
    return Finding(NAME, Finding.REFUSE, reason, tag=DNS_MF, status=status, detail=detail)


def _bypassed(sender: str, home: str) -> bool:
    """s/qmail's "?" address: a line ``?`` + the sender in control/badmailfrom (qmail's
    constmap: the whole line, case ignored) skips MFDNSCHECK."""
    lines = control.lines(home, "badmailfrom")
    if not lines:
        return False
    wanted = "?" + sender.lower()
    return any(line.lower() == wanted for line in lines)


def _address_literal(domain: str) -> bool:
    """``[192.0.2.1]``, ``[IPv6:2001:db8::1]`` or a bare IPv4 address: dns_mxip takes an
    address for the domain's own."""
    import ipaddress

    text = domain
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if text.startswith("ipv6:"):
            text = text[5:]
    elif not text[:1].isdigit():
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _dns_name(domain: str) -> str | None:
    """``domain`` as the ASCII name to ask about (IDNA for non-ASCII), or None when it cannot
    be one: empty, over-long, an empty or over-long label, characters no host name has."""
    if not domain or len(domain) > 1024:
        return None
    if not domain.isascii():
        from qqfilter.shared import dnsimport

        dnsimport.prepare()
        import dns.exception
        import dns.name

        try:
            domain = dns.name.from_text(domain).to_text(True).lower()
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
    if len(domain) > 253:
        return None
    for label in domain.split("."):
        if not 0 < len(label) <= 63 or not _HOST_CHARACTERS.issuperset(label):
            return None
    return domain


def _bare(domain: str) -> str:
    """A domain to compare: lower case, without its trailing dot."""
    domain = domain.strip().lower()
    return domain[:-1] if domain.endswith(".") else domain


def _shown(text: str) -> str:
    """At most SHOWN characters of ``text``, for a reason or a note."""
    return text if len(text) <= SHOWN else text[:SHOWN] + "..."
