"""DMARC policy discovery (RFC 7489 section 6.6.3), the organizational domain, alignment.

The record is looked up at ``_dmarc.<From domain>``, then at ``_dmarc.<organizational
domain>`` (the registrable domain, by the public suffix list the publicsuffixlist package
ships and keeps current: no download at run time). Of the TXT records there, those starting
``v=DMARC1`` count: none is no policy, more than one is an error. A record with an unknown
``p`` but a ``rua`` is read as ``p=none`` (6.6.3); one without either is no record. Tags
are read leniently (case, spaces, a trailing ``;``), unknown tags are ignored, and a ``pct``
outside 0..100 is 100.

The public suffix list is parsed once per process on first use (about 20 ms, without its
punycode copies: a name is looked up in its Unicode form).
"""

from __future__ import annotations

from qqfilter.shared.lookups import Lookups

POLICIES = ("none", "quarantine", "reject")


class Policy:
    """A domain's DMARC record as read: ``domain`` where it was found, ``p``, ``sp``, ``pct``,
    ``adkim`` and ``aspf`` ("r" relaxed, "s" strict). A hand-written ``__slots__`` record."""

    __slots__ = ("adkim", "aspf", "domain", "p", "pct", "sp")

    def __init__(self, domain: str, p: str, sp: str, pct: int, adkim: str, aspf: str) -> None:
        self.domain = domain
        self.p = p
        self.sp = sp
        self.pct = pct
        self.adkim = adkim
        self.aspf = aspf


class Unusable(Exception):
    """The domain publishes DMARC records that cannot be used (several of them)."""


def discover(domain: str, lookups: Lookups) -> Policy | None:
    """The policy that applies to mail from ``domain``, or None when there is none. Raises
    Undecided (DNS could not answer) or Unusable."""
    policy = _record_at(domain, lookups)
    if policy is None:
        organizational = organizational_domain(domain)
        if organizational != domain:
            policy = _record_at(organizational, lookups)
    return policy


def _record_at(domain: str, lookups: Lookups) -> Policy | None:
    records = [text for text in lookups.ask(f"_dmarc.{domain}", "TXT") if _is_dmarc(text)]
    if len(records) > 1:
        raise Unusable(f"{len(records)} DMARC records at _dmarc.{domain}")
    return parse(domain, records[0]) if records else None


def _is_dmarc(text: str) -> bool:
    name, _, value = text.partition(";")[0].partition("=")
    return name.strip().lower() == "v" and value.strip() == "DMARC1"


def parse(domain: str, text: str) -> Policy | None:
    """The policy in the record ``text`` found for ``domain``; None when it has none."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    p = tags.get("p", "").lower()
    if p not in POLICIES:
        if not tags.get("rua"):
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    pct = tags.get("pct", "100")
    return Policy(
        domain,
        p,
        sp if sp in POLICIES else p,
        int(pct) if pct.isdigit() and int(pct) <= 100 else 100,
        "s" if tags.get("adkim", "").lower() == "s" else "r",
        "s" if tags.get("aspf", "").lower() == "s" else "r",
    )


def aligned(domain: str, author: str, mode: str) -> bool:
    """Whether an authenticated ``domain`` is aligned with the ``author`` (From) domain:
    equal (strict, "s"), or with the same organizational domain (relaxed, "r")."""
    domain, author = domain.lower().rstrip("."), author.lower().rstrip(".")
    if domain == author:
        return True
    if mode == "s" or not domain:
        return False
    return organizational_domain(domain) == organizational_domain(author)


_LIST = None


def organizational_domain(domain: str) -> str:
    """The registrable domain of ``domain`` (one label under its public suffix); ``domain``
    itself when it is a public suffix or cannot be read."""
    global _LIST
    if _LIST is None:
        from publicsuffixlist import PublicSuffixList

        _LIST = PublicSuffixList(accept_encoded_idn=False)
    try:
        readable = domain.encode("ascii").decode("idna")
    except UnicodeError:
        return domain
    found = _LIST.privatesuffix(readable)
    if not found:
        return domain
    try:
        return found.encode("idna").decode("ascii")
    except UnicodeError:
        return domain
