"""SPF evaluation (RFC 7208) with pyspf, over our resolver, under one deadline per message.

pyspf and dnspython are imported here, on first use, so only messages that are evaluated pay
their start-up (about 350 ms together, shared/DESIGN.md section 5). Whatever the client
sent, ``evaluate`` returns an Evaluation: a malformed identity is "none" (RFC 7208 section 4.3),
DNS trouble is "temperror", and a failure inside pyspf is reported as "temperror" too, so
that SPF alone never turns a message into a traceback.
"""

import contextlib
import re
import threading
import time
import warnings

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
_DOMAIN = re.compile(r"(?=.{1,253}\.?$)(?:(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\.)+[A-Za-z0-9-]{1,63}\.?")


class Evaluation:
    """One SPF result and what explains it.

    ``identity`` is "mailfrom" or "helo" (a bounce); ``domain`` the domain checked;
    ``explanation`` the text for a refusal: the domain's exp=, else control/spfexplain, else
    empty; ``problem`` what went wrong, for errors; ``mechanism`` the one that matched.
    """

    __slots__ = (
        "client_ip",
        "domain",
        "explanation",
        "helo",
        "identity",
        "mechanism",
        "problem",
        "result",
        "sender",
    )

    def __init__(
        self,
        result: str,
        *,
        client_ip: str,
        sender: str,
        helo: str,
        identity: str,
        domain: str,
        explanation: str = "",
        problem: str = "",
        mechanism: str = "",
    ) -> None:
        self.result = result
        self.client_ip = client_ip
        self.sender = sender
        self.helo = helo
        self.identity = identity
        self.domain = domain
        self.explanation = explanation
        self.problem = problem
        self.mechanism = mechanism


def valid_domain(name: str) -> bool:
    """A multi-label ASCII domain name within DNS limits (RFC 7208 section 4.3)."""
    return bool(_DOMAIN.fullmatch(name))


def evaluate(
    client_ip: str,
    sender: str,
    helo: str,
    receiver: str,
    *,
    resolver,
    timeout: float,
    local_rules: str = "",
    explanation: str = "",
) -> Evaluation:
    """check_host() for the MAIL FROM identity, or for the HELO identity when ``sender`` is
    empty (a bounce). ``timeout`` bounds all DNS work; ``local_rules`` are
    control/spflocalrules mechanisms, ``explanation`` control/spfexplain's text."""
    identity = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2] if sender else helo
    if sender and "@" not in sender:
        domain, sender = sender, f"postmaster@{sender}"
    shown_ip = _plain_ip(client_ip)
    facts = {"client_ip": shown_ip, "sender": sender, "helo": helo, "identity": identity}
    if not valid_domain(domain):
        return Evaluation("none", domain=domain, problem="no valid domain to check", **facts)
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _check(
                shown_ip,
                sender,
                helo,
                receiver,
                resolver,
                timeout,
                local_rules,
                explanation,
                domain,
                facts,
            )
    except Exception as exc:  # pyspf is third-party code fed hostile input: never a crash
        took = time.monotonic() - started
        return Evaluation(
            "temperror",
            domain=domain,
            problem=f"SPF library failed after {took:.1f} s: {type(exc).__name__}",
            **facts,
        )


def _check(
    client_ip, sender, helo, receiver, resolver, timeout, local_rules, explanation, domain, facts
) -> Evaluation:
    from qqfilter.shared import dnsimport
    from qqfilter.shared.resolver import spf_lookup

    dnsimport.prepare()
    import spf

    _lookups().current = spf_lookup(resolver)
    query = spf.query(
        i=client_ip,
        s=sender,
        h=helo,
        local=local_rules or None,
        receiver=receiver,
        timeout=timeout,
        querytime=timeout,
    )
    if explanation:
        query.set_default_explanation(explanation)
    result, _code, text = query.check()
    if explanation and text == explanation:
        # expanded as exp= text (c, r, t allowed) once check() has set every variable;
        # a malformed macro leaves the administrator's words as written
        with contextlib.suppress(Exception):
            text = query.expand(explanation, stripdot=False)
    problem = getattr(query, "prob", "") or ""
    stock = text == spf.EXPLANATIONS.get(result) and not explanation
    # pyspf's stock words are dropped, and for errors its text is ``problem``'s
    explained = str(text) if result in ("fail", "softfail", "neutral") and not stock else ""
    return Evaluation(
        result if result in RESULTS else "permerror",
        domain=domain,
        explanation=explained,
        problem=str(problem),
        mechanism=str(query.mechanism or ""),
        **facts,
    )


_LOOKUPS = None
_INSTALL = threading.Lock()


def _lookups():
    """The per-thread lookup pyspf's module-wide ``DNSLookup`` now dispatches to: the
    resident server evaluates messages with different QQF_DNS in parallel threads."""
    global _LOOKUPS
    with _INSTALL:
        if _LOOKUPS is None:
            from qqfilter.shared import dnsimport

            dnsimport.prepare()
            import spf

            _LOOKUPS = threading.local()
            spf.DNSLookup = lambda *args: _LOOKUPS.current(*args)
    return _LOOKUPS


def _plain_ip(address: str) -> str:
    """``address`` with an IPv4-mapped IPv6 form (``::ffff:192.0.2.1``) made plain IPv4."""
    import ipaddress

    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if parsed.version == 6 and parsed.ipv4_mapped:
        return str(parsed.ipv4_mapped)
    return str(parsed)
