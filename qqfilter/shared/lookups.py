"""DNS questions under one deadline, where no answer is never taken for "no records".

A shared building block: the sender hygiene family asks through it (under QQF_DNSTIMEOUT), and
DKIM and DMARC (under QQF_DKIMTIMEOUT); SPF has pyspf's own questions (shared/resolver's
``spf_lookup``). A timeout, a SERVFAIL, no server to ask or a deadline passed is ``Undecided``,
naming the question; a name that does not exist, or has no records of the type, is ``[]``.
dnspython is imported on the first question, after ``dnsimport.prepare()``.
"""

from __future__ import annotations

from qqfilter.shared import dnsimport

TYPE_CHECKING = False
if TYPE_CHECKING:
    import dns.resolver

MAX_MX_HOSTS = 10
"""MX hosts (by preference) asked for an address before "none has one": the domain's to set."""


class Undecided(Exception):
    """A DNS question that got no answer (timeout, SERVFAIL, no server, the deadline passed):
    the text says which question and why."""


class Lookups:
    """The DNS questions of one check for one message: all under one deadline (``timeout``
    seconds from now) and through the project's resolver (QQF_DNS ``servers``, its cache in
    a resident server).

    ``ask`` returns the records' texts (``[]`` when the name or the type does not exist) or
    raises Undecided; nothing from dnspython escapes."""

    __slots__ = ("deadline", "resolver")

    def __init__(self, servers: tuple[str, ...], timeout: float) -> None:
        import time

        self.deadline = time.monotonic() + timeout
        self.resolver: dns.resolver.Resolver | None = None
        from qqfilter.shared.resolver import make_resolver

        try:
            self.resolver = make_resolver(servers)
        except OSError as exc:
            raise Undecided(str(exc)) from None

    def ask(self, name: str, qtype: str) -> list[str]:
        """The texts of ``name``'s ``qtype`` records: an address for A/AAAA, ``pref host``
        for MX (host without its final dot), a host for PTR, a TXT record's strings joined
        (as latin-1, so every byte is kept)."""
        import time

        dnsimport.prepare()
        import dns.exception
        import dns.name
        import dns.resolver

        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Undecided(f"DNS deadline passed before {qtype} {name}")
        assert self.resolver is not None
        try:
            answers = self.resolver.resolve(name, qtype, lifetime=left, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.exception.SyntaxError):
            return []  # a name that cannot exist (an empty label, a bad escape) has no records
        except dns.name.IDNAException:
            return []  # nor one that has no ASCII form
        except dns.exception.Timeout:
            raise Undecided(f"DNS timeout looking up {qtype} {name}") from None
        except dns.resolver.NoNameservers:
            raise Undecided(f"DNS servers failed for {qtype} {name}") from None
        except dns.exception.DNSException as exc:
            raise Undecided(f"DNS error for {qtype} {name}: {type(exc).__name__}") from None
        found = []
        for rdata in answers:
            if qtype in ("A", "AAAA"):
                found.append(rdata.address)
            elif qtype == "MX":
                found.append(f"{rdata.preference} {rdata.exchange.to_text(True)}")
            elif qtype == "PTR":
                found.append(rdata.target.to_text(True))
            elif qtype == "TXT":
                found.append(b"".join(rdata.strings).decode("latin-1"))
            else:
                found.append(rdata.to_text())
        return found

    def addresses(self, name: str) -> list[str]:
        """The A and AAAA addresses of ``name`` (Undecided if either question failed)."""
        return self.ask(name, "A") + self.ask(name, "AAAA")

    def has_address(self, name: str) -> bool:
        """Whether ``name`` has an A or an AAAA record; Undecided only when it has neither
        and one of the questions failed."""
        failed: Undecided | None = None
        for qtype in ("A", "AAAA"):
            try:
                if self.ask(name, qtype):
                    return True
            except Undecided as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return False

    def exchanger(self, name: str) -> tuple[str, str]:
        """What djbdns's dns_mxip (s/qmail's dnsq "M") finds for ``name``: ("mx", host) for
        an MX host with an address, ("address", name) for no MX but an address of its own,
        ("null", "") for a null MX (RFC 7505: ``MX 0 .``), ("mx without address", "") and
        ("none", ""). Raises Undecided when nothing was found and a lookup failed."""
        records = []
        for text in self.ask(name, "MX"):
            preference, _, host = text.partition(" ")
            records.append((int(preference) if preference.isdigit() else 65535, host.lower()))
        if not records:
            return ("address", name) if self.has_address(name) else ("none", "")
        hosts: list[str] = []
        for _preference, host in sorted(records):
            if host not in (".", "") and host not in hosts:
                hosts.append(host)
        if not hosts:
            return "null", ""
        failed: Undecided | None = None
        for host in hosts[:MAX_MX_HOSTS]:
            try:
                if self.has_address(host):
                    return "mx", host
            except Undecided as exc:
                failed = failed or exc  # another host may still have an address
        if failed is not None:
            raise failed
        return "mx without address", ""
